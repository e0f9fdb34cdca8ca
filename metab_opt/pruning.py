"""The tree-safe pruner (``search.pruner: safe``) and its replay on a finished study.

A pruned trial stays in the UCB tree: it is a node whose value is its last report
(:func:`metab_opt.ucbtree.trial_value`), it can be a parent, and it counts in its replicate
group's mean. Pruning is therefore safe for the tree only if it never stops a trial that would
have mattered to it: a future incumbent, a top-quartile parent, or a replicate whose stopped
value would drag a good group's mean down. R² curves here start very negative (-80 is normal
early) and may climb to 0.9+ late, so "low early" says nothing. :class:`SafePruner` stops a
trial at a report only when all of these hold:

1. **startup**: at least ``n_startup_trials`` (5) trials of the study have completed. Its
   reference is the study's top quartile: the best completed trials by final R², as many as
   a quarter of the finished trials (the pruned ones count, below it), at least
   ``min_reference`` (2).
2. **warm-up, in the trial's own training**: the report is past ``warmup_fraction`` (half) of
   the trial's planned steps (the ``planned_steps`` user attr the objective writes at its
   first report). Trials differ in length (``data_augmentation_loop``, ``n_epochs``,
   ``batch_size``), so they are compared at equal *fractions* of training, never at equal
   step numbers.
3. **below every good trial, by their own disagreement**: its R² is below ``floor - spread``,
   where ``floor`` is the lowest R² any reference trial had near the same fraction (its worst
   report within ``window``, 0.1, either side: the earlier, lower side of a climbing curve
   counts) and ``spread`` how far the reference trials were apart there. No absolute
   threshold: both come from the study's own good trials.
4. **cannot climb into the top quartile**: even its steepest climb over its last three
   report intervals (R² per fraction of training), kept up to the end of its training, would
   leave it below the lowest final R² of the reference. R² curves flatten as training goes
   on, so the straight-line projection is optimistic: a late bloomer, which climbs steeply when
   it blooms, is projected high and kept.
5. **confirmed**: 3 and 4 held at ``confirm`` (2) consecutive reports past the warm-up (one
   noisy report prunes nothing).
6. **never a replicate of a good trial**: a trial whose params, the training seed aside, are
   those of a reference trial is never pruned (its group's mean is the incumbent's measure).

Why that is safe for the tree: a pruned trial is, past half of its training, worse than every
top-quartile trial was at that point by more than they differ among themselves, and is not
climbing fast enough to join them; so it would not have been the incumbent nor a top parent,
and its node's value (its last report) is below the top quartile, as its final one would be.
The one case no pruner can see coming, a flat curve that jumps in its last half, is covered
only by the history: once such a trial completes in the top quartile, its own low curve lowers
the floor, and the trials like it are no longer pruned. Until 5 trials completed nothing is
pruned at all. The saving is modest by design: at most the second half of clearly hopeless
trials.

Optuna's own pruners do not fit as they are: Median, Percentile and Wilcoxon compare values
at equal step numbers (which differ between trials here) with all trials or the best one;
Threshold needs an absolute bound (tuned to one dataset); Patient stops on a stall alone,
whatever the trial's level; Hyperband and successive halving stop most trials early by design.
:class:`SafePruner` is an :class:`optuna.pruners.BasePruner` that any Optuna study can use.

:func:`replay` runs the pruner over a finished study's recorded reports, trial by trial, as it
would have seen them (``metab-opt prune-check NAME``): which trials it would have stopped, at
which step, whether one of them was the incumbent's group or finished in the top quartile, and
the training steps it would have saved.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from metab_opt.config import Config, ConfigError, config_from_dict
from metab_opt.trial_record import own_trials

__all__ = ["PLANNED_STEPS", "Curve", "Judgement", "PruneReport", "ReplayRow", "SafePruner",
           "group_key", "replay"]

# The user attr the objective writes at a trial's first report: its planned training steps.
PLANNED_STEPS = "planned_steps"
_CONFIG_ATTR = "metab_opt:config"  # the study's config (metab_opt.study.open_study)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def group_key(params: Mapping[str, Any], seed_param: str | None) -> Hashable:
    """A trial's replicate group: its params without the training seed, compared as the
    sampler compares them (:func:`metab_opt.ucbtree.canonical`)."""
    from metab_opt.ucbtree import canonical

    return tuple(sorted((k, canonical(v)) for k, v in params.items() if k != seed_param))


@dataclass(frozen=True)
class Curve:
    """A trial's reports as fractions of its training: ``(fraction, R²)`` by fraction."""

    number: int
    total: int  # the training's planned steps
    points: tuple[tuple[float, float], ...]
    final: float | None  # a complete trial's value
    group: Hashable

    def at(self, fraction: float, window: float) -> float | None:
        """The worst report within ``window`` of ``fraction``; else the straight line between
        the reports around it (the first or last report outside their range)."""
        near = [v for f, v in self.points if abs(f - fraction) <= window]
        if near:
            return min(near)
        if not self.points:
            return None
        before = [(f, v) for f, v in self.points if f <= fraction]
        after = [(f, v) for f, v in self.points if f > fraction]
        if not before:
            return after[0][1]
        if not after:
            return before[-1][1]
        (f0, v0), (f1, v1) = before[-1], after[0]
        return v0 + (v1 - v0) * (fraction - f0) / (f1 - f0)


