"""UCBMutationSampler: the seed exploration procedure as an Optuna sampler.

Every trial is a node of a tree. Each new trial picks a parent by PUCT inside the current block
of ``n_iter_block`` trials and changes one knob (or, under a few rules, a fixed set of knobs) of
the parent's params. The decision for trial ``n`` is a pure function of the sampler's settings,
its seed, ``n`` and the trials in the storage, so several workers (threads or processes) that
share one storage agree on the tree; running trials count as pending visits (a virtual loss).

What the sampler writes on each trial, before the objective runs:

* system attr ``metab_opt:ucb:node``: the decision (parent, block, block root, strategy, changes,
  params, spread slot, parent rule, settings). The sampler reads only this back.
* user attrs for people and the logbook: ``node_id`` (the trial number), ``parent_id`` (the
  parent's trial number; ``-1`` when the parent is the config's base values rather than a
  trial), ``block`` (from 1), ``strategy``, ``mutation`` (``param: old -> new``, several joined
  by ``; ``, or ``none``) and ``parent_rule``.

Strategies, in the order they are tried for a new trial:

1. ``enqueued``: ``study.enqueue_trial(params)``; used as given, hung from the block's root.
2. ``root`` / ``initial-spread``: the first trials of a block (4, at most half the block) run
   the root (block 1: the config's base values; later blocks: a ``replicate`` of the root if it
   has a single run), then step lr_k, lr_node and lr_sub one grid step each from the root.
3. ``replicate``: the incumbent (best replicate mean) has a single run and is not failed
   (R² >= 0.1): re-run it with a new training seed before trusting it. A failed run is not
   worth a second look at the same params.
4. ``degeneracy-break``: the last 3 finished trials were all degenerate by the instructions'
   table (``metrics.diagnose``: test_pearson > 0.95, i.e. good dynamics, and R² <= 0.9, i.e.
   wrong k): raise lr_k, lower lr_node and lr_sub by one step each, as one mutation. A large
   ``test_pearson - R²`` alone is not enough: with R² far below 0 the gap is large whatever the
   dynamics, and those runs are failed, not degenerate.
5. ``boundary-probe``: the last 3 finished trials all had ``R² >= 0.9``: push one knob to an end
   of its range.
6. ``duration``: the chosen parent's intermediate R² was still rising over its last quarter:
   raise data_augmentation_loop one step.
7. ``explore``: the last 4 finished trials were all partial (``0.1 <= R² <= 0.9``) or all failed
   (``R² < 0.1``): step the knob moved least recently in the whole study (never moved first, in
   exploration order), skipping those a running trial moves. Round-robin over every knob, so a
   long stall reaches the knobs late in the order too.
8. ``exploit``: step the first knob, in exploration order, that gives an untried child; knobs
   that have not paid off (3 or more single-knob tries, no direction with a positive mean ΔR²)
   go last.

``explore`` and ``exploit`` first follow through: when the parent is not failed (R² >= 0.1) and
was itself made by a one-knob step that raised R² by at least 0.02 over its own parent (or is a
replicate of such a run), the same knob is stepped again the same way. Not from a failed
parent: while every run fails, a gain (say R² -58 -> -34) says little about the knob, and the
round-robin survey finds the knob that matters sooner.

A rule that cannot produce a new params set from the best-ranked parent tries the next parent by
UCB; a rule that cannot produce one at all gives way to the next rule.
"""

from __future__ import annotations

import datetime
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.logging import get_logger
from optuna.samplers import BaseSampler, RandomSampler
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from metab_opt import _mutation as mut
from metab_opt import _ucb as ucb
from metab_opt.config import Config, Knob, SearchConfig, load_config
from metab_opt.metrics import diagnose

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import BaseTrial

__all__ = ["UCBMutationSampler", "next_parent", "suggest_params", "ucb_scores"]

_logger = get_logger(__name__)

RECORD_KEY = ucb.RECORD_KEY
STRATEGIES = ("root", "initial-spread", "enqueued", "replicate", "degeneracy-break",
              "boundary-probe", "duration", "explore", "exploit")

