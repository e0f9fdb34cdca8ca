"""A comparison's studies as numbers: names, the trials that count, per-repeat and per-sampler
summaries. Read from the storage alone (see :mod:`metab_opt.compare`)."""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metab_opt._optuna_internals import is_enqueued, retried_trial
from metab_opt.config import ConfigError
from metab_opt.logbook import trial_r2
from metab_opt.storage import open_storage
from metab_opt.trial_record import FAILED_VALUE, own_trials

__all__ = [
    "ATTR",
    "EARLY",
    "MAX_STEPS_ATTR",
    "RETRAIN_ATTR",
    "THRESHOLDS",
    "RepeatResult",
    "Retrain",
    "RetrainRun",
    "SamplerSummary",
    "counted",
    "open_comparison",
    "read_repeat",
    "read_retrain",
    "studies_of",
    "study_name",
    "summarize",
]

THRESHOLDS = (0.5, 0.8, 0.9)
EARLY = 12  # the "after 12 trials" column: one UCB block of the rank50 regime
ATTR = "metab_opt:"  # namespace of the study attrs metab_opt writes
RETRAIN_ATTR = f"{ATTR}compare_retrain"  # the study's incumbent trained again (Retrain)
MAX_STEPS_ATTR = f"{ATTR}compare_max_steps"  # the --max-steps caps its trials ran under
_SEP = "__"
# fail_reason prefixes of trials that did not fail because of their settings
_NOT_COUNTED = ("interrupted", "aborted")


# ---------------------------------------------------------------------------------------------
# Names


def study_name(name: str, sampler: str, repeat: int) -> str:
    """The study of one sampler's repeat: ``<name>__<sampler>__r<k>``."""
    return f"{name}{_SEP}{sampler}{_SEP}r{repeat}"


def parse_study_name(study: str, name: str) -> tuple[str, int] | None:
    m = re.fullmatch(re.escape(name) + _SEP + r"([a-z]+)" + _SEP + r"r(\d+)", study)
    return (m.group(1), int(m.group(2))) if m else None




# ---------------------------------------------------------------------------------------------
# Reading the storage


def counted(trials: Sequence[Any]) -> list[Any]:
    """The finished trials that count towards a study's budget, by trial number.

    COMPLETE, PRUNED and FAIL count (a failed training is a result), except the failures that
    say nothing about the settings: a run interrupted (Ctrl-C) or aborted by the study runner,
    and a stale trial (worker killed) that the heartbeat callback re-queued — its retry counts
    instead. Such a trial is run again (as a new trial) when the comparison resumes.

    A counted trial's R² is the logbook's :func:`metab_opt.logbook.trial_r2` (None for a failed
    trial; a pruned one's last report: a comparison runs every sampler with the config's
    ``search.pruner``). A pruned trial's ``steps`` are the steps it ran.
    """
    from optuna.trial import TrialState

    trials = own_trials(trials)
    retried = {retried_trial(t.system_attrs) for t in trials} - {None}
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        reason = str(t.user_attrs.get("fail_reason", ""))
        if t.state == TrialState.FAIL and (
                t.number in retried or reason.startswith(_NOT_COUNTED)):
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            out.append(t)
    return out


def _seconds(trial: Any) -> float:
    d = trial.duration
    return d.total_seconds() if d is not None else 0.0


def open_comparison(storage: Any) -> Any:
    """An Optuna storage, or a storage URL to open (ConfigError if its SQLite file is missing)."""
    if isinstance(storage, (str, os.PathLike)):
        url = str(storage)
        if url.startswith("sqlite:///") and not Path(url.split(":///", 1)[1]).exists():
            raise ConfigError(f"no comparison database at {url.split(':///', 1)[1]}")
        return open_storage(url)
    return storage


def studies_of(storage: Any, name: str) -> dict[tuple[str, int], int]:
    """(sampler, repeat) -> study id, for every study of the comparison in the storage."""
    out: dict[tuple[str, int], int] = {}
    for s in storage.get_all_studies():
        parsed = parse_study_name(s.study_name, name)
        if parsed is not None:
            out[parsed] = storage.get_study_id_from_name(s.study_name)
    return out


# ---------------------------------------------------------------------------------------------
# The incumbent trained again


