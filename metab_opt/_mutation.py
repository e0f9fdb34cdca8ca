"""Mutation operators: one step on a knob's lattice, a jump to a range end, and the direction
memory (which way has helped a knob so far).

A knob's lattice is :meth:`metab_opt.config.Knob.grid`, anchored at the config's base value,
so every value a mutation produces is clipped to the range and snapped to the grid by
construction: a step moves to the neighbouring grid value, never past an end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metab_opt._ucb import Node
from metab_opt.config import Knob

UP = 1
DOWN = -1

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

    gains: Mapping[str, Mapping[int, tuple[float, int]]]  # knob -> direction -> (sum ΔR², count)
    last_used: Mapping[str, int]  # knob -> direction of its latest mutation (running included)

    def preferred(self, name: str, coin: bool) -> tuple[int, int]:
        """The two directions, the one to try first leading.

        The direction with the higher mean ΔR²; with data on one side only, that side if it
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


def direction_memory(nodes: Iterable[Node], by_number: Mapping[int, Node],
                     knobs: Sequence[Knob], anchors: Mapping[str, Any]) -> DirectionMemory:
    by_name = {k.name: k for k in knobs}
    gains: dict[str, dict[int, tuple[float, int]]] = {}
    last_used: dict[str, tuple[int, int]] = {}
    for node in nodes:
        changes = node.changes
        for name, old, new in changes:
            knob = by_name.get(name)
            if knob is None:
                continue
            d = direction_of(knob, old, new, anchors[name])
            if name not in last_used or node.number > last_used[name][0]:
                last_used[name] = (node.number, d)
        if len(changes) != 1 or not node.finished or node.parent is None:
            continue
        parent = by_number.get(node.parent)
        if parent is None or parent.r2 is None or node.r2 is None:
            continue
        name, old, new = changes[0]
        knob = by_name.get(name)
        if knob is None:
            continue
        d = direction_of(knob, old, new, anchors[name])
        total, count = gains.setdefault(name, {}).get(d, (0.0, 0))
        gains[name][d] = (total + node.r2 - parent.r2, count + 1)
    return DirectionMemory(gains=gains, last_used={k: d for k, (_, d) in last_used.items()})


def is_rising(intermediate: Sequence[tuple[int, float]], min_gain: float) -> bool:
    """Whether a learning curve was still rising over its last quarter.

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