# The instructions' thresholds.
_CONVERGED_R2 = 0.9  # boundary-probe: R² >= this for _STREAK_BOUNDARY trials in a row
_PARTIAL_R2 = (0.1, 0.9)  # explore: all of the last _STREAK_EXPLORE trials in this range
_DEGENERATE = ("degenerate", "severely degenerate")  # degeneracy-break: diagnoses ...
_STREAK_BOUNDARY = 3
_STREAK_EXPLORE = 4
_STREAK_DEGENERACY = 3  # ... for this many finished trials in a row
# exploit: a knob with this many single-knob tries and no direction that helped on average.
_EXHAUSTED_TRIES = 3
# Follow-through: the gain that counts as paid off. Above training-seed noise (replicates on
# rank50 differ by ~0.005-0.01), so that a walk is not driven by noise: without it, a proxy
# study stepped coeff_MLP_node_L1 five times in a row on gains of 1e-4.
_FOLLOW_MIN_GAIN = 0.02
# The knobs of the initial spread and of the degeneracy-break, by name.
_SPREAD_KNOBS = ("lr_k", "lr_node", "lr_sub")
_DEGENERACY_MOVES = (("lr_k", mut.UP), ("lr_node", mut.DOWN), ("lr_sub", mut.DOWN))
_DURATION_KNOB = "data_augmentation_loop"
# A learning curve counts as still rising when its last quarter gained more than this.
_RISING_MIN_GAIN = 1e-3
# A running trial without a decision younger than this is being decided by another worker:
# wait for it, so that decisions are made in trial-number order. Older ones were started by
# something else (another sampler, a dead worker) and are ignored.
_DECISION_GRACE_S = 10.0
# Polling backs off from 5 ms to 50 ms: on SQLite every read holds up the writer it waits for.
_POLL_S = (0.005, 0.05)


@dataclass(frozen=True)
class _Decision:
    params: dict[str, Any]
    parent: int
    strategy: str
    changes: tuple[mut.Change, ...]
    parent_rule: str
    spread: int | None = None


@dataclass(frozen=True)
class _Parent:
    """A parent to mutate: a scored node, or the block's root when nothing can be scored."""

    number: int
    params: Mapping[str, Any]
    describe: Callable[[str], str]  # strategy -> the parent_rule line


