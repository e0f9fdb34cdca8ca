"""``metab-opt compare`` answers "what does a user of each sampler get": the final incumbent of
every finished study trained again with new seeds (once, stored, resumed), the report ranked by
the replicate-confirmed R², best R² against the cumulative training steps, and Optuna's samplers
holding the training seed (GPSampler could not run on a searched seed: a 17 GB array)."""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from metab_opt.cli import RETRAIN_SEEDS, _compare_command_line, main
from metab_opt.compare import build_report, run_compare, study_name
from metab_opt.compare import retrain as retrain_mod
from metab_opt.compare.results import MAX_STEPS_ATTR, RETRAIN_ATTR, Retrain, RetrainRun
from metab_opt.compare.retrain import (
    DEFAULT_RETRAIN_SEEDS,
    fresh_seeds,
    retrain_config,
    retrain_incumbent,
)
from metab_opt.compare.run import parse_seeds
from metab_opt.config import Config, load_config
from metab_opt.objective import held_params, suggest_holding
from metab_opt.study import make_sampler

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Optuna's samplers hold the training seed


def test_only_ucb_searches_the_training_seed(tiny_cfg: Config) -> None:
    assert held_params(tiny_cfg, "ucb") == {}
    for kind in ("tpe", "random", "cmaes", "gp"):
        assert held_params(tiny_cfg, kind) == {"seed": tiny_cfg.training.seed}


def _toy(held: dict[str, Any], cfg: Config) -> Any:
    def objective(trial: optuna.Trial) -> float:
        p = suggest_holding(trial, cfg, held)
        return -sum(math.log10(v) ** 2 for k, v in p.items()
                    if k.startswith("lr_") and isinstance(v, float))
    return objective


@pytest.mark.parametrize("kind", ["gp", "cmaes"])
def test_gp_and_cmaes_do_not_search_the_seed(kind: str, tiny_cfg: Config) -> None:
    """GPSampler past its 10 random startup trials: it models every knob but the seed (a
    searched seed made it enumerate [0, 2**31): out of memory)."""
    pytest.importorskip("scipy")
    if kind == "cmaes":
        pytest.importorskip("cmaes")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(kind, tiny_cfg, 0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(tiny_cfg.base_params())
    study.optimize(_toy(held_params(tiny_cfg, kind), tiny_cfg),
                   n_trials=12 if kind == "gp" else 4)
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.params["seed"] for t in trials} == {42}
    assert all(t.distributions["seed"].single() for t in trials)
    space = sampler.infer_relative_search_space(study, trials[-1])
    assert "seed" not in space and "lr_k" in space
    assert len({t.params["lr_k"] for t in trials}) > 1


def test_ucb_still_suggests_the_seed(tiny_cfg: Config) -> None:
    study = optuna.create_study(direction="maximize", sampler=make_sampler("ucb", tiny_cfg, 0))
    trial = study.ask()
    params = suggest_holding(trial, tiny_cfg, held_params(tiny_cfg, "ucb"))
    assert set(params) == set(tiny_cfg.search.names)
    assert not trial.distributions["seed"].single()


# ---------------------------------------------------------------------------------------------
# The incumbent trained again: once, stored, resumed


def _trial(cfg: Config, value: float | None, seed: int, **changes: Any) -> Any:
    params = {**cfg.base_params(), **changes, "seed": seed}
    dists = {k.name: k.distribution() for k in cfg.search.knobs}
    return create_trial(state=TrialState.FAIL if value is None else TrialState.COMPLETE,
                        value=value, params=params, distributions=dists,
                        user_attrs={"steps": 40})


def _study(storage: Any, cfg: Config, name: str, values: Sequence[Any]) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    for v in values:
        study.add_trial(v)
    return study


