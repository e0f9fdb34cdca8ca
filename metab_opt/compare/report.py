"""The comparison's report: ``report.md`` and ``best_so_far.png``, from the storage alone
(:func:`build_report`), so that it can be rebuilt, and tested on synthetic studies, without
training."""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metab_opt._io import atomic_write
from metab_opt.compare.results import (
    ATTR,
    EARLY,
    THRESHOLDS,
    SamplerSummary,
    open_comparison,
    read_repeat,
    studies_of,
    study_name,
    summarize,
)
from metab_opt.config import TrainingConfig

__all__ = ["CompareReport", "build_report", "f3", "minutes"]


# ---------------------------------------------------------------------------------------------
# Formatting


def f3(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _num(x: float) -> str:
    return f"{x:g}"


def _best_cell(median: float | None, per_repeat: list[float | None], wanted: int) -> str:
    defined = [v for v in per_repeat if v is not None]
    if median is None:
        return "n/a"
    cell = f3(median)
    if len(defined) > 1:
        cell += f" ({f3(min(defined))}–{f3(max(defined))})"
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


def minutes(seconds: float) -> str:
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
        body = attrs.get(f"{ATTR}config")
        path = attrs.get(f"{ATTR}config_path")
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
        for cmd in storage.get_study_user_attrs(sid).get(f"{ATTR}compare_commands", []) or []:
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
    storage = open_comparison(storage)
    out = Path(out_dir)
    found = studies_of(storage, name)
    ids = [found[k] for k in sorted(found, key=lambda k: (k[1], k[0]))]
    summaries: dict[str, SamplerSummary] = {}
    for sampler in samplers:
        reps = [read_repeat(storage, found[(sampler, k)], study_name(name, sampler, k),
                             n_trials)
                for k in range(repeats) if (sampler, k) in found]
        summaries[sampler] = summarize(sampler, reps, repeats, n_trials)

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
        row += [minutes(s.wall_seconds), f"{mean:.1f} s" if mean is not None else "n/a"]
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
            lines.append(f"| {r.study} | {r.n}/{n_trials} | {r.failed} | {f3(best)} | "
                         f"{at if at is not None else '–'} | {minutes(sum(r.seconds))} |")
    return "\n".join(lines) + "\n"


def _ranking(summaries: Mapping[str, SamplerSummary], n_trials: int) -> list[str]:
    ranked = sorted(((s.median_best_final, k) for k, s in summaries.items()
                     if s.median_best_final is not None), reverse=True)
    if len(ranked) < 2:
        return []
    order = " > ".join(f"{k} {f3(v)}" for v, k in ranked)
    lines = ["", f"Ranking by median best R² after {n_trials} trials: {order}."]
    if "ucb" in summaries and summaries["ucb"].median_best_final is not None:
        ucb = summaries["ucb"].median_best_final
        others = [(v, k) for v, k in ranked if k != "ucb"]
        if others:
            v, k = others[0]
            verdict = "ahead of" if ucb > v else "tied with" if ucb == v else "behind"
            lines.append(f"UCB is {verdict} the best baseline ({k}) by {ucb - v:+.3f}.")
    return lines
