"""Priors: what earlier studies of the same family say, weighted by how well it predicts this one.

Why it exists: with 10–20 trials in a dozen dimensions the move model (:mod:`._model`) ranks a
parent's moves no better than chance, so on a regime nobody tuned for the walk starts from
nothing. A user's earlier studies of the same family of problems sit in their storage; they
usually agree with the new study on which knobs matter and where, and sometimes they do not.
This module lets them shape what the sampler proposes, and lets the new study's own results
decide how far to trust each of them.

A **source** (:class:`PriorSource`) is one earlier study: its finished trials' params and
values (failed ones rank last), its direction, and the regime it came from (free text for
people). It enters in three steps:

* **Common scale.** Within each source the scores (``sign × value``) become normal scores of
  their ranks, ``Φ⁻¹((rank − ½) / n)``, as the move model's targets do: R² levels differ
  between regimes and budgets, their order is what carries over. Each source gets its own
  Gaussian process (:func:`._model.fit`) over the knobs it shares with the study — all but the
  training seed and the knobs that set a trial's cost (``duration``, ``survey_fixed``), which the
  prior never moves. A source value outside a knob's range counts as the nearest lattice
  value; a knob the source lacks is left out of its model.
* **Weights, learned from this study** (the ranking-weighted ensemble of Feurer et al.,
  RGPE). The models are the sources and the study's own move model (its leave-one-out means;
  before it has :data:`._model.MIN_POINTS` trials, a flat guess). Each model's *ranking loss*
  is the number of pairs of this study's finished trials (the last :data:`WEIGHT_POINTS`) that
  it orders the wrong way round (a tie counts ½). Over :data:`BOOTSTRAPS` bootstrap resamples
  of those trials, a model's weight is the fraction of resamples in which its loss is the
  lowest (ties share). Before any pair exists every model ties: one source starts at weight
  ½. A source that orders the study's trials no better than the flat guess loses most
  resamples, and its weight falls towards 0 within a few trials: a misleading prior fades.
* **Ensemble.** Mean ``Σ w_m μ_m(x)`` and variance ``Σ w_m σ²_m(x)`` over the models (the flat
  guess: mean 0, variance 1), in normal scores.

Where it enters the sampler (:mod:`._rules`; without a prior nothing changes):

* **the survey**: survey slot ``i`` (from 0) is *guided* when ``⌈(i + 1) W⌉ > ⌈i W⌉`` for the
  sources' total weight ``W`` at that decision (``W = ½``: every other slot, the first
  included); a guided slot takes, of the design's rows, uniform lattice draws and the sources'
  best trials (moved onto this study's lattice; the seed and cost knobs at the root's values),
  the one with the highest ensemble mean that lies at least :data:`MIN_SPREAD` (in units of
  a knob's lattice, averaged over the knobs) from every trial of the block;
* **the move model's ranking**: the exploit, explore and boundary-probe moves are ranked by the
  ensemble instead of the study's model alone (and from the first finished trial on);
* **the density move**: each knob's good and bad densities are mixed with each source's
  (its best quarter and the rest), by the sources' weights.

Everything is deterministic in the sources and the study's trials (bootstrap draws keyed by
the sampler's seed and the trial number), so every worker agrees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _model
from ._knob import Knob

__all__ = ["BOOTSTRAPS", "MIN_SPREAD", "SURVEY_CANDIDATES", "WEIGHT_POINTS", "Ensemble",
           "FittedPrior", "PriorSource", "SourceTrial", "Weights", "guided_draw", "guided_slot",
           "knob_summary", "mix_density", "report"]

# Resamples of the study's trials over which the models' ranking losses are compared.
BOOTSTRAPS = 256
# The study's most recent finished trials that judge the models (older ones stay in the move
# model): bounds the cost of a decision in a long study.
WEIGHT_POINTS = 64
# A guided survey draw keeps this mean distance (lattice fraction per knob, root-mean-square)
# from every trial of block 1: the draws look at several places the prior favours, not one.
MIN_SPREAD = 0.15
# Uniform lattice draws scored for a guided survey slot (:mod:`._survey` draws them), beside
# the design and the sources' best trials.
SURVEY_CANDIDATES = 256
# The sources' best trials offered to a guided survey slot, per source.
SOURCE_BEST = 16
_STREAM_WEIGHTS = 5  # the per-trial streams: [seed, number, k]; 1-4 are the rules'


@dataclass(frozen=True)
class SourceTrial:
    """One finished trial of a source study."""

    params: Mapping[str, Any]
    value: float | None  # None (or not finite): failed, ranks last
    state: str = "COMPLETE"  # COMPLETE, PRUNED or FAIL, as Optuna names them
    intermediate: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class PriorSource:
    """An earlier study: its finished trials, its direction and where it came from."""

    name: str
    trials: tuple[SourceTrial, ...]
    direction: str = "maximize"
    regime: str = ""  # for people: the data it ran on ("network seed 42, log10 k in [-2, -1]")

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "maximize" else -1.0

    def knob_names(self) -> set[str]:
        return {name for t in self.trials for name in t.params}

    def points(self) -> list[tuple[Mapping[str, Any], float | None]]:
        """(params, score) with score = sign × value; None for a failed trial."""
        out = []
        for t in self.trials:
            ok = t.value is not None and math.isfinite(t.value) and t.state != "FAIL"
            out.append((t.params, self.sign * float(t.value) if ok else None))  # type: ignore[arg-type]
        return out


@dataclass(frozen=True)
class _Fitted:
    source: PriorSource
    knobs: tuple[Knob, ...]  # the shared knobs its model reads
    model: _model.MoveModel | None  # None: too few trials, or all alike
    good: tuple[Mapping[str, Any], ...]  # its best quarter's params, best first
    bad: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Weights:
    """Each source's weight and the study's own model's, summing to 1."""

    sources: tuple[float, ...]
    study: float
    pairs: int  # ordered pairs of the study's trials that judged them (0: the starting tie)

    @property
    def total(self) -> float:
        return float(sum(self.sources))


