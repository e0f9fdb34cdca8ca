"""``metab-opt``: bad input is one line on stderr and exit code 2 with nothing written;
``simulate`` prints a summary and writes the dataset."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from metab_opt.cli import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = CONFIGS / "tiny.yaml"


@functools.cache
def _tiny_raw() -> dict[str, Any]:
    return yaml.safe_load(TINY.read_text())


def _bad_config(tmp_path: Path, dotted: str, value: Any) -> Path:
    raw = copy.deepcopy(_tiny_raw())
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


_DELETE = object()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _assert_usage_error(rc: int, out: str, err: str, *needles: str) -> None:
    assert rc == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("metab-opt")
    for needle in needles:
        assert needle in err, (needle, err)


# Each class of bad config: (dotted key, value, what the line must say).
BAD_CONFIGS = [
    ("training.learning_rate_kk", 0.01,
     ["training.learning_rate_kk: unknown key (did you mean 'learning_rate_k'?)"]),
    ("simulation.n_metabolites", "many", ["simulation.n_metabolites: expected an integer"]),
    ("simulation.cycle_fraction", 2.0, ["simulation.cycle_fraction: 2.0 is outside the allowed "
                                        "range [0.0, 1.0]"]),
    ("simulation.n_frames", _DELETE, ["simulation.n_frames: missing required key"]),
    ("graph_model", _DELETE, ["graph_model: missing required section"]),
    ("search.knobs.lr_k.scale", "exp", ["search.knobs.lr_k.scale: expected one of"]),
    ("search.knobs.lr_k.range", [1e-2, 1e-4], ["search.knobs.lr_k.range: expected low < high"]),
    ("search.knobs.lr_k.step", 1.0, ["search.knobs.lr_k.step: a log knob's step is a factor"]),
    ("search.knobs.coeff_k_floor.min_positive", _DELETE,
     ["search.knobs.coeff_k_floor.min_positive"]),
    ("search.knobs.lr_k.key", "training.nope", ["'training.nope' is not a searchable config key"]),
    ("search.knobs.lr_k.key", "training.coeff_S_L1", ["is frozen and cannot be searched"]),
    ("training.learning_rate_k", 0.5, ["training.learning_rate_k = 0.5 is outside the range of "
                                       "search knob 'lr_k'"]),
]


@pytest.mark.parametrize("dotted,value,needles", BAD_CONFIGS,
                         ids=[f"{d}={v if v is not _DELETE else 'deleted'}"
                              for d, v, _ in BAD_CONFIGS])
def test_simulate_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], dotted: str,
                             value: Any, needles: list[str]) -> None:
    path = _bad_config(tmp_path, dotted, value)
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "simulate", "--config", str(path), "--data-root", str(out_dir))
    _assert_usage_error(rc, out, err, str(path), *needles)
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "text,needle",
    [
        ("simulation: [1, 2\n", "unreadable YAML at line 2"),
        ("- a\n- b\n", "expected a mapping with sections"),
        ("", "simulation: missing required section"),
    ],
)
def test_simulate_unreadable_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                  needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "simulate", "--config", str(path), "--data-root", str(out_dir))
    _assert_usage_error(rc, out, err, str(path), needle)
    assert not out_dir.exists()


def test_simulate_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "simulate", "--config", str(path), "--data-root", str(out_dir))
    _assert_usage_error(rc, out, err, f"{path}: no such config file")
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "item,needles",
    [
        ("training.learning_rate_kk=0.01", ["--set training.learning_rate_kk: unknown key",
                                            "did you mean 'learning_rate_k'"]),
        ("trainig.learning_rate_k=0.01", ["unknown section 'trainig'"]),
        ("learning_rate_k=0.01", ["expected section.key=value"]),
        ("training.learning_rate_k", ["expected section.key=value"]),
        ("training.learning_rate_k=abc", ["training.learning_rate_k: expected a number"]),
        ("simulation.n_frames=-5", ["simulation.n_frames: -5 is outside the allowed range"]),
        ("simulation.delta_t=[1", ["cannot read the value"]),
        ("search.knobs=1", ["only n_iter_block, ucb_c, n_trials"]),
    ],
)
def test_simulate_bad_set(tmp_path: Path, capsys: pytest.CaptureFixture[str], item: str,
                          needles: list[str]) -> None:
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "simulate", "--config", str(TINY), "--data-root", str(out_dir),
                        "--set", item)
    _assert_usage_error(rc, out, err, *needles)
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["simulate", "--confg", "x.yaml"], ["unrecognized arguments: --confg x.yaml"]),
        (["simulate", "--rebuilt"], ["unrecognized arguments: --rebuilt"]),
        (["simulate", "--steps", "3"], ["unrecognized arguments: --steps 3"]),
        (["simulaet"], ["invalid choice"]),
        ([], ["required"]),
        (["simulate", "--config"], ["expected one argument"]),
        (["bench", "--config", str(TINY), "--rounds", "0"],
         ["--rounds: expected 1 to --steps (2000), got 0"]),
        (["bench", "--config", str(TINY), "--steps", "5"], ["--steps: expected at least 10"]),
    ],
)
def test_bad_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch, argv: list[str],
                          needles: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, *argv)
    _assert_usage_error(rc, out, err, *needles)
    assert list(tmp_path.iterdir()) == []


def test_misspelled_option_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "simulate", "--confg", "x.yaml")
    _assert_usage_error(rc, out, err, "did you mean --config")


@pytest.mark.parametrize(("argv", "needle", "absent"), [
    # A suggestion comes from the subcommand's own options: train has no --storage (study has).
    (["train", "--storgae", "x"], "unrecognized arguments: --storgae x", "did you mean"),
    (["train", "--no-progres-bar"], "did you mean --no-progress?", None),
    (["replicate", "--sedes", "1"], "did you mean --seeds?", None),
    (["simulate", "--out", "x"], "unrecognized arguments: --out x", None),
])
def test_suggestions_come_from_the_subcommand(capsys: pytest.CaptureFixture[str],
                                              argv: list[str], needle: str,
                                              absent: str | None) -> None:
    rc, out, err = _run(capsys, *argv)
    _assert_usage_error(rc, out, err, needle, f"metab-opt {argv[0]}")
    assert absent is None or absent not in err


@pytest.mark.parametrize("command", ["train", "replicate", "study"])
def test_every_long_command_takes_no_progress(command: str) -> None:
    from metab_opt.cli_args import build_parser as _build_parser

    args = _build_parser().parse_args([command, "--no-progress"])
    assert args.no_progress is True


def test_simulate_diverging_regime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "simulate", "--config", str(TINY), "--data-root", str(out_dir),
                        "--set", "simulation.delta_t=2")
    _assert_usage_error(rc, out, err, "diverged", "delta_t")
    assert not out_dir.exists()


# --- frozen keys: simulate accepts them, training refuses them ------------------------------

FROZEN = [
    ("freeze_stoichiometry", "false"),
    ("learning_rate_S_start", "1e-4"),
    ("coeff_S_L1", "0.1"),
    ("coeff_S_integer", "1"),
    ("coeff_mass_conservation", "2"),
]


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for the training modules, so that a bad-input test of ``train`` needs no torch
    (importing it takes seconds). Training must never start: the config is refused first."""

    def run_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started on a config that should have been refused")

    objective = types.ModuleType("metab_opt.objective")
    objective.HEADLINE = ()  # type: ignore[attr-defined]
    objective.run_training = run_training  # type: ignore[attr-defined]
    training = types.ModuleType("metab_opt.problem.training")
    training.TrainingDiverged = RuntimeError  # type: ignore[attr-defined]
    training.select_device = run_training  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "metab_opt.objective", objective)
    monkeypatch.setitem(sys.modules, "metab_opt.problem.training", training)


