"""UCBSampler: the BaseSampler glue around the rules.

What the sampler writes on each trial, before the objective runs: the system attr
:data:`RECORD_KEY` (the decision, the only thing it reads back) and the user attrs of
:data:`USER_ATTRS` for people and tree views. Decisions are made in ``before_trial`` (Optuna
calls it once per trial, before any suggest) and handed out by ``sample_relative``.
"""

from __future__ import annotations

import datetime
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.logging import get_logger
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from . import _checks as checks
from . import _mutation as mut
from . import _optuna_internals as internals
from . import _tree as tree
from ._knob import DEFAULT_STEPS, Knob, Roles, default_value
from ._prior import FittedPrior, PriorSource, Weights
from ._prior import report as prior_report
from ._record import RECORD_KEY
from ._rules import Planner, Settings

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import BaseTrial

__all__ = ["UCBSampler", "next_parent", "suggest_knobs", "ucb_scores"]

_logger = get_logger(__name__)

# A running trial without a decision younger than this is being decided by another worker:
# wait for it, so that decisions are made in trial-number order. Older ones were started by
# something else (another sampler, a dead worker) and are ignored.
_DECISION_GRACE_S = 10.0
# Polling backs off from 5 ms to 50 ms: on SQLite every read holds up the writer it waits for.
_POLL_S = (0.005, 0.05)

_Nodes = dict[int, tree.Node]  # trial number -> node, for one study and one direction


