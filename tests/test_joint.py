"""The joint recovery's metrics, its classification and its constraints (metab_opt.problem.joint),
and
the UCB sampler's rule that a run violating a constraint is never converged."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from metab_opt.config import load_config
from metab_opt.problem import joint
from metab_opt.ucbtree import UCBSampler
from metab_opt.ucbtree._optuna_internals import constraints_of
from metab_opt.ucbtree._record import CONVERGED, PARTIAL
from metab_opt.ucbtree._rules import Planner
from metab_opt.ucbtree._tree import Node, read_node

optuna.logging.set_verbosity(optuna.logging.WARNING)


def blobs(seed: int = 0, n: int = 40, gap: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian clusters in 2-D, ``gap`` apart, and their types (half each, interleaved)."""
    rng = np.random.default_rng(seed)
    types = np.arange(n) % 2
    emb = rng.normal(size=(n, 2)) * 0.3 + gap * types[:, None]
    return emb, types


# ------------------------------------------------------------------------------ clustering


def test_separated_types_cluster_exactly_under_any_label_order() -> None:
    emb, types = blobs()
    assert joint.embedding_cluster_acc(emb, types) == 1.0
    assert joint.embedding_cluster_acc(emb, 1 - types) == 1.0  # the matching is free


def test_one_misplaced_metabolite_costs_one_over_n() -> None:
    emb, types = blobs()
    moved = emb.copy()
    moved[0] = emb[1]  # metabolite 0 (type 0) sits inside type 1's cluster
    assert joint.embedding_cluster_acc(moved, types) == pytest.approx(1 - 1 / len(types))


def test_mixed_embeddings_do_not_separate() -> None:
    rng = np.random.default_rng(3)
    types = np.arange(200) % 2
    acc = joint.embedding_cluster_acc(rng.normal(size=(200, 2)), types)
    assert 0.5 <= acc < 0.75
    assert abs(joint.embedding_silhouette(rng.normal(size=(200, 2)), types)) < 0.1


def test_kmeans_is_deterministic_and_finds_three_groups() -> None:
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    types = np.repeat(np.arange(3), 20)
    pts = centres[types] + 0.2 * rng.normal(size=(60, 2))
    labels = joint.kmeans(pts, 3)
    assert np.array_equal(labels, joint.kmeans(pts, 3))
    assert joint.embedding_cluster_acc(pts, types) == 1.0
    with pytest.raises(ValueError, match="kmeans"):
        joint.kmeans(pts[:2], 3)


def test_silhouette_by_hand_on_four_points() -> None:
    emb = np.array([[0.0], [1.0], [10.0], [11.0]])
    types = np.array([0, 0, 1, 1])
    # Point 0: a = 1, b = mean(10, 11) = 10.5 -> 9.5 / 10.5; point 1: a = 1, b = 9.5 -> 8.5/9.5.
    expected = 2 * (9.5 / 10.5 + 8.5 / 9.5) / 4
    assert joint.embedding_silhouette(emb, types) == pytest.approx(expected)


def test_non_finite_embeddings_give_nan() -> None:
    emb, types = blobs()
    emb[3, 1] = np.nan
    assert math.isnan(joint.embedding_cluster_acc(emb, types))
    assert math.isnan(joint.embedding_silhouette(emb, types))


# ------------------------------------------------------------------------------ the verdict


def run_metrics(r2: float, slopes: tuple[float, float], acc: float) -> dict[str, Any]:
    m: dict[str, Any] = {"rate_constants_R2": r2, "embedding_cluster_acc": acc}
    for t, (learned, true) in enumerate(zip(slopes, (-0.001, -0.002))):
        m[f"MLP_node_slope_type{t}"] = learned
        m[f"MLP_node_true_slope_type{t}"] = true
    m.update(joint.slope_ratios(m, 2))
    return m


def test_slope_ratios_and_their_mean() -> None:
    m = run_metrics(0.99, (-0.0012, -0.0019), 1.0)
    assert m["MLP_node_slope_ratio_type0"] == pytest.approx(1.2)
    assert m["MLP_node_slope_ratio_type1"] == pytest.approx(0.95)
    assert m["avg_slope_ratio"] == pytest.approx(1.075)


