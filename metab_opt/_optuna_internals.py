"""Every Optuna private API (and undocumented behaviour) the study runner relies on, in one place.

Why a module: Optuna may rename or change anything private in any release. Kept here, each use
is checked by ``tests/test_optuna_internals.py`` (which names the internal that changed), and at
run time a missing internal raises :class:`OptunaInternalError` naming it — never a misleading
"cannot connect" or a silent no-op. The runner's other modules use Optuna's public API only.

Checked with Optuna 5.0. What the runner reaches here, and why no public API does the job:

- ``RDBStorage._get_stale_trial_ids(study_id)`` (:func:`on_stale_trials`): Optuna's public
  ``fail_stale_trials`` asks it for the stale trials and fails them at once; a finished trial
  takes no attribute, so the only moment to write a stale trial's ``fail_reason`` is in between.
  Relies on ``fail_stale_trials`` calling it on the storage we wrap (Optuna wraps an RDBStorage
  in ``_CachedStorage``, which delegates to it).
- ``RetryHeartbeatStaleTrialCallback.__call__`` copying the failed trial's ``user_attrs`` into
  its retry (:func:`retry_stale_trial_callback`): we hand it a copy with only some of them.
- ``Trial.storage`` and ``Trial._trial_id`` (:func:`trial_system_attrs`): Optuna 5's ``Trial``
  has no ``system_attrs``; a retried trial's ``failed_trial`` mark is read from the storage.
- the logger of ``optuna.study._optimize`` (:func:`optimize_logger`), which logs a failed
  trial with its traceback.
- the system attrs ``failed_trial`` (written by ``RetryHeartbeatStaleTrialCallback`` on a retry;
  its public reader ``retried_trial_number`` warns "experimental" on every call) and
  ``fixed_params`` (written by ``Study.enqueue_trial``) (:func:`retried_trial`,
  :func:`is_enqueued`).

Reached through the public API instead (no internal needed): a study's storage (the runner keeps
the one it opened; ``study.get_trials()`` for the trials), study ids
(``storage.get_study_id_from_name``), the trials a process started (``BaseSampler.before_trial``
sees each, by number; ``storage.get_trial_id_from_study_id_trial_number``).

Not here: the UCB sampler's own internals live in its subpackage
(``metab_opt/ucbtree/_optuna_internals.py``), and the logbook's dashboard views
(``metab_opt/dashboard_views.py``: ``Study._storage``, ``Study._study_id``, ``Trial._trial_id``)
keep theirs until the logbook is split.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import logging
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = [
    "CHECKED_WITH",
    "ENQUEUED_PARAMS_ATTR",
    "OPTIMIZE_LOGGER",
    "RETRIED_TRIAL_ATTR",
    "OptunaInternalError",
    "is_enqueued",
    "on_stale_trials",
    "optimize_logger",
    "retried_trial",
    "retry_stale_trial_callback",
    "trial_system_attrs",
]

CHECKED_WITH = "5.0"  # the Optuna release these internals were read from
OPTIMIZE_LOGGER = "optuna.study._optimize"
RETRIED_TRIAL_ATTR = "failed_trial"  # a retry's system attr: the number of the trial it retries
ENQUEUED_PARAMS_ATTR = "fixed_params"  # an enqueued trial's system attr: the params given


class OptunaInternalError(RuntimeError):
    """An Optuna internal the runner relies on is missing or changed (an Optuna upgrade)."""


def _changed(name: str, what: str = "is missing") -> OptunaInternalError:
    import optuna

    return OptunaInternalError(
        f"Optuna {optuna.__version__}: {name} {what}; metab_opt relies on it (checked with "
        f"Optuna {CHECKED_WITH}): update metab_opt/_optuna_internals.py or install "
        f"optuna=={CHECKED_WITH}.*")


def _parameters(func: Any) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


def on_stale_trials(storage: Any, hook: Callable[[list[int]], None]) -> None:
    """Call ``hook(trial_ids)`` whenever the RDB ``storage`` reports stale trials, before
    ``fail_stale_trials`` fails them (they still run, and still take attributes)."""
    name = "RDBStorage._get_stale_trial_ids(study_id)"
    find = getattr(storage, "_get_stale_trial_ids", None)
    if not callable(find):
        raise _changed(name)
    if _parameters(find) != ["study_id"]:
        raise _changed(name, f"has the signature {inspect.signature(find)}")

    def stale_trial_ids(study_id: int) -> list[int]:
        ids = find(study_id)
        hook(list(ids))
        return ids

    storage._get_stale_trial_ids = stale_trial_ids


def retry_stale_trial_callback(max_retry: int | None, keep: Collection[str]) -> Any:
    """Optuna's ``RetryHeartbeatStaleTrialCallback``, passing on only the user attrs in
    ``keep``: Optuna's callback re-queues a stale trial with *all* the user attrs of the dead
    run (its metrics, its ``fail_reason``), which the retry would report as its own."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    name = "RetryHeartbeatStaleTrialCallback.__call__(study, trial)"
    if _parameters(RetryHeartbeatStaleTrialCallback.__call__) != ["study", "trial"]:
        raise _changed(name, f"has the signature "
                             f"{inspect.signature(RetryHeartbeatStaleTrialCallback.__call__)}")
    kept = frozenset(keep)

    class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
        def __call__(self, study: Any, trial: Any) -> None:
            trimmed = copy.copy(trial)
            trimmed.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in kept}
            super().__call__(study, trimmed)

    with warnings.catch_warnings():  # the callback is "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryStaleTrial(max_retry=max_retry)


def trial_system_attrs(trial: Any) -> dict[str, Any]:
    """A trial's system attrs: read from the storage for a live ``optuna.Trial`` (Optuna 5's
    has none of its own), the attribute of a ``FrozenTrial`` or ``FixedTrial``."""
    import optuna

    if not isinstance(trial, optuna.Trial):
        return dict(getattr(trial, "system_attrs", {}) or {})
    for attr in ("storage", "_trial_id"):
        if not hasattr(trial, attr):
            raise _changed(f"Trial.{attr}")
    return trial.storage.get_trial_system_attrs(trial._trial_id)


def retried_trial(system_attrs: Mapping[str, Any]) -> int | None:
    """The number of the (first) trial a re-queued stale trial retries, from its system attrs;
    None when it is no retry."""
    return system_attrs.get(RETRIED_TRIAL_ATTR)


def is_enqueued(trial: Any) -> bool:
    """Whether a FrozenTrial's params were given by ``study.enqueue_trial`` (not sampled)."""
    return ENQUEUED_PARAMS_ATTR in trial.system_attrs


def optimize_logger() -> logging.Logger:
    """The logger Optuna's optimize loop logs failed trials with (a filter on a logger of a
    module that no longer exists would silently filter nothing)."""
    if importlib.util.find_spec(OPTIMIZE_LOGGER) is None:
        raise _changed(f"the module {OPTIMIZE_LOGGER} (its logger)")
    return logging.getLogger(OPTIMIZE_LOGGER)