class _FakeTraining:
    """Retrains without training: R² 0.6 + seed / 10000; ``calls``: the seeds trained, in
    order; ``interrupt_at``: the seed whose retrain is interrupted (Ctrl-C)."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.interrupt_at: int | None = None

    def __call__(self, config: Config, seed: int, **kw: Any) -> RetrainRun:
        assert config.training.seed != seed  # given the incumbent's config, not the retrain's
        self.calls.append(seed)
        if seed == self.interrupt_at:
            raise KeyboardInterrupt
        return RetrainRun(seed=seed, r2=0.6 + seed / 10000, status="partial", steps=50,
                          seconds=0.1)


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> _FakeTraining:
    fake = _FakeTraining()
    monkeypatch.setattr(retrain_mod, "_train_once", fake)
    monkeypatch.setattr("metab_opt.problem.simulation.load_or_build", lambda *a, **k: (None, False))
    return fake


def _values(cfg: Config) -> list[Any]:
    # trials 1 and 2 are one replicate group (mean 0.75, the incumbent); trial 2 ran seed 101
    return [_trial(cfg, 0.5, 42), _trial(cfg, 0.8, 42, lr_k=0.01),
            _trial(cfg, 0.7, 101, lr_k=0.01), _trial(cfg, None, 7, lr_node=0.002)]


def test_retrain_once_stored_and_read_by_the_report(tiny_cfg: Config, tmp_path: Path,
                                                    fake_training: _FakeTraining) -> None:
    storage = optuna.storages.InMemoryStorage()
    name = study_name("r", "ucb", 0)
    _study(storage, tiny_cfg, name, _values(tiny_cfg))
    said: list[str] = []
    kw: dict[str, Any] = dict(n_trials=4, seeds=(101, 202), max_steps=50, out_dir=tmp_path,
                              say=said.append)
    assert retrain_incumbent(tiny_cfg, storage, name, **{**kw, "n_trials": 5}) is None
    assert fake_training.calls == []  # unfinished: nothing trained, nothing stored
    assert RETRAIN_ATTR not in storage.get_study_user_attrs(
        storage.get_study_id_from_name(name))
    rec = retrain_incumbent(tiny_cfg, storage, name, **kw)
    assert rec is not None and fake_training.calls == [102, 202]  # 101 is the incumbent's own seed
    assert rec.trials == (1, 2) and [r.r2 for r in rec.in_study] == [0.8, 0.7]
    assert rec.params["lr_k"] == 0.01 and "seed" not in rec.params
    assert rec.replicate_mean == pytest.approx((0.8 + 0.7 + 0.6102 + 0.6202) / 4)
    stored = storage.get_study_user_attrs(storage.get_study_id_from_name(name))[RETRAIN_ATTR]
    assert stored == rec.to_attr() and json.loads(json.dumps(stored)) == stored
    assert Retrain.from_attr(stored) == rec
    assert any("trials 1, 2 (R2 0.800, 0.700)" in line for line in said)

    again = retrain_incumbent(tiny_cfg, storage, name, **kw)
    assert again == rec and fake_training.calls == [102, 202]  # nothing redone

    rep = build_report(storage, "r", ["ucb"], 1, 4, command="c", out_dir=tmp_path / "out")
    assert rep.summaries["ucb"].median_replicate == pytest.approx(rec.replicate_mean)
    assert f"| {name} | trial 1: 0.800, trial 2: 0.700 | seed 102: 0.610, seed 202: 0.620 " \
           f"| 0.683 |" in rep.text


def test_retrain_interrupted_resumes_the_missing_seed(tiny_cfg: Config, tmp_path: Path,
                                                      fake_training: _FakeTraining) -> None:
    storage = optuna.storages.InMemoryStorage()
    name = study_name("r", "tpe", 0)
    _study(storage, tiny_cfg, name, _values(tiny_cfg))
    kw: dict[str, Any] = dict(n_trials=4, seeds=(101, 202), max_steps=50, out_dir=tmp_path,
                              say=lambda text: None)
    fake_training.interrupt_at = 202
    with pytest.raises(KeyboardInterrupt):
        retrain_incumbent(tiny_cfg, storage, name, **kw)
    sid = storage.get_study_id_from_name(name)
    partial = Retrain.from_attr(storage.get_study_user_attrs(sid)[RETRAIN_ATTR])
    assert partial is not None and [r.seed for r in partial.runs] == [102]
    assert partial.replicate_mean is None and partial.missing == [202]
    fake_training.interrupt_at = None
    rec = retrain_incumbent(tiny_cfg, storage, name, **kw)
    assert fake_training.calls == [102, 202, 202] and rec is not None and rec.complete
    # another step cap is another budget: the retrains are redone
    retrain_incumbent(tiny_cfg, storage, name, **{**kw, "max_steps": 60})
    assert fake_training.calls[3:] == [102, 202]


def test_fresh_seeds_and_the_retrain_config(tiny_cfg: Config) -> None:
    assert fresh_seeds([101, 202], [42]) == (101, 202)
    assert fresh_seeds([101, 102], [101, None]) == (102, 103)
    cfg = retrain_config(tiny_cfg, 101)
    via_set = load_config(ROOT / "configs" / "tiny.yaml", overrides={"training.seed": 101})
    assert cfg.to_dict() == via_set.to_dict()


def test_report_ranks_by_the_replicate_mean(tmp_path: Path, tiny_cfg: Config) -> None:
    """A lucky single trial (tpe: 0.95) does not win over a confirmed incumbent (ucb)."""
    storage = optuna.storages.InMemoryStorage()
    plans = {"ucb": ([0.5, 0.8, 0.78], 0.76), "tpe": ([0.95, 0.2, 0.3], 0.55)}
    for kind, (values, retrained) in plans.items():
        for k in range(3):
            study = _study(storage, tiny_cfg, study_name("q", kind, k),
                           [_trial(tiny_cfg, v, 42, lr_k=0.001 * (i + 1))
                            for i, v in enumerate(values)])
            study.set_user_attr(MAX_STEPS_ATTR, [50])
            best = max(values)
            rec = Retrain(n_trials=3, max_steps=50, seeds=(101, 202), params={},
                          in_study=(RetrainRun(seed=42, r2=best, trial=values.index(best)),),
                          runs=(RetrainRun(seed=101, r2=retrained + 0.01 * k),
                                RetrainRun(seed=202, r2=retrained - 0.01 * k)))
            if not (kind == "tpe" and k == 2):  # one repeat's retrains still pending
                study.set_user_attr(RETRAIN_ATTR, rec.to_attr())
    rep = build_report(storage, "q", ["ucb", "tpe"], 3, 3, command="c", out_dir=tmp_path)
    ucb = (0.8 + 2 * 0.76) / 3
    tpe = (0.95 + 2 * 0.55) / 3
    assert rep.summaries["ucb"].median_replicate == pytest.approx(ucb)
    assert rep.summaries["tpe"].median_replicate == pytest.approx(tpe)
    assert (f"Ranking by median replicate-confirmed R² (each study's final incumbent: the mean "
            f"over its runs in the study and its retrains; median over repeats): "
            f"ucb {ucb:.3f} > tpe {tpe:.3f}.") in rep.text
    assert f"UCB is ahead of the best baseline (tpe) by +{ucb - tpe:.3f}." in rep.text
    assert ("By the best single trial (median best R² after 3 trials, not "
            "replicate-confirmed): tpe 0.950 > ucb 0.800.") in rep.text
    assert f"| {tpe:.3f} ({tpe:.3f}–{tpe:.3f}) [2 of 3 repeats] |" in rep.text
    assert "at most 50 training steps per trial, the same for every sampler" in rep.text
    assert "a finished study's trials: median 120 steps" in rep.text
    assert "training seed: it is held at the config's value" not in rep.text  # not held here
    assert rep.steps_png is not None
    assert rep.steps_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![best against cumulative training steps](best_vs_steps.png)" in rep.text


# ---------------------------------------------------------------------------------------------
# The command on tiny, then resumed


def test_compare_on_tiny_retrains_then_resumes(tiny_cfg: Config, tmp_path: Path,
                                               tiny_data_root: Path) -> None:
    """Two samplers x 1 repeat x 2 trials at 50 steps, each incumbent trained again with 2
    seeds (~20 s); the rerun trains nothing and rebuilds the same report."""
    root = tmp_path / "cmp"
    kw: dict[str, Any] = dict(samplers=["ucb", "random"], n_trials=2, repeats=1, root=root,
                              data_root=tiny_data_root, max_steps=50, command="cmd")
    out = io.StringIO()
    run_compare(tiny_cfg, stream=out, **kw)
    folder = root / "compare_tiny"
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'compare.db'}")
    records = {}
    for kind in ("ucb", "random"):
        sid = storage.get_study_id_from_name(study_name("compare_tiny", kind, 0))
        attrs = storage.get_study_user_attrs(sid)
        rec = Retrain.from_attr(attrs[RETRAIN_ATTR])
        assert rec is not None and rec.complete and rec.max_steps == 50
        assert [r.seed for r in rec.runs] == [101, 202]
        assert all(r.r2 is not None and r.steps == 50 for r in rec.runs)
        assert attrs[MAX_STEPS_ATTR] == [50]
        records[kind] = rec
        trials = storage.get_all_trials(sid)
        # Optuna's sampler holds the seed; the UCB sampler searches it
        assert all(t.distributions["seed"].single() == (kind == "random") for t in trials)
        assert all(t.params["seed"] == 42 for t in trials) or kind == "ucb"
    text = (folder / "report.md").read_text()
    assert "Ranking by median replicate-confirmed R²" in text
    assert (folder / "best_vs_steps.png").stat().st_size > 0
    assert "training seed: it is held at the config's value (`seed` = 42)" in text

    # the retrain is `metab-opt train --config <its config.yaml> --max-steps 50`
    run_dir = folder / study_name("compare_tiny", "random", 0) / "retrains" / "seed_101"
    assert main(["train", "--config", str(run_dir / "config.yaml"), "--max-steps", "50",
                 "--data-root", str(tiny_data_root), "--out", str(tmp_path / "again"),
                 "--no-progress"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["rate_constants_R2"] == pytest.approx(records["random"].runs[0].r2, abs=1e-9)

    out = io.StringIO()
    run_compare(tiny_cfg, stream=out, **kw)
    assert out.getvalue().count("nothing to run") == 2
    assert "training it again" not in out.getvalue()
    assert (folder / "report.md").read_text() == text


def test_retrain_seeds_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_seeds(RETRAIN_SEEDS) == DEFAULT_RETRAIN_SEEDS == (101, 202)
    assert parse_seeds(" 7, 8 ") == (7, 8)
    root = tmp_path / "root"
    for bad in ("101,101", "x", "-1", ","):
        assert main(["compare", "--config", str(ROOT / "configs" / "tiny.yaml"), "--samplers",
                     "ucb", "--retrain-seeds", bad, "--root", str(root)]) == 2
        assert "--retrain-seeds" in capsys.readouterr().err and not root.exists()
    args = argparse.Namespace(config="c.yaml", n_trials=2, repeats=1, max_steps=50)
    assert _compare_command_line(args, ["ucb"], (101, 202)).endswith("--max-steps 50")
    assert _compare_command_line(args, ["ucb"], (5,)).endswith("--max-steps 50 --retrain-seeds 5")


def test_first_seed_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    for bad in ("-1", "x"):
        assert main(["compare", "--config", str(ROOT / "configs" / "tiny.yaml"), "--samplers",
                     "ucb", "--first-seed", bad, "--root", str(root)]) == 2
        assert "--first-seed" in capsys.readouterr().err and not root.exists()
    args = argparse.Namespace(config="c.yaml", n_trials=2, repeats=2, first_seed=3)
    assert _compare_command_line(args, ["ucb"]) == (
        "metab-opt compare --config c.yaml --samplers ucb --n-trials 2 --repeats 2 "
        "--first-seed 3")
