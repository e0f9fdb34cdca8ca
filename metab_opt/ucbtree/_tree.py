"""The exploration tree as it stands in the storage: nodes, blocks, incumbent and PUCT scores.

Everything here is a pure function of the trials read from the storage, so that every worker
(thread or process) that reads the same storage computes the same tree. Values keep the
objective's units; every comparison goes through a node's ``score`` (``sign * value``, sign +1
for a maximized study and -1 for a minimized one, less the total violation of a trial that
misses a constraint), so "higher is better" holds throughout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ._record import (
    FINISHED,
    RECORD_KEY,
    VIRTUAL_ROOT,
    constraint_violation,
    intermediate_curve,
    is_failed,
    trial_value,
)

__all__ = [
    "Group",
    "Incumbent",
    "Node",
    "Score",
    "Tree",
    "block_of",
    "block_start",
    "build_tree",
    "canonical",
    "completion_order",
    "incumbent",
    "params_key",
    "rank_groups",
    "read_node",
    "read_nodes",
    "resolve_root",
]


def canonical(value: Any) -> Any:
    """A hashable form of a param value; floats rounded so that JSON round trips compare equal."""
    if type(value) is float:  # noqa: E721 - bool and int pass through unchanged
        return int(value) if value.is_integer() else float(f"{value:.12g}")
    return value


def params_key(params: Mapping[str, Any], names: Sequence[str]) -> tuple[Any, ...]:
    return tuple(canonical(params.get(name)) for name in names)


@dataclass(frozen=True)
class Node:
    """One trial as the tree sees it."""

    number: int
    state: TrialState
    params: Mapping[str, Any]
    # Finished: what the trial counts as (trial_value: the last report of a pruned trial, the
    # sampler's failed value for a failed one, which may be None). Running: None.
    value: float | None
    failed: bool
    intermediate: tuple[tuple[int, float], ...]
    completed: datetime | None
    record: Mapping[str, Any] | None
    key: tuple[Any, ...]  # params_key over every knob: identical params sets share it
    group: tuple[Any, ...]  # params_key over every knob but the seed: the replicate group
    # sign * value - violation: higher is better whatever the study's direction. ``violation``
    # is the sum of the trial's positive constraint values (0 without constraints): a trial
    # that misses a constraint ranks as if its value were that much worse, everywhere the
    # rules compare (PUCT, the incumbent, the direction memory, the move model).
    score: float | None
    # Every constraint of the sampler's constraints_func satisfied (True when none were given):
    # an infeasible node is never converged, whatever its value.
    feasible: bool
    # The trial itself, for callers' own readings (a problem's diagnosis, its user attrs).
    trial: FrozenTrial = field(compare=False, repr=False)

    @property
    def r2(self) -> float | None:
        """metab_opt's name for :attr:`value` (its objective is an R²); its logbook reads it."""
        return self.value

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def can_be_parent(self) -> bool:
        return self.finished and not self.failed

    @property
    def parent(self) -> int | None:
        return None if self.record is None else int(self.record["parent"])

    @property
    def strategy(self) -> str | None:
        return None if self.record is None else str(self.record["strategy"])

    @property
    def changes(self) -> tuple[tuple[str, Any, Any], ...]:
        if self.record is None:
            return ()
        return tuple((str(k), old, new) for k, old, new in self.record.get("changes", ()))

    @property
    def mutation(self) -> str:
        return "unknown" if self.record is None else str(self.record["mutation"])

    @property
    def spread_item(self) -> int | None:
        item = None if self.record is None else self.record.get("spread")
        return None if item is None else int(item)

    @property
    def block_root(self) -> int | None:
        root = None if self.record is None else self.record.get("root")
        return None if root is None else int(root)


def read_node(trial: FrozenTrial, base_params: Mapping[str, Any], names: Sequence[str],
              group_names: Sequence[str], *, sign: float = 1.0,
              failed_value: float | None = None) -> Node | None:
    """The node of a trial, or None for a trial that is not (yet) part of the tree.

    A waiting trial has not started; a running trial without a record is being decided right
    now (or was started by another sampler): neither is a node yet.
    """
    record = trial.system_attrs.get(RECORD_KEY)
    if trial.state == TrialState.WAITING:
        return None
    if trial.state == TrialState.RUNNING and record is None:
        return None
    params = dict(base_params)
    if record is not None:
        params.update(record["params"])
    # The values the objective actually received win over the proposal.
    params.update({k: v for k, v in trial.params.items() if k in params})
    value = trial_value(trial, failed_value=failed_value)
    violation = constraint_violation(trial)
    return Node(
        number=trial.number,
        state=trial.state,
        params=params,
        value=value,
        failed=is_failed(trial),
        intermediate=intermediate_curve(trial),
        completed=trial.datetime_complete,
        record=record,
        key=params_key(params, names),
        group=params_key(params, group_names),
        score=None if value is None else sign * value - violation,
        feasible=violation == 0.0,
        trial=trial,
    )


