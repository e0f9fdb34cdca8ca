"""The joint recovery (issue 17): k, the homeostasis of each metabolite type and the type
clusters of the embeddings, judged together. Numpy only: the sampler and the logbook read it.

Definitions (each used everywhere: the evaluation, the trial's user attrs, the sampler's
constraints, the log and the memory):

- ``embedding_cluster_acc``: the learned embeddings ``e`` (N, D) are split by k-means into as
  many clusters as there are types (Lloyd's iterations from :data:`KMEANS_INITS` k-means++
  starts drawn with a fixed seed; the split of the lowest inertia), and the clusters are
  matched to the true types by the label permutation with the most agreements; the fraction of
  metabolites whose cluster is their type's. 1.0: the embeddings separate the types exactly. A
  type count above :data:`MAX_TYPES_MATCHED` is not matched (NaN).
- ``embedding_silhouette``: the mean silhouette of the embeddings under the *true* types
  (Euclidean): near 1 for tight, well separated type clusters, near 0 or below for none.
- ``MLP_node_slope_ratio_type{t}``: the learned MLP_node's least-squares slope for type t over
  the true slope ``-λ_t`` (:func:`metab_opt.problem.metrics.mlp_node_metrics`); 1 is exact. Their
  mean is ``avg_slope_ratio``.
- ``joint_status``: ``converged`` when k holds (``rate_constants_R2 > 0.9``, the one converged
  threshold, :data:`metab_opt.problem.metrics.CONVERGED_R2`) and the homeostasis holds (every slope
  ratio in :data:`SLOPE_RATIO_RANGE` and the cluster accuracy 1.0); ``partial-k`` when only k
  holds, ``partial-homeostasis`` when only the homeostasis holds, ``failed`` when neither.
  ``joint_diagnosis`` names each missing part with its figure.
- :func:`constraints`: the homeostasis conditions as Optuna constraint values (satisfied at
  <= 0), read from a trial's user attrs; the UCB sampler never calls a trial that violates one
  converged (``ucbtree``'s ``constraints_func``). k's condition is the objective itself.
- :func:`asks_joint_recovery`: whether a study is judged on the joint recovery at all (its
  config's ``search.constraints: joint``). The objective computes the joint metrics in every
  study, but only such a study shows the joint verdict in the views a person reads (the log,
  the memory): in a k-only study a missing homeostasis is not a failure of k.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from metab_opt.problem.metrics import CONVERGED_R2, as_float

if TYPE_CHECKING:
    from metab_opt.config import Config

__all__ = [
    "CLUSTER_ACC_NEEDED",
    "JOINT_STATUSES",
    "KMEANS_INITS",
    "MAX_TYPES_MATCHED",
    "SLOPE_RATIO_RANGE",
    "asks_joint_recovery",
    "constraints",
    "embedding_cluster_acc",
    "embedding_silhouette",
    "joint_metrics",
    "joint_status",
    "joint_summary",
    "kmeans",
    "slope_ratios",
]

SLOPE_RATIO_RANGE = (0.8, 1.25)
"""A type's learned / true homeostatic slope counts as recovered inside this range (inclusive)."""
CLUSTER_ACC_NEEDED = 1.0
"""The embeddings separate the types when the cluster accuracy reaches this."""
MAX_TYPES_MATCHED = 8
"""Label matching tries every permutation: 8! = 40320 at most."""
KMEANS_INITS = 10
"""k-means starts (k-means++, seeded): the clustering with the lowest inertia counts."""
JOINT_STATUSES = ("converged", "partial-k", "partial-homeostasis", "failed")


def _lloyd(x: np.ndarray, centres: np.ndarray, max_iter: int) -> tuple[np.ndarray, float]:
    """Lloyd's iterations from ``centres``: (labels, inertia). An emptied cluster keeps its
    centre."""
    c = centres.copy()
    labels = np.full(x.shape[0], -1)
    for _ in range(max_iter):
        new = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(c.shape[0]):
            if np.any(labels == j):
                c[j] = x[labels == j].mean(0)
    return labels, float(((x - c[labels]) ** 2).sum())