@pytest.mark.usefixtures("no_torch")
@pytest.mark.parametrize("key,value", FROZEN)
def test_train_refuses_frozen_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  key: str, value: str) -> None:
    path = _bad_config(tmp_path, f"training.{key}", yaml.safe_load(value))
    out_dir, data_root = tmp_path / "out", tmp_path / "data"
    rc, out, err = _run(capsys, "train", "--config", str(path), "--out", str(out_dir),
                        "--data-root", str(data_root), "--device", "cpu")
    _assert_usage_error(rc, out, err, str(path), f"training.{key} is frozen at")
    assert not out_dir.exists() and not data_root.exists()
    # The same change through --set.
    rc, out, err = _run(capsys, "train", "--config", str(TINY), "--out", str(out_dir),
                        "--data-root", str(data_root), "--device", "cpu",
                        "--set", f"training.{key}={value}")
    _assert_usage_error(rc, out, err, f"training.{key} is frozen at")
    assert not out_dir.exists() and not data_root.exists()


@pytest.mark.parametrize("key,value", FROZEN[:1])
def test_simulate_accepts_frozen_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     key: str, value: str) -> None:
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "simulate", "--config", str(TINY), "--data-root", str(out_dir),
                        "--set", f"training.{key}={value}")
    assert rc == 0, err
    assert err == ""
    assert len(list(out_dir.iterdir())) == 1


