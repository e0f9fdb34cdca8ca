"""A comparison's studies as numbers: names, the trials that count, per-repeat and per-sampler
summaries. Read from the storage alone (see :mod:`metab_opt.compare`)."""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metab_opt._optuna_internals import is_enqueued, retried_trial
from metab_opt.config import ConfigError
from metab_opt.logbook import trial_r2
from metab_opt.storage import open_storage

__all__ = [
    "ATTR",
    "EARLY",
    "THRESHOLDS",
    "RepeatResult",
    "SamplerSummary",
    "counted",
    "open_comparison",
    "read_repeat",
    "studies_of",
    "study_name",
    "summarize",
]

THRESHOLDS = (0.5, 0.8, 0.9)
EARLY = 12  # the "after 12 trials" column: one UCB block of the rank50 regime
ATTR = "metab_opt:"  # namespace of the study attrs metab_opt writes
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
    trial; a pruned one's last report — a comparison runs without a pruner, so it has none).
    """
    from optuna.trial import TrialState

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
# Summaries


@dataclass
class RepeatResult:
    """One study: its first ``n_trials`` counted trials in order — R² (None = failed),
    duration, training steps."""

    study: str
    values: list[float | None]
    seconds: list[float]
    steps: list[int]
    enqueued: list[bool] = field(default_factory=list)  # params given, not sampled

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
    for thr in THRESHOLDS:
        s.trials_to[thr] = [r.trials_to(thr) for r in repeats]
    s.failed = sum(r.failed for r in repeats)
    s.total_trials = sum(r.n for r in repeats)
    s.wall_seconds = sum(sum(r.seconds) for r in repeats)
    return s


def read_repeat(storage: Any, study_id: int, study: str, n_trials: int) -> RepeatResult:
    trials = counted(storage.get_all_trials(study_id, deepcopy=False))[:n_trials]
    steps = [int(t.user_attrs["steps"]) for t in trials
             if isinstance(t.user_attrs.get("steps"), (int, float))]
    return RepeatResult(study=study, values=[trial_r2(t) for t in trials],
                        seconds=[_seconds(t) for t in trials], steps=steps,
                        enqueued=[is_enqueued(t) for t in trials])
