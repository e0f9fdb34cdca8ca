"""UCBMutationSampler: the seed exploration procedure as an Optuna sampler.

The sampler is :class:`metab_opt.ucbtree.UCBSampler` (the PUCT tree, the rules, the trial
record: ``metab_opt/ucbtree/README.md``); this module tells it what it needs to know about the
metabolic problem, and nothing else knows it:

* the knobs, their lattices and their roles come from the config's ``search`` section
  (``search.roles``: the training seed, the duration knob, the initial spread, the
  degeneracy-break move, the knobs the survey leaves at the root), and so does the survey
  (``search.survey``: block 1's space-filling draws after the root) and the move model
  (``search.model``: a Gaussian process of every finished trial ranks the moves of exploit,
  explore and boundary-probe, explore first moves toward the best quarter's values (a density
  move), and the duration rule may also shorten runs);
* the objective is ``rate_constants_R2``, maximized: converged ``R² > 0.9``, failed
  ``R² < 0.1`` (:func:`metab_opt.problem.metrics.classify`), a failed trial counts R² 0 (these
  settings, and the standard roles, are :mod:`metab_opt.trial_record`'s: the logbook and
  ``metab-opt best`` read trials with them);
* degenerate: :func:`metab_opt.problem.metrics.diagnose` of the trial's ``test_pearson`` user attr
and
  its R² is ``degenerate`` or ``severely degenerate`` (good dynamics from wrong k). A large
  ``test_pearson - R²`` alone is not enough: with R² far below 0 the gap is large whatever the
  dynamics, and those runs are failed, not degenerate;
* follow-through needs a gain of 0.02, above training-seed noise (replicates on rank50 differ by
  ~0.005-0.01): without it, a proxy study stepped coeff_MLP_node_L1 five times in a row on
  gains of 1e-4; a learning curve still rises when its last quarter gained more than 1e-3.

Strategies, in the order they are tried for a new trial (``STRATEGIES``; each in the README):
enqueued, root / initial-spread, survey, replicate, degeneracy-break, boundary-probe, duration,
explore, exploit.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.logging import get_logger
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from metab_opt.config import Config, Knob, SearchConfig, apply_params, load_config
from metab_opt.problem import joint
from metab_opt.problem.metrics import diagnose
from metab_opt.trial_record import CONVERGED_R2, FAILED_R2, FAILED_VALUE, standard_roles
from metab_opt.ucbtree import (
    RECORD_KEY,
    STRATEGIES,
    PriorSource,
    Roles,
    UCBSampler,
    suggest_knobs,
    trial_value,
)

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import BaseTrial

__all__ = ["RECORD_KEY", "STRATEGIES", "UCBMutationSampler", "is_degenerate", "next_parent",
           "standard_roles", "suggest_params", "ucb_scores"]

_logger = get_logger(__name__)

# The R² thresholds (metrics.classify's), the failed value and the standard roles are
# metab_opt.trial_record's, which the logbook reads without importing this module.
FOLLOW_MIN_GAIN = 0.02
RISING_MIN_GAIN = 1e-3
_DEGENERATE = ("degenerate", "severely degenerate")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def is_degenerate(trial: FrozenTrial) -> bool:
    """The degeneracy-break rule's diagnosis: good dynamics (``test_pearson`` > 0.95) from
    wrong k (R² <= 0.9), by the instructions' table (:func:`metab_opt.problem.metrics.diagnose`)."""
    test_pearson = _finite(trial.user_attrs.get("test_pearson"))
    if test_pearson is None:
        return False
    return diagnose(test_pearson, trial_value(trial)) in _DEGENERATE