# --- simulate --------------------------------------------------------------------------------


def test_simulate_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "simulate", "--config", str(TINY), "--data-root", str(out_dir))
    assert rc == 0, err
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 4
    (folder,) = list(out_dir.iterdir())
    assert lines[0].startswith(f"dataset {folder} (built in ")
    assert lines[1].strip() == "metabolites 20, reactions 32, frames 600 (+200 test)"
    assert lines[2].strip().startswith("activity rank ")
    assert "concentrations " in lines[2]
    assert lines[3].strip().startswith("oracle_R2 1.0000")
    assert sorted(p.name for p in folder.iterdir()) == ["arrays.npz", "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["n_metabolites"] == 20 and manifest["n_frames"] == 600
    assert manifest["oracle_R2"] >= 0.99
    assert f"activity rank {manifest['activity_rank']}," in lines[2]
    # A second call reuses the cache; --rebuild builds again.
    rc, out, _ = _run(capsys, "simulate", "--config", str(TINY), "--data-root", str(out_dir))
    assert rc == 0 and "(cached in " in out.splitlines()[0]
    rc, out, _ = _run(capsys, "simulate", "--config", str(TINY), "--data-root", str(out_dir),
                      "--rebuild")
    assert rc == 0 and "(built in " in out.splitlines()[0]
    assert json.loads((folder / "manifest.json").read_text())["checksum"] == manifest["checksum"]
    assert [p.name for p in out_dir.iterdir()] == [folder.name]


@pytest.mark.parametrize(
    "items,figure",
    [
        (["simulation.n_frames=100"], "frames 100 (+200 test)"),
        (["simulation.n_frames=1e2", "simulation.n_test_frames=50"], "frames 100 (+50 test)"),
        (["simulation.n_frames=100", "training.learning_rate_k=0.01"], "frames 100 (+200 test)"),
    ],
)
def test_simulate_with_set(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           items: list[str], figure: str) -> None:
    out_dir = tmp_path / "out"
    argv = ["simulate", "--config", str(TINY), "--data-root", str(out_dir)]
    for item in items:
        argv += ["--set", item]
    rc, out, err = _run(capsys, *argv)
    assert rc == 0, err
    assert figure in out


# --- as a process: the real exit code, stderr and no traceback --------------------------------


def _process(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "metab_opt", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_process_bad_config(tmp_path: Path) -> None:
    path = _bad_config(tmp_path, "simulation.n_metabolite", 20)
    out_dir = tmp_path / "out"
    res = _process(tmp_path, "simulate", "--config", str(path), "--data-root", str(out_dir))
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert str(path) in res.stderr and "did you mean 'n_metabolites'" in res.stderr
    assert not out_dir.exists()


def test_process_simulate(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    res = _process(tmp_path, "simulate", "--config", str(TINY), "--data-root", str(out_dir))
    assert res.returncode == 0, res.stderr
    assert "oracle_R2" in res.stdout
    assert len(list(out_dir.glob("pde_m1_*/manifest.json"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written