class UCBSampler(BaseSampler):
    """Grow a PUCT tree of trials, each a small mutation of a parent trial.

    Every trial is a node. A new trial picks a parent by PUCT inside the current block of
    ``n_iter_block`` trials and changes one knob (under a few rules, a declared set of knobs)
    of the parent's params by one step of the knob's lattice. The decision for trial ``n`` is a
    pure function of the settings, ``seed``, ``n`` and the trials in the storage, so several
    workers (threads or processes) sharing one storage agree on the tree; running trials count
    as pending visits (a virtual loss). Either direction: every comparison is made on
    ``sign * value``. Single-objective studies only.

    Args:
        search_space:
            Plain Optuna distributions, in exploration order; each becomes a knob
            (:meth:`Knob.from_distribution`: about ``steps`` lattice steps over its range).
            Give this or ``knobs``.
        knobs:
            The knobs themselves, in exploration order.
        base_params:
            The root of the tree, one value per knob, and the anchor of every knob's lattice.
            Default: the middle of each range (:func:`default_value`); a categorical's first
            choice.
        roles:
            What some knobs mean to the rules (:class:`Roles`); default: none.
        n_iter_block:
            Trials per block; the tree restarts from the incumbent at each block boundary.
        survey:
            Trials of block 1, after the root, that draw every knob at once from a space-filling
            design over the knobs' lattices (strategy ``survey``), before the rules narrow the
            tree; the seed, duration and ``survey_fixed`` knobs stay at the root's values.
            0 (the default): no survey. At most ``n_iter_block - 1``.
        model:
            Rank the candidate moves of the exploit, explore and boundary-probe rules by a
            Gaussian-process model of every finished trial (:mod:`._model`; from its sixth
            finished trial on) instead of a fixed knob order, and let the duration rule also
            shorten the runs of an incumbent whose curve was flat over its second half; the
            explore rule first tries a density move toward the best quarter's values
            (:mod:`._density`; from the eighth finished trial on).
            False (the default): the fixed orders, duration only lengthens.
        ucb_c:
            The exploration constant ``c`` of ``score + c * sqrt(N) / (1 + V)``.
        seed:
            Seed of the sampler's random choices; with the trial number, it keys every draw.
        converged, failed:
            Thresholds in the objective's units (flipped for a minimized study: converged
            means below ``converged`` then). Unset: the rules that need them stay off.
        failed_value:
            What a failed trial counts as in a replicate group's mean and in the direction
            memory; None: it does not count (it is still a node that is never a parent).
        degenerate:
            The diagnosis of the ``degeneracy-break`` rule: True for a finished trial whose
            result is good in the wrong way. None: the rule is off.
        follow_gain:
            Follow-through: a one-knob step that improved its parent by at least this much is
            taken again.
        rising_gain:
            Duration: a learning curve still improves when its last quarter gained more.
        steps:
            Lattice steps per range for the knobs made from ``search_space``.
        independent_sampler:
            Samples params outside the search space; default ``RandomSampler(seed)``.
        value_name:
            How the ``parent_rule`` lines name the objective (``"loss"``, ``"R2"``).
        constraints_func:
            As Optuna's samplers take it: a finished trial's constraint values, each satisfied
            at <= 0, stored in its system attrs. A trial that violates one is never converged
            (at best partial) for the rules, and ranks as if its value were worse by its total
            violation (the sum of its positive constraint values) wherever the rules compare.
        prior:
            Earlier studies (:class:`PriorSource`, one per study) whose trials shape what the
            sampler proposes: some survey draws, the move model's ranking and the density move
            (:mod:`._prior`), each source weighted by how well it orders this study's own
            finished trials. Never the seed or the cost knobs (``duration``,
            ``survey_fixed``), and the root stays ``base_params``. A source that shares no
            knob with the search space is refused (ValueError). None or empty (the default):
            no prior, and every decision is what it was without one.
        capped:
            True for params whose run a longer ``duration`` would not lengthen (the caller caps
            the training, e.g. a step budget): no rule raises the duration knob from them, since
            the child would run as its parent did. None (the default): no cap.
    """

    def __init__(
        self,
        *,
        search_space: Mapping[str, BaseDistribution] | None = None,
        knobs: Sequence[Knob] | None = None,
        base_params: Mapping[str, Any] | None = None,
        roles: Roles | None = None,
        n_iter_block: int = 12,
        survey: int = 0,
        model: bool = False,
        ucb_c: float = 1.414,
        seed: int | None = None,
        converged: float | None = None,
        failed: float | None = None,
        failed_value: float | None = None,
        degenerate: Callable[[FrozenTrial], bool] | None = None,
        follow_gain: float = 0.0,
        rising_gain: float = 0.0,
        steps: int = DEFAULT_STEPS,
        independent_sampler: BaseSampler | None = None,
        value_name: str = "value",
        constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
        prior: Sequence[PriorSource] | None = None,
        capped: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        if (search_space is None) == (knobs is None):
            raise ValueError("give either search_space (Optuna distributions) or knobs")
        if search_space is not None:
            space = checks.check_search_space(search_space)
            knobs = tuple(Knob.from_distribution(n, d, steps=steps) for n, d in space.items())
            if base_params is None:
                base_params = {n: default_value(d) for n, d in space.items()}
        knobs = checks.check_knobs(knobs)
        if base_params is None:
            base_params = {k.name: checks.knob_default(k) for k in knobs}
        base = checks.check_base_params(base_params, knobs)
        if search_space is not None:
            checks.check_lattices(knobs, base, space)
        else:
            space = {k.name: k.distribution() for k in knobs}
        roles = Roles() if roles is None else roles
        if not isinstance(roles, Roles):
            raise ValueError(f"roles: expected a Roles, got {roles!r}")
        roles.check([k.name for k in knobs])
        if isinstance(n_iter_block, bool) or not isinstance(n_iter_block, int) or n_iter_block < 1:
            raise ValueError(f"n_iter_block: expected an integer >= 1, got {n_iter_block!r}")
        # The root runs first, so a survey fills at most the rest of block 1.
        if (isinstance(survey, bool) or not isinstance(survey, int)
                or not 0 <= survey <= n_iter_block - 1):
            raise ValueError(f"survey: expected an integer in [0, n_iter_block - 1 = "
                             f"{n_iter_block - 1}], got {survey!r}")
        if not isinstance(model, bool):
            raise ValueError(f"model: expected True or False, got {model!r}")
        ucb_c = checks.number("ucb_c", ucb_c, minimum=0.0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed < 2**32):
            raise ValueError(f"seed: expected None or an integer in [0, 2**32), got {seed!r}")
        if degenerate is not None and not callable(degenerate):
            raise ValueError(f"degenerate: expected None or a callable, got {degenerate!r}")
        # Decisions draw from a generator keyed by (seed, trial number), never from a stream
        # shared by the workers: the same seed and history then give the same proposal, in
        # whatever order threads or processes ask. Without a seed, one is drawn from the OS.
        decision_seed = (int(seed) if seed is not None
                         else int(np.random.SeedSequence().entropy % 2**32))
        self._settings = Settings(
            knobs=knobs, base=base, roles=roles, n_iter_block=n_iter_block, ucb_c=ucb_c,
            seed=decision_seed,
            converged=None if converged is None else checks.number("converged", converged),
            failed=None if failed is None else checks.number("failed", failed),
            failed_value=None if failed_value is None else checks.number("failed_value",
                                                                    failed_value),
            follow_gain=checks.number("follow_gain", follow_gain, minimum=0.0),
            rising_gain=checks.number("rising_gain", rising_gain, minimum=0.0),
            degenerate=degenerate, value_name=str(value_name), owner=type(self).__name__,
            survey=survey, model=model,
            prior=checks.fit_prior(prior, knobs, base, roles, decision_seed), capped=capped)
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        if constraints_func is not None and not callable(constraints_func):
            raise ValueError(f"constraints_func: expected None or a callable, "
                             f"got {constraints_func!r}")
        self._constraints_func = constraints_func
        self._search_space = dict(space)
        # Parsed nodes of finished trials, per storage, study and direction. Only a speed-up:
        # a finished trial never changes, so the cache cannot make two workers disagree.
        self._cache: weakref.WeakKeyDictionary[Any, dict[tuple[int, float], _Nodes]] = (
            weakref.WeakKeyDictionary())
        self._cache_lock = threading.Lock()

    # -- settings ----------------------------------------------------------------------------

    @property
    def search_space(self) -> dict[str, BaseDistribution]:
        """The Optuna distribution of every knob, in exploration order."""
        return dict(self._search_space)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return self._settings.knobs

    @property
    def base_params(self) -> dict[str, Any]:
        return dict(self._settings.base)

    @property
    def roles(self) -> Roles:
        return self._settings.roles

    @property
    def n_iter_block(self) -> int:
        return self._settings.n_iter_block

    @property
    def ucb_c(self) -> float:
        return self._settings.ucb_c

    @property
    def survey(self) -> int:
        """Survey trials after the root of block 1 (0: none)."""
        return self._settings.survey

    @property
    def prior(self) -> FittedPrior | None:
        """The prior's sources as fitted on this sampler's knobs (None: no prior)."""
        return self._settings.prior

    def prior_weights(self, study: Study, *,
                      trials: Sequence[FrozenTrial] | None = None) -> Weights | None:
        """Each prior source's weight (and the study's own model's) as the next trial's
        decision computes them; None without a prior. ``trials``: as :meth:`scores`."""
        if self._settings.prior is None:
            return None
        trials = _trials(study, trials)
        return self._planner(study, trials, None, sign=self._sign(study)).prior_weights

    def prior_report(self, study: Study, *,
                     trials: Sequence[FrozenTrial] | None = None) -> list[str] | None:
        """The prior for people (each source, its weight now, what it says about each knob),
        as markdown list lines; None without a prior."""
        weights = self.prior_weights(study, trials=trials)
        if weights is None or self._settings.prior is None:
            return None
        return prior_report(self._settings.prior, weights)

    def __getstate__(self) -> dict[str, Any]:
        # The cache and its lock stay behind (a lock cannot be pickled; the cache refills).
        state = self.__dict__.copy()
        del state["_cache"], state["_cache_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = weakref.WeakKeyDictionary()
        self._cache_lock = threading.Lock()

    def reseed_rng(self) -> None:
        # Optuna calls this when it starts each of the n_jobs threads. The decision seed must
        # stay as it is, or the workers would decide differently from one another (as QMCSampler
        # keeps its seed); only the fallback sampler is reseeded.
        self._independent_sampler.reseed_rng()

    # -- BaseSampler -------------------------------------------------------------------------

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)
        if RECORD_KEY in trial.system_attrs:
            return  # decided already (a Trial object built again for the same trial)
        internals.heartbeat(study, trial)
        sign = self._sign(study)
        trials = self._await_earlier_decisions(study, trial.number)
        planner = self._planner(study, trials, trial.number, sign=sign)
        decision = planner.decide(internals.fixed_params(trial))
        record = {
            "parent": decision.parent,
            "block": planner.block,
            "root": planner.root,
            "strategy": decision.strategy,
            "mutation": mut.format_changes(decision.changes),
            "changes": [list(c) for c in decision.changes],
            "spread": decision.spread,
            "parent_rule": decision.parent_rule,
            "params": decision.params,
            "ucb_c": self._settings.ucb_c,
            "n_iter_block": self._settings.n_iter_block,
        }
        user = {
            "node_id": trial.number,
            "parent_id": decision.parent,
            "block": planner.block,
            "strategy": decision.strategy,
            "mutation": record["mutation"],
            "parent_rule": decision.parent_rule,
        }
        internals.set_trial_attrs(study, trial, {RECORD_KEY: record}, user)
        # The Trial object the objective receives reads this FrozenTrial. New dicts rather than
        # updates in place: an in-memory storage may share the old ones with other readers.
        trial.system_attrs = {**trial.system_attrs, RECORD_KEY: record}
        trial.user_attrs = {**trial.user_attrs, **user}
        _logger.debug(f"Trial {trial.number}: parent={decision.parent} "
                      f"strategy={decision.strategy} mutation={record['mutation']}")

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._search_space)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._sign(study)  # a multi-objective study is refused here too, as Optuna's are
        if not search_space:
            return {}
        record = trial.system_attrs.get(RECORD_KEY)
        if record is None:
            record = internals.trial_system_attrs(study, trial).get(RECORD_KEY)
        params = {} if record is None else record["params"]
        out = {}
        for name, dist in search_space.items():
            if name in params and self._search_space.get(name) == dist:
                out[name] = params[name]
            else:
                # Not decided here (no decision for this trial, or a distribution that is not
                # the knob's): the independent sampler's value, as for a param outside the space.
                out[name] = self._independent_sampler.sample_independent(study, trial, name,
                                                                          dist)
        return out

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self._sign(study)
        return self._independent_sampler.sample_independent(
            study, trial, param_name, param_distribution
        )

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        if self._constraints_func is not None:
            internals.process_constraints(self._constraints_func, study, trial, state)
        self._independent_sampler.after_trial(study, trial, state, values)

    # -- views -------------------------------------------------------------------------------

    def scores(self, study: Study, *, block: int | None = None,
               trials: Sequence[FrozenTrial] | None = None) -> list[tree.Score]:
        """The PUCT table of a block, best first (by default the block of the next trial: the
        table its parent is chosen from).

        ``trials``: read the tree from these rather than from the study's trials now, e.g. the
        study as it stood when an earlier trial finished; the study gives the direction.
        """
        if block is not None and (isinstance(block, bool) or not isinstance(block, int)
                                  or block < 1):
            raise ValueError(f"block: expected None or an integer >= 1, got {block!r}")
        trials = _trials(study, trials)
        return self._planner(study, trials, None, sign=self._sign(study), block=block).scores

    def next_parent(self, study: Study, *, trials: Sequence[FrozenTrial] | None = None) -> int:
        """The parent the sampler will give the next trial (-1: the base values), computed as
        ``before_trial`` will compute it: for the first waiting (enqueued) trial if there is
        one, else for the trial to be created next (numbered ``len(trials)``).

        ``trials``: decide from these rather than from the study's trials now, e.g. the study
        as it stood when an earlier trial finished; the study gives the direction.
        """
        trials = _trials(study, trials)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        first = min(waiting, key=lambda t: t.number) if waiting else None
        number = first.number if first is not None else len(trials)
        fixed = internals.fixed_params(first) if first is not None else None
        return self._planner(study, trials, number, sign=self._sign(study)).decide(fixed).parent

    # -- internals ---------------------------------------------------------------------------

    def _sign(self, study: Study) -> float:
        """+1 for a maximized study, -1 for a minimized one; ValueError for several
        objectives (as Optuna's single-objective samplers refuse them)."""
        directions = study.directions
        if len(directions) != 1:
            raise ValueError(f"{type(self).__name__}: the study must have one objective "
                             f"(a single-objective sampler), got {len(directions)}")
        return 1.0 if directions[0] == StudyDirection.MAXIMIZE else -1.0

    def _planner(self, study: Study, trials: Sequence[FrozenTrial], number: int | None, *,
                 sign: float, block: int | None = None) -> Planner:
        with self._cache_lock:
            per_storage = self._cache.setdefault(internals.storage_of(study), {})
            cache = per_storage.setdefault((internals.study_id_of(study), sign), {})
        return Planner(self._settings, trials, number, sign=sign, block=block, cache=cache)

    def _await_earlier_decisions(self, study: Study, number: int) -> list[FrozenTrial]:
        """All trials, once every lower-numbered trial started by a worker has its decision.

        Deciding in trial-number order is what makes simultaneous workers see each other's
        pending children (the virtual loss) and never pick the same (parent, mutation).
        """
        delay = _POLL_S[0]
        while True:
            trials = study.get_trials(deepcopy=False)
            now = datetime.datetime.now()
            pending = [
                t for t in trials
                if t.number < number and t.state == TrialState.RUNNING
                and RECORD_KEY not in t.system_attrs and t.datetime_start is not None
                and (now - t.datetime_start).total_seconds() < _DECISION_GRACE_S
            ]
            if not pending:
                return trials
            time.sleep(delay)
            delay = min(2 * delay, _POLL_S[1])


