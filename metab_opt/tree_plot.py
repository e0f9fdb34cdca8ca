"""The study's exploration tree as a figure: layout, strategy markers, an R² colour scale that
tells -100 from -0.1 and 0.99 from 0.999 (matplotlib, Agg canvas, PNG; no pyplot)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import FuncNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from metab_opt._figure import PathLike as _PathLike
from metab_opt._figure import color as _color
from metab_opt._figure import new_figure as _new_figure
from metab_opt._figure import save as _save

__all__ = ["OTHER_MARKER", "STRATEGY_MARKERS", "plot_exploration_tree", "r2_norm"]


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


STRATEGY_MARKERS: dict[str, str] = {
    "root": "*",
    "survey": "X",
    "initial-spread": "p",
    "enqueued": "P",
    "replicate": "h",
    "degeneracy-break": "v",
    "boundary-probe": "^",
    "duration": ">",
    "explore": "s",
    "exploit": "o",
}
"""Tree marker per strategy, keyed by the names the sampler writes (``metab_opt.sampler.
STRATEGIES``; a test checks that every one has a marker). Kept here rather than imported so that
the plots do not pull in the sampler (optuna, the config)."""

OTHER_MARKER = "D"
"""Marker of a strategy not in :data:`STRATEGY_MARKERS` (listed as "other" in the legend)."""

_R2_DEFICIT_FLOOR = 1e-3
"""1 - R² below this (R² above 0.999) takes the top colour of the tree's scale."""

_R2_CMAP = "RdYlBu"
"""Diverging: negative R² (worse than predicting the mean k) red, R² = 0 pale yellow at the
centre, positive R² blue, so the sign reads as a hue before any number is read."""

# Colour-bar tick candidates, most wanted first: a later one is dropped when it would sit too
# close to one already kept (see _r2_ticks).
_R2_TICKS = (0.0, 0.9, 0.99, 0.999, -10.0, -100.0, -1000.0, -1.0, 0.5, 0.1)
_R2_TICK_GAP = 0.06  # fraction of the colour bar's length