@pytest.mark.parametrize(("r2", "slopes", "acc", "status", "missing"), [
    (0.99, (-0.001, -0.002), 1.0, "converged", []),
    (0.99, (-0.00119, -0.00123), 1.0, "partial-k", ["type 1 slope (ratio 0.61"]),
    (0.99, (-0.001, -0.002), 0.97, "partial-k", ["type clusters"]),
    (0.85, (-0.001, -0.002), 1.0, "partial-homeostasis", ["k (R² 0.850"]),
    (0.85, (0.0, -0.002), 0.5, "failed", ["k (R²", "type 0 slope", "type clusters"]),
    (0.90, (-0.001, -0.002), 1.0, "partial-homeostasis", ["k (R² 0.900"]),  # strictly above
])
def test_joint_status_names_what_is_missing(r2: float, slopes: tuple[float, float], acc: float,
                                            status: str, missing: list[str]) -> None:
    got, diagnosis = joint.joint_status(run_metrics(r2, slopes, acc))
    assert got == status
    for part in missing:
        assert part in diagnosis
    if status == "converged":
        assert "missing" not in diagnosis


def test_the_slope_range_is_inclusive() -> None:
    lo, hi = joint.SLOPE_RATIO_RANGE
    assert joint.joint_status(run_metrics(0.99, (-0.001 * lo, -0.002 * hi), 1.0))[0] == (
        "converged")
    assert joint.joint_status(run_metrics(0.99, (-0.001 * lo * 0.99, -0.002), 1.0))[0] == (
        "partial-k")


def test_joint_metrics_of_a_run() -> None:
    emb, types = blobs(n=10)
    m = run_metrics(0.95, (-0.001, -0.002), 1.0)
    del m["embedding_cluster_acc"]
    out = joint.joint_metrics(emb, types, m)
    assert out["embedding_cluster_acc"] == 1.0
    assert out["embedding_silhouette"] > 0.7
    assert out["joint_status"] == "converged"
    line = joint.joint_summary(out)
    assert line is not None and line.startswith("converged: slope ratios 1.00/1.00")
    assert joint.joint_summary({"rate_constants_R2": 0.9}) is None


@pytest.mark.parametrize(("attrs", "feasible"), [
    (run_metrics(0.99, (-0.001, -0.002), 1.0), True),
    (run_metrics(0.99, (-0.0013, -0.002), 1.0), False),
    (run_metrics(0.99, (-0.001, -0.002), 0.99), False),
    ({}, False),  # a failed run measured nothing
])
def test_constraints_hold_exactly_when_the_homeostasis_does(attrs: dict[str, Any],
                                                           feasible: bool) -> None:
    values = joint.constraints(attrs, 2)
    assert len(values) == 3
    assert all(math.isfinite(v) for v in values)
    assert all(v <= 0 for v in values) == feasible


# ------------------------------------------------------------------------------ the sampler

KNOB_SPACE = {"x": optuna.distributions.FloatDistribution(0.0, 1.0, step=0.125)}


def sampler(constraints: bool) -> UCBSampler:
    return UCBSampler(search_space=KNOB_SPACE, base_params={"x": 0.5}, seed=0, converged=0.9,
                      failed=0.1, failed_value=0.0,
                      constraints_func=(lambda t: joint.constraints(t.user_attrs, 2))
                      if constraints else None)


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0, step=0.125)
    good = trial.number % 2 == 0  # even trials recover the homeostasis, odd ones do not
    m = run_metrics(0.95, (-0.001, -0.002 if good else -0.0009), 1.0)
    m["joint_status"], m["joint_diagnosis"] = joint.joint_status(m)
    for key, value in m.items():
        trial.set_user_attr(key, value)
    return 0.95 + 0.01 * x


