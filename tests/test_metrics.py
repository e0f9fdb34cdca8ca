"""Unit tests of metab_opt.problem.metrics on hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metab_opt.problem import metrics as m

RATE_KEYS = {
    "rate_constants_R2",
    "rate_constants_R2_shifted",
    "rate_constants_slope",
    "rate_constants_pearson",
    "n_outliers",
    "mean_log_offset",
}


@pytest.fixture
def log_k() -> np.ndarray:
    return np.random.default_rng(0).uniform(-3.0, 0.0, 256)


# --- r2_identity / pearson -------------------------------------------------------------------


def test_r2_identity_exact_and_formula() -> None:
    t = np.array([1.0, 2.0, 3.0, 4.0])
    assert m.r2_identity(t, t) == 1.0
    p = np.array([1.0, 2.0, 3.0, 5.0])
    assert m.r2_identity(p, t) == pytest.approx(1.0 - 1.0 / 5.0)
    # Predicting the mean gives 0; worse than the mean is negative.
    assert m.r2_identity(np.full(4, 2.5), t) == pytest.approx(0.0)
    assert m.r2_identity(-t, t) < 0.0


def test_r2_identity_nonfinite_and_constant_truth() -> None:
    t = np.array([1.0, 2.0, 3.0])
    assert math.isnan(m.r2_identity(np.array([1.0, np.nan, 3.0]), t))
    assert math.isnan(m.r2_identity(np.array([1.0, np.inf, 3.0]), t))
    assert math.isnan(m.r2_identity(np.array([]), np.array([])))
    c = np.full(3, 2.0)
    assert m.r2_identity(c, c) == 1.0
    assert math.isnan(m.r2_identity(c + 0.1, c))
    with pytest.raises(ValueError):
        m.r2_identity(np.zeros(3), np.zeros(4))


def test_pearson() -> None:
    x = np.arange(10.0)
    assert m.pearson(x, 3 * x + 1) == pytest.approx(1.0)
    assert m.pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(m.pearson(x, np.ones(10)))
    assert math.isnan(m.pearson(x, np.where(x > 5, np.nan, x)))


# --- rate constants --------------------------------------------------------------------------


def test_rate_constants_identity(log_k: np.ndarray) -> None:
    res = m.rate_constant_metrics(log_k, log_k)
    assert set(res) == RATE_KEYS
    assert res["rate_constants_R2"] == 1.0
    assert res["rate_constants_R2_shifted"] == 1.0
    assert res["rate_constants_slope"] == pytest.approx(1.0)
    assert res["rate_constants_pearson"] == pytest.approx(1.0)
    assert res["n_outliers"] == 0
    assert isinstance(res["n_outliers"], int)
    assert res["mean_log_offset"] == pytest.approx(0.0)


def test_rate_constants_shifted_copy(log_k: np.ndarray) -> None:
    res = m.rate_constant_metrics(log_k, log_k + 1.0)
    assert res["rate_constants_R2"] < 0.0  # 1 - 256 / (256 * var) with var = 0.75
    assert res["rate_constants_R2"] == pytest.approx(1.0 - 1.0 / np.var(log_k))
    assert res["rate_constants_R2_shifted"] == pytest.approx(1.0)
    assert res["rate_constants_slope"] == pytest.approx(1.0)
    assert res["rate_constants_pearson"] == pytest.approx(1.0)
    assert res["mean_log_offset"] == pytest.approx(1.0)
    assert res["n_outliers"] == 256


def test_rate_constants_known_slope(log_k: np.ndarray) -> None:
    res = m.rate_constant_metrics(log_k, 0.5 * log_k - 2.0)
    assert res["rate_constants_slope"] == pytest.approx(0.5)
    assert res["rate_constants_pearson"] == pytest.approx(1.0)
    assert res["rate_constants_R2_shifted"] < 1.0


def test_rate_constants_outliers() -> None:
    t = np.linspace(-3, 0, 10)
    l = t.copy()
    l[[1, 4]] += 0.31
    l[7] -= 0.5
    l[8] += 0.29  # inside the threshold
    assert m.rate_constant_metrics(t, l)["n_outliers"] == 3
    assert m.rate_constant_metrics(t, l, outlier_threshold=0.2)["n_outliers"] == 4


def test_rate_constants_nonfinite() -> None:
    t = np.linspace(-3, 0, 10)
    l = t.copy()
    l[2] = np.nan
    res = m.rate_constant_metrics(t, l)
    assert math.isnan(res["rate_constants_R2"])
    assert math.isnan(res["rate_constants_R2_shifted"])
    assert math.isnan(res["rate_constants_slope"])
    assert res["n_outliers"] == 1


# --- rollout ---------------------------------------------------------------------------------


def _trajectories() -> np.ndarray:
    frames = np.linspace(0, 1, 50)[:, None]
    x = np.hstack([np.sin(3 * frames + k) + 2 for k in range(4)])
    x[:, 2] = 1.5  # constant truth: skipped
    return x


def test_rollout_exact() -> None:
    x = _trajectories()
    res = m.rollout_metrics(x, x)
    assert res["test_R2"] == 1.0
    assert res["test_pearson"] == pytest.approx(1.0)
    assert res["test_n_nonfinite"] == 0


def test_rollout_skips_constant_metabolites() -> None:
    x = _trajectories()
    pred = x.copy()
    pred[:, 2] = 100.0  # a wrong prediction of the constant metabolite is ignored
    res = m.rollout_metrics(x, pred)
    assert res["test_R2"] == 1.0
    assert res["test_pearson"] == pytest.approx(1.0)


def test_rollout_per_metabolite_average() -> None:
    x = _trajectories()
    pred = x.copy()
    pred[:, 0] = x[:, 0].mean()  # R2 0, constant prediction -> pearson 0
    res = m.rollout_metrics(x, pred)
    assert res["test_R2"] == pytest.approx((0.0 + 1.0 + 1.0) / 3)
    assert res["test_pearson"] == pytest.approx(2.0 / 3)


def test_rollout_nonfinite_prediction() -> None:
    x = _trajectories()
    pred = x.copy()
    pred[10:, 1] = np.nan
    res = m.rollout_metrics(x, pred)
    assert res["test_n_nonfinite"] == 1
    assert res["test_R2"] == pytest.approx((1.0 - 1.0 + 1.0) / 3)
    assert res["test_pearson"] == pytest.approx(2.0 / 3)
    assert math.isfinite(res["test_R2"])


def test_rollout_all_constant_is_nan() -> None:
    x = np.ones((5, 3))
    res = m.rollout_metrics(x, x)
    assert math.isnan(res["test_R2"]) and math.isnan(res["test_pearson"])


# --- function metrics ------------------------------------------------------------------------


def test_mlp_sub_scaled_power() -> None:
    c = np.linspace(0.0, 10.0, 101)
    res = m.mlp_sub_metrics(c, {1: 3 * c, 2: 3 * c**2})
    for s in (1, 2):
        assert res[f"MLP_sub_R2_s{s}"] == pytest.approx(1.0)
        assert res[f"MLP_sub_scale_s{s}"] == pytest.approx(3.0)
    assert res["MLP_sub_R2"] == pytest.approx(1.0)


def test_mlp_sub_wrong_shape_and_degenerate() -> None:
    c = np.linspace(0.0, 10.0, 101)
    res = m.mlp_sub_metrics(c, {1: 0.5 * c, 2: np.tanh(c)})
    assert res["MLP_sub_R2_s1"] == pytest.approx(1.0)
    assert res["MLP_sub_scale_s1"] == pytest.approx(0.5)
    assert res["MLP_sub_R2_s2"] < 0.9
    assert res["MLP_sub_R2"] == pytest.approx((1.0 + res["MLP_sub_R2_s2"]) / 2)
    zero = m.mlp_sub_metrics(c, {1: np.zeros_like(c)})
    assert math.isnan(zero["MLP_sub_R2_s1"]) and math.isnan(zero["MLP_sub_scale_s1"])
    assert math.isnan(zero["MLP_sub_R2"])


def test_mlp_node_exact_line() -> None:
    lambdas, baselines = [0.5, 2.0], [3.0, 1.0]
    types = np.array([0, 1, 0, 1, 1])
    grid = np.linspace(0.0, 5.0, 20)
    c = np.tile(grid[:, None], (1, 5))
    truth = m.mlp_node_truth(c, types, lambdas, baselines)
    res = m.mlp_node_metrics(c, truth, types, lambdas, baselines)
    for t in (0, 1):
        assert res[f"MLP_node_slope_type{t}"] == pytest.approx(-lambdas[t])
        assert res[f"MLP_node_intercept_type{t}"] == pytest.approx(lambdas[t] * baselines[t])
        assert res[f"MLP_node_true_slope_type{t}"] == -lambdas[t]
        assert res[f"MLP_node_true_intercept_type{t}"] == lambdas[t] * baselines[t]
    assert res["MLP_node_R2"] == pytest.approx(1.0)
    assert res["MLP_node_max_abs"] == pytest.approx(np.max(np.abs(truth)))
    assert res["MLP_node_true_max_abs"] == pytest.approx(np.max(np.abs(truth)))
    # A 1-D shared grid gives the same result.
    assert m.mlp_node_metrics(grid, truth, types, lambdas, baselines) == res


def test_mlp_node_wrong_line() -> None:
    types = np.array([0, 0])
    c = np.linspace(0.0, 4.0, 9)
    out = np.stack([2.0 * c + 1.0, 2.0 * c + 1.0], axis=1)
    res = m.mlp_node_metrics(c, out, types, [1.0], [2.0])
    assert res["MLP_node_slope_type0"] == pytest.approx(2.0)
    assert res["MLP_node_intercept_type0"] == pytest.approx(1.0)
    assert res["MLP_node_R2"] < 0.0
    assert res["MLP_node_max_abs"] == pytest.approx(9.0)


# --- classification and diagnosis ------------------------------------------------------------


@pytest.mark.parametrize(
    ("r2", "expected"),
    [
        (0.99, "converged"),
        (0.9000001, "converged"),
        (0.9, "partial"),
        (0.5, "partial"),
        (0.1, "partial"),
        (0.0999, "failed"),
        (-75.0, "failed"),
        (float("nan"), "failed"),
        (float("inf"), "failed"),
        (None, "failed"),
    ],
)
def test_classify(r2: float | None, expected: str) -> None:
    assert m.classify(r2) == expected


def test_degeneracy_gap() -> None:
    assert m.degeneracy_gap(0.98, 0.4) == pytest.approx(0.58)
    assert math.isnan(m.degeneracy_gap(float("nan"), 0.4))
    assert math.isnan(m.degeneracy_gap(0.9, None))


@pytest.mark.parametrize(
    ("pearson", "r2", "expected"),
    [
        (0.99, 0.95, "healthy"),
        (0.99, 0.6, "degenerate"),
        (0.96, 0.3, "degenerate"),
        (0.99, 0.1, "severely degenerate"),
        (0.99, -5.0, "severely degenerate"),
        (0.3, 0.2, "failed"),
        (0.3, -10.0, "failed"),
        (float("nan"), 0.95, "failed"),
        (0.99, float("nan"), "failed"),
        (0.8, 0.95, "poor dynamics"),
        (0.95, 0.95, "poor dynamics"),
        (0.7, 0.1, "poor dynamics"),
        (0.3, 0.7, "poor dynamics"),
    ],
)
def test_diagnose(pearson: float, r2: float, expected: str) -> None:
    assert m.diagnose(pearson, r2) == expected
    assert expected in m.DIAGNOSES


# --- visual line -----------------------------------------------------------------------------


def _function_metrics(sub: tuple[float, float], node_r2: float, node_max: float) -> dict:
    return {
        "MLP_sub_R2_s1": sub[0],
        "MLP_sub_R2_s2": sub[1],
        "MLP_sub_scale_s1": 1.0,
        "MLP_sub_scale_s2": 1.0,
        "MLP_sub_R2": sum(sub) / 2,
        "MLP_node_slope_type0": -0.001,
        "MLP_node_true_slope_type0": -0.001,
        "MLP_node_slope_type1": -0.002,
        "MLP_node_true_slope_type1": -0.002,
        "MLP_node_max_abs": node_max,
        "MLP_node_true_max_abs": 0.01,
        "MLP_node_R2": node_r2,
    }


def test_visual_line_good() -> None:
    line = m.visual_line(_function_metrics((0.99, 0.97), 0.95, 0.011))
    assert line.startswith(
        "MLP_sub=good: shape matches c^1, c^2 (R² 0.99, 0.97), at the true scale "
        "(learned = 1.0 × c^s), MLP_node=good: "
    )
    assert "values ~0.01" in line


def test_visual_line_partial() -> None:
    line = m.visual_line(_function_metrics((0.99, 0.8), 0.6, 0.05))
    assert line.startswith(
        "MLP_sub=partial: shape matches c^1 (R² 0.99); c^2 (R² 0.80) roughly; at the true scale"
    )
    assert ", MLP_node=partial: values ~0.05 vs GT ~0.01, slopes match GT, R² 0.60" in line
    # Small output (<= 2x the truth) with a poor R2 is partial, not bad.
    assert "MLP_node=partial" in m.visual_line(_function_metrics((0.99, 0.99), -0.5, 0.015))


def test_visual_line_bad() -> None:
    fm = _function_metrics((0.2, float("nan")), -30.0, 5.2)
    fm["MLP_node_slope_type0"] = 0.00001
    fm["MLP_node_slope_type1"] = -0.0001
    line = m.visual_line(fm)
    assert line.startswith("MLP_sub=bad: c^1 (R² 0.20) and c^2 (non-finite) wrong shape")
    assert "MLP_node=bad: values ~5 vs GT ~0.01, flat" in line
    assert m.visual_line({}) == "MLP_sub=bad: not evaluated, MLP_node=bad: not evaluated"
    nan_node = _function_metrics((0.99, 0.99), float("nan"), float("nan"))
    assert m.visual_line(nan_node).endswith("MLP_node=bad: non-finite output")


def test_visual_line_from_computed_metrics() -> None:
    c = np.linspace(0.0, 5.0, 30)
    fm = m.mlp_sub_metrics(c, {1: 1.2 * c, 2: 1.2 * c**2})
    types = np.array([0, 1])
    cc = np.tile(c[:, None], (1, 2))
    fm |= m.mlp_node_metrics(cc, m.mlp_node_truth(cc, types, [1, 2], [1, 2]), types, [1, 2], [1, 2])
    assert m.visual_line(fm).startswith(
        "MLP_sub=good: shape matches c^1, c^2 (R² 1.00), at the true scale (learned = 1.2 × c^s), "
        "MLP_node=good:"
    )
    # The seed's failure: the right shape at a quarter of the true size. MLP_sub_scale_s{s} is
    # learned / c^s, so the line must say 0.24, not its inverse 4.2, and call it partial.
    fm |= m.mlp_sub_metrics(c, {1: 0.24 * c, 2: 0.24 * c**2})
    assert m.visual_line(fm).startswith(
        "MLP_sub=partial: shape matches c^1, c^2 (R² 1.00) but at ×0.24 of the true scale "
        "(learned = 0.24 × c^s), MLP_node=good:"
    )


@pytest.mark.parametrize(
    ("scale", "off"),
    [(1.0, False), (1.5, False), (1 / 1.5, False), (1.51, True), (0.66, True), (4.2, True),
     (0.24, True), (-1.0, True), (float("nan"), True)],
)
def test_visual_sub_scale_threshold(scale: float, off: bool) -> None:
    fm = _function_metrics((0.99, 0.99), 0.95, 0.011)
    fm["MLP_sub_scale_s1"] = fm["MLP_sub_scale_s2"] = scale
    line = m.visual_line(fm)
    assert line.startswith("MLP_sub=partial:" if off else "MLP_sub=good:")
    assert ("at ×" in line and "of the true scale" in line) == off
    assert ("at the true scale" in line) == (not off)


def test_visual_sub_scale_caps_but_does_not_lift() -> None:
    # A scale error caps a perfect shape at partial; it never turns a wrong shape into partial.
    wrong = _function_metrics((0.2, 0.99), 0.95, 0.011)
    wrong["MLP_sub_scale_s1"] = wrong["MLP_sub_scale_s2"] = 0.24
    assert m.visual_line(wrong).startswith("MLP_sub=bad:")
    # Scales that differ per s are listed per s.
    mixed = _function_metrics((0.99, 0.99), 0.95, 0.011)
    mixed["MLP_sub_scale_s2"] = 0.058
    assert "off the true scale (learned = 1.0 × c^1, 0.058 × c^2)" in m.visual_line(mixed)
    # Without scale keys (an older record) the shape alone decides.
    no_scale = {k: v for k, v in mixed.items() if not k.startswith("MLP_sub_scale")}
    assert m.visual_line(no_scale).startswith("MLP_sub=good: shape matches c^1, c^2 (R² 0.99),")


def test_pure_numpy_import() -> None:
    import subprocess
    import sys

    code = (
        "import sys, metab_opt.problem.metrics; "
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
