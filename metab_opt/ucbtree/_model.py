"""The move model: a Gaussian process over every finished trial, to rank a parent's mutations.

Why it exists: the rules say *which* parent to mutate and *what kind* of move to make (a step
that exploits, a step off the beaten track, a probe of a range end), but not which knob. A fixed
exploration order spends one trial per knob, in order, whatever the trials so far say; on
metab_opt's rank50 proxy that took the walk out of the good region the survey had found. The
model reads every finished trial of the study (the survey's draws included) and ranks the
candidate moves of the chosen parent by an upper confidence bound, so the step taken is the one
the evidence favours, and the Parent rule line can say why ("model of 19 runs: predicted R²
0.93 ± 0.04").

The model, in numbers:

* **Inputs** ``x ∈ [0, 1]^d``: each knob but the seed at its lattice position
  (:meth:`Knob.grid` index / (lattice size − 1)); a log knob's lattice is geometric, so this is
  log space; a categorical knob is its choice's index.
* **Targets**: the trials' scores (``sign × value``), turned into normal scores
  ``y = Φ⁻¹((rank − ½) / n)`` (ties share their mean rank). Only the order of the results
  counts, so an R² of −80 weighs no more than an R² of −1, and no threshold is problem-specific.
  A failed trial counts as the lowest rank. Replicates (same params, another seed) are separate
  points; the noise term absorbs their spread.
* **Prior**: zero mean, kernel ``k(x, x') = exp(−|x − x'|² / (2 ℓ²)) + σ² δ``. ``ℓ`` and ``σ²``
  maximize the marginal likelihood over a small grid (:data:`_LENGTHS`, :data:`_NOISES`);
  ``O(n³)`` with ``n`` the finished trials, a millisecond for a few hundred.
* **Acquisition**: ``μ(x) + κ s(x)`` (posterior mean and standard deviation), ``κ`` set by the
  rule (:data:`KAPPA`): small to exploit, large to explore.
* **Read-out**: a prediction is reported in the objective's own units through the empirical
  distribution of the scores: ``Φ(μ)`` is a quantile of the observed values.

Everything is deterministic in the trials (no random restarts), so every worker that reads the
same storage ranks the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from ._knob import Knob

__all__ = ["KAPPA", "MIN_POINTS", "MoveModel", "Prediction", "fit"]

# Fewer finished trials than this: no model (the rules' fixed orders decide).
MIN_POINTS = 6
# The exploration weight of each strategy's acquisition.
KAPPA = {"exploit": 0.5, "explore": 2.0, "boundary-probe": 1.0}
# Length scales (in units of a knob's whole lattice) and noise variances (in units of the normal
# scores' variance) the marginal likelihood chooses from.
_LENGTHS = (0.25, 0.4, 0.6, 0.9, 1.3, 2.0)
_NOISES = (0.05, 0.15, 0.4)
_N01 = NormalDist()


@dataclass(frozen=True)
class Prediction:
    mean: float  # posterior mean, in normal scores
    sd: float  # posterior standard deviation, in normal scores
    acquisition: float
    value: float  # the mean read out in the objective's units (sign × score)
    low: float  # ... the mean minus one sd, read out the same way
    high: float  # ... the mean plus one sd


def _normal_scores(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1, dtype=float)
    for value in np.unique(scores):  # ties share their mean rank
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    n = len(scores)
    return np.array([_N01.inv_cdf((r - 0.5) / n) for r in ranks])


class MoveModel:
    """A fitted model; :meth:`predict` scores candidate params sets."""

    def __init__(self, knobs: Sequence[Knob], anchors: Mapping[str, Any], x: np.ndarray,
                 y: np.ndarray, scores: np.ndarray, length: float, noise: float,
                 sign: float) -> None:
        self.knobs = tuple(knobs)
        self.anchors = anchors
        self.length = length
        self.noise = noise
        self.n = len(y)
        self._x = x
        self._y = y
        self._sign = sign
        self._sorted = np.sort(scores)
        k = self._kernel(x, x) + noise * np.eye(len(x))
        self._chol = np.linalg.cholesky(k)
        self._alpha = np.linalg.solve(self._chol.T, np.linalg.solve(self._chol, y))

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)
        return np.exp(-d2 / (2.0 * self.length**2))

    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        return np.array([position(k, params[k.name], self.anchors[k.name]) for k in self.knobs])

    @property
    def label(self) -> str:
        """How a Parent rule line names the model."""
        return f"the move model of {self.n} finished runs"

    def loo_means(self) -> np.ndarray:
        """Each training point's leave-one-out posterior mean (closed form:
        ``y_i - α_i / [K⁻¹]_ii``), in normal scores: how well the model predicts a trial it
        has not seen (a prior's weights compare it with the sources')."""
        inv = np.linalg.solve(self._chol.T, np.linalg.solve(self._chol, np.eye(self.n)))
        return self._y - self._alpha / np.diag(inv)

    def read_out(self, z: float) -> float:
        """The score at normal quantile ``z`` of the observed ones, in the objective's units."""
        q = _N01.cdf(z) * len(self._sorted) - 0.5
        q = min(max(q, 0.0), len(self._sorted) - 1.0)
        lo = int(math.floor(q))
        hi = min(lo + 1, len(self._sorted) - 1)
        score = self._sorted[lo] + (q - lo) * (self._sorted[hi] - self._sorted[lo])
        return float(self._sign * score)

    def predict(self, candidates: Sequence[Mapping[str, Any]], kappa: float) -> list[Prediction]:
        if not candidates:
            return []
        xs = np.stack([self.encode(c) for c in candidates])
        ks = self._kernel(xs, self._x)
        mean = ks @ self._alpha
        v = np.linalg.solve(self._chol, ks.T)
        var = np.maximum(1.0 - (v**2).sum(axis=0), 1e-12)
        sd = np.sqrt(var)
        out = []
        for m, s in zip(mean, sd, strict=True):
            m, s = float(m), float(s)
            out.append(Prediction(m, s, m + kappa * s, self.read_out(m),
                                  self.read_out(m - s), self.read_out(m + s)))
        return out


