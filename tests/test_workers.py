"""``metab-opt study --workers N``: one study, N processes (metab_opt/workers.py)."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from _study_checks import check_tree, check_views, finish, study_command, wait_for, worker_env

from metab_opt import workers as wk


def test_resolve() -> None:
    assert wk.resolve("3", on_cpu=True) == 3
    assert wk.resolve("3", on_cpu=False) == 3
    assert 1 <= wk.resolve("auto", on_cpu=True) <= wk.AUTO_CAP
    assert wk.resolve("auto", on_cpu=False) == 1
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="--workers"):
            wk.resolve(bad, on_cpu=True)


def test_shares() -> None:
    assert wk.shares(12, 2) == [6, 6]
    assert wk.shares(7, 3) == [3, 2, 2]
    assert wk.shares(2, 4) == [1, 1]  # no worker without a trial
    assert sum(wk.shares(25, 4)) == 25


def test_child_argv() -> None:
    argv = ["study", "--config", "c.yaml", "--workers", "2", "--n-trials=9", "--seed", "3"]
    assert wk.child_argv(argv, 4) == ["study", "--config", "c.yaml", "--seed", "3",
                                      "--n-trials", "4", "--no-progress"]
    assert wk.child_argv(["study", "--workers=auto", "--no-progress"], 1) == [
        "study", "--no-progress", "--n-trials", "1"]


def test_two_workers_share_the_trials_of_one_study(tmp_path: Path) -> None:
    cmd = study_command(tmp_path, "--workers", "2", n_trials=5)
    rc, out, err = finish(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True, env=worker_env()), timeout=240)
    assert rc == 0, err[-3000:]
    assert "2 worker processes share 5 trials (3, 2)" in err
    url = f"sqlite:///{tmp_path / 'tiny' / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 5
    assert all(t.state.is_finished() for t in trials)
    # Each view holds every trial once.
    check_views(tmp_path / "tiny", "tiny", trials, ordered=False)
    check_tree(trials)
    # Two processes ran them: this one 3 (its progress lines), the other 2 (its log).
    log = (tmp_path / "tiny" / "workers" / "worker-2.log").read_text()
    assert len(re.findall(r"\[\d/2\] trial \d+ (?:complete|pruned|failed)", log)) == 2
    assert len(re.findall(r"\[\d/3\] trial \d+ (?:complete|pruned|failed)", out + err)) == 3
    assert "study 'tiny': 5 trials" in out


def test_bad_workers_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    cmd = study_command(tmp_path, "--workers", "0")
    rc, out, err = finish(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True, env=worker_env()), timeout=120)
    assert rc == 2
    assert err.strip().count("\n") == 0 and "--workers" in err and "Traceback" not in err
    assert not (tmp_path / "tiny").exists()


def test_ctrl_c_reaches_the_workers(tmp_path: Path) -> None:
    cmd = study_command(tmp_path, "--workers", "2", n_trials=40, max_steps=3000)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=worker_env())
    log = tmp_path / "tiny" / "workers" / "worker-2.log"
    wait_for(lambda: log.exists() and "complete" in log.read_text(), 180, "the worker's trial")
    proc.send_signal(signal.SIGINT)
    rc, _, err = finish(proc, timeout=120)
    assert rc == 130, err[-3000:]
    url = f"sqlite:///{tmp_path / 'tiny' / 'study.db'}"
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials(deepcopy=False)
    # Nothing is left running, and far fewer than 40 trials ran.
    assert all(t.state.is_finished() for t in trials)
    assert len(trials) < 40