def kmeans(points: ArrayLike, k: int, *, n_init: int = KMEANS_INITS, max_iter: int = 100,
           seed: int = 0) -> np.ndarray:
    """Cluster labels (N,) of ``points`` (N, D): Lloyd's k-means from ``n_init`` k-means++
    starts drawn with ``seed``, the labels of the lowest inertia (the same points, the same
    labels). Several starts, because one far-off point can take a cluster of its own from a
    single start and leave the types in one."""
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < k or k < 1:
        raise ValueError(f"kmeans: need (N, D) points with N >= k >= 1, got {x.shape} and k={k}")
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(n_init):
        centres = [x[int(rng.integers(x.shape[0]))]]
        for _ in range(1, k):
            d = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
            total = float(d.sum())
            p = d / total if total > 0 else np.full(x.shape[0], 1.0 / x.shape[0])
            centres.append(x[int(rng.choice(x.shape[0], p=p))])
        labels, inertia = _lloyd(x, np.array(centres), max_iter)
        if best is None or inertia < best[0]:
            best = (inertia, labels)
    assert best is not None
    return best[1]


def embedding_cluster_acc(embedding: ArrayLike, types: ArrayLike) -> float:
    """The fraction of metabolites whose k-means cluster is their true type under the best
    label matching (module docstring); NaN for non-finite embeddings or too many types."""
    e = np.asarray(embedding, dtype=np.float64)
    ty = np.asarray(types, dtype=np.int64).ravel()
    kinds = np.unique(ty)
    n = len(kinds)
    if not np.all(np.isfinite(e)) or n > MAX_TYPES_MATCHED or e.shape[0] != ty.size:
        return math.nan
    if n == 1:
        return 1.0
    labels = kmeans(e, n)
    # counts[j, t]: metabolites of cluster j and type kinds[t]
    counts = np.array([[np.sum((labels == j) & (ty == t)) for t in kinds] for j in range(n)])
    best = max(sum(counts[j, p[j]] for j in range(n)) for p in itertools.permutations(range(n)))
    return float(best) / ty.size


def embedding_silhouette(embedding: ArrayLike, types: ArrayLike) -> float:
    """Mean silhouette ``(b - a) / max(a, b)`` of the embeddings under the true types
    (Euclidean; a metabolite alone in its type scores 0); NaN when it cannot be computed."""
    e = np.asarray(embedding, dtype=np.float64)
    ty = np.asarray(types, dtype=np.int64).ravel()
    kinds = np.unique(ty)
    if len(kinds) < 2 or not np.all(np.isfinite(e)) or e.shape[0] != ty.size:
        return math.nan
    d = np.sqrt(((e[:, None, :] - e[None]) ** 2).sum(-1))
    scores = np.zeros(ty.size)
    for i in range(ty.size):
        own = ty == ty[i]
        if own.sum() < 2:
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, ty == t].mean() for t in kinds if t != ty[i])
        top = max(a, b)
        scores[i] = 0.0 if top == 0.0 else (b - a) / top
    return float(scores.mean())


def slope_ratios(node_metrics: Mapping[str, Any], n_types: int) -> dict[str, float]:
    """``MLP_node_slope_ratio_type{t}`` (learned / true slope) and ``avg_slope_ratio`` from
    :func:`metab_opt.problem.metrics.mlp_node_metrics`'s output; NaN where a slope is missing."""
    out: dict[str, float] = {}
    for t in range(n_types):
        learned = as_float(node_metrics.get(f"MLP_node_slope_type{t}"))
        true = as_float(node_metrics.get(f"MLP_node_true_slope_type{t}"))
        ok = math.isfinite(learned) and math.isfinite(true) and true != 0.0
        out[f"MLP_node_slope_ratio_type{t}"] = learned / true if ok else math.nan
    values = list(out.values())
    out["avg_slope_ratio"] = float(np.mean(values)) if values else math.nan
    return out


def _ratio_names(m: Mapping[str, Any]) -> list[str]:
    prefix = "MLP_node_slope_ratio_type"
    return sorted((k for k in m if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))


def _ratio_ok(r: float) -> bool:
    return math.isfinite(r) and SLOPE_RATIO_RANGE[0] <= r <= SLOPE_RATIO_RANGE[1]


