"""``metab-opt compare``: the report from synthetic studies (known numbers), and the command on
tiny (2 samplers x 2 repeats x 3 trials), resumed without re-running anything."""

from __future__ import annotations

import datetime as dt
import io
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from metab_opt import compare
from metab_opt.cli import main
from metab_opt.compare import build_report, parse_samplers, study_name
from metab_opt.compare import run as compare_run
from metab_opt.compare.results import counted
from metab_opt.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
FAIL = None  # a failed trial in the value lists below

_DISTS = {"x": FloatDistribution(0.0, 1.0), "flag": CategoricalDistribution([False, True])}
_T0 = dt.datetime(2026, 1, 1)


def _add_trials(study: optuna.Study, values: Sequence[float | None], *, seconds: float = 2.0,
                steps: int = 100, enqueued_first: bool = False) -> None:
    """One finished trial per value (None: a failed one), each lasting ``seconds``."""
    for i, value in enumerate(values):
        system = {"fixed_params": {"x": 0.5, "flag": True}} if enqueued_first and i == 0 else {}
        start = _T0 + dt.timedelta(seconds=10 * i)
        study.add_trial(FrozenTrial(
            number=-1, trial_id=-1, state=TrialState.FAIL if value is None else TrialState.COMPLETE,
            value=value, datetime_start=start,
            datetime_complete=start + dt.timedelta(seconds=seconds),
            params={"x": 0.5, "flag": True}, distributions=_DISTS,
            user_attrs={"steps": steps} if value is not None else {"fail_reason": "diverged"},
            system_attrs=system, intermediate_values={}))


def _make(storage: Any, name: str, sampler: str, repeat: int,
          values: Sequence[float | None], **kw: Any) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=study_name(name, sampler, repeat),
                                direction="maximize")
    _add_trials(study, values, **kw)
    return study


# 14 trials per study, so that both "after 12" and "after 14" columns exist.
UCB = {  # best after 12 / after 14; first trial reaching 0.5 / 0.8 / 0.9
    0: [0.1, 0.6, FAIL, 0.85] + [0.2] * 9 + [0.95],  # 0.85 / 0.95; 2 / 4 / 14
    1: [0.55] + [0.2] * 11 + [0.81, 0.3],            # 0.55 / 0.81; 1 / 13 / -
    2: [-5.0, 0.4, 0.92] + [0.1] * 11,               # 0.92 / 0.92; 3 / 3 / 3
}
RANDOM = {
    0: [-70.0, -3.0, 0.2, 0.4, FAIL, 0.6, -1.0, 0.0, 0.3, 0.1, FAIL, 0.45, 0.2, 0.7],
    1: [FAIL] * 14,                                       # nothing but failures: no crash
    2: [0.3] * 14,
}


@pytest.fixture
def synthetic(tmp_path: Path, tiny_cfg: Any) -> tuple[Any, Path]:
    storage = optuna.storages.InMemoryStorage()
    for k, values in UCB.items():
        study = _make(storage, "syn", "ucb", k, values, seconds=3.0)
        if k == 0:
            study.set_user_attr("metab_opt:config", tiny_cfg.to_dict())
            study.set_user_attr("metab_opt:config_path", "configs/tiny.yaml")
    for k, values in RANDOM.items():
        _make(storage, "syn", "random", k, values, seconds=1.0, steps=300)
    _make(storage, "syn", "tpe", 0, [0.2, 0.9, 0.3, FAIL, 0.1])  # unfinished; r1, r2 missing
    _make(storage, "other", "ucb", 0, [0.99] * 14)              # another comparison: ignored
    return storage, tmp_path / "out"


