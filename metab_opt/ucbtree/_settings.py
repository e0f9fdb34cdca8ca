"""What a decision is made from and what it makes: the rules' :class:`Settings` (everything
the problem declares), a :class:`Decision` (the next trial's params and why) and a parent
candidate. The rules themselves are :mod:`._rules`'."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial

from . import _mutation as mut
from . import _prior
from ._knob import Knob, Roles

__all__ = ["Decision", "Settings"]


@dataclass(frozen=True)
class Settings:
    """What the rules know of the problem: everything is declared, nothing is looked up by
    name. Thresholds and gains are in the objective's units."""

    knobs: tuple[Knob, ...]
    base: Mapping[str, Any]  # the root's params, and every knob's lattice anchor
    roles: Roles
    n_iter_block: int
    ucb_c: float
    seed: int
    converged: float | None  # boundary-probe: better than this is converged
    failed: float | None  # worse than this is failed (explore's streak, no replicate)
    failed_value: float | None  # what a failed trial counts as (None: nothing)
    follow_gain: float  # follow-through: the gain over the grandparent that counts
    rising_gain: float  # duration: the gain over the curve's last quarter that counts
    degenerate: Callable[[FrozenTrial], bool] | None  # degeneracy-break's diagnosis
    value_name: str  # how the parent rules name the objective ("value", "R2")
    owner: str  # the sampler's class name, for messages
    survey: int = 0  # survey trials after the root of block 1 (0: no survey)
    # Rank a parent's candidate moves by a model of every finished trial (:mod:`._model`)
    # instead of the fixed exploration order; and let the duration rule shorten a plateaued
    # incumbent's runs.
    model: bool = False
    # Earlier studies (:mod:`._prior`), fitted on these knobs; None: no prior, and every
    # decision is what it was before priors existed.
    prior: _prior.FittedPrior | None = None
    # True for params whose run a longer duration would not lengthen (the caller caps the
    # training): raising the duration knob from them is no move.
    capped: Callable[[Mapping[str, Any]], bool] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    @property
    def group_names(self) -> tuple[str, ...]:
        """The knobs that define a replicate group: all but the seed knob."""
        return tuple(k.name for k in self.knobs if k.name != self.roles.seed)


@dataclass(frozen=True)
class Decision:
    params: dict[str, Any]
    parent: int
    strategy: str
    changes: tuple[mut.Change, ...]
    parent_rule: str
    spread: int | None = None


@dataclass(frozen=True)
class _Parent:
    """A parent to mutate: a scored node, or the block's root when nothing can be scored."""

    number: int
    params: Mapping[str, Any]
    describe: Callable[[str], str]  # strategy -> the parent_rule line
