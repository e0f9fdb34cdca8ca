"""The trial record: what the sampler writes on a trial, and what a finished trial counts as.

The sampler writes one system attr per trial (:data:`RECORD_KEY`, a JSON dict: parent, block,
block root, strategy, changes, params, spread slot, parent rule, settings) and reads only that
back; the user attrs (:data:`USER_ATTRS`) are for people and for tools that draw the tree.
:func:`trial_value` is the one definition of a finished trial's value and :func:`classify` the
one definition of converged / partial / failed: every rule goes through them.
"""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ._optuna_internals import constraints_of

__all__ = [
    "CONVERGED",
    "FAILED",
    "FINISHED",
    "PARTIAL",
    "RECORD_KEY",
    "STRATEGIES",
    "USER_ATTRS",
    "VIRTUAL_ROOT",
    "classify",
    "constraint_violation",
    "finite",
    "is_failed",
    "trial_value",
]

# The sampler's own state, one JSON dict per trial. Namespaced like Optuna's GA samplers do
# with "NSGAIISampler:generation". The name predates this package (metab_opt's studies and its
# golden decisions carry it), so it stays.
RECORD_KEY = "metab_opt:ucb:node"

# User attrs written on every trial before the objective runs.
ATTR_NODE_ID = "node_id"  # the trial number
ATTR_PARENT_ID = "parent_id"  # the parent's trial number, VIRTUAL_ROOT for the base values
ATTR_BLOCK = "block"  # from 1
ATTR_STRATEGY = "strategy"  # one of STRATEGIES
ATTR_MUTATION = "mutation"  # "param: old -> new", several joined by "; ", or "none"
ATTR_PARENT_RULE = "parent_rule"  # why this parent, in words
USER_ATTRS = (ATTR_NODE_ID, ATTR_PARENT_ID, ATTR_BLOCK, ATTR_STRATEGY, ATTR_MUTATION,
              ATTR_PARENT_RULE)

# ``parent_id`` of a node whose parent is the base values rather than a trial: the root-run of
# block 1 itself, and nodes created before that root-run existed.
VIRTUAL_ROOT = -1

STRATEGIES = ("root", "survey", "initial-spread", "enqueued", "replicate", "degeneracy-break",
              "boundary-probe", "duration", "explore", "exploit")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

CONVERGED = "converged"
PARTIAL = "partial"
FAILED = "failed"


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def intermediate_curve(trial: FrozenTrial) -> tuple[tuple[int, float], ...]:
    """The trial's finite intermediate values, by step."""
    return tuple(sorted((int(s), float(v)) for s, v in trial.intermediate_values.items()
                        if finite(v) is not None))


def _reached(trial: FrozenTrial) -> float | None:
    """What a finished trial reached: a complete trial's finite value, a pruned trial's last
    finite report; None for a failed trial (or one that never reported)."""
    if trial.state == TrialState.COMPLETE:
        return finite(trial.value)
    if trial.state == TrialState.PRUNED:
        curve = intermediate_curve(trial)
        return curve[-1][1] if curve else None
    return None


def is_failed(trial: FrozenTrial) -> bool:
    """A finished trial without a value: FAIL, a non-finite value, or pruned before any report.
    Such a trial is a node of the tree that is never a parent."""
    return trial.state in FINISHED and _reached(trial) is None


def trial_value(trial: FrozenTrial, *, failed_value: float | None = None) -> float | None:
    """What a trial counts as, in the objective's units: a complete trial its value, a pruned
    trial its last report, a failed one (:func:`is_failed`) ``failed_value``; a trial that has
    not finished, None."""
    if trial.state not in FINISHED:
        return None
    reached = _reached(trial)
    return failed_value if reached is None else reached


def constraint_violation(trial: FrozenTrial) -> float:
    """The sum of the trial's positive constraint values (``constraints_func``'s, stored by
    Optuna); 0 when it satisfies them all or has none. A trial is feasible at 0."""
    return sum(max(0.0, v) for v in constraints_of(trial) or ())


def classify(value: float | None, *, sign: float = 1.0, converged: float | None = None,
             failed: float | None = None) -> str | None:
    """:data:`CONVERGED`, :data:`PARTIAL` or :data:`FAILED`; None when the thresholds given
    cannot tell.

    ``sign`` is +1 for a maximized objective and -1 for a minimized one; the thresholds are in
    the objective's units. Converged: strictly better than ``converged``. Failed: no value (not
    finite), or strictly worse than ``failed``. Partial: neither, when both thresholds are set
    (with one missing there is no scale on that side to call a value partial).
    """
    v = finite(value)
    if v is None:
        return FAILED
    if failed is not None and sign * v < sign * failed:
        return FAILED
    if converged is not None and sign * v > sign * converged:
        return CONVERGED
    if converged is None or failed is None:
        return None
    return PARTIAL
