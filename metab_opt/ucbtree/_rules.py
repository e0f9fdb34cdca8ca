"""The rules: given the trials in the storage, the parent and params of the next trial.

A :class:`Planner` reads the storage's trials once and runs the rules in order; the first that
produces a params set no trial has (finished, running or waiting) decides. The decision is a
pure function of the :class:`Settings`, the study's direction, the trial number and the trials,
so every worker that reads the same storage decides the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
from optuna.logging import get_logger
from optuna.trial import FrozenTrial, TrialState

from . import _density, _model, _prior, _ranked, _survey
from . import _mutation as mut
from . import _tree as tree
from ._knob import Knob
from ._optuna_internals import fixed_params
from ._record import CONVERGED, FAILED, PARTIAL, VIRTUAL_ROOT, classify
from ._settings import Decision, Settings, _Parent

__all__ = ["Decision", "Planner", "Settings"]

_logger = get_logger(__name__)

# Streaks of finished trials, in completion order, that trigger a rule.
_STREAK_BOUNDARY = 3  # boundary-probe: this many converged in a row
_STREAK_EXPLORE = 4  # explore: this many partial, or this many failed, in a row
_STREAK_DEGENERACY = 3  # degeneracy-break: this many degenerate in a row
# exploit: a knob with this many single-knob tries and no direction that helped on average.
_EXHAUSTED_TRIES = 3


class Planner:
    """Everything one decision needs, read once from the storage's trials."""

    def __init__(self, settings: Settings, trials: Sequence[FrozenTrial], number: int | None,
                 *, sign: float, block: int | None = None,
                 cache: MutableMapping[int, tree.Node] | None = None) -> None:
        """``number``: the trial being decided (left out of the tree); None for a view.

        ``sign``: +1 when the study maximizes, -1 when it minimizes. ``block``: the block to
        look at; by default the block of ``number``, or of the next trial to be created.
        """
        s = self.s = settings
        self.sign = sign
        self.knobs = s.knobs
        self.names = s.names
        self.by_name = {k.name: k for k in self.knobs}
        self.anchors = s.base
        next_number = len(trials) if number is None else number
        self.block = block or tree.block_of(next_number, s.n_iter_block)
        start = tree.block_start(self.block, s.n_iter_block)
        self.position = next_number - start
        self.nodes = tree.read_nodes((t for t in trials if t.number != number), s.base,
                                     self.names, s.group_names, cache, sign=sign,
                                     failed_value=s.failed_value)
        self.by_number = {n.number: n for n in self.nodes}
        self.members = [n for n in self.nodes if start <= n.number < start + s.n_iter_block]
        self.root = tree.resolve_root(self.block, self.members, self.nodes)
        root_node = self.by_number.get(self.root)
        self.root_params: Mapping[str, Any] = s.base if root_node is None else root_node.params
        # The parent id of the root's children. A failed root-run of block 1 is never a parent:
        # its children hang from the base values it tried to run.
        self.root_parent = (VIRTUAL_ROOT if root_node is not None and root_node.failed
                            else self.root)
        self.tree = tree.build_tree(self.block, self.root, self.members, self.by_number)
        self.scores = self.tree.scores(s.ucb_c)
        self.known = {n.key for n in self.nodes}
        for t in trials:  # waiting (enqueued) trials that name every knob
            fixed = fixed_params(t)
            if t.state == TrialState.WAITING and fixed and all(k in fixed for k in self.names):
                self.known.add(tree.params_key(fixed, self.names))
        self.order = tree.completion_order(self.nodes)
        self.memory = mut.direction_memory(self.nodes, self.by_number, self.knobs, self.anchors)
        rng = np.random.default_rng([s.seed, next_number])
        self.coins = {k.name: bool(c) for k, c in zip(self.knobs, rng.random(len(self.knobs))
                                                         < 0.5)}
        # A second, separate stream for values, so the coins do not depend on the code path.
        self.value_rng = np.random.default_rng([s.seed, next_number, 1])
        self.seed_knob = self.by_name.get(s.roles.seed) if s.roles.seed is not None else None
        self.mutable = [k for k in self.knobs if k.name != s.roles.seed]
        self.number = next_number

    # -- helpers -----------------------------------------------------------------------------

    def status(self, node: tree.Node) -> str | None:
        """converged / partial / failed (:func:`classify`); a failed trial is failed whatever
        value it counts as, and one that violates a constraint is at best partial."""
        if node.failed:
            return FAILED
        status = classify(node.value, sign=self.sign, converged=self.s.converged,
                          failed=self.s.failed)
        return PARTIAL if status == CONVERGED and not node.feasible else status

    def describe_root(self) -> str:
        node = self.by_number.get(self.root)
        if node is None:
            return "the base values"
        if node.failed:
            return f"the base values; their run, node {node.number}, failed"
        value = "running" if node.value is None else f"{self.s.value_name} {node.value:.3f}"
        return f"node {node.number}, {value}"

    def parents(self) -> list[_Parent]:
        """Parents in the order a rule tries them: by UCB, else the block's root."""
        if not self.scores:
            def at_root(strategy: str) -> str:
                return (f"no finished node in block {self.block} yet: parent = root "
                        f"({self.describe_root()})")
            return [_Parent(self.root_parent, self.root_params, at_root)]
        out = []
        total = len(self.scores)
        for rank, score in enumerate(self.scores):
            def line(strategy: str, score: tree.Score = score, rank: int = rank) -> str:
                head = (f"UCB {score.ucb:.3f} in block {self.block} (visits {score.visits})")
                if rank == 0:
                    return f"highest {head}"
                return (f"{head}, rank {rank + 1} of {total}: the nodes above it have no "
                        f"untried {strategy} mutation")
            out.append(_Parent(score.node.number, score.node.params, line))
        return out

    def is_new(self, params: Mapping[str, Any]) -> bool:
        return tree.params_key(params, self.names) not in self.known

    def apply(self, parent: Mapping[str, Any],
              changes: Sequence[mut.Change]) -> dict[str, Any] | None:
        """The child's params, or None when they are already finished, running or waiting."""
        params = {name: parent[name] for name in self.names}
        for name, _, new in changes:
            params[name] = new
        return params if self.is_new(params) else None

    def one_step(self, parent: Mapping[str, Any], knob: Knob,
                 first: int | None = None) -> tuple[dict[str, Any], mut.Change] | None:
        """The knob one grid step away: in ``first`` direction, else the preferred one, first."""
        old = parent[knob.name]
        directions = (self.memory.preferred(knob.name, self.coins[knob.name]) if first is None
                      else (first, -first))
        for d in directions:
            new = mut.neighbour(knob, old, d, self.anchors[knob.name])
            if new is None or (d == mut.UP and self.longer_is_void(parent, knob.name)):
                continue
            change = (knob.name, old, new)
            params = self.apply(parent, [change])
            if params is not None:
                return params, change
        return None

    def longer_is_void(self, params: Mapping[str, Any], name: str) -> bool:
        """Whether raising ``name`` (the duration knob) from ``params`` changes nothing: the
        caller's cap (``Settings.capped``) cuts the run already."""
        capped = self.s.capped
        return name == self.s.roles.duration and capped is not None and capped(params)

    def replicate_of(self, number: int, params: Mapping[str, Any]) -> tuple[dict[str, Any],
                                                                          mut.Change] | None:
        knob = self.seed_knob
        if knob is None:
            return None
        old = params[knob.name]
        for _ in range(32):
            if knob.scale == "categorical":
                choices = [c for c in knob.grid(None) if c != old]
                if not choices:
                    return None
                new = choices[int(self.value_rng.integers(len(choices)))]
            else:
                assert knob.low is not None and knob.high is not None
                new = int(self.value_rng.integers(int(knob.low), int(knob.high) + 1))
                if not knob.is_integer:
                    new = float(new)
            if new == old:
                continue
            change = (knob.name, old, new)
            child = self.apply(params, [change])
            if child is not None:
                return child, change
        return None

    def group_size(self, node: tree.Node) -> int:
        return sum(1 for n in self.nodes if n.group == node.group)

    @functools.cached_property
    def own_model(self) -> _model.MoveModel | None:
        """The move model of this study's finished trials (None: too few, or all alike)."""
        return _ranked.fit(self)

    @functools.cached_property
    def prior_weights(self) -> _prior.Weights | None:
        """Each prior source's weight after this study's finished trials (None: no prior)."""
        prior = self.s.prior
        if prior is None:
            return None
        return prior.weights(_ranked.points(self), self.own_model, self.number)

    @functools.cached_property
    def ensemble(self) -> _prior.Ensemble | None:
        """The prior's sources and this study's move model, weighted (None: no prior)."""
        if self.s.prior is None or self.prior_weights is None:
            return None
        return _prior.Ensemble(self.s.prior, self.prior_weights, self.own_model,
                               len(_ranked.points(self)))

    @functools.cached_property
    def model(self) -> _model.MoveModel | _prior.Ensemble | None:
        """What ranks the moves: the move model of every finished trial (None: off, or too
        few trials), or with a prior the weighted ensemble of it and the prior's sources."""
        if not self.s.model:
            return None
        return self.ensemble or self.own_model

    def model_step(self, strategy: str, ends_only: bool = False) -> Decision | None:
        """The move the model ranks first (:func:`._ranked.ranked_move`), or None."""
        found = _ranked.ranked_move(self, strategy, ends_only=ends_only)
        if found is None:
            return None
        parent, params, change, rule = found
        return Decision(params, parent, strategy, (change,), rule)

    def density_step(self, strategy: str) -> Decision | None:
        """The move toward the best trials' values (:func:`._density.density_move`), under
        ``model`` only; None without one."""
        found = _density.density_move(self, strategy) if self.s.model else None
        return None if found is None else Decision(found[1], found[0], strategy, *found[2:])

    def last(self, k: int) -> list[tree.Node] | None:
        return self.order[-k:] if len(self.order) >= k else None

    # -- rules -------------------------------------------------------------------------------

    def decide(self, fixed: Mapping[str, Any] | None) -> Decision:
        if fixed is not None:
            return self.enqueued(fixed)
        rules = (self.spread, self.survey, self.replicate, self.degeneracy_break,
                 self.boundary_probe, self.duration, self.explore, self.exploit, self.fallback)
        for rule in rules:
            decision = rule()
            if decision is not None:
                return decision
        # Every grid point near the tree is taken and no seed can be changed: run a known
        # params set again rather than stop the study.
        parent = self.parents()[0]
        _logger.warning(f"{self.s.owner}: no untried params set left; repeating one.")
        return Decision(dict(parent.params), parent.number, "exploit", (),
                        parent.describe("exploit") + " (search space exhausted)")

    def enqueued(self, fixed: Mapping[str, Any]) -> Decision:
        params = {name: self.root_params[name] for name in self.names}
        params.update({k: v for k, v in fixed.items() if k in params})
        changes = tuple((name, self.root_params[name], params[name]) for name in self.names
                        if tree.canonical(params[name]) != tree.canonical(self.root_params[name]))
        rule = (f"enqueued by the user: attached to the root of block {self.block} "
                f"({self.describe_root()})")
        return Decision(params, self.root_parent, "enqueued", changes, rule)

    def spread(self) -> Decision | None:
        items: list[str | None] = [None]  # slot 0: the root itself
        # After a survey, block 1 has no spread: one-knob steps from the base values look at
        # less than the survey did, and the walk then steps the same knobs (exploit's order)
        # from the survey's best, which is where they can pay off. Later blocks spread from
        # their root (the incumbent) as before.
        if not self.surveying:
            items += list(self.s.roles.spread)
        # At most half a block, so that small blocks still leave room for the rules; but the
        # base values are run first however small the blocks are.
        if self.position >= min(len(items), self.s.n_iter_block // 2):
            return self.spread_slot(0, None) if self.root == VIRTUAL_ROOT else None
        done = {m.spread_item for m in self.members if m.spread_item is not None}
        for slot, name in enumerate(items):
            if slot in done:
                continue
            decision = self.spread_slot(slot, name)
            if decision is not None:
                return decision
        return None

    def spread_slot(self, slot: int, name: str | None) -> Decision | None:
        root_node = self.by_number.get(self.root)
        if name is None and root_node is None:
            if not self.is_new(self.s.base):
                return None
            rule = f"block {self.block} starts at the base values: run them as the root"
            return Decision(dict(self.s.base), VIRTUAL_ROOT, "root", (), rule, slot)
        if name is None:
            assert root_node is not None
            if not root_node.can_be_parent or self.group_size(root_node) > 1:
                return None
            found = self.replicate_of(self.root, root_node.params)
            if found is None:
                return None
            params, change = found
            rule = (f"root of block {self.block} ({self.describe_root()}) has a single run: "
                    f"re-run with a new seed before it is trusted")
            return Decision(params, self.root, "replicate", (change,), rule, slot)
        found = self.one_step(self.root_params, self.by_name[name])
        if found is None:
            return None
        params, change = found
        rule = (f"initial spread of block {self.block}: {name} from the root "
                f"({self.describe_root()})")
        return Decision(params, self.root_parent, "initial-spread", (change,), rule, slot)

    @property
    def surveying(self) -> bool:
        """Whether this block starts with a survey: block 1 of a study with ``survey`` > 0."""
        return self.block == 1 and self.s.survey > 0

    def survey(self) -> Decision | None:
        """The next draw of block 1's survey (:func:`._survey.survey_move`), hung from the
        root; with a prior, some draws follow it (:mod:`._prior`)."""
        found = _survey.survey_move(self) if self.surveying else None
        return None if found is None else Decision(found[1], found[0], "survey", *found[2:])

    def replicate(self) -> Decision | None:
        best = tree.incumbent(self.nodes)
        if best is None or best.members > 1:
            return None
        # A failed incumbent is not worth a second look at the same params.
        if classify(best.mean, sign=self.sign, failed=self.s.failed) == FAILED:
            return None
        found = self.replicate_of(best.node.number, best.node.params)
        if found is None:
            return None
        params, change = found
        rule = (f"new incumbent node {best.node.number} ({self.s.value_name} "
                f"{best.mean:.3f}, one run) is re-run with a new seed before it is trusted")
        return Decision(params, best.node.number, "replicate", (change,), rule)

    def degeneracy_break(self) -> Decision | None:
        degenerate = self.s.degenerate
        if degenerate is None or not self.s.roles.degeneracy:
            return None
        recent = self.last(_STREAK_DEGENERACY)
        # A failed trial is never degenerate: its dynamics say nothing about the knobs.
        if recent is None or not all(not n.failed and n.value is not None
                                     and degenerate(n.trial) for n in recent):
            return None
        for parent in self.parents():
            changes = []
            for name, d in self.s.roles.degeneracy:
                new = mut.neighbour(self.by_name[name], parent.params[name], d,
                                    self.anchors[name])
                if new is not None:
                    changes.append((name, parent.params[name], new))
            params = self.apply(parent.params, changes) if changes else None
            if params is not None:
                return Decision(params, parent.number, "degeneracy-break", tuple(changes),
                                parent.describe("degeneracy-break"))
        return None

    def boundary_probe(self) -> Decision | None:
        recent = self.last(_STREAK_BOUNDARY)
        if recent is None or not all(self.status(n) == CONVERGED for n in recent):
            return None
        ranked = self.model_step("boundary-probe", ends_only=True)
        if ranked is not None:
            return ranked
        # The knob probed least in this block first, so successive probes cover the knobs.
        probes = {k.name: 0 for k in self.mutable}
        for m in self.members:
            if m.strategy == "boundary-probe":
                for name, _, _ in m.changes:
                    probes[name] = probes.get(name, 0) + 1
        order = sorted(self.mutable, key=lambda k: probes[k.name])
        for parent in self.parents():
            for knob in order:
                old = parent.params[knob.name]
                for d in self.memory.preferred(knob.name, self.coins[knob.name]):
                    end = mut.range_end(knob, d, self.anchors[knob.name])
                    if tree.canonical(end) == tree.canonical(old):
                        continue
                    change = (knob.name, old, end)
                    params = self.apply(parent.params, [change])
                    if params is not None:
                        return Decision(params, parent.number, "boundary-probe", (change,),
                                        parent.describe("boundary-probe"))
        return None

    def duration(self) -> Decision | None:
        name = self.s.roles.duration
        if name is None or not self.scores:
            return None
        knob = self.by_name[name]
        top = self.scores[0].node
        curve = [(step, self.sign * v) for step, v in top.intermediate]
        if mut.is_rising(curve, self.s.rising_gain) and not self.longer_is_void(top.params, name):
            direction = mut.UP
        elif self.s.model and self.shorten_ok(top, curve):
            direction = mut.DOWN
        else:
            return None
        old = top.params[knob.name]
        new = mut.neighbour(knob, old, direction, self.anchors[knob.name])
        if new is None:
            return None
        change = (knob.name, old, new)
        params = self.apply(top.params, [change])
        if params is None:
            return None
        if direction == mut.UP:
            trend = "rising" if self.sign > 0 else "falling"
            why = (f"; its {self.s.value_name} was still {trend} over the last quarter of "
                   f"training")
        else:
            why = (f"; its {self.s.value_name} gained less than {self.s.follow_gain:g} over "
                   f"the second half of training: a shorter run may do as well")
        rule = self.parents()[0].describe("duration") + why
        return Decision(params, top.number, "duration", (change,), rule)

    def shorten_ok(self, top: tree.Node, curve: Sequence[tuple[int, float]]) -> bool:
        """Whether the duration rule may shorten ``top``'s runs: it completed (a pruned curve
        stops early), is not failed, is in the incumbent's replicate group, its curve was flat
        over the second half of training (a gain below ``follow_gain``, the least that counts
        as better) and no trial of this block has shortened them yet (one try per block: a
        shorter run that does worse is not retried every trial)."""
        if top.state != TrialState.COMPLETE or self.status(top) == FAILED or len(curve) < 4:
            return False
        # Only the incumbent's runs: how long a trial needs is learnt where it pays.
        best = tree.incumbent(self.nodes)
        if best is None or best.node.group != top.group:
            return False
        shortened = any(mut.direction_of(self.by_name[n], o, v, self.anchors[n]) == mut.DOWN
                        for m in self.members if m.strategy == "duration"
                        for n, o, v in m.changes)
        if shortened:
            return False
        half = curve[len(curve) // 2 - 1][1]
        return curve[-1][1] - half < self.s.follow_gain

    def explore(self) -> Decision | None:
        recent = self.last(_STREAK_EXPLORE)
        if recent is None:
            return None
        statuses = {self.status(n) for n in recent}
        if statuses not in ({PARTIAL}, {FAILED}):
            return None
        # Least recently moved first, over the whole study (never moved: -1, in exploration
        # order); the knobs a running trial moves go last. Counting only the streak's own
        # trials would cycle through the first five knobs of the order for ever.
        # A survey draw moves every knob at once: it is no knob's step, and would make them
        # all "recently moved".
        stepped = [n for n in self.nodes if n.strategy != "survey"]
        running = {name for n in stepped if not n.finished for name, _, _ in n.changes}
        last_moved = {k.name: -1 for k in self.mutable}
        for node in stepped:
            for name, _, _ in node.changes:
                if name in last_moved:
                    last_moved[name] = max(last_moved[name], node.number)
        index = {k.name: i for i, k in enumerate(self.mutable)}
        order = sorted(self.mutable, key=lambda k: (k.name in running, last_moved[k.name],
                                                    index[k.name]))
        return (self.density_step("explore") or self.model_step("explore")
                or self._first_step(order, "explore"))

    def exploit(self) -> Decision | None:
        # Knobs that have not paid off go last: in a 72-trial study one knob took 36 steps, 13
        # of them down with a mean loss, before this rule.
        exhausted = {k.name for k in self.mutable
                     if self.memory.exhausted(k.name, _EXHAUSTED_TRIES)}
        order = sorted(self.mutable, key=lambda k: k.name in exhausted)
        return self.model_step("exploit") or self._first_step(order, "exploit")

    def follow_through(self, parent: _Parent) -> tuple[Knob, int] | None:
        """The knob (and direction) of the one-step move that made ``parent`` (not failed)
        better than its own parent, if that is how ``parent`` came about."""
        node = self.by_number.get(parent.number)
        # Not from a failed parent: while every run fails, a gain says little about the knob.
        if node is None or node.value is None or self.status(node) == FAILED:
            return None
        # A replicate (same group: only the seed changed) stands for the run it repeats: the
        # parent chosen after a replicate is often the replicate itself.
        while node.parent is not None:
            original = self.by_number.get(node.parent)
            if original is None or original.group != node.group:
                break
            node = original
        if node.score is None or len(node.changes) != 1:
            return None
        grand = self.by_number.get(node.parent) if node.parent is not None else None
        if grand is None or grand.score is None or node.score - grand.score < self.s.follow_gain:
            return None
        name, old, new = node.changes[0]
        knob = self.by_name.get(name)
        if knob is None or name == self.s.roles.seed:
            return None
        return knob, mut.direction_of(knob, old, new, self.anchors[name])

    def _first_step(self, knobs: Sequence[Knob], strategy: str) -> Decision | None:
        """One grid step of the first knob, in ``knobs`` order, that gives an untried child of
        the best-ranked parent that has one; a knob that just paid off on that parent first,
        the same way."""
        verb = "raised" if self.sign > 0 else "lowered"
        for parent in self.parents():
            lead = self.follow_through(parent)
            steps: list[tuple[Knob, int | None]] = [] if lead is None else [lead]
            steps += [(k, None) for k in knobs]
            for knob, first in steps:
                found = self.one_step(parent.params, knob, first)
                if found is not None:
                    params, change = found
                    rule = parent.describe(strategy)
                    if first is not None:
                        rule += (f"; {knob.name} {verb} {self.s.value_name} on the step "
                                 f"before: once more")
                    return Decision(params, parent.number, strategy, (change,), rule)
        return None

    def fallback(self) -> Decision | None:
        # Every one-step child of every candidate is taken: jump one knob to a random grid value.
        if not self.mutable:
            return None
        for parent in self.parents():
            for _ in range(64):
                knob = self.mutable[int(self.value_rng.integers(len(self.mutable)))]
                grid = knob.grid(self.anchors[knob.name])
                new = grid[int(self.value_rng.integers(len(grid)))]
                old = parent.params[knob.name]
                if tree.canonical(new) == tree.canonical(old):
                    continue
                change = (knob.name, old, new)
                params = self.apply(parent.params, [change])
                if params is not None:
                    rule = (parent.describe("explore")
                            + "; every one-step child is taken: a random grid value")
                    return Decision(params, parent.number, "explore", (change,), rule)
        parent = self.parents()[0]
        found = self.replicate_of(parent.number, parent.params)
        if found is not None:
            params, change = found
            return Decision(params, parent.number, "replicate", (change,),
                            parent.describe("replicate") + "; every grid child is taken")
        return None