class UCBMutationSampler(BaseSampler):
    """Grow a PUCT tree of trials, each a small mutation of a parent trial.

    The objective's value is the node's R² (maximize). ``test_pearson`` in the trial's user
    attrs, when the objective sets it, gives the degeneracy gap; the trial's intermediate values
    (step -> R²) feed the ``duration`` rule. Failed trials are nodes with R² 0 that are never
    chosen as parents; pruned trials count with their last reported value.

    Args:
        knobs:
            The search space, in exploration order (``Config.search.knobs``).
        base_params:
            The root of the tree: one value per knob (``Config.base_params()``); also the anchor
            of every knob's mutation lattice.
        n_iter_block:
            Trials per block; the tree restarts from the incumbent at each block boundary.
        ucb_c:
            The exploration constant ``c`` of ``R2 + c * sqrt(N) / (1 + V)``.
        seed:
            Seed of the sampler's random choices (new training seeds, first directions).
    """

    def __init__(
        self,
        *,
        knobs: Sequence[Knob],
        base_params: Mapping[str, Any],
        n_iter_block: int = 12,
        ucb_c: float = 1.414,
        seed: int | None = None,
    ) -> None:
        self._knobs = _check_knobs(knobs)
        self._base = _check_base_params(base_params, self._knobs)
        if isinstance(n_iter_block, bool) or not isinstance(n_iter_block, int) or n_iter_block < 1:
            raise ValueError(f"n_iter_block: expected an integer >= 1, got {n_iter_block!r}")
        if (isinstance(ucb_c, bool) or not isinstance(ucb_c, (int, float))
                or not math.isfinite(ucb_c) or ucb_c < 0):
            raise ValueError(f"ucb_c: expected a finite number >= 0, got {ucb_c!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed < 2**32):
            raise ValueError(f"seed: expected None or an integer in [0, 2**32), got {seed!r}")
        self._n_iter_block = n_iter_block
        self._ucb_c = float(ucb_c)
        # Decisions draw from a generator keyed by (seed, trial number), never from a stream
        # shared by the workers: the same seed and history then give the same proposal, in
        # whatever order threads or processes ask. Without a seed, one is drawn from the OS.
        self._seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy
                                                             % 2**32)
        # Params the objective suggests outside the search space fall back to random sampling.
        self._independent_sampler = RandomSampler(seed=seed)
        self._search_space = {k.name: k.distribution() for k in self._knobs}
        self._names = tuple(k.name for k in self._knobs)
        self._group_names = tuple(k.name for k in self._knobs if not ucb.is_seed_knob(k))
        # Parsed nodes of finished trials, per storage and study. Only a speed-up: a finished
        # trial never changes, so the cache cannot make two workers decide differently.
        self._cache: weakref.WeakKeyDictionary[Any, dict[int, dict[int, ucb.Node]]] = (
            weakref.WeakKeyDictionary())
        self._cache_lock = threading.Lock()

    @classmethod
    def from_config(cls, path_or_config: str | os.PathLike[str] | Config,
                    seed: int | None = None) -> UCBMutationSampler:
        """The sampler of a config's ``search`` section, rooted at the config's values."""
        if isinstance(path_or_config, (str, os.PathLike)):
            cfg = load_config(Path(path_or_config))
        elif isinstance(path_or_config, Config):
            cfg = path_or_config
        else:
            raise TypeError(f"path_or_config: expected a config file path or a Config, got "
                            f"{type(path_or_config).__name__} {path_or_config!r}")
        search = cfg.search
        return cls(knobs=search.knobs, base_params=cfg.base_params(),
                   n_iter_block=search.n_iter_block, ucb_c=search.ucb_c, seed=seed)

    @property
    def search_space(self) -> dict[str, BaseDistribution]:
        """The Optuna distribution of every knob, in exploration order."""
        return dict(self._search_space)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return self._knobs

    @property
    def base_params(self) -> dict[str, Any]:
        return dict(self._base)

    @property
    def n_iter_block(self) -> int:
        return self._n_iter_block

    @property
    def ucb_c(self) -> float:
        return self._ucb_c

    def __getstate__(self) -> dict[str, Any]:
        # The cache and its lock stay behind (a lock cannot be pickled; the cache refills).
        state = self.__dict__.copy()
        del state["_cache"], state["_cache_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = weakref.WeakKeyDictionary()
        self._cache_lock = threading.Lock()

    def reseed_rng(self) -> None:
        # Optuna calls this when it starts each of the n_jobs threads. The decision seed must
        # stay as it is, or the workers would decide differently from one another (as QMCSampler
        # keeps its seed); only the fallback sampler is reseeded.
        self._independent_sampler.reseed_rng()

    # -- BaseSampler -------------------------------------------------------------------------

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if RECORD_KEY in trial.system_attrs:
            return  # decided already (a Trial object built again for the same trial)
        if is_heartbeat_enabled(study._storage):
            # Optuna starts a trial's heartbeat only after sampling, and its stale-trial check
            # skips a RUNNING trial that never had one: a worker killed while this decision
            # waits or writes would leave its trial RUNNING for ever. One beat now closes that.
            study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        if study._is_multi_objective():
            raise ValueError("UCBMutationSampler: the study must have one objective (the R² to "
                             f"maximize), got {len(study.directions)}")
        if study.direction != StudyDirection.MAXIMIZE:
            raise ValueError("UCBMutationSampler: the study must maximize R² (create it with "
                             f"direction='maximize'), got {study.direction.name.lower()}")
        trials = self._await_earlier_decisions(study, trial.number)
        planner = _Planner(self, trials, trial.number, cache=self._node_cache(study))
        decision = planner.decide(trial.system_attrs.get("fixed_params"))
        block = planner.block
        record = {
            "parent": decision.parent,
            "block": block,
            "root": planner.root,
            "strategy": decision.strategy,
            "mutation": mut.format_changes(decision.changes),
            "changes": [list(c) for c in decision.changes],
            "spread": decision.spread,
            "parent_rule": decision.parent_rule,
            "params": decision.params,
            "ucb_c": self._ucb_c,
            "n_iter_block": self._n_iter_block,
        }
        user = {
            "node_id": trial.number,
            "parent_id": decision.parent,
            "block": block,
            "strategy": decision.strategy,
            "mutation": record["mutation"],
            "parent_rule": decision.parent_rule,
        }
        _write_attrs(study._storage, trial._trial_id, {RECORD_KEY: record}, user)
        # The Trial object the objective receives reads this FrozenTrial. New dicts rather than
        # updates in place: an in-memory storage may share the old ones with other readers.
        trial.system_attrs = {**trial.system_attrs, RECORD_KEY: record}
        trial.user_attrs = {**trial.user_attrs, **user}
        _logger.debug(f"Trial {trial.number}: parent={decision.parent} "
                      f"strategy={decision.strategy} mutation={record['mutation']}")

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._search_space)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        record = trial.system_attrs.get(RECORD_KEY)
        if record is None:
            record = study._storage.get_trial_system_attrs(trial._trial_id).get(RECORD_KEY)
        if record is None:
            return {}
        params = record["params"]
        return {name: params[name] for name in search_space if name in params}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._independent_sampler.sample_independent(
            study, trial, param_name, param_distribution
        )

    # -- decisions ---------------------------------------------------------------------------

    def _node_cache(self, study: Study) -> MutableMapping[int, ucb.Node]:
        with self._cache_lock:
            per_study = self._cache.setdefault(study._storage, {})
            return per_study.setdefault(study._study_id, {})

    def _await_earlier_decisions(self, study: Study, number: int) -> list[FrozenTrial]:
        """All trials, once every lower-numbered trial started by a worker has its decision.

        Deciding in trial-number order is what makes simultaneous workers see each other's
        pending children (the virtual loss) and never pick the same (parent, mutation).
        """
        delay = _POLL_S[0]
        while True:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            now = datetime.datetime.now()
            pending = [
                t for t in trials
                if t.number < number and t.state == TrialState.RUNNING
                and RECORD_KEY not in t.system_attrs and t.datetime_start is not None
                and (now - t.datetime_start).total_seconds() < _DECISION_GRACE_S
            ]
            if not pending:
                return trials
            time.sleep(delay)
            delay = min(2 * delay, _POLL_S[1])