def read_nodes(trials: Iterable[FrozenTrial], base_params: Mapping[str, Any],
               names: Sequence[str], group_names: Sequence[str],
               cache: MutableMapping[int, Node] | None = None, *, sign: float = 1.0,
               failed_value: float | None = None) -> list[Node]:
    """The nodes of ``trials``, by trial number.

    ``cache`` (trial number -> node, for one study and one direction) keeps the nodes of
    finished trials, which never change: a decision then parses only the trials that finished
    since the last one.
    """
    nodes = []
    for t in trials:
        node = cache.get(t.number) if cache is not None else None
        if node is None:
            node = read_node(t, base_params, names, group_names, sign=sign,
                             failed_value=failed_value)
            if node is None:
                continue
            if cache is not None and node.finished:
                cache[t.number] = node
        nodes.append(node)
    nodes.sort(key=lambda n: n.number)
    return nodes


def completion_order(nodes: Iterable[Node]) -> list[Node]:
    """Finished nodes in the order they finished (ties and unknown times by trial number)."""
    finished = [n for n in nodes if n.finished]
    return sorted(finished, key=lambda n: (n.completed or datetime.max, n.number))


def block_of(number: int, n_iter_block: int) -> int:
    """Blocks count from 1 and hold ``n_iter_block`` consecutive trial numbers each."""
    return number // n_iter_block + 1


def block_start(block: int, n_iter_block: int) -> int:
    return (block - 1) * n_iter_block


# ---------------------------------------------------------------------------------------------
# Incumbent


@dataclass(frozen=True)
class Group:
    """A replicate group: the finished trials with the same params except for the seed knob.
    Its value is the mean value of its finished runs that have one (a failed run counts the
    sampler's failed value, a pruned run its last report: :func:`read_node`)."""

    runs: tuple[Node, ...]  # the finished members, by trial number
    mean: float
    score: float  # the mean of the runs' scores: sign * mean

    @property
    def mean_r2(self) -> float:
        """metab_opt's name for :attr:`mean` (its objective is an R²); its logbook reads it."""
        return self.mean

    @property
    def node(self) -> Node:
        """The group's first trial that did not fail: the one children hang from."""
        return next(n for n in self.runs if n.can_be_parent)

    @property
    def spread(self) -> float:
        """The sample standard deviation of the runs' values (0 for a single run)."""
        values = [n.value for n in self.runs if n.value is not None]
        if len(values) < 2:
            return 0.0
        return math.sqrt(sum((v - self.mean) ** 2 for v in values) / (len(values) - 1))


def rank_groups(nodes: Iterable[Node]) -> list[Group]:
    """The replicate groups with at least one run that did not fail, best mean first (ties to
    the group whose first run is older). The first is the study's incumbent."""
    members: dict[tuple[Any, ...], list[Node]] = {}
    for node in nodes:
        if node.finished:
            members.setdefault(node.group, []).append(node)
    groups = []
    for runs in members.values():
        if not any(m.can_be_parent for m in runs):
            continue
        runs.sort(key=lambda m: m.number)
        valued = [m for m in runs if m.value is not None and m.score is not None]
        mean = sum(m.value for m in valued if m.value is not None) / len(valued)
        score = sum(m.score for m in valued if m.score is not None) / len(valued)
        groups.append(Group(runs=tuple(runs), mean=mean, score=score))
    groups.sort(key=lambda g: (-g.score, g.node.number))
    return groups


@dataclass(frozen=True)
class Incumbent:
    """The best replicate group, as the sampler sees it (running members included)."""

    node: Node  # the group's first trial that did not fail: the one children hang from
    mean: float
    score: float
    runs: int  # finished trials of the group
    members: int  # finished + running trials of the group

    @property
    def mean_r2(self) -> float:
        """metab_opt's name for :attr:`mean` (its objective is an R²)."""
        return self.mean


