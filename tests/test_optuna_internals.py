"""The Optuna internals the runner relies on (:mod:`metab_opt._optuna_internals`).

When an Optuna release renames or changes one, a test here fails and its id names the internal;
at run time the same change raises :class:`OptunaInternalError` naming it (never "cannot
connect"). The sampler's own internals are tested with its subpackage.
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from metab_opt import _optuna_internals as internals
from metab_opt._optuna_internals import OptunaInternalError
from metab_opt.storage import DECISION_ATTRS, StorageError, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _params(func: Any) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


def _live_trial() -> optuna.Trial:
    return optuna.create_study().ask()


# ---------------------------------------------------------------------------------------------
# Each internal exists, with the signature the runner calls it with


@pytest.mark.parametrize("check", [
    pytest.param(lambda: _params(RDBStorage._get_stale_trial_ids) == ["study_id"],
                 id="RDBStorage._get_stale_trial_ids(study_id)"),
    pytest.param(lambda: _params(RetryHeartbeatStaleTrialCallback.__call__) == ["study", "trial"],
                 id="RetryHeartbeatStaleTrialCallback.__call__(study, trial)"),
    pytest.param(lambda: _params(RetryHeartbeatStaleTrialCallback.__init__)[:1] == ["max_retry"],
                 id="RetryHeartbeatStaleTrialCallback(max_retry)"),
    pytest.param(lambda: hasattr(_live_trial(), "storage"), id="Trial.storage"),
    pytest.param(lambda: isinstance(_live_trial()._trial_id, int), id="Trial._trial_id"),
    pytest.param(lambda: callable(_live_trial().storage.get_trial_system_attrs),
                 id="Trial.storage.get_trial_system_attrs"),
    pytest.param(lambda: __import__(internals.OPTIMIZE_LOGGER, fromlist=["_logger"])
                 ._logger.name == internals.OPTIMIZE_LOGGER, id="optuna.study._optimize._logger"),
])
def test_internal_exists(check: Any) -> None:
    assert check()


# ---------------------------------------------------------------------------------------------
# ... and behaves as the runner relies on


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_stale_trial_gets_its_reason_and_a_retry_with_the_decision_only(
        tmp_path: Path) -> None:
    """``fail_stale_trials`` reaches the wrapped ``_get_stale_trial_ids`` (through Optuna's
    ``_CachedStorage``) while the trial still runs, and the retry callback copies the user attrs
    of the trial it is handed."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1,
                           grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.set_user_attr("node_id", 4)  # a decision: kept by the retry
    trial.set_user_attr("rate_constants_R2", 0.5)  # the dead run's result: not kept
    storage.record_heartbeat(trial._trial_id)
    deadline = time.monotonic() + 15
    while True:  # SQLite's clock has 1 s steps: wait until the heartbeat is over 1 s old
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if trials[0].state == TrialState.FAIL or time.monotonic() > deadline:
            break
    dead, retry = trials
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["fail_reason"].startswith("worker lost (no heartbeat for over 1 s")
    assert retry.state == TrialState.WAITING
    assert internals.retried_trial(retry.system_attrs) == dead.number  # "failed_trial"
    assert internals.retried_trial(dead.system_attrs) is None
    assert retry.user_attrs == {"node_id": 4}
    assert set(retry.user_attrs) <= set(DECISION_ATTRS)


def test_trial_system_attrs_and_the_enqueued_params_attr() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    trial = study.ask()
    system = internals.trial_system_attrs(trial)
    assert system[internals.ENQUEUED_PARAMS_ATTR] == {"x": 1.0}  # "fixed_params"
    frozen = study.get_trials(deepcopy=False)[0]
    assert internals.trial_system_attrs(frozen) == frozen.system_attrs == system
    assert internals.is_enqueued(frozen)
    study.ask()  # sampled, not enqueued
    assert not internals.is_enqueued(study.get_trials(deepcopy=False)[1])
    assert internals.trial_system_attrs(optuna.trial.FixedTrial({"x": 1.0})) == {}


def test_a_failed_trial_is_logged_on_the_optimize_logger() -> None:
    """The runner's filter that drops the traceback of Ctrl-C and a diverged training sits on
    this logger: Optuna must log failed trials there."""
    seen: list[logging.LogRecord] = []

    class Record(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record)
            return False  # keep the test's output quiet

    logger = internals.optimize_logger()
    record = Record()
    logger.addFilter(record)
    try:
        optuna.create_study().optimize(lambda t: 1 / 0, n_trials=1, catch=(Exception,))
    finally:
        logger.removeFilter(record)
    assert any(r.exc_info and isinstance(r.exc_info[1], ZeroDivisionError) for r in seen), seen


# ---------------------------------------------------------------------------------------------
# A changed internal is named at run time


def test_missing_stale_trial_ids_is_named_not_cannot_connect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from optuna.storages._heartbeat import BaseHeartbeat

    monkeypatch.delattr(RDBStorage, "_get_stale_trial_ids")
    monkeypatch.delattr(BaseHeartbeat, "_get_stale_trial_ids")  # the abstract one
    with pytest.raises(OptunaInternalError, match=r"RDBStorage\._get_stale_trial_ids") as err:
        open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert not isinstance(err.value, StorageError)
    assert "cannot connect" not in str(err.value)
    assert optuna.__version__ in str(err.value) and "_optuna_internals.py" in str(err.value)


def test_changed_signature_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RDBStorage, "_get_stale_trial_ids",
                        lambda self, study_id, now: [])
    with pytest.raises(OptunaInternalError, match=r"_get_stale_trial_ids.*signature"):
        open_storage(f"sqlite:///{tmp_path / 'study.db'}")


def test_changed_retry_callback_is_named(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RetryHeartbeatStaleTrialCallback, "__call__",
                        lambda self, study, trial, state: None)
    with pytest.raises(OptunaInternalError, match=r"RetryHeartbeatStaleTrialCallback"):
        open_storage(f"sqlite:///{tmp_path / 'study.db'}")


def test_missing_trial_id_is_named() -> None:
    trial = _live_trial()
    del trial._trial_id
    with pytest.raises(OptunaInternalError, match=r"Trial\._trial_id"):
        internals.trial_system_attrs(trial)


def test_missing_optimize_module_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "OPTIMIZE_LOGGER", "optuna.study._no_such_module")
    with pytest.raises(OptunaInternalError, match=r"optuna\.study\._no_such_module"):
        internals.optimize_logger()
