"""The trial record's two definitions: what a trial counts as, and converged / partial /
failed."""

from __future__ import annotations

import math
from typing import Any

import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from metab_opt.ucbtree import (
    CONVERGED,
    FAILED,
    PARTIAL,
    STRATEGIES,
    USER_ATTRS,
    classify,
    is_failed,
    trial_value,
)


def trial(state: TrialState, value: float | None = None,
          curve: dict[int, float] | None = None) -> FrozenTrial:
    if state == TrialState.RUNNING:  # create_trial makes finished trials only
        t = create_trial(state=TrialState.PRUNED, intermediate_values=curve or {})
        t.state = state
        return t
    return create_trial(state=state, value=value, intermediate_values=curve or {})


@pytest.mark.parametrize(
    ("state", "value", "curve", "counts", "failed"),
    [
        (TrialState.COMPLETE, 0.7, None, 0.7, False),
        (TrialState.COMPLETE, -3.0, None, -3.0, False),
        (TrialState.PRUNED, None, {0: 0.1, 3: 0.4, 1: 0.9}, 0.4, False),  # the last step's
        (TrialState.PRUNED, None, {0: 0.1, 1: math.nan}, 0.1, False),  # finite reports only
        (TrialState.PRUNED, None, {}, "failed", True),
        (TrialState.FAIL, None, None, "failed", True),
        (TrialState.RUNNING, None, {0: 0.3}, None, False),
    ],
)
def test_trial_value(state: TrialState, value: float | None, curve: dict[int, float] | None,
                     counts: Any, failed: bool) -> None:
    t = trial(state, value, curve)
    assert is_failed(t) is failed
    if counts == "failed":
        assert trial_value(t) is None
        assert trial_value(t, failed_value=0.0) == 0.0
    else:
        assert trial_value(t, failed_value=0.0) == counts


@pytest.mark.parametrize(
    ("value", "maximize", "minimize"),
    [
        (0.95, CONVERGED, FAILED),
        (0.9, PARTIAL, PARTIAL),  # the thresholds themselves are partial (metrics.classify)
        (0.5, PARTIAL, PARTIAL),
        (0.1, PARTIAL, PARTIAL),
        (0.05, FAILED, CONVERGED),
        (None, FAILED, FAILED),
        (math.nan, FAILED, FAILED),
        (math.inf, FAILED, FAILED),
    ],
)
def test_classify_either_direction(value: float | None, maximize: str, minimize: str) -> None:
    assert classify(value, sign=1.0, converged=0.9, failed=0.1) == maximize
    # A minimized study declares its thresholds in its own units: converged below 0.1.
    assert classify(value, sign=-1.0, converged=0.1, failed=0.9) == minimize


def test_classify_without_thresholds() -> None:
    assert classify(0.5) is None
    assert classify(0.5, failed=0.1) is None  # no scale above: not "partial"
    assert classify(0.05, failed=0.1) == FAILED
    assert classify(0.95, converged=0.9) == CONVERGED
    assert classify(None) == FAILED


def test_names() -> None:
    assert USER_ATTRS == ("node_id", "parent_id", "block", "strategy", "mutation",
                          "parent_rule")
    assert len(set(STRATEGIES)) == 10
