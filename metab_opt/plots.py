"""Diagnostic figures of a training run and of a study (matplotlib, Agg canvas, PNG).

Every function takes the output ``path`` first, creates its parent folders, writes one PNG at
``DPI`` and returns the path. Inputs are numpy arrays (no torch). Figures are built on
``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so nothing global is
touched (no backend switch, no open-figure registry) and the module is safe in worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike

from metab_opt.metrics import OUTLIER_THRESHOLD, best_scale, mlp_node_truth

__all__ = [
    "DPI",
    "plot_mlp_sub",
    "plot_mlp_node",
    "plot_rate_constants",
    "plot_loss",
    "plot_kinograph",
    "plot_exploration_tree",
]

DPI = 100

_PathLike = str | Path


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: _PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI, format="png")
    fig.clear()
    return out


def _fmt(x: object, spec: str = ".3f") -> str:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return format(v, spec) if math.isfinite(v) else "nan"


def _color(i: int) -> str:
    return f"C{i % 10}"


def plot_mlp_sub(
    path: _PathLike,
    c_grid: ArrayLike,
    curves: Mapping[int, ArrayLike],
    *,
    scales: Mapping[int, float] | None = None,
) -> Path:
    """Learned MLP_sub per coefficient s (solid) against ``scale_s · c^s`` (dashed).

    ``scale_s`` is ``scales[s]`` when given (e.g. ``MLP_sub_scale_s{s}`` from the metrics), else
    the least-squares scale ``1/a``, ``a = Σ f_s c^s / Σ f_s²``; a correct shape then overlaps.
    """
    c = np.asarray(c_grid, dtype=np.float64).ravel()
    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    for i, s in enumerate(sorted(curves)):
        f = np.asarray(curves[s], dtype=np.float64).ravel()
        target = c ** int(s)
        if scales is not None and s in scales:
            scale = float(scales[s])
        else:
            a = best_scale(f, target)
            scale = 1.0 / a if math.isfinite(a) and a != 0.0 else float("nan")
        ax.plot(c, f, color=_color(i), lw=3.0, alpha=0.5, label=f"learned, s={s}")
        if math.isfinite(scale):
            ax.plot(
                c,
                scale * target,
                color=_color(i),
                lw=1.5,
                ls="--",
                zorder=3,
                label=f"GT {_fmt(scale, '.3g')}·c^{s}",
            )
    ax.set_xlabel("concentration c")
    ax.set_ylabel("MLP_sub(c, s)")
    ax.set_title("MLP_sub vs scaled c^s (dashed)")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_mlp_node(
    path: _PathLike,
    c: ArrayLike,
    outputs: ArrayLike,
    types: ArrayLike,
    lambdas: Sequence[float],
    baselines: Sequence[float],
) -> Path:
    """MLP_node of every metabolite (thin, coloured by type) and the truth per type (dashed).

    ``c`` and ``outputs``: (n_points, n_metabolites) (``c`` may be a shared 1-D grid);
    ``types``: (n_metabolites,) ints indexing ``lambdas`` and ``baselines``. The truth is
    ``-λ_t (c - c_base,t)``.
    """
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    cc = np.asarray(c, dtype=np.float64)
    if cc.ndim == 1:
        cc = np.broadcast_to(cc[:, None], out.shape)
    ty = np.asarray(types, dtype=np.int64).ravel()
    truth = mlp_node_truth(cc, ty, lambdas, baselines)
    fig = _new_figure(6.5, 4.5)
    ax = fig.add_subplot()
    handles: list[Line2D] = []
    for t in np.unique(ty):
        cols = np.flatnonzero(ty == t)
        color = _color(int(t))
        for j in cols:
            ax.plot(cc[:, j], out[:, j], color=color, lw=0.7, alpha=0.5)
        x = cc[:, cols].ravel()
        order = np.argsort(x)
        ax.plot(x[order], truth[:, cols].ravel()[order], color="k", lw=2.5, ls="--")
        ax.plot(x[order], truth[:, cols].ravel()[order], color=color, lw=1.5, ls="--")
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
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("concentration c")
    ax.set_ylabel("MLP_node output")
    ax.set_title("MLP_node per metabolite vs true homeostasis (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    return _save(fig, path)


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


def _short_mutation(text: str, limit: int = 16) -> str:
    """``learning_rate_k: 0.001 -> 0.002`` -> ``lr_k:\n0.001→0.002``, each line cut at limit."""
    s = str(text or "").strip()
    for long, short in (
        ("learning_rate_", "lr_"),
        ("coeff_", ""),
        ("data_augmentation_loop", "aug"),
        ("batch_size", "bs"),
        ("n_epochs", "ep"),
        (" -> ", "→"),
        ("->", "→"),
    ):
        s = s.replace(long, short)
    lines = s.split(": ", 1) if ": " in s else [s]
    lines[0] += ":" if len(lines) == 2 else ""
    return "\n".join(x if len(x) <= limit else x[: limit - 1] + "…" for x in lines)


_STRATEGY_MARKERS = {"exploit": "o", "explore": "s", "boundary": "^"}


def _tree_layout(
    ids: list[int], parent_of: dict[int, int | None]
) -> tuple[dict[int, tuple[float, int]], dict[int, list[int]], list[int]]:
    """Layered layout: depth from the root, x by leaf order, a parent centred over its children.

    A node whose parent is None, unknown, or on a parent cycle is a root; roots are laid out one
    after the other.
    """
    known = set(ids)
    children: dict[int, list[int]] = {i: [] for i in ids}
    roots: list[int] = []
    for i in ids:
        p = parent_of.get(i)
        # Walk up to detect cycles: a node on a cycle becomes a root.
        seen = {i}
        q = p
        cyclic = False
        while q is not None and q in known:
            if q in seen:
                cyclic = True
                break
            seen.add(q)
            q = parent_of.get(q)
        if p is None or p not in known or cyclic:
            roots.append(i)
        else:
            children[p].append(i)
    for lst in children.values():
        lst.sort()
    pos: dict[int, tuple[float, int]] = {}
    next_x = 0.0

    def place(node: int, depth: int) -> float:
        nonlocal next_x
        kids = children[node]
        if not kids:
            x = next_x
            next_x += 1.0
        else:
            xs = [place(k, depth + 1) for k in kids]
            x = 0.5 * (xs[0] + xs[-1])
        pos[node] = (x, depth)
        return x

    for r in sorted(roots):
        place(r, 0)
    return pos, children, roots


def plot_exploration_tree(path: _PathLike, nodes: Sequence[Mapping[str, Any]]) -> Path:
    """The UCB exploration tree: nodes coloured by R² (grey when None/non-finite).

    Each dict has ``node`` (int), ``parent`` (int | None), ``r2`` (float | None), ``mutation``
    (str), ``strategy`` (str) and ``block`` (int). Layout: depth top-down, leaves side by side,
    each parent centred over its children. Marker: strategy (o exploit, s explore, ^ boundary,
    D other); outline colour: block. Each child is labelled with its shortened
    mutation just above it and shows its R² just below. The colour
    scale spans R² in [0, 1]; lower values take the bottom colour.
    """
    by_id: dict[int, Mapping[str, Any]] = {}
    for n in nodes:
        by_id[int(n["node"])] = n
    ids = sorted(by_id)
    parent_of: dict[int, int | None] = {}
    for i in ids:
        p = by_id[i].get("parent")
        parent_of[i] = None if p is None else int(p)
    pos, children, _ = _tree_layout(ids, parent_of)

    n_leaves = max(1, sum(1 for i in ids if not children[i]))
    depth = max((d for _, d in pos.values()), default=0)
    width = min(36.0, max(6.0, 1.3 * n_leaves + 2.0))
    height = min(30.0, max(4.0, 1.3 * (depth + 1) + 1.5))
    many = len(ids) > 30
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    norm = Normalize(vmin=0.0, vmax=1.0)

    for i in ids:
        for k in children[i]:
            (x0, d0), (x1, d1) = pos[i], pos[k]
            ax.plot([x0, x1], [-d0, -d1], color="0.55", lw=1.0, zorder=1)
            label = _short_mutation(str(by_id[k].get("mutation", "")), 14 if many else 20)
            if label:
                # Just above the child: nodes of one layer are >= 1 apart, so labels do not
                # collide the way edge midpoints of close siblings do.
                ax.text(
                    x1,
                    -d1 + 0.4,
                    label,
                    fontsize=6 if many else 7,
                    ha="center",
                    va="center",
                    zorder=2,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                )

    blocks = sorted({int(by_id[i].get("block", 0) or 0) for i in ids})
    block_color = {b: _color(j) for j, b in enumerate(blocks)}
    for i in ids:
        x, d = pos[i]
        r2 = by_id[i].get("r2")
        try:
            r2f = float(r2) if r2 is not None else float("nan")
        except (TypeError, ValueError):
            r2f = float("nan")
        face = cmap(norm(r2f)) if math.isfinite(r2f) else (0.75, 0.75, 0.75, 1.0)
        strategy = str(by_id[i].get("strategy", "") or "")
        marker = _STRATEGY_MARKERS.get(strategy, "D")
        block = int(by_id[i].get("block", 0) or 0)
        ax.scatter(
            [x],
            [-d],
            s=420 if not many else 260,
            marker=marker,
            c=[face],
            edgecolors=block_color[block],
            linewidths=2.0,
            zorder=3,
        )
        text_color = "white" if math.isfinite(r2f) and norm(r2f) < 0.5 else "black"
        ax.text(
            x,
            -d,
            str(i),
            fontsize=7 if many else 8,
            ha="center",
            va="center",
            color=text_color,
            zorder=4,
        )
        ax.text(
            x,
            -d - 0.3,
            f"{r2f:.2f}" if math.isfinite(r2f) else "n/a",
            fontsize=6,
            ha="center",
            va="center",
            color="0.25",
            zorder=4,
        )

    sm = ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    fig.colorbar(
        sm, ax=ax, fraction=0.03, pad=0.01, shrink=0.8, extend="min", label="rate_constants_R2"
    )
    legend = [
        Line2D([], [], marker=m, ls="", color="0.4", label=s) for s, m in _STRATEGY_MARKERS.items()
    ]
    legend += [
        Line2D(
            [], [], marker="o", ls="", mfc="white", mec=block_color[b], mew=2, label=f"block {b}"
        )
        for b in blocks
    ]
    legend.append(Line2D([], [], marker="o", ls="", color=(0.75, 0.75, 0.75), label="no R²"))
    ax.legend(
        handles=legend,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(legend),
        frameon=False,
    )
    xs = [x for x, _ in pos.values()] or [0.0]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-depth - 0.5, 0.5)
    ax.set_axis_off()
    ax.set_title(f"Exploration tree ({len(ids)} nodes, {len(blocks)} block(s))")
    return _save(fig, path)
