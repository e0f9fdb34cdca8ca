"""Every use of an Optuna private API the sampler makes, and a check that they still exist.

Optuna gives a sampler no public way to write a trial's attrs before the objective runs, to
find the storage and ids behind a study, or to see which params ``enqueue_trial`` fixed; the
sampler needs all of them. They live here so that an Optuna release that changes one breaks
this module, loudly and by name (:func:`check`, run by the package's tests), rather than the
decisions. Written against Optuna 5.0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.samplers._base import _process_constraints_after_trial
from optuna.storages import BaseStorage, RDBStorage
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "InternalsChanged",
    "check",
    "constraints_of",
    "fixed_params",
    "process_constraints",
    "heartbeat",
    "set_trial_attrs",
    "storage_of",
    "study_id_of",
    "trial_id_of",
    "trial_system_attrs",
]


class InternalsChanged(RuntimeError):
    """An Optuna internal the sampler relies on is gone or changed shape."""


# Where ``study.enqueue_trial(params)`` puts the params on the waiting trial (Study.enqueue_trial
# and Trial.__init__ read the same key).
_FIXED_PARAMS_KEY = "fixed_params"



def constraints_of(trial: FrozenTrial) -> tuple[float, ...] | None:
    """The trial's constraint values as Optuna's samplers store them (``constraints_func``'s
    values, each satisfied at <= 0), or None (none computed)."""
    values = trial.system_attrs.get(_CONSTRAINTS_KEY)
    return None if values is None else tuple(float(v) for v in values)


def process_constraints(func: Callable[[FrozenTrial], Sequence[float]], study: optuna.Study,
                        trial: FrozenTrial, state: TrialState) -> None:
    """Compute and store a finishing trial's constraints as Optuna's own samplers do."""
    _process_constraints_after_trial(func, study, trial, state)


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage behind a study (``Study._storage``)."""
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    """The study's id in its storage (``Study._study_id``)."""
    return study._study_id


def trial_id_of(trial: FrozenTrial) -> int:
    """The trial's id in its storage (``FrozenTrial._trial_id``)."""
    return trial._trial_id


def trial_system_attrs(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """The trial's system attrs as the storage has them now (a FrozenTrial is a snapshot)."""
    return storage_of(study).get_trial_system_attrs(trial_id_of(trial))


def fixed_params(trial: FrozenTrial) -> Mapping[str, Any] | None:
    """The params ``study.enqueue_trial`` fixed on this trial, or None."""
    return trial.system_attrs.get(_FIXED_PARAMS_KEY)


def heartbeat(study: optuna.Study, trial: FrozenTrial) -> None:
    """Record one heartbeat for the trial when the storage keeps heartbeats.

    Optuna starts a trial's heartbeat only after sampling, and its stale-trial check skips a
    RUNNING trial that never had one: a worker killed while the sampler waits or writes would
    leave its trial RUNNING for ever. One beat before deciding closes that.
    """
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = storage_of(study)
    if is_heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id_of(trial))  # type: ignore[attr-defined]


def _rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    """The RDBStorage under a storage (Optuna wraps one in a ``_CachedStorage``), or None."""
    from optuna.storages._cached_storage import _CachedStorage

    backend = storage._backend if isinstance(storage, _CachedStorage) else storage
    return backend if isinstance(backend, RDBStorage) else None


def set_trial_attrs(study: optuna.Study, trial: FrozenTrial, system: Mapping[str, Any],
                    user: Mapping[str, Any]) -> None:
    """Store a trial's attrs: the system attrs first (workers deciding next wait for them).

    On an RDB storage all of them go in one transaction: seven separate commits would cost more
    than the decision itself on SQLite (a few ms each).
    """
    storage, trial_id = storage_of(study), trial_id_of(trial)
    if _set_in_one_transaction(storage, trial_id, system, user):
        return
    for key, value in system.items():
        storage.set_trial_system_attr(trial_id, key, value)
    for key, value in user.items():
        storage.set_trial_user_attr(trial_id, key, value)