def position(knob: Knob, value: Any, anchor: Any) -> float:
    """``value``'s place on ``knob``'s lattice, from 0 (first) to 1 (last)."""
    grid = knob.grid(anchor)
    if len(grid) < 2:
        return 0.0
    snapped = knob.snap(value, anchor)
    index = grid.index(snapped) if snapped in grid else 0
    return index / (len(grid) - 1)


def _log_likelihood(x: np.ndarray, y: np.ndarray, length: float, noise: float) -> float:
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
    k = np.exp(-d2 / (2.0 * length**2)) + noise * np.eye(len(x))
    try:
        chol = np.linalg.cholesky(k)
    except np.linalg.LinAlgError:
        return -math.inf
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y))
    return float(-0.5 * y @ alpha - np.log(np.diag(chol)).sum())


def fit(knobs: Sequence[Knob], anchors: Mapping[str, Any],
        points: Sequence[tuple[Mapping[str, Any], float | None]], *,
        sign: float) -> MoveModel | None:
    """The model of ``points`` (params, score; a None score is a failed trial), or None when
    there are fewer than :data:`MIN_POINTS` or the scores do not differ."""
    scored = [s for _, s in points if s is not None and math.isfinite(s)]
    if len(points) < MIN_POINTS or len(scored) < 2 or min(scored) == max(scored):
        return None
    floor = min(scored)
    scores = np.array([floor if s is None or not math.isfinite(s) else s for _, s in points])
    # A failed trial ranks below every scored one.
    failed = np.array([s is None or not math.isfinite(s) for _, s in points])
    ranked = scores - failed * (abs(floor) + 1.0)
    y = _normal_scores(ranked)
    knobs = tuple(knobs)
    x = np.stack([np.array([position(k, p[k.name], anchors[k.name]) for k in knobs])
                  for p, _ in points])
    # Rounded, so that near-ties resolve alike on CPUs whose linear algebra differs in the last
    # bits (then: the shorter length scale, the larger noise).
    best = max((round(_log_likelihood(x, y, ell, s2), 9), -ell, s2) for ell in _LENGTHS
               for s2 in _NOISES)
    _, neg_length, noise = best
    return MoveModel(knobs, anchors, x, y, np.array(scored), -neg_length, noise, sign)