def _r2_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class RetrainRun:
    """One run of the incumbent (in the study, or trained again): its R², None if it failed."""

    seed: int | None
    r2: float | None
    trial: int | None = None  # the study's trial; None for a retrain
    status: str = ""
    steps: int | None = None
    seconds: float | None = None
    reason: str = ""

    def to_attr(self) -> dict[str, Any]:
        out = {"seed": self.seed, "r2": self.r2, "trial": self.trial, "status": self.status,
               "steps": self.steps, "seconds": self.seconds, "reason": self.reason}
        return {k: v for k, v in out.items() if v not in (None, "") or k in ("seed", "r2")}

    @classmethod
    def from_attr(cls, data: Any) -> RetrainRun | None:
        if not isinstance(data, Mapping):
            return None
        seed, trial, steps = data.get("seed"), data.get("trial"), data.get("steps")
        seconds = data.get("seconds")
        return cls(seed=int(seed) if isinstance(seed, int) else None,
                   r2=_r2_or_none(data.get("r2")),
                   trial=int(trial) if isinstance(trial, int) else None,
                   status=str(data.get("status", "")),
                   steps=int(steps) if isinstance(steps, int) else None,
                   seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
                   reason=str(data.get("reason", "")))


@dataclass(frozen=True)
class Retrain:
    """A finished study's final incumbent trained again with new training seeds, as stored in
    the study's user attr :data:`RETRAIN_ATTR` (so that a resumed comparison does not train it
    again and the report reads it from the storage).

    The incumbent is :func:`metab_opt.best.trials_incumbent`'s replicate group over the study's
    first ``n_trials`` counted trials; ``in_study`` are its runs there, ``runs`` the retrains
    done so far (one per seed of ``seeds``, each at the step cap ``max_steps``).
    """

    n_trials: int
    max_steps: int | None
    seeds: tuple[int, ...]
    params: Mapping[str, Any]  # the group's params, the training seed left out
    in_study: tuple[RetrainRun, ...]
    runs: tuple[RetrainRun, ...] = ()

    @property
    def trials(self) -> tuple[int | None, ...]:
        return tuple(r.trial for r in self.in_study)

    @property
    def missing(self) -> list[int]:
        """The seeds not trained yet."""
        done = {r.seed for r in self.runs}
        return [s for s in self.seeds if s not in done]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def retrain_mean(self) -> float | None:
        """The mean R² of the retrains (a failed one counts R² 0); None until all are done."""
        if not self.complete or not self.runs:
            return None
        return statistics.fmean(_counted_r2(r) for r in self.runs)

    @property
    def replicate_mean(self) -> float | None:
        """The replicate-confirmed R²: the mean over the incumbent's in-study runs and its
        retrains (a failed run counts R² 0, as in the group's own mean); None until every
        retrain is done."""
        if not self.complete:
            return None
        values = [_counted_r2(r) for r in (*self.in_study, *self.runs)]
        return statistics.fmean(values) if values else None

    def with_run(self, run: RetrainRun) -> Retrain:
        runs = tuple(r for r in self.runs if r.seed != run.seed) + (run,)
        order = {s: i for i, s in enumerate(self.seeds)}
        return Retrain(n_trials=self.n_trials, max_steps=self.max_steps, seeds=self.seeds,
                       params=self.params, in_study=self.in_study,
                       runs=tuple(sorted(runs, key=lambda r: order.get(r.seed, len(order)))))

    def to_attr(self) -> dict[str, Any]:
        return {"n_trials": self.n_trials, "max_steps": self.max_steps,
                "seeds": list(self.seeds), "params": dict(self.params),
                "in_study": [r.to_attr() for r in self.in_study],
                "runs": [r.to_attr() for r in self.runs]}

    @classmethod
    def from_attr(cls, data: Any) -> Retrain | None:
        """The stored record; None when there is none (or it is not one)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("n_trials"), int):
            return None
        seeds = data.get("seeds")
        max_steps = data.get("max_steps")
        if not isinstance(seeds, list) or not all(isinstance(x, int) for x in seeds):
            return None
        runs = [RetrainRun.from_attr(r) for r in data.get("runs", []) or []]
        in_study = [RetrainRun.from_attr(r) for r in data.get("in_study", []) or []]
        params = data.get("params")
        return cls(n_trials=int(data["n_trials"]),
                   max_steps=int(max_steps) if isinstance(max_steps, int) else None,
                   seeds=tuple(int(x) for x in seeds),
                   params=dict(params) if isinstance(params, Mapping) else {},
                   in_study=tuple(r for r in in_study if r is not None),
                   runs=tuple(r for r in runs if r is not None))


def _counted_r2(run: RetrainRun) -> float:
    return FAILED_VALUE if run.r2 is None else run.r2


def read_retrain(user_attrs: Mapping[str, Any], n_trials: int) -> Retrain | None:
    """The study's stored retrain of its incumbent over its first ``n_trials`` trials (a record
    made for another trial count is not this comparison's)."""
    record = Retrain.from_attr(user_attrs.get(RETRAIN_ATTR))
    return record if record is not None and record.n_trials == n_trials else None


# ---------------------------------------------------------------------------------------------
# Summaries


