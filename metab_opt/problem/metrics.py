"""Metrics of one training run: pure numpy functions (no torch, no plotting).

Notation: ``t = log10 k_true`` and ``l = log10 k_learned`` over all reactions; ``mean`` is the
mean over reactions (or over points, for the other metrics).

R² (identity)
    ``R2(pred, true) = 1 - Σ(pred - true)² / Σ(true - mean true)²`` -- the identity line, no fit,
    unbounded below. Non-finite input gives NaN. When ``true`` has zero variance R² is undefined:
    the result is 1.0 if ``pred == true`` exactly, NaN otherwise.

Rate constants (:func:`rate_constant_metrics`)
    ``rate_constants_R2 = R2(l, t)`` (the study's objective); ``rate_constants_R2_shifted =
    R2(l - (mean l - mean t), t)``; ``rate_constants_slope = cov(t, l) / var(t)``;
    ``rate_constants_pearson``; ``n_outliers = #{|l - t| > 0.3}`` (a non-finite l counts as an
    outlier); ``mean_log_offset = mean l - mean t``.

Rollout (:func:`rollout_metrics`)
    Per metabolite with a non-constant true trajectory: identity R² and Pearson r of the predicted
    trajectory against the truth; ``test_R2`` and ``test_pearson`` are their means. A metabolite
    whose prediction holds a non-finite value (a diverged rollout) scores the sentinels
    R² = -1.0 (worse than predicting the truth's mean, which scores 0) and r = 0.0; a finite but
    constant prediction has r = 0.0. ``test_n_nonfinite`` counts the diverged metabolites.

Functions (:func:`mlp_sub_metrics`, :func:`mlp_node_metrics`)
    MLP_sub is identifiable only up to a scalar, so for each coefficient s the best ``a`` of
    ``min_a Σ(a·f_s - c^s)²`` is ``a = Σ f_s c^s / Σ f_s²``; ``MLP_sub_R2_s{s} = R2(a·f_s, c^s)``,
    ``MLP_sub_scale_s{s} = 1/a`` (``f_s ≈ scale · c^s``), ``MLP_sub_R2 = mean_s MLP_sub_R2_s{s}``.
    MLP_node: per type t a least-squares line ``output = slope·c + intercept`` over all points of
    its metabolites, against the truth ``-λ_t (c - c_base,t)`` (slope ``-λ_t``, intercept
    ``λ_t c_base,t``); ``MLP_node_R2`` is the identity R² of all outputs against the truth.

Classification and diagnosis
    :func:`classify`: converged ``R2 > 0.9``, partial ``0.1 <= R2 <= 0.9``, failed ``R2 < 0.1`` or
    not finite. :func:`degeneracy_gap` ``= test_pearson - rate_constants_R2``. :func:`diagnose`
    follows the instructions' table (p = test_pearson, r = rate_constants_R2), first match wins:

    ==================  =====================================  =================================
    diagnosis           condition                              meaning
    ==================  =====================================  =================================
    failed              p or r not finite                      nothing to judge
    healthy             p > 0.95 and r > 0.9                   good dynamics from correct k
    degenerate          p > 0.95 and 0.3 <= r <= 0.9           good dynamics from wrong k
    severely degenerate p > 0.95 and r < 0.3                   MLPs compensate for wrong k
    failed              p < 0.5 and r < 0.5                    dynamics and k both poor
    poor dynamics       anything else (p <= 0.95)              catch-all: the rollout is not good
                                                               enough to tell degeneracy apart
    ==================  =====================================  =================================

Visual line (:func:`visual_line`), thresholds
    MLP_sub is judged on two things, because ``MLP_sub_R2_s{s}`` is taken *after* the best scale
    and so cannot see a scale error on its own. Shape, per coefficient s: *matches* if
    ``MLP_sub_R2_s{s} >= 0.95``, *rough* if ``>= 0.7``, *wrong* otherwise (or not finite).
    Scale, per s: the true MLP_sub is exactly ``c^s`` (``v_j = k_j Π f(c_i, s_ij)``), so the ideal
    ``MLP_sub_scale_s{s}`` (learned ≈ scale·c^s) is 1; it is *off* when
    ``scale > 1.5`` or ``scale < 1/1.5`` (a negative or non-finite scale is off too). A scale
    error means k has absorbed the inverse factor, which is the scale ambiguity of the
    instructions. Overall: bad if any shape is wrong; else partial if any shape is rough or any
    scale is off; else good. A trial without ``MLP_sub_scale_s{s}`` keys is judged on shape
    alone. The text states the scale as a factor of the truth, e.g.
    ``MLP_sub=partial: shape matches c^1, c^2 (R² 0.99) but at ×0.24 of the true scale
    (learned = 0.24 × c^s)``; scales that differ per s are listed per s (``learned = 1.0 × c^1,
    0.058 × c^2``).
    MLP_node: good if ``MLP_node_R2 >= 0.9``; partial if ``MLP_node_R2 >= 0.5``, or if the
    output is no larger than twice the truth (``MLP_node_max_abs <= 2·MLP_node_true_max_abs``:
    a small term that does not dominate the dynamics); bad otherwise or if not finite. The text
    gives "values ~X" (``MLP_node_max_abs``, one significant digit), the truth's magnitude, and the
    slopes against the truth per type: *match* if every ratio learned/true is in [0.8, 1.25],
    else *flat* if every |ratio| < 0.2, else *wrong sign* if any ratio < 0, else *off*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "OUTLIER_THRESHOLD",
    "DIAGNOSES",
    "r2_identity",
    "pearson",
    "rate_constant_metrics",
    "rollout_metrics",
    "best_scale",
    "mlp_sub_metrics",
    "mlp_node_truth",
    "mlp_node_metrics",
    "CONVERGED_R2",
    "as_float",
    "FAILED_R2",
    "classify",
    "degeneracy_gap",
    "diagnose",
    "visual_line",
]

OUTLIER_THRESHOLD = 0.3
"""|log10 k_learned - log10 k_true| above which a reaction is an outlier (decades)."""

CONVERGED_R2 = 0.9
""":func:`classify`: converged strictly above this rate_constants_R2."""
FAILED_R2 = 0.1
""":func:`classify`: failed strictly below this rate_constants_R2 (partial in between)."""

DIAGNOSES = ("healthy", "degenerate", "severely degenerate", "failed", "poor dynamics")
"""Every value :func:`diagnose` can return."""

# Sentinels for a metabolite whose rollout holds a non-finite value (see module docstring).
_DIVERGED_R2 = -1.0
_DIVERGED_PEARSON = 0.0

# visual_line thresholds (documented in the module docstring).
_SUB_MATCH = 0.95
_SUB_ROUGH = 0.7
_SUB_SCALE_TOL = 1.5  # MLP_sub scale is off outside [1/1.5, 1.5] (the truth is exactly c^s)
_NODE_GOOD = 0.9
_NODE_PARTIAL = 0.5
_NODE_SMALL_FACTOR = 2.0


def _as_float_array(x: ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def r2_identity(pred: ArrayLike, true: ArrayLike) -> float:
    """Identity-line R²: ``1 - Σ(pred - true)² / Σ(true - mean true)²`` (no fit, can be < 0).

    Returns NaN if any input is non-finite, if the arrays are empty, or if ``true`` has zero
    variance and ``pred`` differs from it (R² undefined); 1.0 if ``true`` is constant and
    ``pred`` equals it exactly. Shapes must match (any shape; all elements are pooled).
    """
    p = _as_float_array(pred)
    t = _as_float_array(true)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: pred {p.shape} vs true {t.shape}")
    if p.size == 0 or not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        return float("nan")
    ss_res = float(np.sum((p - t) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else float("nan")
    return 1.0 - ss_res / ss_tot


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson r ``= Σ(x - x̄)(y - ȳ) / sqrt(Σ(x - x̄)² Σ(y - ȳ)²)``.

    NaN if any input is non-finite, the arrays are empty, or either has zero variance.
    """
    a = _as_float_array(x).ravel()
    b = _as_float_array(y).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.size == 0 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    da = a - a.mean()
    db = b - b.mean()
    denom = math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db)))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.sum(da * db) / denom, -1.0, 1.0))


