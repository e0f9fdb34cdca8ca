"""Reading a trial for the views, and how the views write values.

Every attribute may be missing: a failed or interrupted trial has few. What the sampler records
on a trial is read by its record's names (:mod:`metab_opt.ucbtree`: ``ATTR_*``); a trial's R²
and its status are the sampler's (:mod:`metab_opt.trial_record`: its ``trial_value`` and
``classify`` with the problem's thresholds), except that a failed trial shows no R² (``n/a``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from metab_opt.trial_record import classify_r2, trial_r2
from metab_opt.ucbtree import (
    ATTR_BLOCK,
    ATTR_NODE_ID,
    ATTR_PARENT_ID,
    CONVERGED,
    FAILED,
    FINISHED,
    PARTIAL,
    constraint_violation,
)

__all__ = [
    "FINISHED_STATES",
    "NA",
    "best_of",
    "block_of",
    "finite",
    "fmt_delta",
    "fmt_metric",
    "fmt_param",
    "fmt_r2",
    "int_or_none",
    "node_id",
    "parent_id",
    "parent_label",
    "status",
    "text_attr",
    "trial_r2",
]

# The states of a finished trial: the sampler's (a trial that has its entry).
FINISHED_STATES = FINISHED
NA = "n/a"


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, not a number, nan, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def status(trial: FrozenTrial) -> str:
    """converged / partial / failed, as the objective recorded it or as the R² implies
    (:func:`metab_opt.trial_record.classify_r2`), and as the sampler reads it: a converged
    trial that misses one of its stored constraints is partial; ``(pruned)`` after a pruned
    trial's."""
    if trial.state == TrialState.FAIL:
        return FAILED
    recorded = trial.user_attrs.get("status")
    if not isinstance(recorded, str) or not recorded:
        recorded = classify_r2(trial_r2(trial))
    if recorded == CONVERGED and constraint_violation(trial) > 0:
        recorded = PARTIAL
    return f"{recorded} (pruned)" if trial.state == TrialState.PRUNED else recorded


def node_id(trial: FrozenTrial) -> int:
    node = int_or_none(trial.user_attrs.get(ATTR_NODE_ID))
    return trial.number if node is None else node


def parent_id(trial: FrozenTrial) -> int | None:
    """The parent's trial number; None for a block root or when the sampler recorded none."""
    parent = int_or_none(trial.user_attrs.get(ATTR_PARENT_ID))
    return parent if parent is not None and parent >= 0 else None


def parent_label(trial: FrozenTrial) -> str:
    if ATTR_PARENT_ID not in trial.user_attrs:
        return NA
    parent = parent_id(trial)
    return "root" if parent is None else str(parent)


def block_of(trial: FrozenTrial, n_iter_block: int | None) -> int:
    """The sampler's block (numbered from 1); estimated from the trial number if unrecorded."""
    block = int_or_none(trial.user_attrs.get(ATTR_BLOCK))
    if block is not None:
        return block
    return trial.number // n_iter_block + 1 if n_iter_block else 1


def text_attr(trial: FrozenTrial, key: str) -> str:
    value = trial.user_attrs.get(key)
    if value is None or value == "":
        return NA
    return " ".join(str(value).split())  # one line, whatever the objective stored


def best_of(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The trial with the highest R² (ties to the older); None when none has one."""
    scored = [(r2, t) for t in trials if (r2 := trial_r2(t)) is not None]
    return max(scored, key=lambda rt: (rt[0], -rt[1].number))[1] if scored else None


# ---------------------------------------------------------------------------------------------
# Writing values


def fmt_param(value: Any) -> str:
    if value is None:
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def fmt_metric(value: Any, spec: str = ".4f") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NA
    return format(float(value), spec) if math.isfinite(value) else str(float(value))


def fmt_delta(value: float) -> str:
    return f"{value:+.3f}"


def fmt_r2(value: float | None) -> str:
    return NA if value is None else f"{value:.3f}"
