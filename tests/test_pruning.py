"""The tree-safe pruner (metab_opt/pruning.py) on synthetic R² curves, its replay on a finished
study, ``metab-opt prune-check``, the ``search.pruner`` default, and one short real study.

The curves have this problem's shape: R² starts very negative (-80) and climbs, fast for a
good run, late for a late bloomer, never for a hopeless one. No training except in the last
test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from metab_opt.cli import main
from metab_opt.cli_args import build_parser as _build_parser
from metab_opt.config import ConfigError, load_config
from metab_opt.pruning import PLANNED_STEPS, SafePruner, _curve, replay
from metab_opt.study import PRUNERS, make_pruner

ROOT = Path(__file__).resolve().parents[1]
N_REPORTS = 20  # the trainer reports R² 20 times per run
TOTAL = 10_000  # planned steps of the synthetic runs
DISTS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "seed": IntDistribution(0, 1000)}

optuna.logging.set_verbosity(optuna.logging.WARNING)

Shape = Callable[[float], float]


def good(final: float) -> Shape:
    """A good run: -80 at the start, most of the way up by half of its training."""
    return lambda f: final - 81.0 * math.exp(-8.0 * f)


def mediocre(final: float) -> Shape:
    return lambda f: final - 60.0 * math.exp(-5.0 * f)


def hopeless(f: float) -> float:
    """Stuck far below zero, drifting: a run that never learns k."""
    return -40.0 + 2.0 * f


def late_bloomer(f: float) -> float:
    """At -80 for the first 45% of its training, then the steepest climb of the study, to the
    best R² of all at the end."""
    return -80.0 if f < 0.45 else 0.99 - 81.0 * math.exp(-(f - 0.45) / 0.06)


def sleeper(f: float) -> float:
    """Flat at -30 for 70% of its training, then a jump to the top: no pruner can see it
    coming (it is below every good run and not climbing when it is judged)."""
    return -30.0 if f < 0.7 else 0.99 - 31.0 * math.exp(-(f - 0.7) / 0.03)


def _reports(shape: Shape, total: int = TOTAL) -> dict[int, float]:
    every = math.ceil(total / N_REPORTS)
    steps = sorted({*range(every, total, every), total})
    return {s: shape(s / total) for s in steps}


def _add_complete(study: optuna.Study, shape: Shape, *, lr: float, seed: int = 0,
                  total: int = TOTAL) -> None:
    reports = _reports(shape, total)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=reports[total], params={"lr": lr, "seed": seed},
        distributions=DISTS, intermediate_values=reports, user_attrs={PLANNED_STEPS: total}))


def _history(study: optuna.Study, n: int = 8) -> None:
    """n completed runs: two good ones (the top quartile of 8), the rest mediocre or bad."""
    shapes = [good(0.95), good(0.90), mediocre(0.6), mediocre(0.3), mediocre(-2.0),
              mediocre(-10.0), hopeless, mediocre(0.1)]
    for i, shape in enumerate(shapes[:n]):
        _add_complete(study, shape, lr=1e-3 * (i + 1))


def _run(study: optuna.Study, shape: Shape, *, lr: float = 0.05, seed: int = 0,
         total: int = TOTAL, planned: bool = True) -> int | None:
    """Run a trial of ``shape`` through the study's pruner, as the objective does; the step at
    which it is pruned, or None when it runs to the end."""
    study.enqueue_trial({"lr": lr, "seed": seed})
    trial = study.ask(DISTS)
    if planned:
        trial.set_user_attr(PLANNED_STEPS, total)
    reports = _reports(shape, total)
    for step, value in reports.items():
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, reports[total])
    return None


def _study(n_history: int = 8, pruner: SafePruner | None = None) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner or SafePruner())
    _history(study, n_history)
    return study


# ---------------------------------------------------------------------------------------------
# The pruner


def test_a_hopeless_trial_is_pruned_after_the_warm_up() -> None:
    study = _study()
    step = _run(study, hopeless)
    # Past half of its training, confirmed at the next report: 55%.
    assert step == int(0.55 * TOTAL)


def test_a_late_bloomer_is_never_pruned() -> None:
    study = _study()
    assert late_bloomer(0.5) < -30  # far below the good runs past the warm-up ...
    assert _run(study, late_bloomer) is None  # ... but climbing steeply: it runs to the end
    best = max(study.trials, key=lambda t: t.value if t.value is not None else -math.inf)
    assert best.number == len(study.trials) - 1  # and it is the study's best


def test_nothing_is_pruned_before_the_startup_trials() -> None:
    study = _study(n_history=4)  # one short of n_startup_trials = 5
    assert _run(study, hopeless) is None
    assert _run(study, hopeless, lr=0.06) == int(0.55 * TOTAL)  # the 5th completed: now it is


def test_trials_of_another_length_are_compared_at_equal_fractions() -> None:
    study = _study()
    assert _run(study, hopeless, total=2000) == 1100  # 55% of its own 2000 steps
    # A trial that does not say how long it runs counts as long as the typical good run.
    assert _run(study, hopeless, lr=0.06, planned=False) == int(0.55 * TOTAL)
    assert _run(study, late_bloomer, lr=0.07, total=40_000) is None


def test_a_replicate_of_a_top_trial_is_never_pruned() -> None:
    study = _study()
    # Trial 1's params (a top-quartile run) with another training seed: its group's mean is
    # what the sampler ranks, so a stopped replicate would drag a good group down.
    assert _run(study, hopeless, lr=2e-3, seed=7) is None
    assert _run(study, hopeless, lr=5e-3, seed=7) == int(0.55 * TOTAL)  # a mediocre one's


def test_one_bad_report_prunes_nothing() -> None:
    study = _study()

    def dip(f: float) -> float:  # a good run with one bad report past the warm-up
        return -50.0 if abs(f - 0.6) < 1e-9 else good(0.93)(f)

    assert _run(study, dip) is None


def test_a_sleeper_is_lost_once_then_its_kind_survives() -> None:
    """The limit, stated in the module docstring: a flat curve that jumps late is pruned until
    a run like it has completed in the top quartile; then its curve lowers the floor."""
    study = _study()
    assert _run(study, sleeper) is not None
    _add_complete(study, sleeper, lr=0.07)
    _add_complete(study, sleeper, lr=0.08)
    assert _run(study, sleeper, lr=0.09) is None


def test_the_top_quartile_counts_the_pruned_trials() -> None:
    study = _study()
    curves = [c for t in study.trials if (c := _curve(t, "seed")) is not None]
    pruner = SafePruner()
    assert [c.number for c in pruner.reference(curves)] == [0, 1]  # 2 of 8
    assert [c.number for c in pruner.reference(curves, n_pruned=8)] == [0, 1, 2, 3]  # 4 of 16
    assert pruner.reference(curves[:4]) == []  # before 5 completed trials


def test_the_pruner_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        SafePruner(n_startup_trials=1, min_reference=2)
    with pytest.raises(ValueError):
        SafePruner(warmup_fraction=0.0)


# ---------------------------------------------------------------------------------------------
# A pruned trial in the tree


def test_a_pruned_trial_is_a_node_with_its_last_report_and_can_be_a_parent(tiny_config: Any
                                                                          ) -> None:
    from metab_opt.sampler import UCBMutationSampler, suggest_params
    from metab_opt.trial_record import read_nodes

    cfg = tiny_config({"search.survey": 0})
    study = optuna.create_study(direction="maximize",
                                sampler=UCBMutationSampler.from_config(cfg, seed=0))
    root = study.ask()
    suggest_params(root, cfg.search)
    root.report(-40.0, 100)
    root.report(0.3, 200)
    study.tell(root, state=TrialState.PRUNED)
    child = study.ask()
    suggest_params(child, cfg.search)
    (node,) = read_nodes(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)),
                         cfg.base_params(), cfg.search.names, cfg.search.names)
    assert node.state == TrialState.PRUNED
    assert node.value == 0.3 and node.can_be_parent and not node.failed
    assert child.user_attrs["parent_id"] == root.number  # a failed root would give -1


# ---------------------------------------------------------------------------------------------
# Replay


def _finished_study(storage: Any = None, name: str = "s") -> optuna.Study:
    """A study run without a pruner: history, a hopeless run, a late bloomer, a sleeper."""
    study = optuna.create_study(direction="maximize", storage=storage, study_name=name)
    _history(study)
    _add_complete(study, hopeless, lr=0.05)  # trial 8
    _add_complete(study, late_bloomer, lr=0.06)  # trial 9: the best at the end
    _add_complete(study, mediocre(-5.0), lr=0.07)  # trial 10
    return study


def test_replay_reports_what_the_pruner_would_have_done() -> None:
    report = replay(_finished_study())
    # Trials 0-4 had fewer than 5 completed trials before them; of the rest, the late bloomer
    # (9) runs on and every run that ends far below the top quartile is stopped.
    assert [(r.number, r.pruned_at) for r in report.pruned] == [
        (5, 6500), (6, 5500), (7, 9000), (8, 5500), (10, 8000)]
    assert report.lost == []
    late = next(r for r in report.rows if r.number == 9)
    assert late.pruned_at is None and late.top_quartile and late.incumbent
    assert [r.number for r in report.rows if r.top_quartile] == [0, 1, 9]
    saved = 3500 + 4500 + 1000 + 4500 + 2000
    assert report.steps_saved == saved and report.steps_full == 11 * TOTAL
    assert report.saving == pytest.approx(saved / (11 * TOTAL))
    text = "\n".join(report.lines())
    assert "would prune trial 8 at step 5500 of 10000 (R2 then -38.9, in the study -38.0000)" \
        in text
    assert "safe: no trial it would prune" in text
    assert f"saving: {saved} of {11 * TOTAL} training steps (14.1%) against no pruning" in text


def test_replay_history_is_what_finished_before() -> None:
    study = optuna.create_study(direction="maximize")
    for i in range(4):
        _add_complete(study, hopeless, lr=1e-3 * (i + 1))
    _history(study)
    pruned = [r.number for r in replay(study).pruned]
    # The first 5 had fewer than 5 completed trials before them: none is pruned, however bad;
    # the same hopeless curve later is.
    assert not {0, 1, 2, 3, 4} & set(pruned) and 10 in pruned


def test_replay_flags_a_top_trial_it_would_have_lost() -> None:
    study = _finished_study()
    _add_complete(study, sleeper, lr=0.09)  # trial 11: ends at the top
    report = replay(study)
    lost = [r.number for r in report.lost]
    assert lost == [11]
    assert "UNSAFE: it would have pruned trial 11" in "\n".join(report.lines())


def test_replay_counts_a_trial_pruned_in_the_study() -> None:
    study = optuna.create_study(direction="maximize")
    _history(study)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.PRUNED, params={"lr": 0.09, "seed": 0}, distributions=DISTS,
        intermediate_values={s: v for s, v in _reports(hopeless).items() if s <= 7000},
        user_attrs={PLANNED_STEPS: TOTAL}))
    row = replay(study).rows[-1]
    # Against no pruning: it would have run its 10000 planned steps; the replay stops it at
    # 5500 (the study's own pruner, at 7000).
    assert (row.state, row.ran, row.full, row.pruned_at, row.saved) == (
        "pruned", 7000, TOTAL, 5500, 4500)


# ---------------------------------------------------------------------------------------------
# The command line and the config


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_prune_check_prints_the_replay(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _finished_study(url, "demo")
    rc, out, err = _cli(capsys, "prune-check", "demo", "--storage", url)
    assert rc == 0, err
    assert "prune-check 'demo'" in out and "would prune trial 8 at step 5500" in out
    assert "saving: 15500 of 110000 training steps (14.1%)" in out


def test_prune_check_exit_1_when_it_would_lose_a_top_trial(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "demo").mkdir()
    study = _finished_study(f"sqlite:///{tmp_path / 'demo' / 'study.db'}", "demo")
    _add_complete(study, sleeper, lr=0.09)
    rc, out, _ = _cli(capsys, "prune-check", "demo", "--root", str(tmp_path))
    assert rc == 1 and "UNSAFE" in out


@pytest.mark.parametrize("argv,needle", [
    (("prune-check", "nothing"), "no study database"),
    (("prune-check", "other", "--storage", "{url}"), "no study 'other'"),
    (("prune-check", "demo", "--storage", "{url}", "--bogus"), "unrecognized arguments"),
])
def test_prune_check_bad_input_is_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: Sequence[str],
        needle: str) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=url, study_name="demo")
    argv = [a.format(url=url) for a in argv]
    rc, out, err = _cli(capsys, *argv, "--root", str(tmp_path))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_search_pruner_is_the_default(tmp_path: Path) -> None:
    assert PRUNERS == ("none", "median", "safe")
    for name in ("rank50", "rank50_proxy", "bench"):
        assert load_config(ROOT / "configs" / f"{name}.yaml").search.pruner == "safe", name
    assert load_config(ROOT / "configs" / "tiny.yaml").search.pruner == "none"  # absent: none
    tiny = load_config(ROOT / "configs" / "tiny.yaml", overrides={"search.pruner": "safe"})
    assert tiny.search.pruner == "safe"
    with pytest.raises(ConfigError, match=r"search\.pruner: expected one of none, median, safe"):
        load_config(ROOT / "configs" / "tiny.yaml", overrides={"search.pruner": "fast"})
    # `metab-opt study` without --pruner takes the config's.
    assert _build_parser().parse_args(["study"]).pruner is None
    assert _build_parser().parse_args(["study", "--pruner", "none"]).pruner == "none"
    assert isinstance(make_pruner("safe", tiny), SafePruner)
    assert make_pruner("safe", tiny).seed_param == "seed"
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError):
        make_pruner("fast")


# ---------------------------------------------------------------------------------------------
# One real study


def test_a_real_study_prunes_as_its_replay_says(tmp_path: Path, tiny_config: Any,
                                                tiny_data_root: Path) -> None:
    """A short tiny study with the config's pruner (safe): every trial records its planned
    steps; a run that barely learns (every learning rate at its lowest), after 6 trials, is
    stopped past half of its training; the replay stops exactly the trials the study stopped,
    at the same steps."""
    from metab_opt.runner import run_study

    cfg = tiny_config({"search.pruner": "safe"})
    kwargs: dict[str, Any] = dict(root=tmp_path, progress=False, max_steps=100,
                                  data_root=tiny_data_root, plots=False)
    study = run_study(cfg, n_trials=6, **kwargs)
    assert isinstance(study.pruner, SafePruner)
    study.enqueue_trial({**cfg.base_params(), "lr_k": 1e-4, "lr_node": 1e-4, "lr_sub": 1e-4})
    study = run_study(cfg, n_trials=1, **kwargs)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 7
    assert all(t.user_attrs.get(PLANNED_STEPS) == 100 for t in trials)
    slow = trials[-1]
    assert slow.state == TrialState.PRUNED and slow.last_step == 55, slow.intermediate_values
    pruned = {t.number: t.last_step for t in trials if t.state == TrialState.PRUNED}
    report = replay(study)
    assert {r.number: r.pruned_at for r in report.pruned} == pruned
    assert report.lost == []
