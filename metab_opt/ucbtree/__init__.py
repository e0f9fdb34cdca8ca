"""ucbtree: a UCB (PUCT) tree sampler for Optuna, in which every trial mutates a parent trial.

Needs only optuna and numpy. See README.md in this folder for the rule, the strategies, the
roles and an example (example.py runs one).

The knobs (:class:`Knob`, :class:`Roles`) import the standard library only and load eagerly;
everything else loads on first use, so that a configuration loader that builds knobs does not
pay for importing Optuna (a third of a second on every command-line start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._knob import DOWN, UP, Knob, KnobSpecError, Roles, default_value

if TYPE_CHECKING:
    from ._mutation import Move, format_changes, moves
    from ._optuna_internals import InternalsChanged, constraints_of
    from ._prior import FittedPrior, PriorSource, SourceTrial, Weights
    from ._record import (
        ATTR_BLOCK,
        ATTR_MUTATION,
        ATTR_NODE_ID,
        ATTR_PARENT_ID,
        ATTR_PARENT_RULE,
        ATTR_STRATEGY,
        CONVERGED,
        FAILED,
        FINISHED,
        PARTIAL,
        RECORD_KEY,
        STRATEGIES,
        USER_ATTRS,
        VIRTUAL_ROOT,
        classify,
        constraint_violation,
        is_failed,
        trial_value,
    )
    from ._sampler import UCBSampler, next_parent, suggest_knobs, ucb_scores
    from ._tree import (
        Group,
        Incumbent,
        Node,
        Score,
        canonical,
        incumbent,
        rank_groups,
        read_nodes,
    )

__all__ = [
    "ATTR_BLOCK",
    "ATTR_MUTATION",
    "ATTR_NODE_ID",
    "ATTR_PARENT_ID",
    "ATTR_PARENT_RULE",
    "ATTR_STRATEGY",
    "CONVERGED",
    "DOWN",
    "FAILED",
    "FINISHED",
    "FittedPrior",
    "Group",
    "Incumbent",
    "InternalsChanged",
    "Knob",
    "KnobSpecError",
    "Move",
    "Node",
    "PARTIAL",
    "PriorSource",
    "RECORD_KEY",
    "Roles",
    "STRATEGIES",
    "Score",
    "SourceTrial",
    "UCBSampler",
    "UP",
    "USER_ATTRS",
    "VIRTUAL_ROOT",
    "Weights",
    "canonical",
    "classify",
    "constraint_violation",
    "constraints_of",
    "default_value",
    "format_changes",
    "incumbent",
    "is_failed",
    "moves",
    "next_parent",
    "rank_groups",
    "read_nodes",
    "suggest_knobs",
    "trial_value",
    "ucb_scores",
]

# Where each lazily loaded name lives.
_LAZY = {
    **dict.fromkeys(("Move", "format_changes", "moves"), "_mutation"),
    **dict.fromkeys(("InternalsChanged", "constraints_of"), "_optuna_internals"),
    **dict.fromkeys(("ATTR_BLOCK", "ATTR_MUTATION", "ATTR_NODE_ID", "ATTR_PARENT_ID",
                     "ATTR_PARENT_RULE", "ATTR_STRATEGY", "CONVERGED", "FAILED", "FINISHED",
                     "PARTIAL", "RECORD_KEY", "STRATEGIES", "USER_ATTRS", "VIRTUAL_ROOT",
                     "classify", "constraint_violation", "is_failed", "trial_value"),
                    "_record"),
    **dict.fromkeys(("FittedPrior", "PriorSource", "SourceTrial", "Weights"), "_prior"),
    **dict.fromkeys(("UCBSampler", "next_parent", "suggest_knobs", "ucb_scores"), "_sampler"),
    **dict.fromkeys(("Group", "Incumbent", "Node", "Score", "canonical", "incumbent",
                     "rank_groups", "read_nodes"), "_tree"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
