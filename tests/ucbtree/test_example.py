"""The package's example runs, and its study does what the README says."""

from __future__ import annotations

import subprocess
import sys

import optuna

from metab_opt.ucbtree import example


def test_the_example_study_improves_on_its_root() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = example.main(n_trials=48, seed=0)
    strategies = {t.user_attrs["strategy"] for t in study.trials}
    assert strategies >= {"root", "survey", "initial-spread", "replicate", "duration",
                          "explore", "exploit"}, strategies
    assert study.best_value < 0.5 * study.trials[0].value


def test_the_example_runs_as_a_script() -> None:
    run = subprocess.run([sys.executable, "-m", "metab_opt.ucbtree.example"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].startswith("best loss ")
