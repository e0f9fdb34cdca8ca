"""``metab-opt best``: the incumbent exported as a runnable config that reproduces its trial,
the same group as the sampler's incumbent and the memory file's first line; bad input is one
line with exit code 2 and nothing written; every trial folder keeps its complete config."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from metab_opt.cli import main
from metab_opt.config import config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
NAME = "tiny"
MAX_STEPS = 120

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_data_root: Path) -> dict[str, Any]:
    """A 3-trial tiny study whose trial 1 repeats trial 0's params with another training seed
    (a replicate group of two) and trial 2 is the sampler's own."""
    from metab_opt.runner import run_study

    root = tmp_path_factory.mktemp("best")
    cfg = load_config(TINY)
    study = run_study(cfg, root=root, n_trials=1, progress=False, max_steps=MAX_STEPS,
                      data_root=tiny_data_root, plots=False)
    study.enqueue_trial({**cfg.base_params(), "seed": 7})
    study = run_study(cfg, root=root, n_trials=2, progress=False, max_steps=MAX_STEPS,
                      data_root=tiny_data_root, plots=False)
    return {"root": root, "study": study, "cfg": cfg}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_best_exports_the_incumbent_and_train_reproduces_it(
        study: dict[str, Any], tmp_path: Path, tiny_data_root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from metab_opt import ucbtree
    from metab_opt.sampler import UCBMutationSampler
    from metab_opt.trial_record import read_nodes

    root, cfg = study["root"], study["cfg"]
    out = tmp_path / "best.yaml"
    rc, stdout, err = _run(capsys, "best", NAME, "--root", str(root), "--out", str(out))
    assert rc == 0, err
    text = out.read_text()
    # The sampler's incumbent (the rule it acts on) is the exported group.
    trials = study["study"].get_trials(deepcopy=False)
    sampler = UCBMutationSampler.from_config(cfg, seed=0)
    nodes = read_nodes(trials, sampler.base_params, cfg.search.names,
                       [n for n in cfg.search.names if n != sampler.roles.seed])
    inc = ucbtree.incumbent(nodes)
    assert inc is not None
    members = [n.number for n in nodes if n.group == inc.node.group and n.finished]
    assert re.search(r"trials " + ", ".join(map(str, members)), text), text
    # The memory file's first best configuration is the same group.
    memory = (root / NAME / f"{NAME}_memory.md").read_text()
    first = next(ln for ln in memory.splitlines() if ln.startswith("1. "))
    assert "the incumbent" in first
    assert f"{inc.mean_r2:.3f}" in first
    # The header names the study, the runs with their R², the mean and the command.
    header = [ln[2:] for ln in text.splitlines() if ln.startswith("# ")]
    assert f"study '{NAME}'" in header[0]
    for number in members:
        assert any(ln.strip().startswith(f"trial {number}: R² ") for ln in header), header
    command = next(ln.strip() for ln in header if ln.strip().startswith("metab-opt train"))
    assert command == f"metab-opt train --config {out} --max-steps {MAX_STEPS}"
    # A complete config: it loads on its own and differs from tiny.yaml only in the knobs.
    exported = load_config(out)
    stored = config_from_dict(yaml.safe_load(text), path=str(out))
    assert exported.to_dict() == stored.to_dict()
    assert exported.simulation == cfg.simulation
    run = next(t for t in trials if t.number == members[0])
    assert exported.training.seed == run.params["seed"]
    # `metab-opt train` on it reproduces the run whose seed it carries, bitwise on the CPU.
    rc, stdout, err = _run(capsys, "train", "--config", str(out), "--max-steps", str(MAX_STEPS),
                           "--data-root", str(tiny_data_root), "--out", str(tmp_path / "train"),
                           "--device", "cpu", "--no-progress")
    assert rc == 0, err
    import json

    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["rate_constants_R2"] == run.value  # the same computation, run twice


def test_every_trial_folder_keeps_its_complete_config(study: dict[str, Any]) -> None:
    for trial in study["study"].get_trials(deepcopy=False):
        path = study["root"] / NAME / "trials" / f"trial_{trial.number:04d}" / "config.yaml"
        cfg = load_config(path)
        for name, value in trial.params.items():
            assert cfg.get(cfg.search.knob(name).key) == value, (path, name)


def test_the_summary_names_the_incumbent(study: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from metab_opt.best import study_incumbent
    from metab_opt.cli import _print_summary

    s = study["study"]
    _print_summary(s, study["cfg"], str(study["root"]), 1.0)
    out = capsys.readouterr().out
    inc = study_incumbent(s._storage, NAME, study["cfg"])
    assert inc is not None
    assert f"incumbent: {inc.describe()}" in out
    assert "best: trial" not in out


def _assert_one_line(rc: int, out: str, err: str, *needles: str) -> None:
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_best_of_an_unknown_study_is_one_line(study: dict[str, Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{study['root'] / NAME / 'study.db'}"
    out = tmp_path / "x.yaml"
    _assert_one_line(*_run(capsys, "best", "other", "--storage", storage, "--out", str(out)),
                     "no study 'other'", NAME)
    _assert_one_line(*_run(capsys, "best", "nothing", "--root", str(tmp_path)),
                     "no study database")
    assert list(tmp_path.iterdir()) == []


def test_best_of_an_empty_study_is_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from metab_opt.storage import open_storage
    from metab_opt.study import open_study

    cfg = load_config(TINY)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_study(cfg, name="empty", storage=open_storage(url), sampler=None, sampler_kind="ucb")
    before = sorted(tmp_path.iterdir())
    _assert_one_line(*_run(capsys, "best", "empty", "--storage", url, "--out",
                           str(tmp_path / "b.yaml")), "no finished trial")
    assert sorted(tmp_path.iterdir()) == before


def test_best_of_an_unreadable_storage_is_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "junk" / "study.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not a database" * 100)
    _assert_one_line(*_run(capsys, "best", "junk", "--root", str(tmp_path)), str(db.name))
    assert sorted(p.name for p in db.parent.iterdir()) == ["study.db"]
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(db).execute("select 1 from sqlite_master").fetchall()


def test_best_does_not_overwrite_without_force(study: dict[str, Any], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kept.yaml"
    out.write_text("mine\n")
    _assert_one_line(*_run(capsys, "best", NAME, "--root", str(study["root"]), "--out",
                           str(out)), str(out), "--force")
    assert out.read_text() == "mine\n"
    rc, _, err = _run(capsys, "best", NAME, "--root", str(study["root"]), "--out", str(out),
                      "--force")
    assert rc == 0, err
    assert out.read_text().startswith("# The incumbent of study 'tiny'")