def r2_norm(values: Sequence[float | None]) -> FuncNorm:
    """The tree's colour norm over the R² values given, R² = 0 at the centre (0.5).

    Each half is a log of ``1 - R²``, the distance from a perfect score. Upper half: ``-log10(1 -
    R²) / 3``, so 0 -> 0.9 -> 0.99 -> 0.999 are equal steps (R² above 0.999 is the top). Lower
    half: ``-log10(1 - R²) / log10(1 - vmin)``, so -1 -> -10 -> -100 are nearly equal steps and
    -100 and -0.1 look nothing alike. ``vmin`` is the lowest finite R², at most -1 (the lower half
    keeps a fixed meaning when nothing is negative); ``vmax`` is 1.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    vmin = min([-1.0, *finite])
    neg_span = math.log10(1.0 - vmin)
    pos_span = -math.log10(_R2_DEFICIT_FLOOR)

    def forward(x: Any) -> Any:
        xa = np.asarray(x, dtype=np.float64)
        closeness = -np.log10(np.maximum(1.0 - xa, _R2_DEFICIT_FLOOR))  # 0 at R² = 0
        return np.where(xa < 0.0, closeness / neg_span, closeness / pos_span)

    def inverse(y: Any) -> Any:
        ya = np.asarray(y, dtype=np.float64)
        return 1.0 - 10.0 ** (-np.where(ya < 0.0, ya * neg_span, ya * pos_span))

    return FuncNorm((forward, inverse), vmin=vmin, vmax=1.0)


def _r2_label(x: object) -> str:
    """R² as a node or tick label: 3 decimals below 10 in size (0.990 vs 0.999), fewer above
    (-45.7, -114), "n/a" when missing or not finite."""
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    if abs(v) >= 100.0:
        return f"{v:.0f}"
    if abs(v) >= 10.0:
        return f"{v:.1f}"
    text = f"{v:.3f}"
    # 0.9996 would print "1.000", a perfect score it is not.
    return ">0.999" if text == "1.000" and v < 1.0 else text


def _r2_ticks(norm: FuncNorm) -> list[float]:
    """Readable colour-bar ticks: the lowest R² (the bar's bottom) and round values, most wanted
    first, each kept only if it is at least ``_R2_TICK_GAP`` of the bar away from those kept
    (so -114 keeps its own label and -100 is dropped). Sorted ascending."""
    vmin, vmax = float(norm.vmin), float(norm.vmax)
    kept: list[float] = [vmin]
    for t in _R2_TICKS:
        if not vmin <= t <= vmax:
            continue
        if all(abs(float(norm(t)) - float(norm(k))) >= _R2_TICK_GAP for k in kept):
            kept.append(t)
    return sorted(kept)


def _r2_tick_label(t: float) -> str:
    # Round ticks print as written (0.5, -100); the bar's bottom, a measured R², as a node does.
    return f"{t:g}" if t in _R2_TICKS else _r2_label(t)


def _text_color(face: Sequence[float]) -> str:
    """Black or white, whichever reads on ``face`` (RGB(A) in [0, 1]), by its luminance."""
    r, g, b = (float(v) for v in face[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


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


def _exploration_tree_figure(nodes: Sequence[Mapping[str, Any]]) -> Figure:
    by_id: dict[int, Mapping[str, Any]] = {}
    for n in nodes:
        by_id[int(n["node"])] = n
    ids = sorted(by_id)
    parent_of: dict[int, int | None] = {}
    for i in ids:
        p = by_id[i].get("parent")
        parent_of[i] = None if p is None else int(p)
    pos, children, _ = _tree_layout(ids, parent_of)

    def r2_of(i: int) -> float:
        try:
            return float(by_id[i].get("r2"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return float("nan")

    r2s = {i: r2_of(i) for i in ids}
    n_leaves = max(1, sum(1 for i in ids if not children[i]))
    depth = max((d for _, d in pos.values()), default=0)
    width = min(36.0, max(7.0, 1.3 * n_leaves + 2.5))
    height = min(30.0, max(4.5, 1.3 * (depth + 1) + 2.0))
    many = len(ids) > 30
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    cmap = colormaps[_R2_CMAP]
    norm = r2_norm(list(r2s.values()))

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
    seen: set[str] = set()
    for i in ids:
        x, d = pos[i]
        r2f = r2s[i]
        face = cmap(norm(r2f)) if math.isfinite(r2f) else (0.75, 0.75, 0.75, 1.0)
        strategy = str(by_id[i].get("strategy", "") or "")
        marker = STRATEGY_MARKERS.get(strategy, OTHER_MARKER)
        seen.add(strategy if strategy in STRATEGY_MARKERS else "other")
        block = int(by_id[i].get("block", 0) or 0)
        size = 420 if not many else 260
        ax.scatter(
            [x],
            [-d],
            # A star's body is small for its area: enlarge it so the id inside still fits.
            s=size * 1.8 if marker == "*" else size,
            marker=marker,
            c=[face],
            edgecolors=block_color[block],
            linewidths=2.0,
            zorder=3,
        )
        ax.text(
            x,
            -d,
            str(i),
            fontsize=7 if many else 8,
            ha="center",
            va="center",
            color=_text_color(face),
            zorder=4,
        )
        ax.text(
            x,
            -d - 0.32,
            _r2_label(r2f),
            fontsize=6 if many else 7,
            ha="center",
            va="center",
            color="0.15",
            zorder=4,
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
        )

    sm = ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    cbar = fig.colorbar(sm, ax=ax, fraction=0.03, pad=0.01, shrink=0.85)
    cbar.set_label("rate_constants_R2 (log scale of 1 - R², 0 at the centre)")
    ticks = _r2_ticks(norm)
    cbar.set_ticks(ticks)
    cbar.set_ticklabels([_r2_tick_label(t) for t in ticks])
    cbar.ax.minorticks_off()
    legend = [
        Line2D([], [], marker=m, ls="", color="0.4", ms=8, label=name)
        for name, m in STRATEGY_MARKERS.items()
        if name in seen
    ]
    if "other" in seen:
        legend.append(Line2D([], [], marker=OTHER_MARKER, ls="", color="0.4", label="other"))
    legend += [
        Line2D(
            [], [], marker="o", ls="", mfc="white", mec=block_color[b], mew=2, label=f"block {b}"
        )
        for b in blocks
    ]
    if any(not math.isfinite(v) for v in r2s.values()):
        legend.append(Line2D([], [], marker="o", ls="", color=(0.75, 0.75, 0.75), label="no R²"))
    ax.legend(
        handles=legend,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        # About 1.4 inches per entry: many strategies and blocks wrap onto several rows.
        ncol=max(1, min(len(legend), int(width / 1.4))),
        frameon=False,
    )
    xs = [x for x, _ in pos.values()] or [0.0]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-depth - 0.55, 0.6)
    ax.set_axis_off()
    ax.set_title(f"Exploration tree ({len(ids)} nodes, {len(blocks)} block(s))")
    return fig


def plot_exploration_tree(path: _PathLike, nodes: Sequence[Mapping[str, Any]]) -> Path:
    """The UCB exploration tree: nodes coloured by R² (grey when None/non-finite).

    Each dict has ``node`` (int), ``parent`` (int | None), ``r2`` (float | None), ``mutation``
    (str), ``strategy`` (str) and ``block`` (int). Layout: depth top-down, leaves side by side,
    each parent centred over its children. Marker: the strategy (:data:`STRATEGY_MARKERS`, keyed
    by the sampler's strategy names; :data:`OTHER_MARKER` for any other); outline colour: the
    block; the legend lists the strategies and blocks present. Each child is labelled with its
    shortened mutation just above it and shows its R² just below (:func:`_r2_label`). Colour
    (:func:`r2_norm`, diverging, R² = 0 at the centre): a log scale of ``1 - R²`` on each side,
    from the lowest R² (at most -1) to 1, with a colour bar labelled in R² values, so -100 and
    -0.1 differ as clearly as 0.9 and 0.99; the node's id is black or white by the face's
    luminance.
    """
    return _save(_exploration_tree_figure(nodes), path)