@dataclass
class FittedPrior:
    """The sources, each fitted once over the knobs it shares with the sampler's."""

    fitted: tuple[_Fitted, ...]
    anchors: Mapping[str, Any]
    seed: int

    @classmethod
    def fit(cls, sources: Sequence[PriorSource], knobs: Sequence[Knob],
            anchors: Mapping[str, Any], *, exclude: Sequence[str], seed: int) -> FittedPrior:
        """ValueError (one line) for a source that shares no knob with ``knobs`` less
        ``exclude``, or that has no finished trial."""
        skip = set(exclude)
        usable = [k for k in knobs if k.name not in skip]
        fitted = []
        for source in sources:
            names = source.knob_names()
            shared = tuple(k for k in usable if k.name in names)
            if not shared:
                theirs = ", ".join(sorted(names)) or "none"
                ours = ", ".join(k.name for k in usable)
                raise ValueError(f"prior '{source.name}' shares no knob with the study (its "
                                 f"knobs: {theirs}; the study's: {ours})")
            points = [(p, s) for p, s in source.points()
                      if all(k.name in p for k in shared)]
            if not points:
                raise ValueError(f"prior '{source.name}' has no finished trial with every knob "
                                 f"it shares with the study ({', '.join(k.name for k in shared)})")
            model = _model.fit(shared, anchors, points, sign=1.0)
            ranked = sorted(range(len(points)), key=lambda i: (
                points[i][1] is None, -(points[i][1] or 0.0), i))
            n_good = max(1, math.ceil(0.25 * len(ranked)))
            fitted.append(_Fitted(source, shared, model,
                                  tuple(points[i][0] for i in ranked[:n_good]),
                                  tuple(points[i][0] for i in ranked[n_good:])))
        return cls(tuple(fitted), anchors, seed)

    @property
    def n_trials(self) -> int:
        return sum(len(f.source.trials) for f in self.fitted)

    def describe(self, weights: Weights) -> str:
        """``the prior of 192 trials from 1 study (weight 0.70)``."""
        n = len(self.fitted)
        return (f"the prior of {self.n_trials} trials from {n} stud{'y' if n == 1 else 'ies'} "
                f"(weight {weights.total:.2f})")

    # -- weights -----------------------------------------------------------------------------

    def source_means(self, candidates: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """(sources, candidates) posterior means in each source's normal scores (0 where a
        source has no model)."""
        out = np.zeros((len(self.fitted), len(candidates)))
        for i, f in enumerate(self.fitted):
            if f.model is not None and candidates:
                out[i] = [p.mean for p in f.model.predict(candidates, 0.0)]
        return out

    def weights(self, points: Sequence[tuple[Mapping[str, Any], float | None]],
                study_model: _model.MoveModel | None, number: int) -> Weights:
        """The weights after the study's finished ``points`` (params, score; None: failed),
        ``study_model`` fitted on the same points in the same order (None: too few)."""
        n_models = len(self.fitted) + 1
        recent = list(range(len(points)))[-WEIGHT_POINTS:]
        scores = np.array([-math.inf if points[i][1] is None else float(points[i][1])
                           for i in recent])
        if len(recent) < 2 or len(set(scores.tolist())) < 2:
            return Weights(tuple([1.0 / n_models] * (n_models - 1)), 1.0 / n_models, 0)
        preds = list(self.source_means([points[i][0] for i in recent]))
        if study_model is not None:
            preds.append(study_model.loo_means()[recent])
        else:
            preds.append(np.zeros(len(recent)))  # the flat guess: every pair a tie
        with np.errstate(invalid="ignore"):  # -inf - -inf: two failed trials, no order
            truth = np.sign(scores[:, None] - scores[None, :])
        truth[np.isnan(truth)] = 0.0
        losses = []
        for pred in preds:
            guess = np.sign(pred[:, None] - pred[None, :])
            wrong = np.where(guess == 0, 0.5, (guess != truth).astype(float))
            losses.append(np.where(truth == 0, 0.0, wrong))
        rng = np.random.default_rng([self.seed, number, _STREAM_WEIGHTS])
        draws = rng.integers(len(recent), size=(BOOTSTRAPS, len(recent)))
        counts = np.stack([np.bincount(d, minlength=len(recent)) for d in draws]).astype(float)
        per = np.stack([np.einsum("bi,ij,bj->b", counts, loss, counts) for loss in losses])
        per = np.round(per, 9)
        best = per == per.min(axis=0, keepdims=True)
        wins = (best / best.sum(axis=0, keepdims=True)).sum(axis=1) / BOOTSTRAPS
        pairs = int((truth != 0).sum())
        return Weights(tuple(float(w) for w in wins[:-1]), float(wins[-1]), pairs)


class Ensemble:
    """The sources' models and the study's own, weighted (:class:`Weights`): what ranks the
    moves when a prior is given. :meth:`predict` is :meth:`._model.MoveModel.predict`'s."""

    def __init__(self, prior: FittedPrior, weights: Weights,
                 study_model: _model.MoveModel | None, n_study: int) -> None:
        self.prior = prior
        self.weights = weights
        self.study_model = study_model
        self.n = n_study

    @property
    def label(self) -> str:
        return (f"the move model of {self.n} finished runs and "
                f"{self.prior.describe(self.weights)}")

    def predict(self, candidates: Sequence[Mapping[str, Any]],
                kappa: float) -> list[_model.Prediction]:
        if not candidates:
            return []
        w = self.weights
        mean = np.zeros(len(candidates))
        var = np.zeros(len(candidates))
        for f, wi in zip(self.prior.fitted, w.sources, strict=True):
            if f.model is None or wi == 0.0:
                continue
            preds = f.model.predict(candidates, 0.0)
            mean += wi * np.array([p.mean for p in preds])
            var += wi * np.array([p.sd**2 for p in preds])
        study = self.study_model.predict(candidates, 0.0) if self.study_model is not None else []
        if study:
            mean += w.study * np.array([p.mean for p in study])
            var += w.study * np.array([p.sd**2 for p in study])
        else:
            var += w.study  # the flat guess: mean 0, variance 1
        sd = np.sqrt(np.maximum(var, 1e-12))
        out = []
        for m, s in zip(mean, sd, strict=True):
            m, s = float(m), float(s)
            if self.study_model is not None:
                value, low, high = (self.study_model.read_out(z) for z in (m, m - s, m + s))
            else:  # no scale of this study's yet: normal scores
                value, low, high = m, m - s, m + s
            out.append(_model.Prediction(m, s, m + kappa * s, value, low, high))
        return out


def guided_slot(index: int, weight: float) -> bool:
    """Whether survey slot ``index`` (from 0) follows the prior at total weight ``weight``:
    the guided slots are then about a fraction ``weight`` of the survey, the first among
    them."""
    return math.ceil((index + 1) * weight - 1e-9) > math.ceil(index * weight - 1e-9)


def guided_draw(ensemble: Ensemble, knobs: Sequence[Knob], anchors: Mapping[str, Any],
                root: Mapping[str, Any], taken: Sequence[Mapping[str, Any]],
                candidates: Sequence[Mapping[str, Any]], is_new: Any) -> dict[str, Any] | None:
    """The surveyed knobs' values (a dict like a design row) the ensemble ranks first among
    ``candidates`` (the design's rows and uniform lattice draws) and the sources' best trials,
    at least :data:`MIN_SPREAD` from every params set in ``taken``; None if none is."""
    names = [k.name for k in knobs]
    rows: list[dict[str, Any]] = [dict(r) for r in candidates]
    for f in ensemble.prior.fitted:
        for p in f.good[:SOURCE_BEST]:
            rows.append({k.name: k.snap(p[k.name], anchors[k.name]) if k.name in p
                         else root[k.name] for k in knobs})
    full = [{**root, **r} for r in rows]
    keep = [i for i, p in enumerate(full) if is_new(p)]
    if not keep:
        return None

    def encode(p: Mapping[str, Any]) -> np.ndarray:
        return np.array([_model.position(k, p[k.name], anchors[k.name]) for k in knobs])

    near = np.stack([encode({**root, **t}) for t in taken]) if taken else None
    preds = ensemble.predict([full[i] for i in keep], 0.0)
    order = sorted(range(len(keep)), key=lambda j: (-round(preds[j].mean, 9), j))
    for j in order:
        x = encode(full[keep[j]])
        if near is not None:
            gap = np.sqrt(((near - x) ** 2).mean(axis=1)).min()
            if gap < MIN_SPREAD:
                continue
        return {name: full[keep[j]][name] for name in names}
    return None


def mix_density(prior: FittedPrior, weights: Weights, knob: Knob, anchor: Any,
                pmf: Any, own_good: np.ndarray, own_bad: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """A density move's good and bad densities over ``knob``'s lattice with each source's
    mixed in by its weight (``pmf(size, indices)``: the move's own smoothing)."""
    grid = knob.grid(anchor)
    good = (1.0 - weights.total) * own_good
    bad = (1.0 - weights.total) * own_bad
    for f, w in zip(prior.fitted, weights.sources, strict=True):
        if knob not in f.knobs:
            good = good + w * own_good
            bad = bad + w * own_bad
            continue

        def index(p: Mapping[str, Any]) -> int:
            snapped = knob.snap(p[knob.name], anchor)
            return grid.index(snapped) if snapped in grid else 0

        good = good + w * pmf(len(grid), [index(p) for p in f.good])
        bad = bad + w * pmf(len(grid), [index(p) for p in f.bad])
    return good / good.sum(), bad / bad.sum()


def report(prior: FittedPrior, weights: Weights) -> list[str]:
    """The prior for people, a markdown list: each source, its weight now and what it says
    about each knob it shares; then the study's own model's weight."""
    how = ("no pair of this study's finished trials has judged them yet: an even start"
           if weights.pairs == 0 else
           f"learned from {weights.pairs // 2} pairs of this study's finished trials")
    lines = [f"- {prior.describe(weights)}; {how}"]
    for i, (f, w) in enumerate(zip(prior.fitted, weights.sources, strict=True)):
        lines.append(f"- {f.source.name} ({f.source.regime or 'regime unknown'}, "
                     f"{len(f.source.trials)} trials): weight {w:.2f}")
        lines += [f"  - {line}" for line in knob_summary(prior, i)]
    lines.append(f"- this study's own move model: weight {weights.study:.2f}")
    return lines


def knob_summary(prior: FittedPrior, index: int) -> list[str]:
    """What source ``index`` says about each knob it shares: where its best quarter lies
    against all its trials (``lr_sub: best quarter 0.002–0.008 (median 0.004); all 1e-4–0.01``)."""
    f = prior.fitted[index]
    lines = []
    for knob in f.knobs:
        good = [p[knob.name] for p in f.good]
        every = [p[knob.name] for p in (*f.good, *f.bad)]
        lines.append(f"{knob.name}: best quarter {_span(knob, good)}; all {_span(knob, every)}")
    return lines


def _span(knob: Knob, values: Sequence[Any]) -> str:
    from ._mutation import format_value

    if knob.scale == "categorical":
        counts = {c: sum(1 for v in values if v == c) for c in dict.fromkeys(values)}
        return ", ".join(f"{format_value(c)} ×{n}" for c, n in counts.items())
    vals = sorted(float(v) for v in values)
    median = vals[len(vals) // 2]
    return f"{vals[0]:.3g}–{vals[-1]:.3g} (median {median:.3g})"
