"""The reaction network as a picture: where in the network the learned rate constants are wrong.

:func:`plot_network` draws the network as a bipartite graph, metabolites (dots, one colour and
shape per type: a real model's compartment) and reactions (small squares), with an arrow from
each substrate to its reaction and from each reaction to its products. Each reaction square is
coloured by the error of its learned ``log10 k`` (learned − true) on a diverging scale centred
at 0, so a region of the network the model gets wrong shows as a patch of one colour, and the
worst reactions carry their names.

Hub metabolites (H+, H2O, ATP in a real model: each in dozens of reactions) would pull every
reaction to the centre and cover the picture with their edges, so metabolites in more than
``hub_degree`` reactions are left out of the layout and the drawing; the caption names them.
The layout is a force-directed one (Fruchterman-Reingold) written here on numpy, from a seeded
start: the same network gives the same picture, and no layout library is needed. Its cost is
quadratic in the nodes, so a network of more than :data:`MAX_NODES` nodes (iJO1366: ~4,700)
gets a summary instead: the distribution of the errors and the worst reactions by name.

Same conventions as :mod:`metab_opt.problem.plots`: the output path first, one PNG at ``DPI``,
matplotlib ``Figure`` on an Agg canvas (never pyplot), numpy inputs (no torch).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike

from metab_opt._figure import PathLike as _PathLike
from metab_opt._figure import color as _color
from metab_opt._figure import new_figure as _new_figure
from metab_opt._figure import save as _save
from metab_opt.problem.metrics import r2_identity

__all__ = ["HUB_MIN_DEGREE", "MAX_NODES", "hub_threshold", "layout", "network_figure",
           "plot_network"]

MAX_NODES = 1500
"""Above this many nodes (metabolites + reactions) a summary is drawn instead of the graph: the
layout costs O(nodes²) per iteration and a picture of thousands of nodes is unreadable anyway."""

HUB_MIN_DEGREE = 10
"""A metabolite is a hub when it takes part in more than max(this, 3 × the median metabolite's
number of reactions): h_c (49), h2o_c (24), atp_c (17) in e_coli_core, none in PDE_M1's random
networks, whose metabolites are all alike."""

ERROR_PERCENTILE = 98.0
"""The colour scale's limit: this percentile of |error|, so one runaway reaction does not wash
the others out (the colour bar's ends say that it is clipped)."""

# BiGG's compartment suffixes (the SBML ids' last ``_x``), for the legend.
_COMPARTMENTS = {"c": "cytosol", "e": "extracellular", "p": "periplasm", "m": "mitochondrion",
                 "x": "peroxisome", "n": "nucleus", "r": "ER", "g": "Golgi", "v": "vacuole"}
_MET_MARKERS = ("o", "^", "v", "D", "P", "X", "h", "<", ">")  # the square is for reactions


def _participants(S: np.ndarray, power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(substrate, product) masks, (n_met, n_reac) each.

    A substrate is consumed (S < 0) or in the rate law (power > 0): H2O in a real model is
    consumed without a power, and PDE_M1's autocatalytic reactions (A + B -> 2B) have B in the
    rate law with a net S of +1, so B is both, and both arrows are drawn.
    """
    return (S < 0) | (power > 0), S > 0


def hub_threshold(degree: np.ndarray) -> int:
    """The number of reactions above which a metabolite counts as a hub (:data:`HUB_MIN_DEGREE`)."""
    active = degree[degree > 0]
    median = float(np.median(active)) if active.size else 0.0
    return max(HUB_MIN_DEGREE, int(math.ceil(3.0 * median)))


def layout(n_nodes: int, edges: ArrayLike, *, iterations: int = 120,
           seed: int = 0) -> np.ndarray:
    """Fruchterman-Reingold positions (n_nodes, 2) in [-1, 1]², from a seeded random start.

    ``edges``: (n_edges, 2) node indices. Every pair of nodes repels (k²/d), every edge pulls
    (d²/k), and a weak pull to the centre keeps disconnected pieces (a reaction whose metabolites
    are all hubs) from drifting off. The step is capped by a temperature that cools linearly to
    zero. Pure numpy, no threads: the same input gives the same positions, bit for bit.
    """
    if n_nodes < 2:
        return np.zeros((n_nodes, 2))
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-1.0, 1.0, size=(2, n_nodes))
    k = 2.0 / math.sqrt(n_nodes)  # the ideal edge length in a box of side 2
    gravity = 0.05 * n_nodes * k  # of the order of one node's summed repulsion
    t0 = 0.2  # the first step's cap: a tenth of the box
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    u, v = edges[:, 0], edges[:, 1]
    # x and y apart, in buffers reused across iterations: 5x faster than one (n, n, 2) array.
    dx, dy = np.empty((n_nodes, n_nodes)), np.empty((n_nodes, n_nodes))
    w, tmp = np.empty((n_nodes, n_nodes)), np.empty((n_nodes, n_nodes))
    for it in range(iterations):
        np.subtract(x[:, None], x[None, :], out=dx)
        np.subtract(y[:, None], y[None, :], out=dy)
        np.multiply(dx, dx, out=w)
        np.multiply(dy, dy, out=tmp)
        w += tmp
        np.maximum(w, 1e-8, out=w)
        np.divide(k * k, w, out=w)  # repulsion k²/d along the unit vector: delta · k²/d²
        fx = np.einsum("ij,ij->i", dx, w)  # the diagonal's delta is 0
        fy = np.einsum("ij,ij->i", dy, w)
        ex, ey = x[u] - x[v], y[u] - y[v]
        pull = np.sqrt(ex * ex + ey * ey) / k  # attraction d²/k along the unit vector
        # bincount sums each node's pulls in edge order (the same every run), faster than add.at.
        fx -= np.bincount(u, ex * pull, n_nodes) - np.bincount(v, ex * pull, n_nodes)
        fy -= np.bincount(u, ey * pull, n_nodes) - np.bincount(v, ey * pull, n_nodes)
        fx -= gravity * x
        fy -= gravity * y
        length = np.maximum(np.sqrt(fx * fx + fy * fy), 1e-12)
        cap = np.minimum(length, t0 * (1.0 - it / iterations)) / length
        x += fx * cap
        y += fy * cap
    pos = np.stack([x, y], axis=1)
    pos -= pos.mean(0)
    scale = float(np.abs(pos).max())
    return pos / scale if scale > 0 else pos


def _type_labels(types: np.ndarray, names: Sequence[str]) -> dict[int, str]:
    """type -> legend text: a real model's compartment (``c cytosol``) where every metabolite
    of the type has the same id suffix, else ``type t``; with the count."""
    out: dict[int, str] = {}
    for t in np.unique(types):
        members = np.flatnonzero(types == t)
        suffixes = {names[i].rsplit("_", 1)[1] if "_" in names[i] else ""
                    for i in members} if names else set()
        if len(suffixes) == 1 and (s := suffixes.pop()):
            label = f"{s} {_COMPARTMENTS[s]}" if s in _COMPARTMENTS else f"compartment {s}"
        else:
            label = f"type {int(t)}"
        out[int(t)] = f"{label} ({len(members)} met.)"
    return out


def _error_scale(err: np.ndarray) -> tuple[Normalize, Colormap, float]:
    finite = np.abs(err[np.isfinite(err)])
    lim = float(np.percentile(finite, ERROR_PERCENTILE)) if finite.size else 1.0
    lim = lim if lim > 0 else 1.0
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.6")  # a non-finite learned k: grey
    return Normalize(-lim, lim, clip=True), cmap, lim


def _worst(err: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` reactions of largest |error| (non-finite first: a learned k that ran away),
    ties by index, so the choice is deterministic."""
    key = np.where(np.isfinite(err), np.abs(err), np.inf)
    return np.argsort(-key, kind="stable")[:max(n, 0)]


def _title(r2: float, n_met: int, n_reac: int,
           head: str = "reaction network, coloured by the error of the learned log10 k") -> str:
    r2_text = f"{r2:.3f}" if math.isfinite(r2) else "nan"
    return f"{head}\nR² of log k {r2_text}  ·  {n_met} metabolites, {n_reac} reactions"


def plot_network(path: _PathLike, S: ArrayLike, substrate_power: ArrayLike,
                 log_k_true: ArrayLike, log_k_learned: ArrayLike, *,
                 metabolite_names: Sequence[str] = (), reaction_names: Sequence[str] = (),
                 metabolite_type: ArrayLike | None = None, label_top: int = 8,
                 hub_degree: int | None = None) -> Path:
    """The network as a bipartite graph, each reaction coloured by learned − true log10 k.

    ``S``, ``substrate_power``: (n_metabolites, n_reactions), as in
    :class:`metab_opt.problem.networks.Network`; ``log_k_*``: (n_reactions,). Names (SBML ids)
    label the ``label_top`` worst reactions (``R<j>`` without names) and, in a network of at
    most 100 metabolites, every drawn metabolite. ``hub_degree``: metabolites in more reactions
    are left out (default :func:`hub_threshold`). The title carries the R² of log k (the
    study's ``rate_constants_R2``); over :data:`MAX_NODES` nodes the figure is a summary.
    """
    fig = network_figure(S, substrate_power, log_k_true, log_k_learned,
                         metabolite_names=metabolite_names, reaction_names=reaction_names,
                         metabolite_type=metabolite_type, label_top=label_top,
                         hub_degree=hub_degree)
    return _save(fig, path)


def network_figure(S: ArrayLike, substrate_power: ArrayLike, log_k_true: ArrayLike,
                   log_k_learned: ArrayLike, *, metabolite_names: Sequence[str] = (),
                   reaction_names: Sequence[str] = (), metabolite_type: ArrayLike | None = None,
                   label_top: int = 8, hub_degree: int | None = None) -> Figure:
    """:func:`plot_network`'s figure, not saved (the tests read its parts)."""
    s = np.asarray(S, dtype=np.float64)
    power = np.asarray(substrate_power, dtype=np.float64)
    true = np.asarray(log_k_true, dtype=np.float64).ravel()
    err = np.asarray(log_k_learned, dtype=np.float64).ravel() - true
    n_met, n_reac = s.shape
    types = (np.zeros(n_met, dtype=np.int64) if metabolite_type is None
             else np.asarray(metabolite_type, dtype=np.int64).ravel())
    met_names, reac_names = tuple(metabolite_names), tuple(reaction_names)
    reac_label = [reac_names[j] if reac_names else f"R{j}" for j in range(n_reac)]
    r2 = r2_identity(np.asarray(log_k_learned, dtype=np.float64).ravel(), true)
    if n_met + n_reac > MAX_NODES:
        return _summary_figure(err, reac_label, r2, n_met, n_reac, max(label_top, 20))

    sub, prod = _participants(s, power)
    degree = (sub | prod).sum(1)
    threshold = hub_threshold(degree) if hub_degree is None else int(hub_degree)
    hubs = np.flatnonzero(degree > threshold)
    kept = np.flatnonzero(degree <= threshold)
    # Node ids: the kept metabolites 0..len(kept)-1, then the reactions.
    node_of_met = np.full(n_met, -1)
    node_of_met[kept] = np.arange(len(kept))
    off = len(kept)
    sm, sr = np.nonzero(sub[kept])
    pm, pr = np.nonzero(prod[kept])
    arrows = np.concatenate([np.stack([sm, off + sr], 1),  # substrate -> reaction
                             np.stack([off + pr, pm], 1)]).astype(np.int64)  # -> product
    # The layout sees each metabolite-reaction pair once, whatever the arrows.
    pairs = np.unique(np.sort(arrows, axis=1), axis=0) if len(arrows) else arrows
    pos = layout(off + n_reac, pairs)
    pm_xy, pr_xy = pos[:off], pos[off:]

    fig = _new_figure(11.0, 9.5)
    ax = fig.add_subplot()
    n_nodes = off + n_reac
    size = float(np.clip(6000.0 / max(n_nodes, 1), 6.0, 40.0))
    if len(arrows):
        a, b = pos[arrows[:, 0]], pos[arrows[:, 1]]
        ax.add_collection(LineCollection(np.stack([a, b], 1), colors="0.75", linewidths=0.6,
                                         zorder=1))
        # A small head three quarters of the way along each edge gives its direction without
        # the cost of one FancyArrowPatch per edge.
        mid = a + 0.75 * (b - a)
        d = b - a
        ax.quiver(mid[:, 0], mid[:, 1], d[:, 0], d[:, 1], angles="xy", pivot="mid",
                  color="0.5", width=0.0012, headwidth=6.0, headlength=6.5,
                  headaxislength=6.0, scale=1.0 / 0.06, scale_units="xy", zorder=2)
    labels = _type_labels(types, met_names)
    handles: list[Line2D] = []
    for i, t in enumerate(sorted(labels)):
        sel = kept[types[kept] == t]
        marker = _MET_MARKERS[i % len(_MET_MARKERS)]
        ax.scatter(pm_xy[node_of_met[sel], 0], pm_xy[node_of_met[sel], 1], s=size,
                   marker=marker, color=_color(t), edgecolors="white", linewidths=0.4,
                   zorder=3)
        handles.append(Line2D([], [], ls="", marker=marker, color=_color(t), label=labels[t]))
    norm, cmap, lim = _error_scale(err)
    sc = ax.scatter(pr_xy[:, 0], pr_xy[:, 1], c=err, cmap=cmap, norm=norm, s=size * 1.1,
                    marker="s", edgecolors="0.2", linewidths=0.5, plotnonfinite=True,
                    zorder=4)
    handles.append(Line2D([], [], ls="", marker="s", color="white", markeredgecolor="0.2",
                          label="reaction (colour: error)"))
    if met_names and len(kept) <= 100:
        for i in kept:
            x, y = pm_xy[node_of_met[i]]
            ax.annotate(met_names[i], (x, y), xytext=(3, -3), textcoords="offset points",
                        fontsize=5.5, color="0.35", va="top", zorder=5)
    worst = _worst(err, label_top)
    for j in worst:
        x, y = pr_xy[j]
        e_text = f"{err[j]:+.2f}" if math.isfinite(err[j]) else "nan"
        ax.annotate(f"{reac_label[j]} ({e_text})", (x, y), xytext=(5, 5),
                    textcoords="offset points", fontsize=7.5, weight="bold", zorder=6,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "0.5",
                          "alpha": 0.85, "lw": 0.5})
    cbar = fig.colorbar(sc, ax=ax, fraction=0.035, pad=0.01, shrink=0.75, extend="both")
    cbar.set_label("learned − true log10 k (clipped)")
    # In a band above the nodes (the y limit leaves it free), in one row: it hides nothing.
    ax.legend(handles=handles, loc="upper center", ncols=len(handles), fontsize=8,
              framealpha=0.85, handletextpad=0.2, columnspacing=1.2)
    ax.set_title(_title(r2, n_met, n_reac), fontsize=11)
    ax.set_xlim(-1.08, 1.08)
    ax.set_ylim(-1.08, 1.2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    # The caption as the x label: tight_layout keeps room for it (it ignores fig.text).
    ax.set_xlabel(_caption(hubs, degree, threshold, met_names, lim, len(worst)), fontsize=8,
                  loc="left")
    return fig


def _caption(hubs: np.ndarray, degree: np.ndarray, threshold: int, names: Sequence[str],
             lim: float, n_labelled: int) -> str:
    text = (f"Arrows: substrate → reaction → product. Colour scale clipped at ±{lim:.2g} "
            f"(the {ERROR_PERCENTILE:g}th percentile of |error|); labelled: the {n_labelled} "
            f"reactions of largest |error|. ")
    if hubs.size:
        order = hubs[np.argsort(-degree[hubs], kind="stable")]
        listed = ", ".join(f"{names[i] if names else f'M{i}'} ({degree[i]})" for i in order)
        text += (f"Left out of the layout and the drawing, as hubs (in more than {threshold} "
                 f"reactions each): {listed}.")
    else:
        text += f"No hub metabolite (none in more than {threshold} reactions)."
    return "\n".join(textwrap.wrap(text, 150))


def _summary_figure(err: np.ndarray, reac_label: Sequence[str], r2: float, n_met: int,
                    n_reac: int, n_worst: int) -> Figure:
    """A network too large to draw: the errors' histogram and the worst reactions by name."""
    norm, cmap, lim = _error_scale(err)
    fig = _new_figure(12.0, 6.5)
    ax = fig.add_subplot(1, 2, 1)
    finite = err[np.isfinite(err)]
    if finite.size:
        ax.hist(np.clip(finite, -3 * lim, 3 * lim), bins=60, color="0.45")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel("learned − true log10 k (clipped at ±3× the colour limit)")
    ax.set_ylabel("reactions")
    ax.set_title(f"all {len(err)} reactions ({int((~np.isfinite(err)).sum())} non-finite, "
                 f"not shown)", fontsize=9)
    ax2 = fig.add_subplot(1, 2, 2)
    worst = _worst(err, n_worst)
    vals = np.where(np.isfinite(err[worst]), err[worst], 0.0)
    ax2.barh(np.arange(len(worst)), vals, color=cmap(norm(err[worst])), edgecolor="0.3")
    names = [reac_label[j] if math.isfinite(err[j]) else f"{reac_label[j]} (nan)" for j in worst]
    ax2.set_yticks(np.arange(len(worst)), names, fontsize=7)
    ax2.invert_yaxis()
    ax2.axvline(0.0, color="k", lw=0.8)
    ax2.set_xlabel("learned − true log10 k")
    ax2.set_title(f"the {len(worst)} reactions of largest |error|", fontsize=9)
    head = "reaction network: the error of the learned log10 k"
    why = (f"not drawn as a graph: {n_met + n_reac} nodes > {MAX_NODES} (too slow to lay out, "
           f"unreadable as a picture)")
    fig.suptitle(f"{_title(r2, n_met, n_reac, head)}\n{why}", fontsize=10)
    return fig
