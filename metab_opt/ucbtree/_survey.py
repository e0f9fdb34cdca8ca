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

With a prior (:mod:`._prior`), about a fraction ``W`` of the slots (the sources' weight at
that decision, the first slot among them) take instead the draw the prior's ensemble ranks
first, away from the block's other trials (:func:`survey_move`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from . import _prior
from ._knob import Knob
from ._tree import canonical

__all__ = ["design", "random_draw", "survey_move", "surveyed"]

# Designs tried for the maximin choice: enough that the best is well spread, cheap enough to
# compute in a few milliseconds (it is cached anyway).
_CANDIDATES = 64
# Keys the design's random stream apart from the per-trial streams [seed, number(, k)].
_STREAM = 0x53555256  # "SURV"
# The per-trial stream of a guided slot's uniform draws: [seed, number, 4] (1-3: the rules').
_STREAM_GUIDED = 4


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


class Planner(Protocol):
    """What the survey rule reads of :class:`._rules.Planner` (which imports this module)."""

    s: Any  # ._rules.Settings: roles, seed, survey
    knobs: tuple[Knob, ...]
    names: tuple[str, ...]
    anchors: Mapping[str, Any]
    members: list[Any]  # ._tree.Node of the block
    root_params: Mapping[str, Any]
    root_parent: int
    block: int
    number: int

    @property
    def ensemble(self) -> Any: ...  # ._prior.Ensemble | None

    def describe_root(self) -> str: ...

    def apply(self, parent: Mapping[str, Any],
              changes: Sequence[tuple[str, Any, Any]]) -> dict[str, Any] | None: ...

    def is_new(self, params: Mapping[str, Any]) -> bool: ...


def survey_move(planner: Planner) -> tuple[int, dict[str, Any], tuple[tuple[str, Any, Any], ...],
                                           str] | None:
    """(parent, params, changes, parent_rule) of the next survey draw of block 1, hung from the
    root: the design's next row, or with a prior on a guided slot the draw the prior's ensemble
    ranks first (:func:`._prior.guided_draw`); None once the survey is done."""
    # Survey decisions already made (running ones included): workers decide in trial order,
    # so they all count the same.
    taken = sum(1 for m in planner.members if m.strategy == "survey")
    n = planner.s.survey
    if taken >= n:
        return None
    roles = planner.s.roles
    fixed = [name for name in (roles.seed, roles.duration, *roles.survey_fixed)
             if name is not None]
    knobs = surveyed(planner.knobs, fixed)
    if not knobs:
        return None
    rows = design(knobs, planner.anchors, planner.root_params, n, planner.s.seed)
    guided: dict[str, Any] | None = None
    ensemble = planner.ensemble
    if ensemble is not None and _prior.guided_slot(taken, ensemble.weights.total):
        rng = np.random.default_rng([planner.s.seed, planner.number, _STREAM_GUIDED])
        pool = [*rows, *(random_draw(knobs, planner.anchors, rng)
                         for _ in range(_prior.SURVEY_CANDIDATES))]
        guided = _prior.guided_draw(ensemble, knobs, planner.anchors, planner.root_params,
                                    [m.params for m in planner.members], pool, planner.is_new)
        how = (f"survey {taken + 1}/{n} of block {planner.block}, a slot the prior guides: "
               f"the draw {ensemble.prior.describe(ensemble.weights)} and the finished runs "
               f"rank first of the design's rows, uniform lattice draws and its studies' best "
               f"trials, away from the block's trials, from the root ({planner.describe_root()})")

    def draws() -> Iterator[dict[str, Any]]:
        if guided is not None:
            yield guided
        yield rows[taken]
        # The design's row is taken (an enqueued trial has it): uniform lattice draws
        # instead, from this trial's own stream.
        rng = np.random.default_rng([planner.s.seed, planner.number, 2])
        for _ in range(64):
            yield random_draw(knobs, planner.anchors, rng)

    root = planner.root_params
    for i, draw in enumerate(draws()):
        changes = tuple((name, root[name], value) for name, value in draw.items()
                        if canonical(value) != canonical(root[name]))
        params = planner.apply(root, changes) if changes else None
        if params is None:
            continue
        kept = ", ".join(name for name in planner.names if name in set(fixed))
        first = 0 if guided is None else 1  # the index of the design's own row
        head = (how if guided is not None and i == 0 else
                f"survey {taken + 1}/{n} of block {planner.block}: space-filling draw over "
                f"every knob's lattice, from the root ({planner.describe_root()})")
        rule = (head + (f"; {kept} kept at the root's values" if kept else "")
                + ("" if i <= first else "; the design's draw was taken: a uniform draw"))
        return planner.root_parent, params, changes, rule
    return None