def rate_constant_metrics(
    log_k_true: ArrayLike,
    log_k_learned: ArrayLike,
    *,
    outlier_threshold: float = OUTLIER_THRESHOLD,
) -> dict[str, float | int]:
    """Metrics of learned vs true ``log10 k`` (t, l), as DESIGN.md defines them.

    - ``rate_constants_R2 = 1 - Σ(l - t)² / Σ(t - mean t)²``
    - ``rate_constants_R2_shifted``: the same with ``l -> l - (mean l - mean t)``
    - ``rate_constants_slope = Σ(t - t̄)(l - l̄) / Σ(t - t̄)²`` (least squares of l on t)
    - ``rate_constants_pearson``: Pearson r of l and t
    - ``n_outliers = #{|l - t| > outlier_threshold}``; a non-finite l counts as an outlier
    - ``mean_log_offset = mean l - mean t``

    Any non-finite l makes the R², slope, pearson and offset NaN.
    """
    t = _as_float_array(log_k_true).ravel()
    l = _as_float_array(log_k_learned).ravel()
    if t.shape != l.shape:
        raise ValueError(f"shape mismatch: true {t.shape} vs learned {l.shape}")
    finite = bool(t.size) and bool(np.all(np.isfinite(t)) and np.all(np.isfinite(l)))
    offset = float(l.mean() - t.mean()) if finite else float("nan")
    if finite:
        dt = t - t.mean()
        var_t = float(np.sum(dt * dt))
        slope = float(np.sum(dt * (l - l.mean())) / var_t) if var_t > 0.0 else float("nan")
        shifted = r2_identity(l - offset, t)
    else:
        slope = float("nan")
        shifted = float("nan")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(l) | (np.abs(l - t) > outlier_threshold)
    return {
        "rate_constants_R2": r2_identity(l, t),
        "rate_constants_R2_shifted": shifted,
        "rate_constants_slope": slope,
        "rate_constants_pearson": pearson(l, t),
        "n_outliers": int(np.count_nonzero(bad)),
        "mean_log_offset": offset,
    }


