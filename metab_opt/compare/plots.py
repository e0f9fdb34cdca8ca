"""The comparison's figures, from its summaries: best R² so far against the trial count
(``best_so_far.png``) and against the cumulative training steps (``best_vs_steps.png``)."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metab_opt._io import atomic_write
from metab_opt.compare.results import THRESHOLDS, RepeatResult, SamplerSummary

__all__ = ["plot_best_vs_steps", "plot_best_vs_trials"]


def _num(x: float) -> str:
    return f"{x:g}"


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig: Any, ax: Any, path: Path, shown: Sequence[float], *, ylabel: str) -> None:
    """Thresholds, the y range (cut at -1: R² can be hugely negative), legend; write the PNG."""
    for thr in THRESHOLDS:
        ax.axhline(thr, color="0.6", lw=0.8, ls=":")
    if shown:
        low = max(min(shown), -1.0)
        high = max(shown)
        pad = max(0.02, 0.05 * (high - low))
        ax.set_ylim(low - pad, min(max(high + pad, max(THRESHOLDS) + 0.02), 1.02))
        if min(shown) < -1.0:
            ax.text(0.01, 0.01, "y axis cut at -1", transform=ax.transAxes, fontsize=8,
                    color="0.4")
        ax.legend(loc="best", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    fig.clear()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())


def _label(sampler: str, s: SamplerSummary) -> str:
    return f"{sampler} ({len(s.repeats)} repeat{'s' if len(s.repeats) != 1 else ''})"


def plot_best_vs_trials(path: Path, summaries: Mapping[str, SamplerSummary], n_trials: int,
                        title: str) -> None:
    """Best R² so far against the trial number: median over repeats, min–max band."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
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
        ax.stairs(med, edges, baseline=None, color=color, lw=2, label=_label(sampler, s))
        shown.extend(float(v) for v in np.concatenate([lo[have], hi[have]]) if math.isfinite(v))
    ax.set_xlim(0.5, n_trials + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_title(f"{title}\nmedian over repeats (line), min–max (band); dotted: "
                 f"{', '.join(_num(t) for t in THRESHOLDS)}", fontsize=10)
    _finish(fig, ax, path, shown, ylabel="best rate_constants_R2 so far")


def _curve(r: RepeatResult) -> tuple[list[int], list[float]]:
    """A repeat's best R² so far at the cumulative steps after each of its trials."""
    return r.cumulative_steps, r.best_so_far()[:len(r.cumulative_steps)]


def _at(xs: Sequence[int], ys: Sequence[float], grid: Any) -> Any:
    """The step function (value after the last trial at or before x) on ``grid``."""
    import numpy as np

    idx = np.searchsorted(np.asarray(xs), grid, side="right") - 1
    vals = np.asarray(ys, dtype=float)
    return np.where(idx >= 0, vals[np.clip(idx, 0, None)], np.nan)


def plot_best_vs_steps(path: Path, summaries: Mapping[str, SamplerSummary], title: str, *,
                       budget: float | None = None) -> None:
    """Best R² so far against the cumulative training steps of the study's trials (a pruned or
    diverged trial counts the steps it ran): each repeat a thin line, their median a thick one
    (up to the shortest repeat's total), each repeat's replicate-confirmed R² a diamond at its
    total. ``budget``: the most a study may spend (trials x step cap), a dashed line."""
    import numpy as np

    fig, ax = _figure()
    shown: list[float] = []
    confirmed = False
    for i, (sampler, s) in enumerate(summaries.items()):
        color = f"C{i % 10}"
        curves = [_curve(r) for r in s.repeats if r.n and r.cumulative_steps[-1] > 0]
        if not curves:
            continue
        for xs, ys in curves:
            ax.step(xs, ys, where="post", color=color, lw=0.9, alpha=0.45)
            shown.extend(v for v in ys if math.isfinite(v))
        end = min(xs[-1] for xs, _ in curves)
        grid = np.unique(np.concatenate([np.asarray(xs) for xs, _ in curves]))
        grid = grid[grid <= end]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(np.vstack([_at(xs, ys, grid) for xs, ys in curves]), axis=0)
        ax.step(grid, med, where="post", color=color, lw=2.2, label=_label(sampler, s))
        for r in s.repeats:
            mean = r.replicate_mean
            if mean is not None and r.cumulative_steps:
                ax.plot([r.cumulative_steps[-1]], [mean], marker="D", ms=6, color=color,
                        markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
                shown.append(mean)
                confirmed = True
    if confirmed:
        ax.plot([], [], marker="D", ms=6, color="0.8", markeredgecolor="black",
                markeredgewidth=0.6, linestyle="none",
                label="replicate-confirmed R² (incumbent + retrains)")
    if budget:
        ax.axvline(budget, color="0.4", lw=0.9, ls="--")
        ax.text(budget, 0.99, " every trial at the cap", transform=ax.get_xaxis_transform(),
                fontsize=7, color="0.4", va="top", ha="right", rotation=90)
    ax.set_xlim(left=0)
    ax.set_xlabel("cumulative training steps of the study's trials")
    ax.set_title(f"{title}\nmedian over repeats (thick, to the shortest repeat's total), each "
                 f"repeat (thin); dotted: {', '.join(_num(t) for t in THRESHOLDS)}",
                 fontsize=10)
    _finish(fig, ax, path, shown, ylabel="best rate_constants_R2 so far")