def test_report_numbers(synthetic: tuple[Any, Path]) -> None:
    storage, out = synthetic
    rep = build_report(storage, "syn", ["ucb", "tpe", "random"], 3, 14,
                       command="metab-opt compare --samplers ucb,tpe,random", out_dir=out)
    ucb = rep.summaries["ucb"]
    assert ucb.median_best_early == pytest.approx(0.85)
    assert ucb.median_best_final == pytest.approx(0.92)
    assert ucb.final_range == (pytest.approx(0.81), pytest.approx(0.95))
    assert ucb.trials_to[0.5] == [2, 1, 3] and ucb.median_trials_to(0.5) == 2
    assert ucb.trials_to[0.8] == [4, 13, 3] and ucb.median_trials_to(0.8) == 4
    assert ucb.trials_to[0.9] == [14, None, 3] and ucb.median_trials_to(0.9) is None
    assert (ucb.failed, ucb.total_trials) == (1, 42)
    assert ucb.wall_seconds == pytest.approx(42 * 3.0)
    assert ucb.mean_trial_seconds == pytest.approx(3.0)

    rnd = rep.summaries["random"]
    # repeat 1 failed throughout: it has no best, the others still give a median
    assert rnd.median_best_final == pytest.approx(np.median([0.7, 0.3]))
    assert rnd.median_best_early == pytest.approx(np.median([0.6, 0.3]))
    assert rnd.trials_to[0.5] == [6, None, None]
    assert (rnd.failed, rnd.total_trials) == (2 + 14, 42)
    valid = [v for vals in RANDOM.values() for v in vals if v is not None]
    assert rep.random_spread == pytest.approx(tuple(np.quantile(valid, [0, .25, .5, .75, 1])))

    tpe = rep.summaries["tpe"]
    assert len(tpe.repeats) == 1 and tpe.complete_repeats == 0
    assert tpe.median_best_final is None  # 5 of 14 trials: "after 14" is not defined yet

    text = out.joinpath("report.md").read_text()
    assert text == rep.text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and line.count("|") == 14}
    # no study has retrained its incumbent: replicate-confirmed n/a; a failed trial ran no steps
    assert rows["ucb"] == ("| ucb | 3/3 | 0.850 (0.550–0.920) | 0.920 (0.810–0.950) | n/a "
                           "| 2 (2, 1, 3) "
                           "| 4 (4, 13, 3) | not reached (2/3 did: 14, –, 3) | 1 of 42 "
                           "| 2.1 min | 3.0 s | 100 | 1,400 |")
    assert rows["random"].startswith("| random | 3/3 | 0.450 (0.300–0.600) [2 of 3 repeats] "
                                     "| 0.500 (0.300–0.700) [2 of 3 repeats] | n/a "
                                     "| not reached (1/3 did: 6, –, –) |")
    assert rows["random"].endswith("| 16 of 42 | 42.0 s | 1.0 s | 300 | 3,600 |")
    assert rows["tpe"].startswith("| tpe | 0/3 (2 not started) | n/a | n/a | n/a |")
    assert "metab-opt compare --samplers ucb,tpe,random" in text
    assert "config: `tiny` (configs/tiny.yaml)" in text
    assert "4,500 steps per trial" in text  # tiny: 600 * 300 // 8 * 0.2
    assert "min -70, Q1" in text and "below 0" in text
    assert "UCB is ahead of the best baseline (random) by +0.420." in text
    assert "other__" not in text
    assert "Optuna's samplers were not given it" in text
    assert "Ranking by median best R² after 14 trials: ucb 0.920 > random 0.500 (single " \
           "trials: no replicate-confirmed result" in text
    assert "No study has finished its trials and retrained its incumbent yet." in text
    for png in (out / "best_so_far.png", rep.steps_png):
        assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["best_so_far.png", "best_vs_steps.png",
                                                     "report.md"]


def test_report_sampler_notes_and_missing_everything(tmp_path: Path) -> None:
    storage = optuna.storages.InMemoryStorage()
    _make(storage, "c", "cmaes", 0, [0.1, 0.2])
    rep = build_report(storage, "c", ["cmaes", "gp", "ucb"], 2, 2, command="cmd", out_dir=tmp_path)
    assert "Cannot use the search space as declared" in rep.text
    assert "`flag`" in rep.text  # the categorical knob, found in the trials' distributions
    assert "4 + floor(3 ln 1)" not in rep.text  # one numeric knob: no population claim
    assert "Hamming" in rep.text and "GPSampler" in rep.text
    assert "range starts at 0 (`x`)" in rep.text and "(cmaes, gp) draw them" in rep.text
    assert "| gp | 0/2 (2 not started) | n/a |" in rep.text
    assert "The random sampler is not part of this comparison." in rep.text
    assert (tmp_path / "best_so_far.png").exists()