def _reports(trial: FrozenTrial) -> list[tuple[int, float]]:
    """The trial's reports by step; a non-finite one as the objective's -1e9 would be."""
    out = []
    for step, value in sorted(trial.intermediate_values.items()):
        v = _finite(value)
        out.append((int(step), -1e9 if v is None else v))
    return out


def _planned(trial: FrozenTrial) -> int | None:
    value = trial.user_attrs.get(PLANNED_STEPS)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _curve(trial: FrozenTrial, seed_param: str | None) -> Curve | None:
    """A complete trial's curve (its training ran to its last report), or None without one."""
    reports = _reports(trial)
    total = _planned(trial) or (reports[-1][0] if reports else None)
    if not reports or not total:
        return None
    points = tuple((min(step / total, 1.0), v) for step, v in reports)
    return Curve(number=trial.number, total=total, points=points, final=_finite(trial.value),
                 group=group_key(trial.params, seed_param))


@dataclass(frozen=True)
class Judgement:
    """Why a report is (or is not) a pruning one."""

    prune: bool
    reason: str


class SafePruner(BasePruner):
    """Stop a trial only when it clearly cannot matter to the tree (the module docstring).

    ``seed_param`` names the training seed's knob: a trial that differs from a reference
    trial only in it is a replicate and is never pruned.
    """

    def __init__(self, *, n_startup_trials: int = 5, warmup_fraction: float = 0.5,
                 top_fraction: float = 0.25, min_reference: int = 2, window: float = 0.1,
                 confirm: int = 2, recent: int = 3, seed_param: str | None = "seed") -> None:
        if n_startup_trials < min_reference or min_reference < 1:
            raise ValueError("SafePruner: need n_startup_trials >= min_reference >= 1")
        if not 0.0 < warmup_fraction <= 1.0 or not 0.0 < top_fraction <= 1.0:
            raise ValueError("SafePruner: warmup_fraction and top_fraction are in (0, 1]")
        if window < 0 or confirm < 1 or recent < 1:
            raise ValueError("SafePruner: need window >= 0, confirm >= 1, recent >= 1")
        self.n_startup_trials = n_startup_trials
        self.warmup_fraction = warmup_fraction
        self.top_fraction = top_fraction
        self.min_reference = min_reference
        self.window = window
        self.confirm = confirm
        self.recent = recent
        self.seed_param = seed_param
        self._cache: dict[tuple[str, int], Curve | None] = {}  # (study, number) -> curve

    def describe(self) -> str:
        return (f"safe pruner: from {self.n_startup_trials} completed trials on, past "
                f"{self.warmup_fraction:.0%} of a trial's training, below every top "
                f"{self.top_fraction:.0%} trial at the same fraction by more than their spread "
                f"and unable to climb into them, at {self.confirm} reports in a row; never a "
                f"replicate of a top trial")

    # -- Optuna's interface ---------------------------------------------------------------

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        history = []
        finished = own_trials(study.get_trials(deepcopy=False,
                                               states=(TrialState.COMPLETE, TrialState.PRUNED)))
        n_pruned = sum(t.state == TrialState.PRUNED for t in finished)
        for t in finished:
            if t.state != TrialState.COMPLETE:
                continue
            key = (study.study_name, t.number)
            if key not in self._cache:  # a complete trial never changes
                self._cache[key] = _curve(t, self.seed_param)
            curve = self._cache[key]
            if curve is not None:
                history.append(curve)
        return self.judge(history, trial, n_pruned).prune

    # -- The decision, on curves ----------------------------------------------------------

    def reference(self, history: Sequence[Curve], n_pruned: int = 0) -> list[Curve]:
        """The study's top quartile: the best completed trials by final R², as many as a
        quarter of the finished ones (``n_pruned`` pruned trials count, as below it), at least
        ``min_reference``; empty before ``n_startup_trials`` completed."""
        done = [c for c in history if c.final is not None]
        if len(done) < self.n_startup_trials:
            return []
        done.sort(key=lambda c: (-(c.final or 0.0), c.number))
        k = max(self.min_reference, math.ceil(self.top_fraction * (len(done) + n_pruned)))
        return done[:k]

    def judge(self, history: Sequence[Curve], trial: FrozenTrial,
              n_pruned: int = 0) -> Judgement:
        """Whether ``trial`` (running, with its reports so far) is to be stopped at its last
        report, given the completed trials' curves ``history`` and the number of pruned
        trials."""
        return self.judge_reports(history, _reports(trial), trial.params, _planned(trial),
                                  n_pruned)

    def judge_reports(self, history: Sequence[Curve], reports: Sequence[tuple[int, float]],
                      params: Mapping[str, Any], planned: int | None,
                      n_pruned: int = 0) -> Judgement:
        """:meth:`judge` on a trial's ``(step, R²)`` reports so far, its params and its planned
        steps (None: unknown, taken as the reference trials' median length)."""
        if not reports:
            return Judgement(False, "no report yet")
        ref = self.reference(history, n_pruned)
        if len(ref) < self.min_reference:
            return Judgement(False, f"fewer than {self.n_startup_trials} completed trials")
        if group_key(params, self.seed_param) in {c.group for c in ref}:
            return Judgement(False, "a replicate of a top-quartile trial")
        total = planned or sorted(c.total for c in ref)[len(ref) // 2]
        points = [(min(step / total, 1.0), v) for step, v in reports]
        last = len(points) - 1
        if last + 1 < self.confirm:
            return Judgement(False, "too few reports")
        reasons = []
        for i in range(last - self.confirm + 1, last + 1):
            below, why = self._below(ref, points[:i + 1])
            if not below:
                return Judgement(False, why)
            reasons.append(why)
        return Judgement(True, reasons[-1])

    def _below(self, ref: Sequence[Curve], points: Sequence[tuple[float, float]]
               ) -> tuple[bool, str]:
        """Conditions 2-4 of the module docstring at the last of ``points``."""
        f, v = points[-1]
        if f < self.warmup_fraction:
            return False, f"warm-up ({f:.0%} of its training)"
        values = [x for x in (c.at(f, self.window) for c in ref) if x is not None]
        if len(values) < self.min_reference:
            return False, "no reference at this fraction"
        floor, spread = min(values), max(values) - min(values)
        if not v < floor - spread:
            return False, f"R2 {v:.4g} not below the top quartile's {floor:.4g} - {spread:.3g}"
        tail = points[-self.recent - 1:]  # its last ``recent`` report intervals
        rates = [(v1 - v0) / (f1 - f0) for (f0, v0), (f1, v1) in zip(tail, tail[1:]) if f1 > f0]
        if not rates:
            return False, "no climb rate yet"
        reach = v + max(0.0, *rates) * (1.0 - f)
        target = min(c.final for c in ref if c.final is not None)
        if not reach < target:
            return False, f"its climb could reach {reach:.4g} >= {target:.4g}"
        return True, (f"R2 {v:.4g} at {f:.0%} of its training: below the top quartile's "
                      f"{floor:.4g} - {spread:.3g}, its climb reaches {reach:.4g} < {target:.4g}")


# ---------------------------------------------------------------------------------------------
# Replay on a finished study


@dataclass(frozen=True)
class ReplayRow:
    """One finished trial as the replay saw it."""

    number: int
    state: str  # "complete" or "pruned" (in the study)
    value: float | None  # what the trial counts as: its value, a pruned one its last report
    ran: int  # training steps it ran in the study
    full: int  # training steps it runs unpruned: its planned steps (those it ran if unknown)
    pruned_at: int | None  # the step at which the replay stops it; None: it runs on
    value_at_prune: float | None
    reason: str
    top_quartile: bool  # finished in the top quartile of the study's valued trials
    incumbent: bool  # in the replicate group of the study's incumbent

    @property
    def cost(self) -> int:
        """The steps it trains under the replayed pruner."""
        return self.full if self.pruned_at is None else min(self.full, self.pruned_at)

    @property
    def saved(self) -> int:
        return self.full - self.cost

    @property
    def lost(self) -> bool:
        """Pruned although it mattered: the incumbent's group or the top quartile."""
        return self.pruned_at is not None and (self.top_quartile or self.incumbent)


@dataclass(frozen=True)
class PruneReport:
    study: str
    pruner: str  # its description
    rows: tuple[ReplayRow, ...]
    skipped: int  # failed or unfinished trials: not replayed

    @property
    def pruned(self) -> list[ReplayRow]:
        return [r for r in self.rows if r.pruned_at is not None]

    @property
    def lost(self) -> list[ReplayRow]:
        return [r for r in self.rows if r.lost]

    @property
    def steps_full(self) -> int:
        """The replayed trials' training steps without pruning."""
        return sum(r.full for r in self.rows)

    @property
    def steps_saved(self) -> int:
        return sum(r.saved for r in self.rows)

    @property
    def saving(self) -> float:
        """The fraction of the replayed trials' training steps (without pruning) that the
        pruner saves."""
        return self.steps_saved / self.steps_full if self.steps_full else 0.0

    def lines(self) -> list[str]:
        """The report, as ``metab-opt prune-check`` prints it."""
        n_pruned_before = sum(r.state == "pruned" for r in self.rows)
        out = [f"prune-check '{self.study}': {self.pruner}",
               f"replayed {len(self.rows)} finished trials ({len(self.rows) - n_pruned_before} "
               f"complete, {n_pruned_before} pruned in the study); {self.skipped} failed or "
               f"unfinished not replayed"]
        if not self.pruned:
            out.append("would prune no trial")
        for r in self.pruned:
            value = "n/a" if r.value is None else f"{r.value:.4f}"
            flags = [f for f, on in (("INCUMBENT'S GROUP", r.incumbent),
                                     ("TOP QUARTILE", r.top_quartile)) if on]
            mark = f" [{', '.join(flags)}]" if flags else ""
            out.append(f"would prune trial {r.number} at step {r.pruned_at} of {r.full} "
                       f"(R2 then {r.value_at_prune:.4g}, in the study {value}){mark}: "
                       f"{r.reason}")
        let_run = [r for r in self.rows if r.state == "pruned" and r.pruned_at is None]
        if let_run:
            out.append("pruned in the study, let run by this pruner: trials "
                       + ", ".join(str(r.number) for r in let_run) + " (their rest is unknown)")
        if self.lost:
            out.append("UNSAFE: it would have pruned "
                       + ", ".join(f"trial {r.number}" for r in self.lost)
                       + " (the incumbent's group or the top quartile)")
        elif self.pruned:
            out.append("safe: no trial it would prune is in the incumbent's group or finished "
                       "in the top quartile")
        out.append(f"saving: {self.steps_saved} of {self.steps_full} training steps "
                   f"({self.saving:.1%}) against no pruning")
        return out


def _study_config(study: optuna.study.Study) -> Config | None:
    raw = study.user_attrs.get(_CONFIG_ATTR)
    if not isinstance(raw, dict):
        return None
    try:
        return config_from_dict(raw, path=f"<study {study.study_name}>", name=study.study_name)
    except ConfigError:
        return None


def _incumbent_runs(study: optuna.study.Study, trials: Sequence[FrozenTrial],
                    cfg: Config | None) -> set[int]:
    """The trial numbers of the study's incumbent replicate group (as the sampler ranks it)."""
    from metab_opt.logbook import replicate_groups

    if cfg is not None:
        groups = replicate_groups(trials, config=cfg)
    else:
        names = sorted({k for t in trials for k in t.params})
        groups = replicate_groups(trials, names=names) if names else []
    return {n.number for n in groups[0].runs} if groups else set()


def _top_quartile(values: Mapping[int, float]) -> set[int]:
    if not values:
        return set()
    ranked = sorted(values.values(), reverse=True)
    cut = ranked[math.ceil(len(ranked) / 4) - 1]
    return {n for n, v in values.items() if v >= cut}


def _finished_before(done: FrozenTrial, trial: FrozenTrial) -> bool:
    if done.datetime_complete is not None and trial.datetime_start is not None:
        return done.datetime_complete <= trial.datetime_start
    return done.number < trial.number


def replay(study: optuna.study.Study, pruner: SafePruner | None = None) -> PruneReport:
    """Feed each finished trial's recorded reports, in trial order, through ``pruner`` (default:
    the safe pruner for the study's config) as it would have seen them: only the trials that
    completed before the trial started (and that the replay itself let complete) count as its
    history. Failed and unfinished trials are not replayed."""
    from metab_opt.trial_record import seed_knob, trial_r2

    cfg = _study_config(study)
    if pruner is None:
        pruner = SafePruner(seed_param=seed_knob(cfg))
    trials = sorted(own_trials(study.get_trials(deepcopy=False)), key=lambda t: t.number)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    values = {t.number: v for t in finished if (v := trial_r2(t)) is not None}
    top = _top_quartile(values)
    incumbent = _incumbent_runs(study, trials, cfg)
    completed: list[tuple[FrozenTrial, Curve]] = []  # what the replay let complete
    rows: list[ReplayRow] = []
    for t in finished:
        history = [c for done, c in completed if _finished_before(done, t)]
        n_pruned = sum(r.pruned_at is not None for r in rows)  # stopped before t started
        reports = _reports(t)
        pruned_at: int | None = None
        value_at: float | None = None
        reason = "no report"
        for i in range(len(reports)):
            verdict = pruner.judge_reports(history, reports[:i + 1], t.params, _planned(t),
                                           n_pruned)
            reason = verdict.reason
            if verdict.prune:
                pruned_at, value_at = reports[i]
                break
        # The steps it trained: a complete trial's last report is its last step; a pruned
        # one stopped at its last report.
        ran = reports[-1][0] if reports else 0
        rows.append(ReplayRow(
            number=t.number, state=t.state.name.lower(), value=values.get(t.number),
            ran=ran, full=max(ran, _planned(t) or ran),
            pruned_at=pruned_at, value_at_prune=value_at, reason=reason,
            top_quartile=t.number in top, incumbent=t.number in incumbent))
        if t.state == TrialState.COMPLETE and pruned_at is None:
            curve = _curve(t, pruner.seed_param)
            if curve is not None:
                completed.append((t, curve))
    skipped = len(trials) - len(finished)
    return PruneReport(study=study.study_name, pruner=pruner.describe(), rows=tuple(rows),
                       skipped=skipped)

