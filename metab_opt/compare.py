"""``metab-opt compare``: the UCB sampler against Optuna's samplers on the same objective.

Each sampler runs ``repeats`` times (sampler seeds 0 .. repeats-1) as its own study,
``<name>__<sampler>__r<k>``, in ONE storage (default ``sqlite:///<root>/<name>/compare.db``); each
study's logbook and trial outputs lie under ``<root>/<name>/<study>/``. The studies run
interleaved (repeat 0 of every sampler, then repeat 1, ...) so that a comparison stopped early
still compares like with like. Re-running the same command resumes: the finished trials of every
study are counted and only the missing ones run.

The report (``report.md``, ``best_so_far.png``) is built from the storage alone
(:func:`build_report`), so it can be rebuilt, and tested on synthetic studies, without training.

Fair start: every study's first trial is the config's base values — the UCB sampler's tree
starts there by design, and for Optuna's samplers the base values are enqueued as trial 0 — so
all samplers spend their remaining trials from the same known point.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
import os
import re
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from metab_opt._io import atomic_write
from metab_opt.config import Config, ConfigError, TrainingConfig, load_config, parse_overrides

__all__ = [
    "THRESHOLDS",
    "CompareReport",
    "SamplerSummary",
    "build_report",
    "parse_samplers",
    "run_compare",
    "run_compare_command",
    "study_name",
]

THRESHOLDS = (0.5, 0.8, 0.9)
EARLY = 12  # the "after 12 trials" column: one UCB block of the rank50 regime
_ATTR = "metab_opt:"
_SEP = "__"
# fail_reason prefixes of trials that did not fail because of their settings
_NOT_COUNTED = ("interrupted", "aborted")
# Optional packages an Optuna sampler needs at its first relative sample (not at import).
_SAMPLER_NEEDS = {"cmaes": ("cmaes", "cmaes"), "gp": ("scipy", "scipy")}


def _known_samplers() -> tuple[str, ...]:
    from metab_opt.study import SAMPLERS

    return SAMPLERS


# ---------------------------------------------------------------------------------------------
# Names


def study_name(name: str, sampler: str, repeat: int) -> str:
    """The study of one sampler's repeat: ``<name>__<sampler>__r<k>``."""
    return f"{name}{_SEP}{sampler}{_SEP}r{repeat}"


def _parse_study_name(study: str, name: str) -> tuple[str, int] | None:
    m = re.fullmatch(re.escape(name) + _SEP + r"([a-z]+)" + _SEP + r"r(\d+)", study)
    return (m.group(1), int(m.group(2))) if m else None


def parse_samplers(text: str | Sequence[str]) -> list[str]:
    """``"ucb,tpe"`` -> ``["ucb", "tpe"]``, order kept, duplicates dropped.

    An unknown name raises :class:`ConfigError` (the CLI's one-line error, exit 2).
    """
    known = _known_samplers()
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in items:
        kind = raw.strip().lower()
        if not kind:
            continue
        if kind not in known:
            raise ConfigError(f"--samplers: unknown sampler {raw.strip()!r} "
                              f"(expected a comma list from {','.join(known)})")
        if kind not in out:
            out.append(kind)
    if not out:
        raise ConfigError(f"--samplers: expected a comma list from {','.join(known)}, got "
                          f"{text!r}")
    return out