@dataclass
class RepeatResult:
    """One study: its first ``n_trials`` counted trials in order — R² (None = failed),
    duration, training steps."""

    study: str
    values: list[float | None]
    seconds: list[float]
    steps: list[int]  # of the trials that recorded them
    enqueued: list[bool] = field(default_factory=list)  # params given, not sampled
    # every trial's training steps, in order: what it ran (a pruned or diverged trial too;
    # 0 when it recorded none, e.g. a failure before training)
    trial_steps: list[int] = field(default_factory=list)
    retrain: Retrain | None = None  # the final incumbent trained again (None: not yet)

    @property
    def cumulative_steps(self) -> list[int]:
        """The training steps spent up to and including each trial."""
        out, total = [], 0
        for st in self.trial_steps[:self.n]:
            total += st
            out.append(total)
        return out

    @property
    def replicate_mean(self) -> float | None:
        """The replicate-confirmed R² of the final incumbent (:attr:`Retrain.replicate_mean`);
        None until the study is finished and its retrains are done."""
        return self.retrain.replicate_mean if self.retrain is not None else None

    @property
    def sampled_values(self) -> list[float | None]:
        """The R² of the trials whose params the sampler chose (not an enqueued start)."""
        flags = self.enqueued + [False] * (self.n - len(self.enqueued))
        return [v for v, e in zip(self.values, flags) if not e]

    @property
    def n(self) -> int:
        return len(self.values)

    def best_within(self, k: int) -> float | None:
        """Best R² over the first ``k`` trials; None if fewer ran or none has an R²."""
        if self.n < k:
            return None
        valid = [v for v in self.values[:k] if v is not None]
        return max(valid) if valid else None

    def best_so_far(self) -> list[float]:
        out, best = [], -math.inf
        for v in self.values:
            if v is not None and v > best:
                best = v
            out.append(best if best > -math.inf else math.nan)
        return out

    def trials_to(self, threshold: float) -> int | None:
        for i, v in enumerate(self.values, start=1):
            if v is not None and v >= threshold:
                return i
        return None

    @property
    def failed(self) -> int:
        return sum(v is None for v in self.values)


@dataclass
class SamplerSummary:
    """The per-sampler row of the report's table (numbers before formatting)."""

    sampler: str
    repeats: list[RepeatResult]
    n_repeats_wanted: int
    n_trials: int
    median_best_early: float | None = None
    median_best_final: float | None = None
    final_range: tuple[float, float] | None = None
    median_replicate: float | None = None  # median over repeats of the replicate-confirmed R²
    trials_to: dict[float, list[int | None]] = field(default_factory=dict)
    failed: int = 0
    total_trials: int = 0
    wall_seconds: float = 0.0

    @property
    def mean_trial_seconds(self) -> float | None:
        return self.wall_seconds / self.total_trials if self.total_trials else None

    @property
    def complete_repeats(self) -> int:
        return sum(r.n >= self.n_trials for r in self.repeats)

    def median_trials_to(self, threshold: float) -> float | None:
        """Median trials needed over the wanted repeats; None if any repeat did not reach it."""
        hits = self.trials_to.get(threshold, [])
        if len(hits) < self.n_repeats_wanted or any(h is None for h in hits) or not hits:
            return None
        return float(statistics.median(h for h in hits if h is not None))


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def summarize(sampler: str, repeats: list[RepeatResult], n_repeats: int,
               n_trials: int) -> SamplerSummary:
    s = SamplerSummary(sampler=sampler, repeats=repeats, n_repeats_wanted=n_repeats,
                       n_trials=n_trials)
    s.median_best_early = _median(r.best_within(EARLY) for r in repeats)
    finals = [b for b in (r.best_within(n_trials) for r in repeats) if b is not None]
    s.median_best_final = _median(finals)
    s.final_range = (min(finals), max(finals)) if finals else None
    s.median_replicate = _median(r.replicate_mean for r in repeats)
    for thr in THRESHOLDS:
        s.trials_to[thr] = [r.trials_to(thr) for r in repeats]
    s.failed = sum(r.failed for r in repeats)
    s.total_trials = sum(r.n for r in repeats)
    s.wall_seconds = sum(sum(r.seconds) for r in repeats)
    return s


def _steps(trial: Any) -> int | None:
    value = trial.user_attrs.get("steps")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def read_repeat(storage: Any, study_id: int, study: str, n_trials: int) -> RepeatResult:
    trials = counted(storage.get_all_trials(study_id, deepcopy=False))[:n_trials]
    steps = [_steps(t) for t in trials]
    retrain = read_retrain(storage.get_study_user_attrs(study_id), n_trials)
    return RepeatResult(study=study, values=[trial_r2(t) for t in trials],
                        seconds=[_seconds(t) for t in trials],
                        steps=[st for st in steps if st is not None],
                        enqueued=[is_enqueued(t) for t in trials],
                        trial_steps=[st or 0 for st in steps],
                        retrain=retrain if len(trials) >= n_trials else None)