def test_report_fair_start_and_random_spread_without_the_start(tmp_path: Path) -> None:
    storage = optuna.storages.InMemoryStorage()
    _make(storage, "f", "ucb", 0, [0.9, 0.1, 0.2])
    _make(storage, "f", "random", 0, [0.9, -2.0, 0.4], enqueued_first=True)
    rep = build_report(storage, "f", ["ucb", "random"], 1, 3, command="c", out_dir=tmp_path)
    assert "fair start: the first trial of every study is the config's base values" in rep.text
    assert rep.random_spread == pytest.approx((-2.0, -1.4, -0.8, -0.2, 0.4))  # 0.9 left out
    assert rep.summaries["random"].median_best_final == pytest.approx(0.9)  # but it counts
    assert "UCB is tied with the best baseline (random) by +0.000." in rep.text
    assert "| ucb | 1/1 | 0.900 | n/a | 1 |" in rep.text  # one repeat: no range, no listing


def test_counted_trials_skip_interrupted_and_retried() -> None:
    def frozen(number: int, state: TrialState, **attrs: Any) -> FrozenTrial:
        start = _T0 if state != TrialState.WAITING else None
        return FrozenTrial(number=number, trial_id=number, state=state,
                           value=0.5 if state == TrialState.COMPLETE else None,
                           datetime_start=start,
                           datetime_complete=_T0 if state.is_finished() else None,
                           params={}, distributions={},
                           user_attrs=attrs.get("user", {}), system_attrs=attrs.get("system", {}),
                           intermediate_values={})

    trials = [
        frozen(0, TrialState.COMPLETE),
        frozen(1, TrialState.FAIL, user={"fail_reason": "diverged at step 3"}),
        frozen(2, TrialState.FAIL, user={"fail_reason": "interrupted"}),
        frozen(3, TrialState.FAIL, user={"fail_reason": "worker lost"}),  # retried by 5
        frozen(4, TrialState.PRUNED),
        frozen(5, TrialState.COMPLETE, system={"failed_trial": 3}),
        frozen(6, TrialState.RUNNING),
        frozen(7, TrialState.WAITING),
        frozen(8, TrialState.FAIL, user={"fail_reason": "aborted: RuntimeError: x"}),
    ]
    assert [t.number for t in counted(trials[::-1])] == [0, 1, 4, 5]


def test_a_trial_r2_is_the_logbooks(tmp_path: Path) -> None:
    """One definition of a trial's R² (:func:`metab_opt.logbook.trial_r2`): a failed trial has
    none, a pruned one counts with its last report (a comparison runs every sampler with the
    config's pruner) and the steps it ran."""
    storage = optuna.storages.InMemoryStorage()
    study = _make(storage, "p", "ucb", 0, [0.3, FAIL])
    study.add_trial(FrozenTrial(
        number=-1, trial_id=-1, state=TrialState.PRUNED, value=None, datetime_start=_T0,
        datetime_complete=_T0 + dt.timedelta(seconds=1), params={"x": 0.5, "flag": True},
        distributions=_DISTS, user_attrs={"steps": 5}, system_attrs={},
        intermediate_values={5: 0.6}))
    rep = build_report(storage, "p", ["ucb"], 1, 3, command="c", out_dir=tmp_path)
    (repeat,) = rep.summaries["ucb"].repeats
    assert repeat.values == [0.3, None, 0.6]
    assert repeat.failed == 1
    assert repeat.trial_steps == [100, 0, 5]  # the failed trial recorded none
    assert repeat.cumulative_steps == [100, 100, 105]


def test_parse_samplers() -> None:
    assert parse_samplers(" UCB, tpe,ucb,,random ") == ["ucb", "tpe", "random"]
    with pytest.raises(ConfigError, match="unknown sampler 'bogus'"):
        parse_samplers("ucb,bogus")
    with pytest.raises(ConfigError):
        parse_samplers(" , ")


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_unknown_sampler_exit_2_nothing_written(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    err = _one_line_error(capsys, ["compare", "--config", str(TINY), "--samplers", "ucb,bogus",
                                   "--root", str(root)])
    assert "'bogus'" in err and "ucb,tpe,random,cmaes,gp" in err
    assert not root.exists()


def test_missing_sampler_package_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare_run, "_has_module", lambda name: name != "cmaes")
    root = tmp_path / "root"
    err = _one_line_error(capsys, ["compare", "--config", str(TINY), "--samplers", "ucb,cmaes",
                                   "--root", str(root)])
    assert "pip install cmaes" in err
    assert not root.exists()