# ---------------------------------------------------------------------------------------------
# Public helpers


def _trials(study: Study, trials: Sequence[FrozenTrial] | None) -> list[FrozenTrial]:
    """The trials a view reads: the study's now, or those given, by number."""
    if trials is None:
        return study.get_trials(deepcopy=False)
    return sorted(trials, key=lambda t: t.number)


def _ucb_sampler(study: Study, what: str) -> UCBSampler:
    sampler = study.sampler
    if not isinstance(sampler, UCBSampler):
        raise ValueError(f"{what}: the study's sampler must be a UCBSampler, got "
                         f"{type(sampler).__name__}")
    return sampler


def ucb_scores(study: Study, *, block: int | None = None,
               trials: Sequence[FrozenTrial] | None = None) -> list[dict[str, Any]]:
    """The PUCT table of a block: one row per candidate parent, best UCB first.

    By default the block of the next trial, i.e. the table its parent is chosen from (at a
    block boundary, only the new root). Rows have the keys ``node``, ``parent`` (the parent in
    this block's tree; None for the root), ``ucb``, ``visits`` (V = 1 + descendants in the
    block), ``value`` and ``mutation``. Running and failed nodes count in N and V but have no
    row: they cannot be parents. ``trials``: the table of these trials rather than of the
    study's trials now (:meth:`UCBSampler.scores`).
    """
    return [{"node": s.node.number, "parent": s.parent, "ucb": s.ucb, "visits": s.visits,
             "value": s.node.value, "mutation": s.node.mutation}
            for s in _ucb_sampler(study, "ucb_scores").scores(study, block=block, trials=trials)]


