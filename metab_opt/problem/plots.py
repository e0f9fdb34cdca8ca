"""Diagnostic figures of a training run and of a study (matplotlib, Agg canvas, PNG).

Every function takes the output ``path`` first, creates its parent folders, writes one PNG at
``DPI`` and returns the path. A study's exploration tree is a view of the
study, not of a run: :mod:`metab_opt.tree_plot` draws it. Inputs are numpy arrays (no torch).
Figures are built on
``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so nothing global is
touched (no backend switch, no open-figure registry) and the module is safe in worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike

from metab_opt._figure import DPI
from metab_opt._figure import PathLike as _PathLike
from metab_opt._figure import color as _color
from metab_opt._figure import new_figure as _new_figure
from metab_opt._figure import save as _save
from metab_opt.problem.metrics import OUTLIER_THRESHOLD, best_scale, mlp_node_truth

__all__ = [
    "DPI",
    "plot_mlp_sub",
    "plot_mlp_node",
    "plot_rate_constants",
    "plot_loss",
    "plot_kinograph",
    "plot_embeddings",
    "plot_rollout_traces",
]

def _fmt(x: object, spec: str = ".3f") -> str:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return format(v, spec) if math.isfinite(v) else "nan"


def _fmt_mag(x: float) -> str:
    """A magnitude in two significant digits; small ones as 1.3e-04 rather than 0.00013."""
    if not math.isfinite(x):
        return "nan"
    return f"{x:.1e}" if 0.0 < abs(x) < 1e-2 else f"{x:.2g}"


def _mlp_sub_figure(
    c_grid: ArrayLike,
    curves: Mapping[int, ArrayLike],
    scales: Mapping[int, float | None] | None = None,
) -> Figure:
    c = np.asarray(c_grid, dtype=np.float64).ravel()
    powers = sorted(curves)
    # One panel per s, each on its own y axis: c^1 and c^2 differ by a factor c_max, so on a
    # shared axis the c^1 curve is flat at the bottom.
    fig = _new_figure(4.2 * max(1, len(powers)) + 0.6, 4.5)
    for i, s in enumerate(powers):
        ax = fig.add_subplot(1, max(1, len(powers)), i + 1)
        f = np.asarray(curves[s], dtype=np.float64).ravel()
        target = c ** int(s)
        given = None if scales is None else scales.get(s)
        # A metric that could not be computed (None in metrics.json: the learned curve is flat
        # or non-finite) falls back to the fit here, which then says nan: a plot never fails
        # the training it shows.
        if isinstance(given, (int, float)) and math.isfinite(given):
            scale = float(given)
        else:
            a = best_scale(f, target)
            scale = 1.0 / a if math.isfinite(a) and a != 0.0 else float("nan")
        ax.plot(c, f, color=_color(i), lw=3.0, alpha=0.6, label="learned")
        # The truth is exactly c^s (scale 1): drawing only the best-fit scale·c^s would make a
        # learned curve at 0.24·c^s look perfect, which is the scale error that matters.
        ax.plot(c, target, color="k", lw=1.5, ls="--", zorder=3, label=f"GT c^{s}")
        if math.isfinite(scale):
            ax.plot(
                c,
                scale * target,
                color=_color(i),
                lw=1.2,
                ls=":",
                zorder=4,
                label=f"{_fmt(scale, '.3g')}·c^{s} (shape ref.)",
            )
        ax.set_xlabel("concentration c")
        ax.set_ylabel(f"MLP_sub(c, s={s})")
        ax.set_title(f"s={s}: learned ≈ {_fmt(scale, '.3g')} × c^{s}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not powers:
        fig.add_subplot().set_title("MLP_sub: no curves")
    fig.suptitle("MLP_sub vs true c^s (dashed); dotted: c^s at the learned scale", fontsize=10)
    return fig


def plot_mlp_sub(
    path: _PathLike,
    c_grid: ArrayLike,
    curves: Mapping[int, ArrayLike],
    *,
    scales: Mapping[int, float | None] | None = None,
) -> Path:
    """Learned MLP_sub, one panel per coefficient s: the learned curve (solid), the true ``c^s``
    (black dashed) and ``scale_s · c^s`` (dotted, the shape reference).

    ``scale_s`` is ``scales[s]`` when it is a finite number (``MLP_sub_scale_s{s}`` from the
    metrics: learned ≈ scale·c^s), else the least-squares scale ``1/a``,
    ``a = Σ f_s c^s / Σ f_s²``. A right shape overlaps the dotted line; the right scale also
    overlaps the dashed one (scale 1).
    """
    return _save(_mlp_sub_figure(c_grid, curves, scales), path)


def _mlp_node_figure(
    c: ArrayLike,
    outputs: ArrayLike,
    types: ArrayLike,
    lambdas: Sequence[float],
    baselines: Sequence[float],
) -> Figure:
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    cc = np.asarray(c, dtype=np.float64)
    if cc.ndim == 1:
        cc = np.broadcast_to(cc[:, None], out.shape)
    ty = np.asarray(types, dtype=np.int64).ravel()
    truth = mlp_node_truth(cc, ty, lambdas, baselines)
    fig = _new_figure(12.0, 4.8)
    # Left: learned and truth on one axis (their relative size). Right: the learned curves
    # alone on their own axis, because a learned term 1000x smaller than the truth is a flat
    # line on the left and its shape (sign, slope, per-type baseline) would be invisible.
    both = fig.add_subplot(1, 2, 1)
    alone = fig.add_subplot(1, 2, 2)
    handles: list[Line2D] = []
    for t in np.unique(ty):
        cols = np.flatnonzero(ty == t)
        color = _color(int(t))
        for j in cols:
            both.plot(cc[:, j], out[:, j], color=color, lw=0.7, alpha=0.5, zorder=2)
            alone.plot(cc[:, j], out[:, j], color=color, lw=0.7, alpha=0.6, zorder=2)
        x = cc[:, cols].ravel()
        order = np.argsort(x)
        both.plot(x[order], truth[:, cols].ravel()[order], color="k", lw=2.5, ls="--")
        both.plot(x[order], truth[:, cols].ravel()[order], color=color, lw=1.5, ls="--")
        lam, base = float(lambdas[int(t)]), float(baselines[int(t)])
        handles.append(
            Line2D(
                [],
                [],
                color=color,
                label=f"type {t} ({len(cols)} met.), λ={lam:g}, c_base={base:g}",
            )
        )
    handles.append(Line2D([], [], color="k", ls="--", label="GT -λ(c - c_base)"))
    learned = out[np.isfinite(out)]
    true_vals = truth[np.isfinite(truth)]
    lo, hi = (float(learned.min()), float(learned.max())) if learned.size else (math.nan, math.nan)
    learned_max = max(abs(lo), abs(hi)) if learned.size else math.nan
    true_max = float(np.max(np.abs(true_vals))) if true_vals.size else math.nan
    for ax in (both, alone):
        ax.axhline(0.0, color="0.6", lw=0.8, zorder=1)
        ax.set_xlabel("concentration c")
        ax.grid(alpha=0.3)
    ratio = learned_max / true_max if true_max > 0.0 else math.nan
    both.set_ylabel("MLP_node output")
    both.set_title(
        f"learned vs GT (dashed), same axis\nmax |learned| {_fmt_mag(learned_max)} vs "
        f"max |GT| {_fmt_mag(true_max)} (×{_fmt_mag(ratio)})",
        fontsize=10,
    )
    both.legend(handles=handles, fontsize=8)
    alone.set_ylabel("MLP_node output (learned only)")
    alone.set_title(
        f"learned only, own axis\nrange [{_fmt_mag(lo)}, {_fmt_mag(hi)}]", fontsize=10
    )
    alone.legend(handles=handles[:-1], fontsize=8)
    # Scientific notation on the own-scale axis: 1e-4 values otherwise read as 0.0000.
    alone.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return fig


def plot_mlp_node(
    path: _PathLike,
    c: ArrayLike,
    outputs: ArrayLike,
    types: ArrayLike,
    lambdas: Sequence[float],
    baselines: Sequence[float],
) -> Path:
    """MLP_node of every metabolite (thin, coloured by type), in two panels.

    Left: the learned curves with the truth per type (dashed), on one axis, so their relative
    size shows. Right: the learned curves alone on their own y axis (range in the title), so a
    learned term far smaller than the truth still shows its shape. ``c`` and ``outputs``:
    (n_points, n_metabolites) (``c`` may be a shared 1-D grid); ``types``: (n_metabolites,) ints
    indexing ``lambdas`` and ``baselines``. The truth is ``-λ_t (c - c_base,t)``.
    """
    return _save(_mlp_node_figure(c, outputs, types, lambdas, baselines), path)


def plot_rate_constants(
    path: _PathLike,
    log_k_true: ArrayLike,
    log_k_learned: ArrayLike,
    metrics: Mapping[str, Any],
) -> Path:
    """Learned vs true log10 k with the identity line; outliers (|l - t| > 0.3) in red.

    The title shows ``rate_constants_R2``, ``rate_constants_R2_shifted``,
    ``rate_constants_slope`` and ``n_outliers`` from ``metrics``.
    """
    t = np.asarray(log_k_true, dtype=np.float64).ravel()
    l = np.asarray(log_k_learned, dtype=np.float64).ravel()
    fig = _new_figure(5.5, 5.2)
    ax = fig.add_subplot()
    with np.errstate(invalid="ignore"):
        outlier = np.abs(l - t) > OUTLIER_THRESHOLD
    ax.scatter(t[~outlier], l[~outlier], s=12, color="C0", alpha=0.7, label="reactions")
    if np.any(outlier):
        ax.scatter(
            t[outlier],
            l[outlier],
            s=14,
            color="C3",
            alpha=0.8,
            label=f"|Δ| > {OUTLIER_THRESHOLD:g}",
        )
    both = np.concatenate([t, l])
    both = both[np.isfinite(both)]
    if both.size:
        lo, hi = float(both.min()), float(both.max())
        pad = 0.05 * (hi - lo) + 1e-9
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1.0, label="identity")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("true log10 k")
    ax.set_ylabel("learned log10 k")
    ax.set_title(
        f"R²={_fmt(metrics.get('rate_constants_R2'))}  "
        f"shifted R²={_fmt(metrics.get('rate_constants_R2_shifted'))}\n"
        f"slope={_fmt(metrics.get('rate_constants_slope'))}  "
        f"outliers={_fmt(metrics.get('n_outliers'), '.0f')}/{t.size}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_loss(
    path: _PathLike,
    steps: ArrayLike,
    history: Mapping[str, Sequence[float]],
) -> Path:
    """Loss curves on a log y axis: ``loss`` thick blue, ``regul_total`` cyan, other terms thin.

    Series with no positive value (a regularizer that is off) are listed in the legend as
    "(zero)" but not drawn; non-positive points are masked by the log scale.
    """
    x_all = np.asarray(steps, dtype=np.float64).ravel()
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    keys = [k for k in ("loss", "regul_total") if k in history]
    keys += sorted(k for k in history if k not in ("loss", "regul_total"))
    drawn = False
    for i, key in enumerate(keys):
        y = np.asarray(history[key], dtype=np.float64).ravel()
        n = min(len(y), len(x_all))
        x, y = x_all[:n], y[:n]
        style: dict[str, Any]
        if key == "loss":
            style = {"color": "blue", "lw": 2.5, "zorder": 3}
        elif key == "regul_total":
            style = {"color": "cyan", "lw": 1.8, "zorder": 2}
        else:
            style = {"color": _color(i + 2), "lw": 0.9, "alpha": 0.8}
        ok = np.isfinite(y) & (y > 0)
        if not np.any(ok):
            ax.plot([], [], label=f"{key} (zero)", **style)
            continue
        ax.plot(x, np.where(ok, y, np.nan), label=key, **style)
        drawn = True
    if drawn:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3, which="both")
    if keys:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _finite_range(*arrays: np.ndarray) -> tuple[float, float]:
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def plot_kinograph(path: _PathLike, x_true: ArrayLike, x_pred: ArrayLike) -> Path:
    """Truth, rollout and residual (rollout - truth) as metabolites x frames images.

    ``x_true``, ``x_pred``: (n_frames, n_metabolites). Truth and rollout share a colour scale
    (from the truth, so a diverged rollout saturates instead of washing the truth out); the
    residual uses a symmetric diverging scale. Non-finite values show blank.
    """
    xt = np.asarray(x_true, dtype=np.float64)
    xp = np.asarray(x_pred, dtype=np.float64)
    res = xp - xt
    lo, hi = _finite_range(xt)
    r = res[np.isfinite(res)]
    rmax = float(np.max(np.abs(r))) if r.size else 1.0
    rmax = rmax if rmax > 0 else 1.0
    fig = _new_figure(14.0, 4.5)
    panels = [
        ("truth", xt, "viridis", lo, hi),
        ("rollout", xp, "viridis", lo, hi),
        ("residual (rollout - truth)", res, "RdBu_r", -rmax, rmax),
    ]
    for k, (title, data, cmap, vmin, vmax) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        im = ax.imshow(
            data.T,
            aspect="auto",
            origin="lower",
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_title(title)
        ax.set_xlabel("frame")
        ax.set_ylabel("metabolite")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def plot_embeddings(path: _PathLike, embedding: ArrayLike, types: ArrayLike,
                    metrics: Mapping[str, Any]) -> Path:
    """The learned embeddings (N, D), one dot per metabolite coloured by its true type.

    D = 2 is drawn as is; a wider embedding by its first two principal components (axis labels
    say which). The title shows ``embedding_cluster_acc`` and ``embedding_silhouette``.
    """
    return _save(_embeddings_figure(embedding, types, metrics), path)


def _embeddings_figure(embedding: ArrayLike, types: ArrayLike,
                       metrics: Mapping[str, Any]) -> Figure:
    e = np.asarray(embedding, dtype=np.float64)
    ty = np.asarray(types, dtype=np.int64).ravel()
    labels = ("embedding 0", "embedding 1")
    if e.shape[1] > 2 and np.all(np.isfinite(e)):
        centred = e - e.mean(0)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        e = centred @ vt[:2].T
        share = sv[:2] ** 2 / max(float((sv ** 2).sum()), 1e-300)
        labels = (f"PC 1 ({share[0]:.0%})", f"PC 2 ({share[1]:.0%})")
    elif e.shape[1] == 1:
        e = np.concatenate([e, np.zeros_like(e)], axis=1)
        labels = ("embedding 0", "(one dimension)")
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    for t in np.unique(ty):
        sel = ty == t
        ax.scatter(e[sel, 0], e[sel, 1], s=18, color=_color(int(t)), alpha=0.8,
                   label=f"type {t} ({int(sel.sum())} met.)")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    acc, sil = metrics.get("embedding_cluster_acc"), metrics.get("embedding_silhouette")
    ax.set_title(f"embeddings by true type\ncluster acc {_fmt(acc)}  silhouette {_fmt(sil)}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_rollout_traces(path: _PathLike, x_true: ArrayLike, x_pred: ArrayLike,
                        types: ArrayLike, metrics: Mapping[str, Any], *,
                        n_traces: int = 6) -> Path:
    """The held-out roll-out of a few metabolites (solid) against the truth (dashed).

    ``x_true``, ``x_pred``: (n_frames, n_metabolites). The metabolites shown are the
    ``n_traces`` whose true trajectory varies most, split evenly over the types; each panel is
    one metabolite on its own y scale. The title shows ``test_pearson`` and ``test_R2``.
    """
    return _save(_rollout_figure(x_true, x_pred, types, metrics, n_traces), path)


def _rollout_figure(x_true: ArrayLike, x_pred: ArrayLike, types: ArrayLike,
                    metrics: Mapping[str, Any], n_traces: int) -> Figure:
    xt = np.asarray(x_true, dtype=np.float64)
    xp = np.asarray(x_pred, dtype=np.float64)
    ty = np.asarray(types, dtype=np.int64).ravel()
    kinds = np.unique(ty)
    per_type = max(1, n_traces // max(len(kinds), 1))
    spread = np.nanstd(xt, axis=0)
    chosen: list[int] = []
    for t in kinds:
        cols = np.flatnonzero(ty == t)
        chosen += [int(j) for j in cols[np.argsort(-spread[cols], kind="stable")][:per_type]]
    cols_n = min(3, len(chosen)) or 1
    rows_n = max(1, math.ceil(len(chosen) / cols_n))
    fig = _new_figure(4.2 * cols_n, 2.6 * rows_n + 0.6)
    frames = np.arange(xt.shape[0])
    for k, j in enumerate(chosen):
        ax = fig.add_subplot(rows_n, cols_n, k + 1)
        color = _color(int(ty[j]))
        ax.plot(frames, xt[:, j], color="k", lw=1.2, ls="--", label="truth")
        ax.plot(frames, xp[:, j], color=color, lw=1.2, label="roll-out")
        lo, hi = _finite_range(xt[:, j])
        pad = 0.25 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)  # a runaway roll-out leaves the panel, the truth stays
        ax.set_title(f"metabolite {j} (type {ty[j]})", fontsize=9)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, loc="upper left")  # "best" scans every point: slow
    fig.suptitle(f"held-out roll-out: test_pearson {_fmt(metrics.get('test_pearson'))}  "
                 f"test_R2 {_fmt(metrics.get('test_R2'), '.2f')}", fontsize=10)
    return fig