def joint_status(m: Mapping[str, Any]) -> tuple[str, str]:
    """(``joint_status``, ``joint_diagnosis``) of a run's metrics (module docstring)."""
    r2 = as_float(m.get("rate_constants_R2"))
    missing_k = [] if r2 > CONVERGED_R2 else [f"k (R² {r2:.3f} <= {CONVERGED_R2})"]
    missing_h = []
    lo, hi = SLOPE_RATIO_RANGE
    names = _ratio_names(m)
    if not names:
        missing_h.append("slopes (none measured)")
    for name in names:
        r = as_float(m.get(name))
        if not _ratio_ok(r):
            t = name[len("MLP_node_slope_ratio_type"):]
            missing_h.append(f"type {t} slope (ratio {r:.2f} outside [{lo}, {hi}])")
    acc = as_float(m.get("embedding_cluster_acc"))
    if not acc >= CLUSTER_ACC_NEEDED:
        missing_h.append(f"type clusters (embedding_cluster_acc {acc:.2f} < {CLUSTER_ACC_NEEDED})")
    if not missing_k and not missing_h:
        return "converged", "k, every type's slope and the type clusters recovered"
    status = ("partial-k" if not missing_k and missing_h else
              "partial-homeostasis" if missing_k and not missing_h else "failed")
    return status, "missing: " + "; ".join(missing_k + missing_h)


def joint_metrics(embedding: ArrayLike, types: ArrayLike,
                  metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The joint metrics of a run: the embeddings' cluster accuracy and silhouette, the slope
    ratios, ``joint_status`` and ``joint_diagnosis``. ``metrics`` holds the run's
    ``rate_constants_R2`` and MLP_node metrics."""
    ty = np.asarray(types, dtype=np.int64).ravel()
    out: dict[str, Any] = {
        "embedding_cluster_acc": embedding_cluster_acc(embedding, ty),
        "embedding_silhouette": embedding_silhouette(embedding, ty),
    }
    out.update(slope_ratios(metrics, int(ty.max()) + 1 if ty.size else 0))
    out["joint_status"], out["joint_diagnosis"] = joint_status({**metrics, **out})
    return out


def asks_joint_recovery(config: Config | None) -> bool:
    """Whether the study of ``config`` asks for the joint recovery (``search.constraints:
    joint``): the one test of whether the views show :func:`joint_summary`. Without a config
    nothing says the study asks for it, so no."""
    return config is not None and config.search.constraints == "joint"


def constraints(user_attrs: Mapping[str, Any], n_types: int) -> list[float]:
    """The homeostasis conditions as ``n_types + 1`` constraint values (<= 0 satisfied), from a
    trial's user attrs: per type ``max(lo - ratio, ratio - hi)``, then
    ``1 - embedding_cluster_acc``. A missing or non-finite figure (a failed or pruned run)
    counts as violated (1.0)."""
    lo, hi = SLOPE_RATIO_RANGE
    out = []
    for t in range(n_types):
        r = as_float(user_attrs.get(f"MLP_node_slope_ratio_type{t}"))
        out.append(max(lo - r, r - hi) if math.isfinite(r) else 1.0)
    acc = as_float(user_attrs.get("embedding_cluster_acc"))
    out.append(CLUSTER_ACC_NEEDED - acc if math.isfinite(acc) else 1.0)
    return out


def joint_summary(m: Mapping[str, Any], *, diagnosis: bool = True) -> str | None:
    """One line for the log (and, without the ``diagnosis``, the memory): ``partial-k: slope
    ratios 1.21/0.97 (avg 1.09), clusters 1.00, silhouette 0.62; missing: ...``; None for a run
    without joint metrics."""
    status = m.get("joint_status")
    if not isinstance(status, str) or not status:
        return None

    def fmt(x: object) -> str:
        v = as_float(x)
        return f"{v:.2f}" if math.isfinite(v) else "n/a"

    ratios = "/".join(fmt(m.get(name)) for name in _ratio_names(m)) or "n/a"
    text = m.get("joint_diagnosis")
    tail = f"; {text}" if diagnosis and isinstance(text, str) and status != "converged" else ""
    return (f"{status}: slope ratios {ratios} (avg {fmt(m.get('avg_slope_ratio'))}), "
            f"clusters {fmt(m.get('embedding_cluster_acc'))}, "
            f"silhouette {fmt(m.get('embedding_silhouette'))}{tail}")