def rollout_metrics(x_true: ArrayLike, x_pred: ArrayLike) -> dict[str, float | int]:
    """Rollout quality from arrays of shape (n_frames, n_metabolites).

    For each metabolite whose true trajectory is non-constant: identity R² and Pearson r of the
    predicted trajectory against the truth. Returns ``test_R2`` and ``test_pearson`` (means over
    those metabolites; NaN if there are none) and ``test_n_nonfinite`` (metabolites whose
    prediction holds a non-finite value; they score R² = -1.0 and r = 0.0). A finite but
    constant prediction has r = 0.0. Non-finite truth values are a caller error (ValueError).
    """
    xt = _as_float_array(x_true)
    xp = _as_float_array(x_pred)
    if xt.ndim != 2 or xt.shape != xp.shape:
        raise ValueError(f"expected equal 2-D shapes, got true {xt.shape} vs pred {xp.shape}")
    if not np.all(np.isfinite(xt)):
        raise ValueError("x_true holds non-finite values")
    r2s: list[float] = []
    rs: list[float] = []
    n_nonfinite = 0
    for i in range(xt.shape[1]):
        truth = xt[:, i]
        if truth.size == 0 or np.ptp(truth) == 0.0:
            continue
        pred = xp[:, i]
        if not np.all(np.isfinite(pred)):
            n_nonfinite += 1
            r2s.append(_DIVERGED_R2)
            rs.append(_DIVERGED_PEARSON)
            continue
        r2s.append(r2_identity(pred, truth))
        r = pearson(pred, truth)
        rs.append(0.0 if math.isnan(r) else r)
    return {
        "test_R2": float(np.mean(r2s)) if r2s else float("nan"),
        "test_pearson": float(np.mean(rs)) if rs else float("nan"),
        "test_n_nonfinite": n_nonfinite,
    }


def best_scale(curve: ArrayLike, target: ArrayLike) -> float:
    """``a = Σ curve·target / Σ curve²``, the minimiser of ``Σ(a·curve - target)²``.

    NaN if any input is non-finite or the curve is identically zero.
    """
    f = _as_float_array(curve).ravel()
    g = _as_float_array(target).ravel()
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(g))):
        return float("nan")
    denom = float(np.sum(f * f))
    if denom == 0.0:
        return float("nan")
    return float(np.sum(f * g) / denom)