def next_parent(study: Study, *, trials: Sequence[FrozenTrial] | None = None) -> int:
    """The parent the study's UCBSampler will give the next trial (``-1``: the base values).
    Another worker that starts a trial first changes it, as it changes the tree. ``trials``:
    decide from these rather than from the study's trials now (:meth:`UCBSampler.next_parent`:
    e.g. the study as it stood when an earlier trial finished)."""
    return _ucb_sampler(study, "next_parent").next_parent(study, trials=trials)


def suggest_knobs(trial: BaseTrial, knobs: Sequence[Knob]) -> dict[str, Any]:
    """Suggest every knob with its Optuna distribution; the params by name.

    With a :class:`UCBSampler` over these knobs the values are its proposal; with any other
    sampler, whatever that sampler draws from the same distributions.
    """
    params: dict[str, Any] = {}
    for knob in knobs:
        dist = knob.distribution()
        if isinstance(dist, FloatDistribution):
            params[knob.name] = trial.suggest_float(knob.name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, IntDistribution):
            params[knob.name] = trial.suggest_int(knob.name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, CategoricalDistribution):
            params[knob.name] = trial.suggest_categorical(knob.name, list(dist.choices))
        else:  # pragma: no cover - Knob.distribution returns one of the three
            raise TypeError(f"knob {knob.name}: unsupported distribution {dist!r}")
    return params