class _Planner:
    """Everything one decision needs, read once from the storage's trials."""

    def __init__(self, sampler: UCBMutationSampler, trials: Sequence[FrozenTrial],
                 number: int | None, *, block: int | None = None,
                 cache: MutableMapping[int, ucb.Node] | None = None) -> None:
        """``number``: the trial being decided (left out of the tree); None for a view.

        ``block``: the block to look at; by default the block of ``number``, or of the next
        trial to be created.
        """
        self.s = sampler
        self.knobs = sampler._knobs
        self.by_name = {k.name: k for k in self.knobs}
        self.anchors = sampler._base
        next_number = len(trials) if number is None else number
        self.block = block or ucb.block_of(next_number, sampler._n_iter_block)
        start = ucb.block_start(self.block, sampler._n_iter_block)
        self.position = next_number - start
        self.nodes = ucb.read_nodes((t for t in trials if t.number != number), sampler._base,
                                    sampler._names, sampler._group_names, cache)
        self.by_number = {n.number: n for n in self.nodes}
        self.members = [n for n in self.nodes
                        if start <= n.number < start + sampler._n_iter_block]
        self.root = ucb.resolve_root(self.block, self.members, self.nodes)
        root_node = self.by_number.get(self.root)
        self.root_params: Mapping[str, Any] = (sampler._base if root_node is None
                                               else root_node.params)
        # The parent id of the root's children. A failed root-run of block 1 is never a parent:
        # its children hang from the base values it tried to run.
        self.root_parent = (ucb.VIRTUAL_ROOT if root_node is not None and root_node.failed
                            else self.root)
        self.tree = ucb.build_tree(self.block, self.root, self.members, self.by_number)
        self.scores = self.tree.scores(sampler._ucb_c)
        self.known = {n.key for n in self.nodes}
        for t in trials:  # waiting (enqueued) trials that name every knob
            fixed = t.system_attrs.get("fixed_params")
            if t.state == TrialState.WAITING and fixed and all(k in fixed for k in sampler._names):
                self.known.add(ucb.params_key(fixed, sampler._names))
        self.order = ucb.completion_order(self.nodes)
        self.memory = mut.direction_memory(self.nodes, self.by_number, self.knobs, self.anchors)
        rng = np.random.default_rng([sampler._seed, next_number])
        self.coins = {k.name: bool(c) for k, c in zip(self.knobs, rng.random(len(self.knobs))
                                                         < 0.5)}
        # A second, separate stream for values, so the coins do not depend on the code path.
        self.value_rng = np.random.default_rng([sampler._seed, next_number, 1])
        self.mutable = [k for k in self.knobs if not ucb.is_seed_knob(k)]
        self.seed_knob = next((k for k in self.knobs if ucb.is_seed_knob(k)), None)

    # -- helpers -----------------------------------------------------------------------------

    def describe_root(self) -> str:
        node = self.by_number.get(self.root)
        if node is None:
            return "the config's base values"
        if node.failed:
            return f"the config's base values; their run, node {node.number}, failed"
        r2 = "running" if node.r2 is None else f"R2 {node.r2:.3f}"
        return f"node {node.number}, {r2}"

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
            def line(strategy: str, score: ucb.Score = score, rank: int = rank) -> str:
                head = (f"UCB {score.ucb:.3f} in block {self.block} (visits {score.visits})")
                if rank == 0:
                    return f"highest {head}"
                return (f"{head}, rank {rank + 1} of {total}: the nodes above it have no "
                        f"untried {strategy} mutation")
            out.append(_Parent(score.node.number, score.node.params, line))
        return out

    def is_new(self, params: Mapping[str, Any]) -> bool:
        return ucb.params_key(params, self.s._names) not in self.known

    def apply(self, parent: Mapping[str, Any],
              changes: Sequence[mut.Change]) -> dict[str, Any] | None:
        """The child's params, or None when they are already finished, running or waiting."""
        params = {name: parent[name] for name in self.s._names}
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
            if new is None:
                continue
            change = (knob.name, old, new)
            params = self.apply(parent, [change])
            if params is not None:
                return params, change
        return None

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

    def group_size(self, node: ucb.Node) -> int:
        return sum(1 for n in self.nodes if n.group == node.group)

    def last(self, k: int) -> list[ucb.Node] | None:
        return self.order[-k:] if len(self.order) >= k else None

    # -- rules -------------------------------------------------------------------------------

    def decide(self, fixed_params: Mapping[str, Any] | None) -> _Decision:
        if fixed_params is not None:
            return self.enqueued(fixed_params)
        rules = (self.spread, self.replicate, self.degeneracy_break, self.boundary_probe,
                 self.duration, self.explore, self.exploit, self.fallback)
        for rule in rules:
            decision = rule()
            if decision is not None:
                return decision
        # Every grid point near the tree is taken and no seed can be changed: run a known
        # params set again rather than stop the study.
        parent = self.parents()[0]
        _logger.warning("UCBMutationSampler: no untried params set left; repeating one.")
        return _Decision(dict(parent.params), parent.number, "exploit", (),
                         parent.describe("exploit") + " (search space exhausted)")

    def enqueued(self, fixed: Mapping[str, Any]) -> _Decision:
        params = {name: self.root_params[name] for name in self.s._names}
        params.update({k: v for k, v in fixed.items() if k in params})
        changes = tuple((name, self.root_params[name], params[name]) for name in self.s._names
                        if ucb.canonical(params[name]) != ucb.canonical(self.root_params[name]))
        rule = (f"enqueued by the user: attached to the root of block {self.block} "
                f"({self.describe_root()})")
        return _Decision(params, self.root_parent, "enqueued", changes, rule)

    def spread(self) -> _Decision | None:
        items: list[str | None] = [None]  # slot 0: the root itself
        items += [name for name in _SPREAD_KNOBS
                  if name in self.by_name and not ucb.is_seed_knob(self.by_name[name])]
        # At most half a block, so that small blocks still leave room for the rules; but the
        # base values are run first however small the blocks are.
        if self.position >= min(len(items), self.s._n_iter_block // 2):
            return self.spread_slot(0, None) if self.root == ucb.VIRTUAL_ROOT else None
        done = {m.spread_item for m in self.members if m.spread_item is not None}
        for slot, name in enumerate(items):
            if slot in done:
                continue
            decision = self.spread_slot(slot, name)
            if decision is not None:
                return decision
        return None

    def spread_slot(self, slot: int, name: str | None) -> _Decision | None:
        root_node = self.by_number.get(self.root)
        if name is None and root_node is None:
            if not self.is_new(self.s._base):
                return None
            rule = f"block {self.block} starts at the config's base values: run them as the root"
            return _Decision(dict(self.s._base), ucb.VIRTUAL_ROOT, "root", (), rule, slot)
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
            return _Decision(params, self.root, "replicate", (change,), rule, slot)
        found = self.one_step(self.root_params, self.by_name[name])
        if found is None:
            return None
        params, change = found
        rule = (f"initial spread of block {self.block}: {name} from the root "
                f"({self.describe_root()})")
        return _Decision(params, self.root_parent, "initial-spread", (change,), rule, slot)

    def replicate(self) -> _Decision | None:
        best = ucb.incumbent(self.nodes)
        if best is None or best.members > 1 or best.mean_r2 < _PARTIAL_R2[0]:
            return None
        found = self.replicate_of(best.node.number, best.node.params)
        if found is None:
            return None
        params, change = found
        rule = (f"new incumbent node {best.node.number} (R2 {best.mean_r2:.3f}, one run) is "
                f"re-run with a new seed before it is trusted")
        return _Decision(params, best.node.number, "replicate", (change,), rule)

    def degeneracy_break(self) -> _Decision | None:
        recent = self.last(_STREAK_DEGENERACY)
        if recent is None or not all(n.gap is not None
                                     and diagnose(n.test_pearson, n.r2) in _DEGENERATE
                                     for n in recent):
            return None
        for parent in self.parents():
            changes = []
            for name, d in _DEGENERACY_MOVES:
                knob = self.by_name.get(name)
                if knob is None:
                    continue
                new = mut.neighbour(knob, parent.params[name], d, self.anchors[name])
                if new is not None:
                    changes.append((name, parent.params[name], new))
            params = self.apply(parent.params, changes) if changes else None
            if params is not None:
                return _Decision(params, parent.number, "degeneracy-break", tuple(changes),
                                 parent.describe("degeneracy-break"))
        return None

    def boundary_probe(self) -> _Decision | None:
        recent = self.last(_STREAK_BOUNDARY)
        if recent is None or not all(not n.failed and n.r2 is not None and n.r2 >= _CONVERGED_R2
                                     for n in recent):
            return None
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
                    if ucb.canonical(end) == ucb.canonical(old):
                        continue
                    change = (knob.name, old, end)
                    params = self.apply(parent.params, [change])
                    if params is not None:
                        return _Decision(params, parent.number, "boundary-probe", (change,),
                                         parent.describe("boundary-probe"))
        return None

    def duration(self) -> _Decision | None:
        knob = self.by_name.get(_DURATION_KNOB)
        if knob is None or not self.scores:
            return None
        top = self.scores[0].node
        if not mut.is_rising(top.intermediate, _RISING_MIN_GAIN):
            return None
        old = top.params[knob.name]
        new = mut.neighbour(knob, old, mut.UP, self.anchors[knob.name])
        if new is None:
            return None
        change = (knob.name, old, new)
        params = self.apply(top.params, [change])
        if params is None:
            return None
        rule = (self.parents()[0].describe("duration")
                + "; its R2 was still rising over the last quarter of training")
        return _Decision(params, top.number, "duration", (change,), rule)

    def explore(self) -> _Decision | None:
        recent = self.last(_STREAK_EXPLORE)
        if recent is None:
            return None
        low, high = _PARTIAL_R2
        partial = all(not n.failed and n.r2 is not None and low <= n.r2 <= high for n in recent)
        failed = all(n.failed or (n.r2 is not None and n.r2 < low) for n in recent)
        if not (partial or failed):
            return None
        # Least recently moved first, over the whole study (never moved: -1, in exploration
        # order); the knobs a running trial moves go last. Counting only the streak's own
        # trials would cycle through the first five knobs of the order for ever.
        running = {name for n in self.nodes if not n.finished for name, _, _ in n.changes}
        last_moved = {k.name: -1 for k in self.mutable}
        for node in self.nodes:
            for name, _, _ in node.changes:
                if name in last_moved:
                    last_moved[name] = max(last_moved[name], node.number)
        index = {k.name: i for i, k in enumerate(self.mutable)}
        order = sorted(self.mutable, key=lambda k: (k.name in running, last_moved[k.name],
                                                    index[k.name]))
        return self._first_step(order, "explore")

    def exploit(self) -> _Decision | None:
        # Knobs that have not paid off go last: the memory of the bench comparison showed
        # lr_k stepped in 36 of 72 trials, 13 of them down with a mean ΔR² of -0.10.
        exhausted = {k.name for k in self.mutable
                     if self.memory.exhausted(k.name, _EXHAUSTED_TRIES)}
        order = sorted(self.mutable, key=lambda k: k.name in exhausted)
        return self._first_step(order, "exploit")

    def follow_through(self, parent: _Parent) -> tuple[Knob, int] | None:
        """The knob (and direction) of the one-step move that made ``parent`` (not failed)
        better than its own parent, if that is how ``parent`` came about."""
        node = self.by_number.get(parent.number)
        if node is None or node.r2 is None or node.r2 < _PARTIAL_R2[0]:
            return None
        # A replicate (same group: only the training seed changed) stands for the run it
        # repeats: the parent chosen after a replicate is often the replicate itself.
        while node.parent is not None:
            original = self.by_number.get(node.parent)
            if original is None or original.group != node.group:
                break
            node = original
        if node.r2 is None or len(node.changes) != 1:
            return None
        grand = self.by_number.get(node.parent) if node.parent is not None else None
        if grand is None or grand.r2 is None or node.r2 - grand.r2 < _FOLLOW_MIN_GAIN:
            return None
        name, old, new = node.changes[0]
        knob = self.by_name.get(name)
        if knob is None or ucb.is_seed_knob(knob):
            return None
        return knob, mut.direction_of(knob, old, new, self.anchors[name])

    def _first_step(self, knobs: Sequence[Knob], strategy: str) -> _Decision | None:
        """One grid step of the first knob, in ``knobs`` order, that gives an untried child of
        the best-ranked parent that has one; a knob that just paid off on that parent first,
        the same way."""
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
                        rule += f"; {knob.name} raised R2 on the step before: once more"
                    return _Decision(params, parent.number, strategy, (change,), rule)
        return None

    def fallback(self) -> _Decision | None:
        # Every one-step child of every candidate is taken: jump one knob to a random grid value.
        if not self.mutable:
            return None
        for parent in self.parents():
            for _ in range(64):
                knob = self.mutable[int(self.value_rng.integers(len(self.mutable)))]
                grid = knob.grid(self.anchors[knob.name])
                new = grid[int(self.value_rng.integers(len(grid)))]
                old = parent.params[knob.name]
                if ucb.canonical(new) == ucb.canonical(old):
                    continue
                change = (knob.name, old, new)
                params = self.apply(parent.params, [change])
                if params is not None:
                    rule = (parent.describe("explore")
                            + "; every one-step child is taken: a random grid value")
                    return _Decision(params, parent.number, "explore", (change,), rule)
        parent = self.parents()[0]
        found = self.replicate_of(parent.number, parent.params)
        if found is not None:
            params, change = found
            return _Decision(params, parent.number, "replicate", (change,),
                             parent.describe("replicate") + "; every grid child is taken")
        return None


# ---------------------------------------------------------------------------------------------
# Public helpers


def suggest_params(trial: BaseTrial, search: SearchConfig) -> dict[str, Any]:
    """Suggest every knob of ``search`` with its Optuna distribution; the params by name.

    With a :class:`UCBMutationSampler` the values are the sampler's proposal; with any other
    sampler, whatever that sampler draws from the same distributions.
    """
    params: dict[str, Any] = {}
    for knob in search.knobs:
        dist = knob.distribution()
        if isinstance(dist, FloatDistribution):
            params[knob.name] = trial.suggest_float(knob.name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, IntDistribution):
            params[knob.name] = trial.suggest_int(knob.name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, CategoricalDistribution):
            params[knob.name] = trial.suggest_categorical(knob.name, list(dist.choices))
        else:  # pragma: no cover - Knob.distribution returns one of the three
            raise TypeError(f"knob {knob.name}: unsupported distribution {dist!r}")
    return params


def ucb_scores(study: Study, *, block: int | None = None) -> list[dict[str, Any]]:
    """The PUCT table of a block: one row per candidate parent, best UCB first.

    By default the block of the next trial, i.e. the table its parent is chosen from (at a
    block boundary, only the new root). Rows have the keys ``node``, ``parent`` (the parent in
    this block's tree; None for the root), ``ucb``, ``visits`` (V = 1 + descendants in the
    block), ``r2``, ``test_pearson`` and ``mutation``. Running and failed nodes count in N and
    V but have no row: they cannot be parents. The study's sampler must be a
    :class:`UCBMutationSampler`.
    """
    sampler = study.sampler
    if not isinstance(sampler, UCBMutationSampler):
        raise ValueError(f"ucb_scores: the study's sampler must be a UCBMutationSampler, got "
                         f"{type(sampler).__name__}")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise ValueError(f"block: expected None or an integer >= 1, got {block!r}")
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    planner = _Planner(sampler, trials, None, block=block, cache=sampler._node_cache(study))
    return [
        {
            "node": s.node.number,
            "parent": s.parent,
            "ucb": s.ucb,
            "visits": s.visits,
            "r2": s.node.r2,
            "test_pearson": s.node.test_pearson,
            "mutation": s.node.mutation,
        }
        for s in planner.scores
    ]


def next_parent(study: Study) -> int:
    """The parent the sampler will give the next trial (``-1``: the config's base values).

    The sampler's decision is a pure function of its settings, its seed, the trial number and
    the trials in the storage, so it is computed here exactly as ``before_trial`` will compute
    it (nothing is written): for the first waiting (enqueued) trial if there is one, else for
    the trial to be created next. Another worker that starts a trial first changes it, as it
    changes the tree. The study's sampler must be a :class:`UCBMutationSampler`.
    """
    sampler = study.sampler
    if not isinstance(sampler, UCBMutationSampler):
        raise ValueError(f"next_parent: the study's sampler must be a UCBMutationSampler, got "
                         f"{type(sampler).__name__}")
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    first = min(waiting, key=lambda t: t.number) if waiting else None
    number = first.number if first is not None else len(trials)
    fixed = first.system_attrs.get("fixed_params") if first is not None else None
    planner = _Planner(sampler, trials, number, cache=sampler._node_cache(study))
    return planner.decide(fixed).parent


def _write_attrs(storage: BaseStorage, trial_id: int, system: Mapping[str, Any],
                 user: Mapping[str, Any]) -> None:
    """Store a trial's record: system attrs first (the workers deciding next wait for them).

    On an RDB storage all of them go in one transaction: seven separate commits would cost
    more than the decision itself on SQLite (a few ms each). This reaches into Optuna's RDB
    internals, so any surprise there falls back to the public one-attr-per-call API.
    """
    backend = storage._backend if isinstance(storage, _CachedStorage) else storage
    if isinstance(backend, RDBStorage):
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            setter = backend._set_trial_attr_without_commit
        except (ImportError, AttributeError):  # pragma: no cover - another Optuna 5.x layout
            pass
        else:
            with _create_scoped_session(backend.scoped_session, True) as session:
                for key, value in system.items():
                    setter(session, models.TrialSystemAttributeModel, trial_id, key, value)
                for key, value in user.items():
                    setter(session, models.TrialUserAttributeModel, trial_id, key, value)
            return
    for key, value in system.items():
        storage.set_trial_system_attr(trial_id, key, value)
    for key, value in user.items():
        storage.set_trial_user_attr(trial_id, key, value)


# ---------------------------------------------------------------------------------------------
# Validation


def _check_knobs(knobs: Any) -> tuple[Knob, ...]:
    if isinstance(knobs, SearchConfig):
        knobs = knobs.knobs
    if (isinstance(knobs, (str, bytes, Mapping)) or not isinstance(knobs, Sequence)
            or not knobs or not all(isinstance(k, Knob) for k in knobs)):
        raise ValueError(f"knobs: expected a non-empty sequence of Knob (Config.search.knobs), "
                         f"got {knobs!r}")
    names = [k.name for k in knobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"knobs: each knob name once, got {', '.join(dupes)} more than once")
    return tuple(knobs)


def _check_base_params(base_params: Any, knobs: Sequence[Knob]) -> dict[str, Any]:
    if not isinstance(base_params, Mapping):
        raise ValueError(f"base_params: expected a mapping knob name -> value "
                         f"(Config.base_params()), got {base_params!r}")
    names = [k.name for k in knobs]
    missing = [n for n in names if n not in base_params]
    unknown = sorted(str(n) for n in base_params if n not in names)
    if missing:
        raise ValueError(f"base_params: missing a value for {', '.join(missing)} "
                         f"(one per knob: {', '.join(names)})")
    if unknown:
        raise ValueError(f"base_params: {', '.join(unknown)} is not a knob "
                         f"(allowed: {', '.join(names)})")
    for k in knobs:
        value = base_params[k.name]
        if not k.contains(value):
            allowed = (list(k.choices or ()) if k.scale == "categorical"
                       else f"[{k.low}, {k.high}]")
            raise ValueError(f"base_params: {k.name} = {value!r} is outside the knob's range "
                             f"{allowed}")
    return {k.name: base_params[k.name] for k in knobs}