def mlp_sub_metrics(c_grid: ArrayLike, curves: Mapping[int, ArrayLike]) -> dict[str, float]:
    """Learned substrate function vs ``c^s`` after the best scalar scale.

    ``curves[s]`` is MLP_sub evaluated on ``c_grid`` (1-D, the data's concentration range) for
    coefficient s. Per s: ``a = Σ f_s c^s / Σ f_s²``, ``MLP_sub_R2_s{s} = R2(a·f_s, c^s)``,
    ``MLP_sub_scale_s{s} = 1/a`` (so ``f_s ≈ scale·c^s``). ``MLP_sub_R2`` is the mean over s
    (NaN if any s is NaN). A zero or non-finite curve gives NaN R² and scale.
    """
    c = _as_float_array(c_grid).ravel()
    out: dict[str, float] = {}
    r2s: list[float] = []
    for s in sorted(curves):
        f = _as_float_array(curves[s]).ravel()
        if f.shape != c.shape:
            raise ValueError(f"curve for s={s} has shape {f.shape}, c_grid {c.shape}")
        target = c ** int(s)
        a = best_scale(f, target)
        if math.isnan(a):
            r2 = float("nan")
            scale = float("nan")
        else:
            r2 = r2_identity(a * f, target)
            scale = 1.0 / a if a != 0.0 else float("nan")
        out[f"MLP_sub_R2_s{s}"] = r2
        out[f"MLP_sub_scale_s{s}"] = scale
        r2s.append(r2)
    out["MLP_sub_R2"] = float(np.mean(r2s)) if r2s else float("nan")
    return out


def _broadcast_c(c: ArrayLike, outputs: np.ndarray) -> np.ndarray:
    cc = _as_float_array(c)
    if cc.ndim == 1 and outputs.ndim == 2 and cc.shape[0] == outputs.shape[0]:
        cc = np.broadcast_to(cc[:, None], outputs.shape)
    if cc.shape != outputs.shape:
        raise ValueError(f"c {cc.shape} does not match outputs {outputs.shape}")
    return cc