def _set_in_one_transaction(storage: BaseStorage, trial_id: int, system: Mapping[str, Any],
                            user: Mapping[str, Any]) -> bool:
    """Write the attrs through Optuna's RDB internals; False (nothing written) when the storage
    is not an RDB one or the internals are not there (then the public API does it)."""
    backend = _rdb_backend(storage)
    if backend is None:
        return False
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        setter = backend._set_trial_attr_without_commit
    except (ImportError, AttributeError):  # check() names which one
        return False
    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in system.items():
            setter(session, models.TrialSystemAttributeModel, trial_id, key, value)
        for key, value in user.items():
            setter(session, models.TrialUserAttributeModel, trial_id, key, value)
    return True


# ---------------------------------------------------------------------------------------------
# The check


def _expect(name: str, ok: Callable[[], bool]) -> None:
    try:
        good = ok()
    except Exception as exc:  # any failure to reach the internal is the news
        raise InternalsChanged(f"Optuna {optuna.__version__}: {name} changed "
                               f"({type(exc).__name__}: {exc})") from exc
    if not good:
        raise InternalsChanged(f"Optuna {optuna.__version__}: {name} changed")


def check() -> None:
    """Raise :class:`InternalsChanged`, naming the internal, if one the sampler uses is gone or
    has changed shape; silent when all are as this module expects."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    _expect("Study._storage", lambda: isinstance(storage_of(study), BaseStorage))
    _expect("Study._study_id", lambda: isinstance(study_id_of(study), int))
    _expect("FrozenTrial._trial_id", lambda: isinstance(trial_id_of(frozen), int))

    def enqueued() -> bool:
        study.enqueue_trial({"x": 1.0})
        waiting = study.get_trials(deepcopy=False)[-1]
        return fixed_params(waiting) == {"x": 1.0}

    _expect("the 'fixed_params' system attr of Study.enqueue_trial", enqueued)

    def constrained() -> bool:
        process_constraints(lambda t: (0.5, -1.0), study, frozen, TrialState.COMPLETE)
        again = study.get_trials(deepcopy=False)[0]
        return constraints_of(again) == (0.5, -1.0)

    _expect("the constraints of samplers' constraints_func (_process_constraints_after_trial)",
            constrained)

    def heartbeat_module() -> bool:
        from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

        return callable(is_heartbeat_enabled) and hasattr(BaseHeartbeat, "record_heartbeat")

    _expect("optuna.storages._heartbeat.is_heartbeat_enabled / BaseHeartbeat.record_heartbeat",
            heartbeat_module)

    def cached_storage() -> bool:
        from optuna.storages._cached_storage import _CachedStorage

        rdb = RDBStorage("sqlite:///:memory:")
        on_rdb = optuna.create_study(storage=rdb)
        return (isinstance(storage_of(on_rdb), _CachedStorage)
                and _rdb_backend(storage_of(on_rdb)) is rdb)

    _expect("optuna.storages._cached_storage._CachedStorage._backend", cached_storage)

    def rdb() -> bool:
        on_rdb = optuna.create_study(storage=RDBStorage("sqlite:///:memory:"))
        on_rdb.ask()
        tid = trial_id_of(on_rdb.get_trials(deepcopy=False)[0])
        wrote = _set_in_one_transaction(storage_of(on_rdb), tid, {"s": 1}, {"u": 2})
        frozen = on_rdb.get_trials(deepcopy=False)[0]
        return wrote and frozen.system_attrs.get("s") == 1 and frozen.user_attrs.get("u") == 2

    _expect("optuna.storages._rdb (models.TrialSystemAttributeModel, TrialUserAttributeModel, "
            "_create_scoped_session, RDBStorage._set_trial_attr_without_commit, "
            "RDBStorage.scoped_session)", rdb)
