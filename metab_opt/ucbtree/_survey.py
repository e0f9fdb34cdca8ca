"""The survey: a space-filling first look over every knob's lattice, before the tree narrows.

Why it exists: one-knob steps from a root where several knobs that only pay off *together* are
all off need one trial per knob before the walk even sees the good region (on metab_opt's
rank50 proxy five or more, and the walk then followed training-seed luck), while random draws
land in it now and then. A handful of draws spread over the whole space give the walk that
chance, and the rules that follow (replicate, then the walk) confirm and refine the best.

The design is a Latin hypercube over lattice *indices*: for each knob the draws are spread
evenly over its lattice (:meth:`Knob.grid`, anchored at the base value, so every drawn value is
one the mutations step on), hence uniform in log space for a log knob, uniform over the choices
for a categorical one, and "off" (the 0 of a log knob with ``min_positive``) one lattice point
among the others. When a lattice has fewer points than the survey has draws, every point is
drawn ``n // L`` or ``n // L + 1`` times (each value of a yes/no knob in half the draws); when
it has more, each draw takes one index from its own run of consecutive lattice points (``n``
runs cover the lattice), so the draws all differ and come within a point of both ends. Of
many such designs the one whose closest pair of points (the root's included) is farthest apart
is kept (maximin), so the draws also spread jointly, not only knob by knob.

Everything is a pure function of the knobs, the base values, the root's params, the survey size
and the sampler's seed: every worker computes the same design, and a seeded study is
reproducible. Trial ``i`` of the survey takes row ``i`` of it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._knob import Knob

__all__ = ["design", "random_draw", "surveyed"]

# Designs tried for the maximin choice: enough that the best is well spread, cheap enough to
# compute in a few milliseconds (it is cached anyway).
_CANDIDATES = 64
# Keys the design's random stream apart from the per-trial streams [seed, number(, k)].
_STREAM = 0x53555256  # "SURV"


def surveyed(knobs: Sequence[Knob], fixed: Sequence[str]) -> tuple[Knob, ...]:
    """The knobs the survey draws: all but ``fixed`` (the seed, the duration knob and the
    declared ``survey_fixed`` ones) and those with a single value."""
    skip = set(fixed)

    def varies(knob: Knob) -> bool:
        return knob.scale != "categorical" or len(knob.choices or ()) > 1

    return tuple(k for k in knobs if k.name not in skip and varies(k))


def _column(size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` lattice indices in ``[0, size)`` spread evenly, in random order."""
    if size >= n:
        # n runs of consecutive indices (size // n long, size % n of them one longer, in random
        # places), one index drawn in each: n different values, spread over the whole lattice.
        lengths = np.full(n, size // n)
        lengths[rng.permutation(n)[: size % n]] += 1
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        idx = starts + np.floor(rng.random(n) * lengths).astype(int)
    else:
        # Every index n // size times, and n % size distinct ones once more.
        idx = np.concatenate([np.repeat(np.arange(size), n // size),
                              rng.choice(size, n % size, replace=False)]).astype(int)
    return rng.permutation(idx)


def _closest_pair(points: np.ndarray) -> float:
    diff = points[:, None, :] - points[None, :, :]
    dist = np.sqrt((diff**2).sum(axis=-1))
    dist[np.diag_indices(len(points))] = np.inf
    return float(dist.min())


@functools.lru_cache(maxsize=32)
def _design(knobs: tuple[Knob, ...], anchors: tuple[Any, ...], root: tuple[Any, ...], n: int,
            seed: int) -> tuple[tuple[Any, ...], ...]:
    grids = [k.grid(a) for k, a in zip(knobs, anchors, strict=True)]
    sizes = np.array([len(g) for g in grids])
    scale = np.maximum(sizes - 1, 1).astype(float)  # index -> [0, 1] on every knob
    root_index = np.array([g.index(k.snap(v, a)) for g, k, v, a
                           in zip(grids, knobs, root, anchors, strict=True)])
    rng = np.random.default_rng([seed, _STREAM, n])
    best: np.ndarray | None = None
    best_gap = -1.0
    for _ in range(_CANDIDATES):
        rows = np.stack([_column(int(size), n, rng) for size in sizes], axis=1)
        # The root has run (or is running): a draw next to it would tell little more.
        gap = _closest_pair(np.vstack([rows, root_index[None, :]]) / scale)
        if gap > best_gap:  # ties: the earlier design
            best, best_gap = rows, gap
    assert best is not None
    return tuple(tuple(g[int(i)] for g, i in zip(grids, row, strict=True)) for row in best)


def design(knobs: Sequence[Knob], anchors: Mapping[str, Any], root: Mapping[str, Any], n: int,
           seed: int) -> list[dict[str, Any]]:
    """The survey's ``n`` draws over ``knobs`` (the surveyed ones), each a dict knob -> lattice
    value; the same for the same arguments, in every process."""
    if n <= 0 or not knobs:
        return []
    drawn = tuple(knobs)
    rows = _design(drawn, tuple(anchors[k.name] for k in drawn),
                   tuple(root[k.name] for k in drawn), int(n), int(seed))
    return [{k.name: v for k, v in zip(drawn, row, strict=True)} for row in rows]


def random_draw(knobs: Sequence[Knob], anchors: Mapping[str, Any],
                rng: np.random.Generator) -> dict[str, Any]:
    """One uniform draw over the lattices of ``knobs``: what a survey trial takes when its row
    of the design is already taken (by an enqueued trial, or the root itself)."""
    out = {}
    for knob in knobs:
        grid = knob.grid(anchors[knob.name])
        out[knob.name] = grid[int(rng.integers(len(grid)))]
    return out
