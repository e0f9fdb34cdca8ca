"""Mutation operators: one step on a knob's lattice, a jump to a range end, and the direction
memory (which way has helped a knob so far).

A knob's lattice is :meth:`Knob.grid`, anchored at the base value, so every value a mutation
produces is clipped to the range and snapped to the grid by construction: a step moves to the
neighbouring grid value, never past an end. Gains are compared as scores (``sign * value``), so
"helped" means "improved the objective" in either direction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._knob import DOWN, UP, Knob
from ._tree import Node

__all__ = ["DOWN", "UP", "Change", "DirectionMemory", "Move", "direction_memory", "direction_of",
           "format_changes", "format_value", "is_rising", "moves", "neighbour", "range_end"]

# One change of a proposal: (knob name, old value, new value).
Change = tuple[str, Any, Any]


def _above(g: Any, value: Any) -> bool:
    # Relative tolerance: grid values carry 6 significant digits, params may carry more.
    return g > value + 1e-9 * abs(value)


def _below(g: Any, value: Any) -> bool:
    return g < value - 1e-9 * abs(value)


def neighbour(knob: Knob, value: Any, direction: int, anchor: Any) -> Any | None:
    """The grid value one step from ``value`` in ``direction``; None at the end of the range.

    A value that is off the grid (an enqueued trial's) steps to the nearest grid value on that
    side, which snaps it back onto the lattice.
    """
    grid = knob.grid(anchor)
    if knob.scale == "categorical":
        # Off the list, the first step lands on an end of it.
        i = grid.index(value) if value in grid else (-1 if direction == UP else len(grid))
        j = i + direction
        return grid[j] if 0 <= j < len(grid) else None
    if direction == UP:
        return next((g for g in grid if _above(g, value)), None)
    return next((g for g in reversed(grid) if _below(g, value)), None)


def range_end(knob: Knob, direction: int, anchor: Any) -> Any:
    grid = knob.grid(anchor)
    return grid[-1] if direction == UP else grid[0]


def direction_of(knob: Knob, old: Any, new: Any, anchor: Any) -> int:
    if knob.scale == "categorical":
        grid = knob.grid(anchor)
        i = grid.index(old) if old in grid else -1
        j = grid.index(new) if new in grid else -1
        return UP if j > i else DOWN
    return UP if new > old else DOWN


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_changes(changes: Sequence[Change]) -> str:
    """``lr_k: 0.005 -> 0.01; lr_sub: 0.0005 -> 0.00025``, or ``none``."""
    if not changes:
        return "none"
    return "; ".join(f"{k}: {format_value(old)} -> {format_value(new)}" for k, old, new in changes)


@dataclass(frozen=True)
class DirectionMemory:
    """What past parent -> child edges say about each knob's direction.

    Only single-knob mutations are counted: a multi-knob change (degeneracy-break) cannot be
    credited to one knob.
    """

    gains: Mapping[str, Mapping[int, tuple[float, int]]]  # knob -> direction -> (sum Δscore, n)
    last_used: Mapping[str, int]  # knob -> direction of its latest mutation (running included)

    def preferred(self, name: str, coin: bool) -> tuple[int, int]:
        """The two directions, the one to try first leading.

        The direction with the higher mean gain; with data on one side only, that side if it
        helped and the other if it did not; without data, the opposite of the knob's last move
        (alternate), and a coin from the decision's RNG for a knob never moved.
        """
        stats = self.gains.get(name, {})
        up, down = stats.get(UP), stats.get(DOWN)
        first: int
        if up and down:
            mean_up, mean_down = up[0] / up[1], down[0] / down[1]
            first = UP if mean_up >= mean_down else DOWN
        elif up:
            first = UP if up[0] / up[1] > 0 else DOWN
        elif down:
            first = DOWN if down[0] / down[1] > 0 else UP
        elif name in self.last_used:
            first = -self.last_used[name]
        else:
            first = UP if coin else DOWN
        return first, -first

    def exhausted(self, name: str, min_tries: int) -> bool:
        """At least ``min_tries`` single-knob moves of ``name``, and no direction helped on
        average."""
        stats = self.gains.get(name, {})
        tries = sum(count for _, count in stats.values())
        return tries >= min_tries and all(total <= 0 for total, _ in stats.values())


@dataclass(frozen=True)
class Move:
    """A parent -> child edge whose outcome is known: the child finished, and both it and the
    parent its record names have a score (a failed run has one only when the sampler counts
    failures: its ``failed_value``)."""

    node: Node
    parent: Node

    @property
    def changes(self) -> tuple[Change, ...]:
        """The changes the child's record made to the parent's params."""
        return self.node.changes

    @property
    def gain(self) -> float:
        """The child's score minus the parent's: positive when the change helped."""
        assert self.node.score is not None and self.parent.score is not None
        return self.node.score - self.parent.score


def moves(nodes: Iterable[Node], by_number: Mapping[int, Node]) -> list[Move]:
    """The known outcomes of the tree's edges, in the order of ``nodes``: what the direction
    memory learns from (its one-change moves), and what a view of the tree reports."""
    out = []
    for node in nodes:
        if not node.finished or node.parent is None or node.score is None:
            continue
        parent = by_number.get(node.parent)
        if parent is None or parent.score is None:
            continue
        out.append(Move(node=node, parent=parent))
    return out


def direction_memory(nodes: Iterable[Node], by_number: Mapping[int, Node],
                     knobs: Sequence[Knob], anchors: Mapping[str, Any]) -> DirectionMemory:
    nodes = list(nodes)
    by_name = {k.name: k for k in knobs}
    last_used: dict[str, tuple[int, int]] = {}
    for node in nodes:
        if node.strategy == "survey":
            continue  # a jump over the whole space, not a direction any knob was stepped in
        for name, old, new in node.changes:
            knob = by_name.get(name)
            if knob is None:
                continue
            d = direction_of(knob, old, new, anchors[name])
            if name not in last_used or node.number > last_used[name][0]:
                last_used[name] = (node.number, d)
    gains: dict[str, dict[int, tuple[float, int]]] = {}
    for move in moves(nodes, by_number):
        if len(move.changes) != 1:
            continue
        name, old, new = move.changes[0]
        knob = by_name.get(name)
        if knob is None:
            continue
        d = direction_of(knob, old, new, anchors[name])
        total, count = gains.setdefault(name, {}).get(d, (0.0, 0))
        # Summed as (total + child) - parent, as it always was: the float sums, and with them
        # the decisions, stay bit for bit those of the golden studies.
        assert move.node.score is not None and move.parent.score is not None
        gains[name][d] = (total + move.node.score - move.parent.score, count + 1)
    return DirectionMemory(gains=gains, last_used={k: d for k, (_, d) in last_used.items()})


def is_rising(intermediate: Sequence[tuple[int, float]], min_gain: float) -> bool:
    """Whether a learning curve (of scores: higher is better) was still rising over its last
    quarter.

    The last quarter is the last ``ceil(n / 4)`` reports (at least two); rising means both a
    positive least-squares slope over them and a net gain above ``min_gain``.
    """
    n = len(intermediate)
    if n < 2:
        return False
    k = max(2, -(-n // 4))
    tail = intermediate[-k:]
    xs = [float(s) for s, _ in tail]
    ys = [v for _, v in tail]
    mx, my = sum(xs) / k, sum(ys) / k
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return False
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope > 0 and ys[-1] - ys[0] > min_gain