def _has_module(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _check_sampler_packages(samplers: Iterable[str]) -> None:
    """Fail before anything runs when a sampler's optional package is missing (Optuna would
    fail only at the sampler's first relative sample, trials into the study)."""
    for kind in samplers:
        if kind in _SAMPLER_NEEDS:
            module, dist = _SAMPLER_NEEDS[kind]
            if not _has_module(module):
                raise ConfigError(f"--samplers {kind}: Optuna's sampler needs the '{dist}' "
                                  f"package, which is not installed (pip install {dist}, "
                                  f"or the extra: pip install .[compare])")


# ---------------------------------------------------------------------------------------------
# Reading the storage


def _counted(trials: Sequence[Any]) -> list[Any]:
    """The finished trials that count towards a study's budget, by trial number.

    COMPLETE, PRUNED and FAIL count (a failed training is a result), except the failures that
    say nothing about the settings: a run interrupted (Ctrl-C) or aborted by the study runner,
    and a stale trial (worker killed) that the heartbeat callback re-queued — its retry counts
    instead. Such a trial is run again (as a new trial) when the comparison resumes.
    """
    from optuna.trial import TrialState

    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        reason = str(t.user_attrs.get("fail_reason", ""))
        if t.state == TrialState.FAIL and (
                t.number in retried or reason.startswith(_NOT_COUNTED)):
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            out.append(t)
    return out


def _r2(trial: Any) -> float | None:
    """A trial's rate_constants_R2, or None (failed, pruned, not finite)."""
    from optuna.trial import TrialState

    if trial.state != TrialState.COMPLETE or trial.value is None:
        return None
    value = float(trial.value)
    return value if math.isfinite(value) else None


def _seconds(trial: Any) -> float:
    d = trial.duration
    return d.total_seconds() if d is not None else 0.0


def _open(storage: Any) -> Any:
    if isinstance(storage, (str, os.PathLike)):
        url = str(storage)
        if url.startswith("sqlite:///") and not Path(url.split(":///", 1)[1]).exists():
            raise ConfigError(f"no comparison database at {url.split(':///', 1)[1]}")
        from metab_opt.study import open_storage

        return open_storage(url)
    return storage


def _studies_of(storage: Any, name: str) -> dict[tuple[str, int], int]:
    """(sampler, repeat) -> study id, for every study of the comparison in the storage."""
    out: dict[tuple[str, int], int] = {}
    for s in storage.get_all_studies():
        parsed = _parse_study_name(s.study_name, name)
        if parsed is not None:
            out[parsed] = s._study_id
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


def _summarize(sampler: str, repeats: list[RepeatResult], n_repeats: int,
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


def _read_repeat(storage: Any, study_id: int, study: str, n_trials: int) -> RepeatResult:
    trials = _counted(storage.get_all_trials(study_id, deepcopy=False))[:n_trials]
    steps = [int(t.user_attrs["steps"]) for t in trials
             if isinstance(t.user_attrs.get("steps"), (int, float))]
    return RepeatResult(study=study, values=[_r2(t) for t in trials],
                        seconds=[_seconds(t) for t in trials], steps=steps,
                        enqueued=["fixed_params" in t.system_attrs for t in trials])


# ---------------------------------------------------------------------------------------------
# Formatting


def _f3(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _num(x: float) -> str:
    return f"{x:g}"


def _best_cell(median: float | None, per_repeat: list[float | None], wanted: int) -> str:
    defined = [v for v in per_repeat if v is not None]
    if median is None:
        return "n/a"
    cell = _f3(median)
    if len(defined) > 1:
        cell += f" ({_f3(min(defined))}–{_f3(max(defined))})"
    if len(defined) < wanted:
        cell += f" [{len(defined)} of {wanted} repeats]"
    return cell


def _trials_to_cell(s: SamplerSummary, threshold: float) -> str:
    hits = s.trials_to.get(threshold, [])
    wanted = s.n_repeats_wanted
    reached = [h for h in hits if h is not None]
    listing = ", ".join(str(h) if h is not None else "–" for h in hits)
    median = s.median_trials_to(threshold)
    if median is not None:
        return f"{_num(median)} ({listing})" if wanted > 1 else _num(median)
    if not reached:
        return f"not reached (0/{wanted})"
    return f"not reached ({len(reached)}/{wanted} did: {listing})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _sampler_notes(samplers: Sequence[str], space: _Space, n_iter_block: int | None) -> list[str]:
    cats = ", ".join(f"`{c}`" for c in space.categorical) or "none"
    n_numeric = space.n_numeric
    lines = []
    for s in samplers:
        if s == "ucb":
            block = f" of {n_iter_block} trials" if n_iter_block else ""
            lines.append(f"- **ucb** — `UCBMutationSampler` (this package): a PUCT tree of "
                         f"one-knob mutations on the knobs' grids, rooted at the config's base "
                         f"values, restarted from the incumbent every block{block}. Uses every "
                         f"knob as declared, categoricals included.")
        elif s == "tpe":
            lines.append("- **tpe** — Optuna `TPESampler` (defaults of Optuna 5.0: multivariate "
                         "for a single objective, the first 10 trials drawn at random). "
                         "Categoricals are modelled natively.")
        elif s == "random":
            lines.append("- **random** — Optuna `RandomSampler`: every knob drawn independently "
                         "from its distribution (log-uniform for log knobs whose range "
                         "starts above 0).")
        elif s == "cmaes":
            pop = (f"; its population is 4 + floor(3 ln {n_numeric}) = "
                   f"{4 + math.floor(3 * math.log(n_numeric))} trials per generation"
                   if n_numeric and n_numeric > 1 else "")
            lines.append(f"- **cmaes** — Optuna `CmaEsSampler`. **Cannot use the search space as "
                         f"declared:** CMA-ES handles only numeric knobs; Optuna 5.0 drops "
                         f"categorical distributions from its relative search space, so the "
                         f"categorical knob(s) ({cats}) are drawn by an independent "
                         f"`RandomSampler` on every trial, never learned. The first trial is "
                         f"random (`n_startup_trials=1`){pop}.")
        elif s == "gp":
            lines.append(f"- **gp** — Optuna `GPSampler`. Handles the categorical knob(s) "
                         f"({cats}) its own way: the first 10 trials are drawn at random "
                         f"(`n_startup_trials=10`); after that the Gaussian process models every "
                         f"knob, a categorical one with a 0/1 (Hamming) distance in its kernel, "
                         f"and the acquisition function is maximised over a categorical by "
                         f"trying each choice (exhaustive search), not by a random fallback.")
    optuna_kinds = [k for k in samplers if k != "ucb"]
    if space.linear_from_zero and optuna_kinds:
        zero = ", ".join(f"`{k}`" for k in space.linear_from_zero)
        lines.append(f"- Knobs whose range starts at 0 ({zero}) are log knobs with 0 as \"off\" "
                     f"for the UCB sampler (a log grid from `min_positive`, plus 0); Optuna's "
                     f"log scale excludes 0, so their Optuna distribution is linear on "
                     f"[0, high] and Optuna's samplers here ({', '.join(optuna_kinds)}) "
                     f"draw them on that linear scale (e.g. uniform for random: mostly large "
                     f"values, rarely small or 0).")
    return lines


@dataclass
class _Space:
    """What the trials' distributions say about the search space."""

    categorical: list[str] = field(default_factory=list)
    n_numeric: int | None = None
    linear_from_zero: list[str] = field(default_factory=list)  # float knobs [0, high], not log


def _space_info(storage: Any, ids: Iterable[int]) -> _Space:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    for sid in ids:
        for t in storage.get_all_trials(sid, deepcopy=False):
            if t.distributions:
                d = t.distributions
                return _Space(
                    categorical=[k for k, v in d.items()
                                 if isinstance(v, CategoricalDistribution)],
                    n_numeric=sum(not isinstance(v, CategoricalDistribution) and not v.single()
                                  for v in d.values()),
                    linear_from_zero=[k for k, v in d.items() if isinstance(v, FloatDistribution)
                                      and v.low == 0 and not v.log])
    return _Space()


def _config_info(storage: Any, ids: Iterable[int]) -> tuple[str | None, int | None, int | None]:
    """(config path, base steps per trial, n_iter_block) from the first study that stored them."""
    for sid in ids:
        attrs = storage.get_study_user_attrs(sid)
        body = attrs.get(f"{_ATTR}config")
        path = attrs.get(f"{_ATTR}config_path")
        if not isinstance(body, Mapping):
            continue
        steps = None
        with contextlib.suppress(Exception):
            steps = TrainingConfig(**body["training"]).n_steps(int(body["simulation"]["n_frames"]))
        block = body.get("search", {}).get("n_iter_block")
        return path, steps, block if isinstance(block, int) else None
    return None, None, None


def _commands_of(storage: Any, ids: Iterable[int]) -> list[str]:
    seen: list[str] = []
    for sid in ids:
        for cmd in storage.get_study_user_attrs(sid).get(f"{_ATTR}compare_commands", []) or []:
            if isinstance(cmd, str) and cmd not in seen:
                seen.append(cmd)
    return seen


def _random_values(summary: SamplerSummary) -> list[float]:
    """The R² of every sampled (not enqueued) trial with an R², over all repeats."""
    return [v for r in summary.repeats for v in r.sampled_values if v is not None]


def _quartiles(values: Sequence[float]) -> tuple[float, float, float, float, float]:
    import numpy as np

    q = np.quantile(np.asarray(values, dtype=float), [0.0, 0.25, 0.5, 0.75, 1.0])
    return tuple(float(v) for v in q)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class CompareReport:
    """What :func:`build_report` wrote, with the numbers behind the table."""

    path: Path
    png: Path
    summaries: dict[str, SamplerSummary]
    random_spread: tuple[float, float, float, float, float] | None
    text: str


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def _plot(path: Path, summaries: Mapping[str, SamplerSummary], n_trials: int,
          title: str) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.arange(0.5, n_trials + 1.0)
    shown: list[float] = []
    for i, (sampler, s) in enumerate(summaries.items()):
        curves = np.full((max(len(s.repeats), 1), n_trials), np.nan)
        for j, r in enumerate(s.repeats):
            c = r.best_so_far()[:n_trials]
            curves[j, :len(c)] = c
        have = ~np.all(np.isnan(curves), axis=0)
        if not have.any():
            continue
        with warnings.catch_warnings():  # all-NaN columns (no repeat has an R² yet)
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(curves, axis=0)
            lo = np.nanmin(curves, axis=0)
            hi = np.nanmax(curves, axis=0)
        color = f"C{i % 10}"
        # trial k covers [k - 0.5, k + 0.5]; NaN (no R² yet) leaves a gap
        ax.stairs(hi, edges, baseline=lo, fill=True, color=color, alpha=0.18, linewidth=0)
        ax.stairs(med, edges, baseline=None, color=color, lw=2,
                  label=f"{sampler} ({len(s.repeats)} repeat{'s' if len(s.repeats) != 1 else ''})")
        shown.extend(float(v) for v in np.concatenate([lo[have], hi[have]]) if math.isfinite(v))
    for thr in THRESHOLDS:
        ax.axhline(thr, color="0.6", lw=0.8, ls=":")
    if shown:
        low = max(min(shown), -1.0)  # R² can be hugely negative; keep the interesting range
        high = max(shown)
        pad = max(0.02, 0.05 * (high - low))
        ax.set_ylim(low - pad, min(max(high + pad, max(THRESHOLDS) + 0.02), 1.02))
        if min(shown) < -1.0:
            ax.text(0.01, 0.01, "y axis cut at -1", transform=ax.transAxes, fontsize=8,
                    color="0.4")
    ax.set_xlim(0.5, n_trials + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel("best rate_constants_R2 so far")
    ax.set_title(f"{title}\nmedian over repeats (line), min–max (band); dotted: "
                 f"{', '.join(_num(t) for t in THRESHOLDS)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    if shown:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    fig.clear()
    _atomic_write(path, buf.getvalue())


def build_report(storage: Any, name: str, samplers: Sequence[str], repeats: int, n_trials: int,
                 *, command: str, out_dir: str | Path) -> CompareReport:
    """Write ``report.md`` and ``best_so_far.png`` in ``out_dir`` from the storage alone.

    ``storage`` is an Optuna storage or a storage URL. Studies are found by name
    (``<name>__<sampler>__r<k>``); a missing study or an unfinished one is reported as such.
    Failed trials count as a missing R² (they still count as trials).
    """
    storage = _open(storage)
    out = Path(out_dir)
    found = _studies_of(storage, name)
    ids = [found[k] for k in sorted(found, key=lambda k: (k[1], k[0]))]
    summaries: dict[str, SamplerSummary] = {}
    for sampler in samplers:
        reps = [_read_repeat(storage, found[(sampler, k)], study_name(name, sampler, k),
                             n_trials)
                for k in range(repeats) if (sampler, k) in found]
        summaries[sampler] = _summarize(sampler, reps, repeats, n_trials)

    config_path, base_steps, block = _config_info(storage, ids)
    space = _space_info(storage, ids)
    # The commands that ran trials, as recorded in the studies; ``command`` stands in when
    # none is (studies made by other means).
    commands = _commands_of(storage, ids) or ([command] if command else [])
    spread = None
    if "random" in summaries:
        vals = _random_values(summaries["random"])
        spread = _quartiles(vals) if vals else None

    png = out / "best_so_far.png"
    config_name = Path(config_path).stem if config_path else "unknown"
    _plot(png, summaries, n_trials, f"{name}: {config_name}, {n_trials} trials per study")
    text = _report_text(name, summaries, repeats, n_trials, commands=commands,
                        config_path=config_path, base_steps=base_steps, block=block,
                        space=space, spread=spread)
    path = out / "report.md"
    _atomic_write(path, text.encode())
    return CompareReport(path=path, png=png, summaries=summaries, random_spread=spread,
                         text=text)


def _report_text(name: str, summaries: Mapping[str, SamplerSummary], repeats: int,
                 n_trials: int, *, commands: Sequence[str], config_path: str | None,
                 base_steps: int | None, block: int | None, space: _Space,
                 spread: tuple[float, ...] | None) -> str:
    lines = [f"# Sampler comparison `{name}`", ""]
    lines += ["Produced by:", ""]
    lines += [f"```\n{c}\n```" for c in commands] or ["(command not recorded)"]
    all_steps = [st for s in summaries.values() for r in s.repeats for st in r.steps]
    budget = f"{base_steps:,} steps per trial at the config's base values" if base_steps else (
        "base steps unknown")
    if all_steps:
        budget += (f"; as run (the search may change the duration): median "
                   f"{statistics.median(all_steps):,g}, {min(all_steps):,}–{max(all_steps):,}")
    config_name = Path(config_path).stem if config_path else "unknown"
    lines += ["", f"- config: `{config_name}` ({config_path or 'not recorded'})",
              f"- training budget: {budget}",
              f"- {_plural(len(summaries), 'sampler')} x {_plural(repeats, 'repeat')} "
              f"(sampler seeds 0..{repeats - 1})"
              f" x {n_trials} trials, the same dataset and objective (rate_constants_R2, "
              f"maximised)"]
    baselines = [r for k, s in summaries.items() if k != "ucb" for r in s.repeats]
    if baselines and all(r.enqueued[:1] == [True] for r in baselines):
        lines.append("- fair start: the first trial of every study is the config's base values "
                     "(the UCB tree's root; enqueued as trial 0 for Optuna's samplers)")
    elif baselines and "ucb" in summaries:
        lines.append("- start: the UCB sampler's first trial is the config's base values; "
                     "Optuna's samplers were not given it (they start from their own draws)")
    lines += ["", "![best so far](best_so_far.png)", "", "## Results", ""]
    early = EARLY < n_trials
    head = ["sampler", "repeats"]
    if early:
        head.append(f"median best R² after {EARLY}")
    head.append(f"median best R² after {n_trials}")
    head += [f"trials to R² ≥ {_num(t)}" for t in THRESHOLDS]
    head += ["failed trials", "wall time (sum)", "per trial", "steps per trial"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sampler, s in summaries.items():
        done = f"{s.complete_repeats}/{repeats}"
        if len(s.repeats) < repeats:
            done += f" ({repeats - len(s.repeats)} not started)"
        row = [sampler, done]
        if early:
            row.append(_best_cell(s.median_best_early,
                                  [r.best_within(EARLY) for r in s.repeats], repeats))
        row.append(_best_cell(s.median_best_final,
                              [r.best_within(n_trials) for r in s.repeats], repeats))
        row += [_trials_to_cell(s, t) for t in THRESHOLDS]
        row.append(f"{s.failed} of {s.total_trials}")
        mean = s.mean_trial_seconds
        row += [_minutes(s.wall_seconds), f"{mean:.1f} s" if mean is not None else "n/a"]
        steps = [st for r in s.repeats for st in r.steps]
        row.append(f"{statistics.median(steps):,g}" if steps else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Best R²: median over repeats (min–max in brackets). Trials to a threshold: "
              "median over repeats of the first trial whose R² reached it (each repeat's value "
              "in brackets, – = not reached); \"not reached\" when any repeat never reached it. "
              "Wall time: the sum of the trials' durations. Steps per trial: the median "
              "training steps (the search may lengthen training). A failed trial has no R² but "
              "counts as a trial."]
    lines += _ranking(summaries, n_trials)
    lines += ["", "## Does the objective separate good settings from bad?", ""]
    if spread is not None:
        vals = _random_values(summaries["random"])
        lo, q1, med, q3, hi = spread
        lines.append(f"rate_constants_R2 over the {_plural(len(vals), 'random-sampler trial')} "
                     f"with an R² "
                     f"(settings drawn at random from the whole search space; the enqueued "
                     f"start left out): min {lo:.3g}, "
                     f"Q1 {q1:.3g}, median {med:.3g}, Q3 {q3:.3g}, max {hi:.3g}; "
                     f"{sum(v < 0 for v in vals)} below 0, "
                     f"{sum(v >= THRESHOLDS[0] for v in vals)} at or above {THRESHOLDS[0]}.")
    elif "random" in summaries:
        lines.append("The random sampler has no trial with an R² yet.")
    else:
        lines.append("The random sampler is not part of this comparison.")
    lines += ["", "## Samplers", ""]
    lines += _sampler_notes(list(summaries), space, block)
    lines += ["", "## Studies", "", "| study | trials | failed | best R² | at trial | wall time |",
              "|---|---|---|---|---|---|"]
    for s in summaries.values():
        for r in s.repeats:
            best = r.best_within(r.n) if r.n else None
            at = r.values.index(best) + 1 if best is not None else None
            lines.append(f"| {r.study} | {r.n}/{n_trials} | {r.failed} | {_f3(best)} | "
                         f"{at if at is not None else '–'} | {_minutes(sum(r.seconds))} |")
    return "\n".join(lines) + "\n"


def _ranking(summaries: Mapping[str, SamplerSummary], n_trials: int) -> list[str]:
    ranked = sorted(((s.median_best_final, k) for k, s in summaries.items()
                     if s.median_best_final is not None), reverse=True)
    if len(ranked) < 2:
        return []
    order = " > ".join(f"{k} {_f3(v)}" for v, k in ranked)
    lines = ["", f"Ranking by median best R² after {n_trials} trials: {order}."]
    if "ucb" in summaries and summaries["ucb"].median_best_final is not None:
        ucb = summaries["ucb"].median_best_final
        others = [(v, k) for v, k in ranked if k != "ucb"]
        if others:
            v, k = others[0]
            verdict = "ahead of" if ucb > v else "tied with" if ucb == v else "behind"
            lines.append(f"UCB is {verdict} the best baseline ({k}) by {ucb - v:+.3f}.")
    return lines


# ---------------------------------------------------------------------------------------------
# Running


def _say(stream: TextIO | None, text: str) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def _discover(storage: Any, name: str, samplers: Sequence[str],
              repeats: int) -> tuple[list[str], int]:
    """The samplers and repeat count the report covers: the requested ones plus any other
    study of the same comparison already in the storage (e.g. a second run with cmaes,gp)."""
    found = _studies_of(storage, name)
    known = _known_samplers()
    extra = [s for s in known if s not in samplers and any(k[0] == s for k in found)]
    top = max((k[1] + 1 for k in found), default=0)
    return [*samplers, *extra], max(repeats, top)


def _record_command(study: Any, command: str) -> None:
    if not command:
        return
    cmds = list(study.user_attrs.get(f"{_ATTR}compare_commands", []) or [])
    if command not in cmds:
        study.set_user_attr(f"{_ATTR}compare_commands", [*cmds, command])


def run_compare(cfg: Config, *, samplers: Sequence[str], n_trials: int = 24, repeats: int = 3,
                root: str | Path = "studies", name: str | None = None,
                storage_url: str | None = None, n_jobs: int = 1, device: str = "auto",
                data_root: str | Path | None = None, max_steps: int | None = None,
                heartbeat_interval: int = 10, grace_period: int = 60, command: str = "",
                enqueue_base: bool = True, threads: int | None = 1,
                stream: TextIO | None = None) -> CompareReport:
    """Run (or resume) the comparison and write its report; returns the report.

    Studies run interleaved (repeat 0 of every sampler, then repeat 1, ...); each runs only the
    trials it is missing. ``enqueue_base``: a new study of an Optuna sampler gets the config's
    base values as its first trial (the UCB sampler starts there anyway). ``threads``: torch
    CPU threads for the whole run (1: on a small shared CPU, a second OpenMP thread makes the
    end-of-run evaluation many times slower; None keeps torch's setting). The report is
    rebuilt after every study, so a comparison stopped early still has one.
    """
    import optuna

    from metab_opt.study import open_storage

    kinds = parse_samplers(samplers)
    _check_sampler_packages(kinds)
    if n_trials < 1 or repeats < 1:
        raise ConfigError(f"--n-trials and --repeats must be >= 1, got {n_trials}, {repeats}")
    name = name or f"compare_{cfg.name}"
    folder = Path(root) / name
    url = storage_url or f"sqlite:///{folder / 'compare.db'}"
    data = Path(data_root) if data_root is not None else Path(root) / "data"
    storage = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    if threads is not None and device != "cuda":
        import torch

        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = [(k, s) for k in range(repeats) for s in kinds]

    def report() -> CompareReport:
        report_samplers, report_repeats = _discover(storage, name, kinds, repeats)
        return build_report(storage, name, report_samplers, report_repeats, n_trials,
                            command=command, out_dir=folder)

    run = _Run(cfg=cfg, name=name, folder=folder, url=url, n_trials=n_trials, n_jobs=n_jobs,
               device=device, data=data, max_steps=max_steps,
               heartbeat_interval=heartbeat_interval, grace_period=grace_period,
               command=command, enqueue_base=enqueue_base, stream=stream)
    try:
        with warnings.catch_warnings():  # Optuna's experimental-feature notices, per study
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for i, (k, kind) in enumerate(plan, start=1):
                _run_one(run, storage, kind, k, f"[{i}/{len(plan)}]")
                report()
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            report()
        raise
    result = report()
    _say(stream, f"report: {result.path} and {result.png}")
    return result


@dataclass(frozen=True)
class _Run:
    """The settings every study of one comparison run shares."""

    cfg: Config
    name: str
    folder: Path
    url: str
    n_trials: int
    n_jobs: int
    device: str
    data: Path
    max_steps: int | None
    heartbeat_interval: int
    grace_period: int
    command: str
    enqueue_base: bool
    stream: TextIO | None


def _run_one(run: _Run, storage: Any, kind: str, k: int, tag: str) -> None:
    """Run the missing trials of one study, with a progress line before and after."""
    from optuna.trial import TrialState

    from metab_opt.study import make_sampler, open_study, run_study

    sname = study_name(run.name, kind, k)
    study = open_study(run.cfg, name=sname, storage=storage,
                       sampler=make_sampler(kind, run.cfg, k), sampler_kind=kind)
    trials = study.get_trials(deepcopy=False)
    done = len(_counted(trials))
    missing = max(0, run.n_trials - done)
    head = f"{tag} {sname}"
    if missing == 0:
        _say(run.stream, f"{head}: {done}/{run.n_trials} trials done, nothing to run")
        return
    waiting = any(t.state == TrialState.WAITING for t in trials)
    if run.enqueue_base and kind != "ucb" and done == 0 and not waiting:
        # the start of every study (also after the first run was interrupted before it counted)
        study.enqueue_trial(run.cfg.base_params())
    _record_command(study, run.command)
    _say(run.stream, f"{head}: {done}/{run.n_trials} trials done, running {missing} "
                     f"(sampler {kind}, seed {k})")
    t0 = time.perf_counter()
    study = run_study(run.cfg, name=sname, root=run.folder, storage_url=run.url,
                      n_trials=missing, sampler_kind=kind, n_jobs=run.n_jobs, device=run.device,
                      seed=k, data_root=run.data, progress=False, max_steps=run.max_steps,
                      heartbeat_interval=run.heartbeat_interval, grace_period=run.grace_period,
                      plots=False)
    counted = _counted(study.get_trials(deepcopy=False))[:run.n_trials]
    best = [v for v in (_r2(t) for t in counted) if v is not None]
    _say(run.stream, f"{head}: {len(counted)}/{run.n_trials} trials done in "
                     f"{_minutes(time.perf_counter() - t0)}, best R2 "
                     f"{_f3(max(best) if best else None)}")


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (options in a fixed order, defaults left out)."""
    parts = ["metab-opt", "compare", "--config", str(args.config)]
    for item in getattr(args, "overrides", []) or []:
        parts += ["--set", item]
    parts += ["--samplers", ",".join(parse_samplers(args.samplers)),
              "--n-trials", str(args.n_trials), "--repeats", str(args.repeats)]
    optional = (("--name", "name", None), ("--root", "root", "studies"),
                ("--storage", "storage", None), ("--n-jobs", "n_jobs", 1),
                ("--device", "device", "auto"), ("--data-root", "data_root", None),
                ("--max-steps", "max_steps", None))
    for flag, attr, default in optional:
        value = getattr(args, attr, default)
        if value != default:
            parts += [flag, str(value)]
    return shlex.join(parts)


def run_compare_command(args: argparse.Namespace) -> int:
    """``metab-opt compare``: bad input is a ConfigError (one line, exit 2, nothing written)."""
    samplers = parse_samplers(args.samplers)
    _check_sampler_packages(samplers)
    cfg = load_config(args.config, overrides=parse_overrides(args.overrides))
    if args.device != "auto":
        from metab_opt.training import select_device

        try:
            select_device(args.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    try:
        run_compare(cfg, samplers=samplers, n_trials=args.n_trials, repeats=args.repeats,
                    root=args.root, name=args.name, storage_url=args.storage,
                    n_jobs=args.n_jobs, device=args.device, data_root=args.data_root,
                    max_steps=args.max_steps, heartbeat_interval=args.heartbeat_interval,
                    grace_period=args.grace_period, command=_command_line(args))
    except KeyboardInterrupt:
        print("metab-opt compare: interrupted; the running trial is marked failed and does not "
              "count. Run the same command to resume.", file=sys.stderr)
        return 130
    return 0