def run_study(constraints: bool, n: int) -> tuple[optuna.Study, Planner]:
    """A finished toy study and the sampler's rules as they stand after it."""
    study = optuna.create_study(direction="maximize", sampler=sampler(constraints))
    study.optimize(objective, n_trials=n)
    s = study.sampler
    assert isinstance(s, UCBSampler)
    return study, Planner(s._settings, study.trials, n, sign=1.0)


def node_of(t: optuna.trial.FrozenTrial) -> Node:
    node = read_node(t, {"x": 0.5}, ["x"], ["x"])
    assert node is not None
    return node


def test_sampler_stores_constraints_and_never_calls_a_violating_run_converged() -> None:
    study, planner = run_study(True, 4)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and t.value is not None and t.value > 0.9
        values = constraints_of(t)
        assert values is not None and len(values) == 3
        node = node_of(t)
        assert node.feasible == (t.number % 2 == 0)
        assert planner.status(node) == (CONVERGED if t.number % 2 == 0 else PARTIAL)
        # The rules rank an infeasible trial by its value less its total violation: here the
        # type-1 slope ratio 0.45 misses the range's low end by 0.35.
        penalty = 0.0 if node.feasible else 0.8 - 0.45
        assert node.score == pytest.approx(t.value - penalty)


def test_without_constraints_nothing_is_stored_and_r2_alone_decides() -> None:
    study, planner = run_study(False, 2)
    for t in study.trials:
        assert constraints_of(t) is None
        node = node_of(t)
        assert node.feasible and planner.status(node) == CONVERGED


def test_a_constraint_stored_by_another_sampler_counts_too() -> None:
    dist = KNOB_SPACE["x"]
    t = create_trial(params={"x": 0.5}, distributions={"x": dist}, value=0.99,
                     system_attrs={"constraints": (0.2, -1.0, 0.0)})
    node = read_node(t, {"x": 0.5}, ["x"], ["x"])
    assert node is not None and not node.feasible and node.score == pytest.approx(0.79)


def test_one_far_off_metabolite_does_not_take_a_cluster_of_its_own() -> None:
    # Two tight type clusters and one type-0 metabolite far away: a single farthest-point
    # start gives it a cluster alone (accuracy ~0.5); the best of several starts does not.
    emb, types = blobs(n=100, gap=4.0)
    emb[0] = [-12.0, -12.0]
    assert joint.embedding_cluster_acc(emb, types) == 1.0  # it is nearer its own type
    assert joint.embedding_silhouette(emb, types) > 0.5


def test_only_a_joint_config_asks_for_the_joint_recovery() -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    assert joint.asks_joint_recovery(load_config(configs / "rank50_joint.yaml"))
    assert not joint.asks_joint_recovery(load_config(configs / "tiny.yaml"))  # k-only
    assert not joint.asks_joint_recovery(None)


def test_memory_and_log_read_the_joint_verdict() -> None:
    from metab_opt.logbook import format_entry, render_memory

    study = optuna.create_study(direction="maximize", sampler=sampler(True))
    study.optimize(objective, n_trials=2)
    # joint=True: what the logbook passes for a config with search.constraints: joint
    memory = render_memory(study.trials, study_name="joint", joint=True)
    assert "less its constraint violation" in memory  # the knowledge base says what it compares
    assert "(joint, iter 0: converged: slope ratios 1.00/1.00" in memory
    entry = format_entry(study.trials[1], joint=True)
    assert "joint partial-k: slope ratios 1.00/0.45" in entry and "type 1 slope" in entry
    # R² 0.95 alone is converged; the log reads the trial as the sampler does: partial.
    assert entry.startswith("## Iter 1: partial\n")
    assert format_entry(study.trials[0]).startswith("## Iter 0: converged\n")
    # Nothing says these views' study asks for the joint recovery: no verdict in them.
    assert "slope ratios" not in render_memory(study.trials, study_name="joint")
    assert "slope ratios" not in format_entry(study.trials[1])
    plain = optuna.create_study(direction="maximize", sampler=sampler(False))
    plain.optimize(objective, n_trials=1)
    assert "constraint violation" not in render_memory(plain.trials, study_name="plain")