class UCBMutationSampler(UCBSampler):
    """The UCB tree sampler over a config's knobs, with the metabolic problem's settings.

    The objective's value is the node's R² (rate_constants_R2, to maximize; a minimized study
    is handled by sign, as the generic sampler does). ``test_pearson`` in the trial's user
    attrs, when the objective sets it, feeds the degeneracy diagnosis; the trial's intermediate
    values (step -> R²) feed the ``duration`` rule. Failed trials are nodes with R² 0 that are
    never chosen as parents; pruned trials count with their last reported value.

    Args:
        knobs:
            The search space, in exploration order (``Config.search.knobs``).
        base_params:
            The root of the tree: one value per knob (``Config.base_params()``); also the anchor
            of every knob's mutation lattice.
        roles:
            The knobs' roles (``Config.search.roles``); None: :func:`standard_roles`.
        n_iter_block:
            Trials per block; the tree restarts from the incumbent at each block boundary.
        survey:
            Space-filling draws over every knob's lattice after the root of block 1
            (``search.survey``; 0: none), before the rules narrow the tree.
        model:
            Rank the rules' moves by a model of every finished trial, and let the duration
            rule shorten a flat incumbent's runs (``search.model``; :class:`UCBSampler`).
        ucb_c:
            The exploration constant ``c`` of ``R2 + c * sqrt(N) / (1 + V)``.
        seed:
            Seed of the sampler's random choices (new training seeds, first directions).
        independent_sampler:
            Samples params outside the knobs; default ``RandomSampler(seed)``.
        joint_types:
            The number of metabolite types to hold the joint recovery's homeostasis conditions
            for (``search.constraints: joint``): they become the trials' Optuna constraints
            (:func:`metab_opt.problem.joint.constraints`), and a run that misses one is never
            converged, whatever its R². None: no constraints.
        prior:
            Earlier studies' trials (:class:`metab_opt.ucbtree.PriorSource`; the config's
            ``search.prior`` resolved by :func:`metab_opt.prior.resolve_all`) that shape the
            survey, the move model's ranking and the density move, each weighted by how well
            it orders this study's own trials. None: no prior.
        capped:
            True for params whose training the step cap (``--max-steps``) cuts already: the
            duration rule does not lengthen them (:meth:`from_config`'s ``max_steps``).
    """

    def __init__(
        self,
        *,
        knobs: Sequence[Knob],
        base_params: Mapping[str, Any],
        roles: Roles | None = None,
        n_iter_block: int = 12,
        survey: int = 0,
        model: bool = False,
        ucb_c: float = 1.414,
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
        joint_types: int | None = None,
        prior: Sequence[PriorSource] | None = None,
        capped: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        if isinstance(knobs, SearchConfig):
            knobs = knobs.knobs
        if roles is None and isinstance(knobs, Sequence) and all(isinstance(k, Knob)
                                                                 for k in knobs):
            roles = standard_roles(knobs)
        super().__init__(
            knobs=knobs, base_params=base_params, roles=roles, n_iter_block=n_iter_block,
            survey=survey, model=model, ucb_c=ucb_c, seed=seed, converged=CONVERGED_R2,
            failed=FAILED_R2,
            failed_value=FAILED_VALUE, degenerate=is_degenerate, follow_gain=FOLLOW_MIN_GAIN,
            rising_gain=RISING_MIN_GAIN, independent_sampler=independent_sampler,
            value_name="R2", prior=prior, capped=capped,
            constraints_func=None if joint_types is None else functools.partial(
                _joint_constraints, n_types=joint_types))

    @classmethod
    def from_config(cls, path_or_config: str | os.PathLike[str] | Config,
                    seed: int | None = None,
                    prior: Sequence[PriorSource] | None = None,
                    max_steps: int | None = None) -> UCBMutationSampler:
        """The sampler of a config's ``search`` section, rooted at the config's values;
        ``prior``: the sources ``search.prior`` names, resolved (:mod:`metab_opt.prior`);
        ``max_steps``: the trials' step cap, past which a longer duration is no move."""
        if isinstance(path_or_config, (str, os.PathLike)):
            cfg = load_config(Path(path_or_config))
        elif isinstance(path_or_config, Config):
            cfg = path_or_config
        else:
            raise TypeError(f"path_or_config: expected a config file path or a Config, got "
                            f"{type(path_or_config).__name__} {path_or_config!r}")
        search = cfg.search
        roles = search.roles
        if roles is None:
            roles = standard_roles(search.knobs)
            _logger.warning(f"{cfg.path}: search.roles is not declared: the sampler uses the "
                            f"standard roles {roles.to_dict()} (declare them, or `roles: {{}}` "
                            f"for none)")
        return cls(knobs=search.knobs, base_params=cfg.base_params(), roles=roles,
                   n_iter_block=search.n_iter_block, survey=search.survey, model=search.model,
                   ucb_c=search.ucb_c, seed=seed, prior=prior,
                   capped=None if max_steps is None else functools.partial(
                       _at_cap, cfg=cfg, max_steps=max_steps),
                   joint_types=(len(cfg.simulation.homeostatic_lambda_per_type)
                                if joint.asks_joint_recovery(cfg) else None))


# ---------------------------------------------------------------------------------------------
# Public helpers


def _at_cap(params: Mapping[str, Any], *, cfg: Config, max_steps: int) -> bool:
    """Whether a trial of ``params`` asks for at least ``max_steps`` steps (the cap cuts it)."""
    return apply_params(cfg, params).training.n_steps(cfg.simulation.n_frames) >= max_steps


def _joint_constraints(trial: FrozenTrial, *, n_types: int) -> list[float]:
    return joint.constraints(trial.user_attrs, n_types)


def _sampler(study: Study, what: str) -> UCBMutationSampler:
    sampler = study.sampler
    if not isinstance(sampler, UCBMutationSampler):
        raise ValueError(f"{what}: the study's sampler must be a UCBMutationSampler, got "
                         f"{type(sampler).__name__}")
    return sampler


def suggest_params(trial: BaseTrial, search: SearchConfig) -> dict[str, Any]:
    """Suggest every knob of ``search`` with its Optuna distribution; the params by name.

    With a :class:`UCBMutationSampler` the values are the sampler's proposal; with any other
    sampler, whatever that sampler draws from the same distributions.
    """
    return suggest_knobs(trial, search.knobs)


def ucb_scores(study: Study, *, block: int | None = None,
               trials: Sequence[FrozenTrial] | None = None) -> list[dict[str, Any]]:
    """The PUCT table of a block: one row per candidate parent, best UCB first.

    By default the block of the next trial, i.e. the table its parent is chosen from (at a
    block boundary, only the new root). Rows have the keys ``node``, ``parent`` (the parent in
    this block's tree; None for the root), ``ucb``, ``visits`` (V = 1 + descendants in the
    block), ``r2``, ``test_pearson`` and ``mutation``. Running and failed nodes count in N and
    V but have no row: they cannot be parents. The study's sampler must be a
    :class:`UCBMutationSampler`. ``trials``: the table of these trials rather than of the
    study's trials now (:meth:`metab_opt.ucbtree.UCBSampler.scores`).
    """
    scores = _sampler(study, "ucb_scores").scores(study, block=block, trials=trials)
    return [
        {
            "node": s.node.number,
            "parent": s.parent,
            "ucb": s.ucb,
            "visits": s.visits,
            "r2": s.node.value,
            "test_pearson": _finite(s.node.trial.user_attrs.get("test_pearson")),
            "mutation": s.node.mutation,
        }
        for s in scores
    ]


def next_parent(study: Study, *, trials: Sequence[FrozenTrial] | None = None) -> int:
    """The parent the sampler will give the next trial (``-1``: the config's base values).

    The sampler's decision is a pure function of its settings, its seed, the trial number and
    the trials in the storage, so it is computed here exactly as ``before_trial`` will compute
    it (nothing is written): for the first waiting (enqueued) trial if there is one, else for
    the trial to be created next. Another worker that starts a trial first changes it, as it
    changes the tree. The study's sampler must be a :class:`UCBMutationSampler`. ``trials``:
    decide from these rather than from the study's trials now, e.g. the study as it stood when
    an earlier trial finished (the logbook's entries rebuilt from the storage).
    """
    return _sampler(study, "next_parent").next_parent(study, trials=trials)
