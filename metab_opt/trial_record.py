"""A trial as metab_opt counts it: the sampler's record (:mod:`metab_opt.ucbtree`) with the
problem's settings, in one place for the sampler, the logbook, ``metab-opt best`` and compare.

- The objective is ``rate_constants_R2``, maximized. Converged ``R² > 0.9``, failed ``R² < 0.1``:
  the boundaries of :func:`metab_opt.problem.metrics.classify` (:data:`CONVERGED_R2`,
  :data:`FAILED_R2`),
  applied by the sampler's :func:`~metab_opt.ucbtree.classify` (:func:`classify_r2`).
- A failed trial counts R² :data:`FAILED_VALUE` (0) in the sampler's sums (a replicate group's
  mean, the direction memory): below the failed threshold, so a group's mean carries its
  failures. :func:`read_nodes` reads the tree so.
- What a finished trial's R² is: the sampler's :func:`~metab_opt.ucbtree.trial_value` (a
  complete trial its value, a pruned one its last report). The views show it through
  :func:`trial_r2`, with one named difference: a failed trial *shows* no R² (``n/a``,
  :data:`SHOWN_FAILED_R2`) where the sampler counts :data:`FAILED_VALUE`.
- Which knob is the training seed: the config's ``search.roles`` (:func:`seed_knob`; the
  :func:`standard_roles` when the config declares none, as the sampler does); only without a
  config, a knob named :data:`SEED_BY_NAME`.

Imports neither torch nor :mod:`metab_opt.sampler`: the logbook reads trials without the sampler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from metab_opt.problem.metrics import CONVERGED_R2, FAILED_R2
from metab_opt.ucbtree import DOWN, UP, Knob, Roles, classify, trial_value
from metab_opt.ucbtree import read_nodes as _read_nodes

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from metab_opt.config import Config
    from metab_opt.ucbtree import Node

__all__ = [
    "CONVERGED_R2",
    "FAILED_R2",
    "FAILED_VALUE",
    "PRIOR_SOURCE_ATTR",
    "SEED_BY_NAME",
    "SHOWN_FAILED_R2",
    "classify_r2",
    "own_trials",
    "read_nodes",
    "roles_of",
    "seed_knob",
    "standard_roles",
    "trial_r2",
]

# What a failed trial counts as in the sampler's sums: R² 0, below the failed threshold.
FAILED_VALUE = 0.0
# What a failed trial's R² shows as in the views (the log, the memory, the progress line, a
# comparison): none, written "n/a" — not the FAILED_VALUE the sampler counts it as.
SHOWN_FAILED_R2: float | None = None
# The training seed's knob when there is no config to declare it (its search.roles).
SEED_BY_NAME = "seed"
# A trial copied into a study from a prior (an earlier study's, for Optuna's samplers, which
# learn from the trials in their study: metab_opt.prior.optuna_trials) carries its source's
# name under this system attr. It is no trial of the study: no view, count, incumbent or
# pruning decision reads it (:func:`own_trials`).
PRIOR_SOURCE_ATTR = "metab_opt:prior_source"


def own_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` without those a prior copied in (:data:`PRIOR_SOURCE_ATTR`)."""
    return [t for t in trials if PRIOR_SOURCE_ATTR not in t.system_attrs]


def trial_r2(trial: FrozenTrial) -> float | None:
    """The trial's R² as the views show it: the sampler's :func:`~metab_opt.ucbtree.trial_value`
    (a complete trial its value, a pruned one its last report; None while it runs), with a
    failed trial showing :data:`SHOWN_FAILED_R2` (none) rather than :data:`FAILED_VALUE`."""
    return trial_value(trial, failed_value=SHOWN_FAILED_R2)


def classify_r2(r2: float | None) -> str:
    """``converged`` / ``partial`` / ``failed`` for an R² (None or not finite: failed), as the
    sampler classifies a node: :func:`metab_opt.ucbtree.classify` with the problem's
    thresholds, which are :func:`metab_opt.problem.metrics.classify`'s."""
    status = classify(r2, converged=CONVERGED_R2, failed=FAILED_R2)
    assert status is not None  # both thresholds are set
    return status


def read_nodes(trials: Iterable[FrozenTrial], base_params: Mapping[str, Any],
               names: Sequence[str], group_names: Sequence[str],
               cache: MutableMapping[int, Node] | None = None) -> list[Node]:
    """The tree's nodes of ``trials`` as the problem's sampler counts them (a maximized R², a
    failed run :data:`FAILED_VALUE`)."""
    return _read_nodes(trials, base_params, names, group_names, cache, sign=1.0,
                       failed_value=FAILED_VALUE)


def standard_roles(knobs: Sequence[Knob]) -> Roles:
    """The roles every shipped config declares, for the knobs present: what a config without
    ``search.roles`` (and a sampler built without ``roles``) gets, as before roles existed."""
    names = {k.name for k in knobs}
    seed = next((k.name for k in knobs if k.name == SEED_BY_NAME or k.key == "training.seed"),
                None)
    spread = tuple(n for n in ("lr_k", "lr_node", "lr_sub") if n in names and n != seed)
    moves = tuple((n, d) for n, d in (("lr_k", UP), ("lr_node", DOWN), ("lr_sub", DOWN))
                  if n in names and n != seed)
    duration = "data_augmentation_loop"
    return Roles(seed=seed, duration=duration if duration in names else None, spread=spread,
                 degeneracy=moves)


def roles_of(config: Config) -> Roles:
    """The roles the sampler of ``config`` uses: its ``search.roles``, else the standard ones."""
    roles = config.search.roles
    return standard_roles(config.search.knobs) if roles is None else roles


def seed_knob(config: Config | None) -> str | None:
    """The training seed's knob (replicates differ only in it): the config's role, None when it
    declares none; without a config, :data:`SEED_BY_NAME`."""
    return SEED_BY_NAME if config is None else roles_of(config).seed
