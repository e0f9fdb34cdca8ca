"""The Optuna internals the sampler relies on: all in one module, and all still there.

If ``test_the_optuna_internals_are_as_the_sampler_expects`` fails after an Optuna upgrade, its
message names the internal that changed; fix ``metab_opt/ucbtree/_optuna_internals.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage

from metab_opt.ucbtree import RECORD_KEY, UCBSampler
from metab_opt.ucbtree import _optuna_internals as internals

PACKAGE = Path(internals.__file__).resolve().parent
SPACE = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(1e-3, 1.0, log=True)}


def test_the_optuna_internals_are_as_the_sampler_expects() -> None:
    internals.check()


@pytest.mark.parametrize(
    ("target", "name", "named"),
    [
        ("optuna.storages._rdb.storage.RDBStorage", "_set_trial_attr_without_commit",
         "RDBStorage._set_trial_attr_without_commit"),
        ("optuna.storages._rdb.storage", "_create_scoped_session", "_create_scoped_session"),
        ("optuna.storages._heartbeat", "is_heartbeat_enabled", "is_heartbeat_enabled"),
        ("optuna.study.Study", "enqueue_trial", "'fixed_params'"),
    ],
)
def test_a_changed_internal_fails_loudly_by_name(monkeypatch: pytest.MonkeyPatch, target: str,
                                                 name: str, named: str) -> None:
    monkeypatch.delattr(f"{target}.{name}")
    with pytest.raises(internals.InternalsChanged, match=named.replace(".", r"\.")):
        internals.check()


def test_without_the_rdb_fast_path_the_public_api_writes_the_record(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(internals, "_set_in_one_transaction", lambda *args: False)
    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(sampler=UCBSampler(search_space=SPACE, seed=0), storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
    assert all(RECORD_KEY in t.system_attrs and "strategy" in t.user_attrs
               for t in study.trials)


def test_the_fast_path_writes_the_record_on_sqlite(tmp_path: Path) -> None:
    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(sampler=UCBSampler(search_space=SPACE, seed=0), storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
    again = optuna.load_study(study_name=study.study_name, storage=storage)
    assert [t.system_attrs[RECORD_KEY]["strategy"] for t in again.trials][0] == "root"


# Private names of Optuna that only _optuna_internals may touch.
_OPTUNA_PRIVATE = {"_storage", "_study_id", "_trial_id", "_is_multi_objective", "_backend",
                   "_set_trial_attr_without_commit", "_get_trials", "_cached_frozen_trial",
                   "_relative_params", "_contains", "_raise_error_if_multi_objective"}


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.glob("*.py")
                                        if p.name != "_optuna_internals.py"),
                         ids=lambda p: p.name)
def test_no_other_module_touches_an_optuna_internal(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optuna"):
            assert not any(part.startswith("_") for part in node.module.split(".")), (
                f"{path.name}:{node.lineno}: imports {node.module}")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("optuna"):
                    assert "._" not in alias.name, f"{path.name}:{node.lineno}: {alias.name}"
        if isinstance(node, ast.Attribute):
            assert node.attr not in _OPTUNA_PRIVATE, f"{path.name}:{node.lineno}: .{node.attr}"
        if isinstance(node, ast.Constant):
            assert node.value != "fixed_params", f"{path.name}:{node.lineno}: 'fixed_params'"
