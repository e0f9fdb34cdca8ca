"""The log entry's Observation line: the instructions' scale-ambiguity reading."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from metab_opt.logbook import format_entry

AMBIGUITY = "scale ambiguity: k correlated but shifted"


def _trial(value: float | None, state: TrialState = TrialState.COMPLETE,
           **attrs: Any) -> FrozenTrial:
    trial = optuna.trial.create_trial(state=state, value=value, user_attrs=attrs)
    trial.number = 3
    return trial


def _observation(trial: FrozenTrial) -> str:
    lines = format_entry(trial).splitlines()
    (line,) = [x for x in lines if x.startswith("Observation: ")]
    return line


def test_high_shifted_low_r2_reads_as_scale_ambiguity() -> None:
    trial = _trial(0.41, rate_constants_R2=0.41, rate_constants_R2_shifted=0.97,
                   mean_log_offset=-0.62, parent_id=None)
    line = _observation(trial)
    assert (f"{AMBIGUITY} (shifted R² 0.97 vs R² 0.41, mean log10 k off by -0.62) — anchor the "
            "scale (raise coeff_k_center)") in line
    # It sits among the other computed parts, not instead of them.
    assert "block root" in line and "new best" in line


def test_negative_r2_and_no_offset() -> None:
    # The seed's own failure: k recovered up to a global factor, R² far below zero.
    trial = _trial(-114.0, rate_constants_R2=-114.0, rate_constants_R2_shifted=0.93)
    assert f"{AMBIGUITY} (shifted R² 0.93 vs R² -114.00) — anchor the scale" in _observation(trial)


@pytest.mark.parametrize(
    ("r2", "shifted", "expected"),
    [
        (0.41, 0.97, True),
        (0.89, 0.91, True),
        (0.95, 0.99, False),  # converged: nothing to anchor
        (0.9, 0.99, False),  # R² must be below 0.9
        (0.41, 0.9, False),  # shifted R² must be above 0.9
        (0.41, 0.6, False),  # k poorly correlated too: not a scale problem
        (-3.0, float("nan"), False),
    ],
)
def test_thresholds(r2: float, shifted: float, expected: bool) -> None:
    trial = _trial(r2, rate_constants_R2=r2, rate_constants_R2_shifted=shifted)
    assert (AMBIGUITY in _observation(trial)) is expected


def test_missing_attrs_and_failed_trial() -> None:
    # No shifted R² recorded: no claim.
    assert AMBIGUITY not in _observation(_trial(0.41, rate_constants_R2=0.41))
    # The R² attr missing: the trial's value stands in for it.
    line = _observation(_trial(0.41, rate_constants_R2_shifted=0.97))
    assert f"{AMBIGUITY} (shifted R² 0.97 vs R² 0.41)" in line
    # A pruned trial with its metrics recorded is read the same way.
    pruned = _trial(None, TrialState.PRUNED, rate_constants_R2=0.3,
                    rate_constants_R2_shifted=0.95)
    assert f"{AMBIGUITY} (shifted R² 0.95 vs R² 0.30)" in _observation(pruned)
    failed = _trial(None, TrialState.FAIL, fail_reason="nan loss")
    assert AMBIGUITY not in _observation(failed)
