"""The density move: when the walk is stuck, step the parent toward where the best trials are.

Why it exists: the explore rule fires on a streak of partial (or failed) results, when one-knob
steps from the UCB parent have stopped paying. On metab_opt's rank50 proxy the move model
(:mod:`._model`) of 10–20 trials in 13 dimensions ranks a parent's one-knob moves no better
than chance: in a surrogate replay of 100 studies (``metab_opt/compare/surrogate.py``) the
walk's median replicate-confirmed R² was 0.900 with the model, 0.902 with random one-knob moves,
and 0.970 with the surrogate's own values as the ranking. Knob by knob the trials still say
something: which values the best quarter of the runs share, and which the rest do. This move
changes, at once, every knob whose drawn value differs from the parent's, as a Tree-structured
Parzen Estimator (Bergstra et al., 2011) would, so a stuck walk jumps toward the region the
evidence favours rather than one more knob at random. (Same replay: 0.917; on a surrogate
fitted to fewer trials no gain; ``docs/search.md``, round 2.)

The move, in numbers, over the finished trials (a failed one ranks last), once there are
:data:`MIN_POINTS`:

* **Split:** the best ``⌈γ n⌉`` by score (``γ`` = :data:`GAMMA`) are *good*, the rest *bad*.
* **Densities:** for each knob, over its lattice (:meth:`Knob.grid`), ``l(i)`` and ``g(i)`` are
  a uniform pseudo-count plus a Gaussian bump at each good (bad) trial's lattice index, of width
  ``max(1, L / 6)`` lattice points, normalized.
* **Candidates:** :data:`CANDIDATES` draws, each knob's index from ``l``; the knobs that set a
  trial's cost (``duration``, ``survey_fixed``) and the seed stay at the parent's values.
* **Choice:** the new candidate with the largest ``Σ log l/g`` over the drawn knobs (ties: the
  earlier draw). Its changes from the UCB parent are the trial's mutation.

The draws come from the stream ``[seed, trial number, 3]``, so every worker that reads the same
storage moves the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from . import _mutation as mut
from . import _prior
from . import _tree as tree
from ._knob import Knob

__all__ = ["CANDIDATES", "GAMMA", "MIN_POINTS", "density_move"]

# Fewer finished trials than this: no density move (the survey alone is 8 on metab_opt's rank50
# configs; with fewer the best quarter is one or two trials).
MIN_POINTS = 8
GAMMA = 0.25
CANDIDATES = 64
_STREAM = 3  # the per-trial streams: [seed, number, 1] values, [seed, number, 2] survey


class Planner(Protocol):
    """What a density move reads of :class:`._rules.Planner` (which imports this module)."""

    s: Any  # ._rules.Settings: roles, seed, value_name, prior
    nodes: list[tree.Node]
    anchors: Mapping[str, Any]
    mutable: list[Knob]
    names: tuple[str, ...]
    number: int

    @property
    def prior_weights(self) -> _prior.Weights | None: ...

    def parents(self) -> Sequence[Any]: ...  # ._rules._Parent: number, params, describe

    def is_new(self, params: Mapping[str, Any]) -> bool: ...


def _pmf(size: int, indices: Sequence[int]) -> np.ndarray:
    width = max(1.0, size / 6.0)
    lattice = np.arange(size, dtype=float)
    weights = np.full(size, 1.0 / size)
    for i in indices:
        weights = weights + np.exp(-((lattice - i) ** 2) / (2.0 * width * width))
    return weights / weights.sum()


def _index(knob: Knob, value: Any, anchor: Any, grid: Sequence[Any]) -> int:
    snapped = knob.snap(value, anchor)
    return grid.index(snapped) if snapped in grid else 0


def density_move(planner: Planner, strategy: str
                 ) -> tuple[int, dict[str, Any], tuple[mut.Change, ...], str] | None:
    """(parent, params, changes, parent_rule) of the move toward the good trials' values from
    the UCB parent; None with too few finished trials or no new candidate."""
    finished = [n for n in planner.nodes if n.finished and (n.failed or n.score is not None)]
    if len(finished) < MIN_POINTS:
        return None
    roles = planner.s.roles
    fixed = {n for n in (roles.duration, *roles.survey_fixed) if n is not None}
    knobs = [k for k in planner.mutable if k.name not in fixed]
    if not knobs:
        return None
    # Best first; a failed trial last; ties to the older trial.
    ranked = sorted(finished, key=lambda n: (n.failed or n.score is None,
                                             -(n.score or 0.0), n.number))
    n_good = max(1, math.ceil(GAMMA * len(ranked)))
    good, bad = ranked[:n_good], ranked[n_good:]
    grids = {k.name: k.grid(planner.anchors[k.name]) for k in knobs}
    weights = planner.prior_weights
    good_pmf, ratio = {}, {}
    for k in knobs:
        grid, anchor = grids[k.name], planner.anchors[k.name]
        lg = _pmf(len(grid), [_index(k, n.params[k.name], anchor, grid) for n in good])
        lb = _pmf(len(grid), [_index(k, n.params[k.name], anchor, grid) for n in bad])
        if weights is not None:  # each prior source's good and bad values, by its weight
            lg, lb = _prior.mix_density(planner.s.prior, weights, k, anchor, _pmf, lg, lb)
        good_pmf[k.name] = lg
        ratio[k.name] = np.log(lg / lb)
    parent = planner.parents()[0]
    rng = np.random.default_rng([planner.s.seed, planner.number, _STREAM])
    best: tuple[float, dict[str, Any]] | None = None
    for _ in range(CANDIDATES):
        params = {name: parent.params[name] for name in planner.names}
        score = 0.0
        for k in knobs:
            i = int(rng.choice(len(grids[k.name]), p=good_pmf[k.name]))
            params[k.name] = grids[k.name][i]
            score += float(ratio[k.name][i])
        if not planner.is_new(params):
            continue
        if best is None or round(score, 9) > round(best[0], 9):
            best = (score, params)
    if best is None:
        return None
    params = best[1]
    changes = tuple((k.name, parent.params[k.name], params[k.name]) for k in knobs
                    if tree.canonical(params[k.name]) != tree.canonical(parent.params[k.name]))
    if not changes:
        return None
    moved = ", ".join(f"{name} {mut.format_value(old)} -> {mut.format_value(new)}"
                      for name, old, new in changes)
    rule = (parent.describe(strategy)
            + f"; a density move of {len(changes)} knob{'s' if len(changes) > 1 else ''} "
              f"toward the values the best {n_good} of {len(ranked)} finished runs share"
              + ("" if weights is None else f" and {planner.s.prior.describe(weights)} favours")
              + f" ({moved})")
    return parent.number, params, changes, rule