def incumbent(nodes: Iterable[Node]) -> Incumbent | None:
    """The best finished trial, ranked by the mean value of its replicates; ties to the older."""
    nodes = list(nodes)
    ranked = rank_groups(nodes)
    if not ranked:
        return None
    best = ranked[0]
    members = sum(1 for n in nodes if n.group == best.node.group)
    return Incumbent(node=best.node, mean=best.mean, score=best.score, runs=len(best.runs),
                     members=members)


# ---------------------------------------------------------------------------------------------
# The block's tree and its PUCT scores


@dataclass(frozen=True)
class Score:
    """One candidate parent with its PUCT score."""

    node: Node
    parent: int | None  # the parent in this block's tree; None for the root
    ucb: float
    visits: int


@dataclass(frozen=True)
class Tree:
    """The current block's tree: its root and the block's nodes hanging from it."""

    block: int
    root: int  # a trial number, or VIRTUAL_ROOT for the base values
    root_node: Node | None
    members: tuple[Node, ...]  # the block's nodes, running ones included (virtual loss)
    tree_parent: Mapping[int, int | None]
    visits: Mapping[int, int]

    @property
    def n(self) -> int:
        """N of the PUCT formula: the nodes in the block, running ones included."""
        return len(self.members)

    def scores(self, c: float) -> list[Score]:
        """Candidate parents by UCB, best first; ties to the lower trial number.

        ``UCB(u) = score(u) + c * sqrt(N) / (1 + V(u))`` with ``V(u) = 1 + descendants of u in
        the block``. Failed and running nodes are counted in N and V but are never candidates.
        """
        candidates = [m for m in self.members if m.can_be_parent]
        if (self.root_node is not None and self.root_node.can_be_parent
                and all(m.number != self.root for m in self.members)):
            candidates.append(self.root_node)
        sqrt_n = math.sqrt(self.n)
        out = []
        for node in candidates:
            visits = self.visits.get(node.number, 1)
            assert node.score is not None
            ucb = node.score + c * sqrt_n / (1 + visits)
            out.append(Score(node=node, parent=self.tree_parent.get(node.number), ucb=ucb,
                             visits=visits))
        out.sort(key=lambda s: (-s.ucb, s.node.number))
        return out


def resolve_root(block: int, members: Sequence[Node], nodes: Sequence[Node]) -> int:
    """The root of a block.

    Block 1 grows from the base values: its root is the trial that ran them (strategy
    ``root``) once there is one. A later block restarts from the incumbent, fixed by the
    block's first decision and recorded on every trial of the block, so that the workers
    deciding later in the block all agree on it.
    """
    if block == 1:
        # A root run that failed (its worker was killed) gives way to its retry, which
        # carries the same decision: the root is the first root run that did not fail.
        runs = [m for m in members if m.strategy == "root"]
        alive = [m.number for m in runs if not m.failed]
        return min(alive or [m.number for m in runs]) if runs else VIRTUAL_ROOT
    for member in members:  # sorted by number: the block's first recorded decision wins
        if member.block_root is not None:
            return member.block_root
    best = incumbent(nodes)
    return VIRTUAL_ROOT if best is None else best.node.number


def build_tree(block: int, root: int, members: Sequence[Node],
               by_number: Mapping[int, Node]) -> Tree:
    ids = {m.number for m in members}
    tree_parent: dict[int, int | None] = {}
    for m in members:
        p = m.parent
        if m.number == root:
            tree_parent[m.number] = None
        elif p is not None and p in ids and p != m.number:
            tree_parent[m.number] = p
        else:
            # A parent outside the block (or no record): the node hangs from the block's root.
            tree_parent[m.number] = None if root == VIRTUAL_ROOT else root
    if root != VIRTUAL_ROOT and root not in ids:
        tree_parent[root] = None
    visits: dict[int, int] = {m.number: 1 for m in members}
    visits.setdefault(root, 1)
    for m in members:
        seen = {m.number}
        up = tree_parent.get(m.number)
        # Parents are decided before their children, so the walk ends; the guard is for
        # hand-edited storages only.
        while up is not None and up not in seen:
            seen.add(up)
            visits[up] = visits.get(up, 1) + 1
            up = tree_parent.get(up)
    if root == VIRTUAL_ROOT:
        visits.pop(VIRTUAL_ROOT, None)
    return Tree(block=block, root=root, root_node=by_number.get(root), members=tuple(members),
                tree_parent=tree_parent, visits=visits)