def mlp_node_truth(
    c: ArrayLike,
    types: ArrayLike,
    lambdas: Sequence[float],
    baselines: Sequence[float],
) -> np.ndarray:
    """True homeostasis term ``-λ_type(i) (c_i - c_base,type(i))``.

    ``c`` has shape (n_points, n_metabolites); ``types`` (n_metabolites,) indexes ``lambdas``
    and ``baselines``.
    """
    cc = _as_float_array(c)
    ty = np.asarray(types, dtype=np.int64).ravel()
    lam = _as_float_array(lambdas)[ty]
    base = _as_float_array(baselines)[ty]
    return -lam * (cc - base)


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = slope·x + intercept``; NaN if non-finite or x has no spread."""
    if x.size == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan"), float("nan")
    dx = x - x.mean()
    var = float(np.sum(dx * dx))
    if var == 0.0:
        return float("nan"), float("nan")
    slope = float(np.sum(dx * (y - y.mean())) / var)
    return slope, float(y.mean() - slope * x.mean())


def mlp_node_metrics(
    c: ArrayLike,
    outputs: ArrayLike,
    types: ArrayLike,
    lambdas: Sequence[float],
    baselines: Sequence[float],
) -> dict[str, float]:
    """Learned MLP_node vs the true homeostasis ``-λ_t (c - c_base,t)``.

    ``c`` and ``outputs``: (n_points, n_metabolites) -- MLP_node of each metabolite on a
    concentration grid (``c`` may also be the 1-D grid shared by all metabolites); ``types``:
    (n_metabolites,) ints indexing ``lambdas`` and ``baselines``. Per type t present, a
    least-squares line ``output = slope·c + intercept`` over all points of its metabolites gives
    ``MLP_node_slope_type{t}``, ``MLP_node_intercept_type{t}``; the truth is
    ``MLP_node_true_slope_type{t} = -λ_t`` and ``MLP_node_true_intercept_type{t} = λ_t c_base,t``.
    Also ``MLP_node_max_abs = max |output|``, ``MLP_node_true_max_abs = max |truth|`` (on the
    same points; NaN if non-finite) and ``MLP_node_R2 = R2(outputs, truth)``.
    """
    out_arr = _as_float_array(outputs)
    if out_arr.ndim != 2:
        raise ValueError(f"outputs must be 2-D (n_points, n_metabolites), got {out_arr.shape}")
    cc = _broadcast_c(c, out_arr)
    ty = np.asarray(types, dtype=np.int64).ravel()
    if ty.shape[0] != out_arr.shape[1]:
        raise ValueError(f"types has {ty.shape[0]} entries, outputs {out_arr.shape[1]} columns")
    truth = mlp_node_truth(cc, ty, lambdas, baselines)
    res: dict[str, float] = {}
    for t in np.unique(ty):
        cols = ty == t
        slope, intercept = _line_fit(cc[:, cols].ravel(), out_arr[:, cols].ravel())
        lam = float(lambdas[int(t)])
        res[f"MLP_node_slope_type{t}"] = slope
        res[f"MLP_node_intercept_type{t}"] = intercept
        res[f"MLP_node_true_slope_type{t}"] = -lam
        res[f"MLP_node_true_intercept_type{t}"] = lam * float(baselines[int(t)])
    finite = out_arr.size > 0 and bool(np.all(np.isfinite(out_arr)))
    res["MLP_node_max_abs"] = float(np.max(np.abs(out_arr))) if finite else float("nan")
    res["MLP_node_true_max_abs"] = float(np.max(np.abs(truth))) if truth.size else float("nan")
    res["MLP_node_R2"] = r2_identity(out_arr, truth)
    return res


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def classify(r2: float | None) -> str:
    """``converged`` if r2 > 0.9, ``partial`` if 0.1 <= r2 <= 0.9, else ``failed`` (incl. NaN)."""
    if r2 is None or not _finite(r2):
        return "failed"
    r = float(r2)
    if r > CONVERGED_R2:
        return "converged"
    if r >= FAILED_R2:
        return "partial"
    return "failed"


def degeneracy_gap(test_pearson: float | None, r2: float | None) -> float:
    """``test_pearson - rate_constants_R2``; NaN if either is missing or not finite."""
    if test_pearson is None or r2 is None or not (_finite(test_pearson) and _finite(r2)):
        return float("nan")
    return float(test_pearson) - float(r2)


def diagnose(test_pearson: float | None, r2: float | None) -> str:
    """Degeneracy diagnosis from the instructions' table (see the module docstring).

    Returns one of :data:`DIAGNOSES`: ``healthy``, ``degenerate``, ``severely degenerate``,
    ``failed`` or the catch-all ``poor dynamics`` (test_pearson <= 0.95 outside the failed row).
    """
    if test_pearson is None or r2 is None or not (_finite(test_pearson) and _finite(r2)):
        return "failed"
    p = float(test_pearson)
    r = float(r2)
    if p > 0.95:
        if r > 0.9:
            return "healthy"
        if r >= 0.3:
            return "degenerate"
        return "severely degenerate"
    if p < 0.5 and r < 0.5:
        return "failed"
    return "poor dynamics"


def as_float(x: object) -> float:
    """``x`` as a float when it is a finite number, else NaN (a missing or failed metric)."""
    return float(x) if _finite(x) else float("nan")  # type: ignore[arg-type]


def _fmt(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "nan"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _fmt_scale(x: float) -> str:
    """A scale factor with two significant digits and no exponent for everyday values."""
    if not math.isfinite(x):
        return "nan"
    if abs(x) >= 10.0:
        return f"{x:.0f}"
    # "#" keeps the trailing zero, so 1.02 reads "1.0" (a measured factor), not "1".
    # (9.99 rounds to "10." under "#": drop the dangling point.)
    return f"{x:#.2g}".rstrip(".") if abs(x) >= 0.01 else f"{x:.1e}"


def _scale_off(scale: float) -> bool:
    return not (math.isfinite(scale) and 1.0 / _SUB_SCALE_TOL <= scale <= _SUB_SCALE_TOL)


def _r2_list(values: list[float]) -> str:
    # One number when they agree to two decimals (the usual case: "R² 0.99"), else each in turn.
    texts = [_fmt(v) for v in values]
    return texts[0] if len(set(texts)) == 1 else ", ".join(texts)


def _visual_sub(m: Mapping[str, object]) -> str:
    prefix = "MLP_sub_R2_s"
    ss = sorted(
        int(k[len(prefix) :]) for k in m if k.startswith(prefix) and k[len(prefix) :].isdigit()
    )
    if not ss:
        return "MLP_sub=bad: not evaluated"
    match: list[str] = []
    match_r2: list[float] = []
    rough: list[str] = []
    wrong: list[str] = []
    for s in ss:
        r2 = as_float(m[f"{prefix}{s}"])
        name = f"c^{s}"
        if math.isfinite(r2) and r2 >= _SUB_MATCH:
            match.append(name)
            match_r2.append(r2)
        elif math.isfinite(r2) and r2 >= _SUB_ROUGH:
            rough.append(f"{name} (R² {_fmt(r2)})")
        elif math.isfinite(r2):
            wrong.append(f"{name} (R² {_fmt(r2)})")
        else:
            wrong.append(f"{name} (non-finite)")
    parts: list[str] = []
    if match:
        parts.append(f"shape matches {', '.join(match)} (R² {_r2_list(match_r2)})")
    if rough:
        parts.append(f"{_join(rough)} roughly")
    if wrong:
        parts.append(f"{_join(wrong)} wrong shape")
    text = "; ".join(parts)
    # The R² above is measured after the best scale, so the scale is judged separately: a learned
    # MLP_sub at 0.24·c^s fits c^s perfectly in shape while k carries the missing factor.
    scales = {s: as_float(m[f"MLP_sub_scale_s{s}"]) for s in ss if f"MLP_sub_scale_s{s}" in m}
    off = any(_scale_off(v) for v in scales.values())
    if scales:
        texts = [_fmt_scale(scales[s]) for s in sorted(scales)]
        if len(set(texts)) == 1:
            learned = f"learned = {texts[0]} × c^s"
            where = f"at ×{texts[0]} of the true scale"
        else:
            learned = "learned = " + ", ".join(
                f"{t} × c^{s}" for s, t in zip(sorted(scales), texts, strict=True)
            )
            where = "off the true scale"
        phrase = f"{where} ({learned})" if off else f"at the true scale ({learned})"
        if rough or wrong:
            text += f"; {phrase}"
        else:
            text += f" but {phrase}" if off else f", {phrase}"
    level = "bad" if wrong else ("partial" if rough or off else "good")
    return f"MLP_sub={level}: {text}"


def _slope_word(m: Mapping[str, object]) -> str | None:
    prefix = "MLP_node_slope_type"
    ratios: list[float] = []
    for key in m:
        if not key.startswith(prefix):
            continue
        t = key[len(prefix) :]
        learned = as_float(m[key])
        true = as_float(m.get(f"MLP_node_true_slope_type{t}"))
        if not (math.isfinite(learned) and math.isfinite(true)) or true == 0.0:
            continue
        ratios.append(learned / true)
    if not ratios:
        return None
    if all(0.8 <= r <= 1.25 for r in ratios):
        return "slopes match GT"
    if all(abs(r) < 0.2 for r in ratios):
        return "flat"
    if any(r < 0.0 for r in ratios):
        return "wrong-sign slope"
    return "slopes off GT"


def _visual_node(m: Mapping[str, object]) -> str:
    r2 = as_float(m.get("MLP_node_R2"))
    mx = as_float(m.get("MLP_node_max_abs"))
    true_mx = as_float(m.get("MLP_node_true_max_abs"))
    if "MLP_node_R2" not in m and "MLP_node_max_abs" not in m:
        return "MLP_node=bad: not evaluated"
    if not (math.isfinite(r2) and math.isfinite(mx)):
        return "MLP_node=bad: non-finite output"
    small = math.isfinite(true_mx) and mx <= _NODE_SMALL_FACTOR * true_mx
    if r2 >= _NODE_GOOD:
        level = "good"
    elif r2 >= _NODE_PARTIAL or small:
        level = "partial"
    else:
        level = "bad"
    parts = [f"values ~{mx:.1g}" + (f" vs GT ~{true_mx:.1g}" if math.isfinite(true_mx) else "")]
    if level == "good":
        parts.insert(0, "linear per type")
    slope = _slope_word(m)
    if slope is not None and level != "good":
        parts.append(slope)
    parts.append(f"R² {_fmt(r2)}")
    return f"MLP_node={level}: " + ", ".join(parts)


def visual_line(function_metrics: Mapping[str, object]) -> str:
    """Automatic visual assessment: ``MLP_sub=<level>: <text>, MLP_node=<level>: <text>``.

    Levels are good/partial/bad from the thresholds in the module docstring, computed from the
    keys of :func:`mlp_sub_metrics` and :func:`mlp_node_metrics`. Example:
    ``MLP_sub=partial: shape matches c^1, c^2 (R² 0.99) but at ×0.24 of the true scale (learned =
    0.24 × c^s), MLP_node=bad: values ~5 vs GT ~0.01, flat, R² -3.10``.
    """
    return f"{_visual_sub(function_metrics)}, {_visual_node(function_metrics)}"