def _study_trials(db: Path) -> dict[str, list[FrozenTrial]]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    return {s.study_name: storage.get_all_trials(s._study_id)
            for s in storage.get_all_studies()}


@pytest.mark.slow  # ~40 s: `make test-all` or `pytest -m slow`
def test_command_on_tiny_then_resume(tmp_path: Path, tiny_data_root: Path) -> None:
    root = tmp_path / "cmp"
    argv = [sys.executable, "-m", "metab_opt", "compare", "--config", "configs/tiny.yaml",
            "--samplers", "ucb,random", "--n-trials", "3", "--repeats", "2",
            "--max-steps", "100", "--root", str(root), "--data-root", str(tiny_data_root)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def run() -> subprocess.CompletedProcess[str]:
        res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env=env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res

    first = run()
    folder = root / "compare_tiny"
    names = ["compare_tiny__ucb__r0", "compare_tiny__random__r0", "compare_tiny__ucb__r1",
             "compare_tiny__random__r1"]
    # interleaved: repeat 0 of every sampler, then repeat 1
    starts = re.findall(r"^\[(\d)/4\] (\S+): 0/3 trials done, running 3", first.stdout, re.M)
    assert starts == [(str(i), n) for i, n in enumerate(names, start=1)]
    trials = _study_trials(folder / "compare.db")
    assert sorted(trials) == sorted(names)
    for name, ts in trials.items():
        assert [t.state for t in ts] == [TrialState.COMPLETE] * 3, name
        assert all(math.isfinite(t.value) for t in ts)
        assert (folder / name / f"{name}_analysis.md").exists()
    # the Optuna sampler's first trial is the config's base values, as the UCB root is
    base = load_config(TINY).base_params()
    assert trials["compare_tiny__random__r0"][0].params == base
    assert trials["compare_tiny__ucb__r0"][0].params == base
    report = (folder / "report.md").read_text()
    assert "metab-opt compare --config configs/tiny.yaml --samplers ucb,random --n-trials 3 " \
           "--repeats 2" in report
    assert re.search(r"^\| ucb \| 2/2 \| ", report, re.M)
    assert re.search(r"^\| random \| 2/2 \| ", report, re.M)
    assert (folder / "best_so_far.png").stat().st_size > 0

    second = run()
    assert second.stdout.count("trials done, nothing to run") == 4
    again = _study_trials(folder / "compare.db")
    assert {n: len(ts) for n, ts in again.items()} == {n: 3 for n in names}
    assert (folder / "report.md").read_text() == report


def test_run_compare_rejects_bad_counts(tiny_cfg: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        compare.run_compare(tiny_cfg, samplers=["ucb"], n_trials=0, root=tmp_path)
    with pytest.raises(ConfigError):
        compare.run_compare(tiny_cfg, samplers=["ucb"], first_seed=-1, root=tmp_path)
    assert not tmp_path.joinpath("compare_tiny").exists()


def test_first_seed_runs_only_its_seeds(tiny_cfg: Any, tmp_path: Path,
                                        tiny_data_root: Path) -> None:
    # Two processes can share a comparison's storage with disjoint seeds: this one runs seed 1
    # alone, and the report counts seed 0 as not started.
    rep = compare.run_compare(tiny_cfg, samplers=["random"], n_trials=2, repeats=1,
                              first_seed=1, root=tmp_path, data_root=tiny_data_root,
                              max_steps=20, retrain_seeds=(101,), stream=io.StringIO())
    trials = _study_trials(tmp_path / "compare_tiny" / "compare.db")
    assert sorted(trials) == ["compare_tiny__random__r1"]
    assert [t.state for t in trials["compare_tiny__random__r1"]] == [TrialState.COMPLETE] * 2
    assert len(rep.summaries["random"].repeats) == 1
    assert "(sampler seeds 0..1)" in rep.text
