"""Priors: earlier studies shape the survey, the ranking and the density move, weighted by how
well they order the new study's own trials; a misleading one fades."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import BaseDistribution
from optuna.trial import create_trial

from metab_opt.ucbtree import PriorSource, SourceTrial, UCBSampler
from metab_opt.ucbtree import _prior as prior_mod
from metab_opt.ucbtree._knob import Knob

from .test_model import BASE, KNOBS, ROLES

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTRIBUTIONS: dict[str, BaseDistribution] = {k.name: k.distribution() for k in KNOBS}


def truth(p: dict[str, Any]) -> float:
    """Best with ``on``, ``norm`` 10 and ``lr`` 4e-3; the threshold and epochs barely count."""
    v = -0.5 * (math.log10(p["lr"]) - math.log10(4e-3)) ** 2
    v -= 0.3 * (math.log10(max(p["norm"], 0.1)) - 1.0) ** 2
    return v + (1.0 if p["on"] else 0.0) - 0.01 * abs(p["threshold"] + 2.0)


def source(sign: float = 1.0, n: int = 60, name: str = "earlier", seed: int = 0,
           drop: tuple[str, ...] = ()) -> PriorSource:
    """``n`` trials drawn at random over the knobs, valued by ``sign`` × :func:`truth` (a
    reversed prior with sign -1), without the knobs in ``drop``."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(n):
        p: dict[str, Any] = {"on": bool(rng.integers(2)),
                             "norm": float(rng.choice([0.0, 1.0, 3.16, 10.0, 31.6, 100.0])),
                             "lr": float(10 ** rng.uniform(-4, -2)),
                             "threshold": float(rng.uniform(-3.0, -1.5)), "epochs": 4,
                             "seed": int(rng.integers(1000))}
        trials.append(SourceTrial(params={k: v for k, v in p.items() if k not in drop},
                                  value=sign * truth(p)))
    return PriorSource(name=name, trials=tuple(trials))


def sampler(prior: list[PriorSource] | None, seed: int = 0, survey: int = 6) -> UCBSampler:
    return UCBSampler(knobs=KNOBS, base_params=BASE, roles=ROLES, n_iter_block=12,
                      survey=survey, model=True, seed=seed, converged=0.9, failed=-2.0,
                      follow_gain=0.02, rising_gain=1e-3, prior=prior)


def objective(trial: optuna.Trial) -> float:
    p = {"on": trial.suggest_categorical("on", [False, True]),
         "norm": trial.suggest_float("norm", 0.0, 100.0),
         "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
         "threshold": trial.suggest_float("threshold", -3.0, -1.5),
         "epochs": trial.suggest_int("epochs", 1, 8, log=True),
         "seed": trial.suggest_int("seed", 0, 2**31 - 1)}
    return truth(p)


def run(prior: list[PriorSource] | None, seed: int = 0, n: int = 16) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler(prior, seed))
    study.optimize(objective, n_trials=n)
    return study


def finished(values: list[tuple[dict[str, Any], float]]) -> list[optuna.trial.FrozenTrial]:
    return [create_trial(params=dict(BASE, **p), distributions=DISTRIBUTIONS, value=v)
            for p, v in values]


# -- weights -----------------------------------------------------------------------------------


def fitted(*sources: PriorSource) -> prior_mod.FittedPrior:
    return prior_mod.FittedPrior.fit(sources, KNOBS, BASE, exclude=("seed", "epochs"), seed=3)


def test_weights_start_even_and_follow_the_ranking() -> None:
    good, bad = fitted(source(1.0)), fitted(source(-1.0))
    start = good.weights([], None, 0)
    assert start.sources == (0.5,) and start.study == 0.5 and start.pairs == 0
    # Six of this study's trials, in the true order: the good source orders them right.
    rng = np.random.default_rng(9)
    points = []
    for _ in range(6):
        p = dict(BASE, on=bool(rng.integers(2)), lr=float(10 ** rng.uniform(-4, -2)),
                 norm=float(rng.choice([0.0, 10.0, 100.0])))
        points.append((p, truth(p)))
    assert good.weights(points, None, 7).total > 0.9
    assert bad.weights(points, None, 7).total < 0.05  # a reversed prior fades at once


def test_failed_trials_count_as_worst_without_a_warning() -> None:
    good = fitted(source(1.0))
    rng = np.random.default_rng(4)
    points: list[tuple[dict[str, Any], float | None]] = []
    for i in range(6):
        p = dict(BASE, lr=float(10 ** rng.uniform(-4, -2)))
        points.append((p, None if i < 2 else truth(p)))  # two failed: no order between them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = good.weights(points, None, 7)
    assert 0.0 <= w.total <= 1.0 and w.pairs == 6 * 5 - 2  # every ordered pair but the tie


def test_a_source_that_shares_no_knob_is_refused() -> None:
    alien = PriorSource(name="alien", trials=(SourceTrial({"width": 3, "seed": 1}, 0.5),))
    with pytest.raises(ValueError, match="prior 'alien' shares no knob with the study"):
        sampler([alien])
    only_cost = PriorSource(name="cost", trials=(SourceTrial({"epochs": 2}, 0.5),))
    with pytest.raises(ValueError, match="shares no knob"):  # the prior never moves cost knobs
        sampler([only_cost])


def test_a_source_missing_a_knob_is_used_on_the_knobs_it_shares() -> None:
    f = fitted(source(drop=("threshold",)))
    assert [k.name for k in f.fitted[0].knobs] == ["on", "norm", "lr"]
    # Out-of-range values count as the nearest lattice value.
    wide = PriorSource(name="wide", trials=tuple(
        SourceTrial({"lr": lr, "on": True}, float(i)) for i, lr in enumerate((1e-6, 1e-3, 1.0))))
    assert fitted(wide).fitted[0].model is None  # three points: too few for a model, no error


def test_guided_slots_follow_the_weight() -> None:
    assert [prior_mod.guided_slot(i, 0.5) for i in range(6)] == [True, False] * 3
    assert all(prior_mod.guided_slot(i, 1.0) for i in range(6))
    assert not any(prior_mod.guided_slot(i, 0.0) for i in range(6))
    assert sum(prior_mod.guided_slot(i, 0.25) for i in range(8)) == 2


# -- the sampler ---------------------------------------------------------------------------------


def test_without_a_prior_nothing_changes() -> None:
    a, b = run(None, seed=4), run([], seed=4)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.user_attrs["parent_rule"] for t in a.trials] == \
        [t.user_attrs["parent_rule"] for t in b.trials]


def test_the_first_survey_draw_goes_where_the_prior_points() -> None:
    study = run([source(1.0)], seed=1, n=2)
    first = study.trials[1]
    assert first.user_attrs["strategy"] == "survey"
    assert "a slot the prior guides" in first.user_attrs["parent_rule"]
    assert "the prior of 60 trials from 1 study (weight 0.50)" in first.user_attrs["parent_rule"]
    # The prior's good region: on, lr near 4e-3, norm near 10 (the truth's optimum).
    assert first.params["on"] is True
    assert 1e-3 <= first.params["lr"] <= 1e-2
    assert 1.0 <= first.params["norm"] <= 100.0
    assert first.value > max(t.value for t in run(None, seed=1, n=2).trials)


def test_seed_and_cost_knobs_stay_at_the_root_in_guided_draws() -> None:
    study = run([source(1.0)], seed=2, n=7)
    for t in study.trials[1:7]:
        assert t.params["seed"] == BASE["seed"] and t.params["epochs"] == BASE["epochs"]


def test_a_good_prior_helps_and_a_reversed_one_fades() -> None:
    good = [run([source(1.0)], seed=s).best_value for s in range(3)]
    none = [run(None, seed=s).best_value for s in range(3)]
    study = run([source(-1.0)], seed=0)
    weights = study.sampler.prior_weights(study)
    assert weights is not None and weights.total < 0.1
    assert np.median(good) >= np.median(none)
    # The ranked moves name the prior and its weight in their Parent rule line.
    ranked = [t.user_attrs["parent_rule"] for t in study.trials
              if "the move model of" in t.user_attrs["parent_rule"]]
    assert ranked and all("and the prior of 60 trials from 1 study (weight" in r for r in ranked)


def test_workers_agree_the_decision_is_a_function_of_the_trials() -> None:
    values = [({"on": i % 2 == 0, "lr": 1e-4 * 2 ** (i % 6), "norm": float(i % 3) * 10},
               -float(i % 5)) for i in range(9)]
    history = finished(values)
    one, two = sampler([source(1.0)], seed=8), sampler([source(1.0)], seed=8)
    study = optuna.create_study(direction="maximize", sampler=one)
    for t in history:
        study.add_trial(t)
    assert one.next_parent(study) == two.next_parent(study)
    w1, w2 = one.prior_weights(study), two.prior_weights(study)
    assert w1 == w2 and w1 is not None and w1.pairs > 0


def test_knob_summary_reads_the_best_quarter() -> None:
    lines = prior_mod.knob_summary(fitted(source(1.0, n=80)), 0)
    on = next(line for line in lines if line.startswith("on:"))
    assert on.startswith("on: best quarter True ×")  # the good runs all have it on
    assert any(line.startswith("lr: best quarter") for line in lines)


def test_density_mix_moves_mass_toward_the_sources_good_values() -> None:
    f = fitted(source(1.0, n=80))
    weights = prior_mod.Weights((1.0,), 0.0, 10)
    knob: Knob = KNOBS[0]  # on: False, True
    flat = np.array([0.5, 0.5])
    good, bad = prior_mod.mix_density(f, weights, knob, BASE["on"],
                                      lambda size, idx: np.bincount(idx, minlength=size) + 1.0,
                                      flat, flat)
    assert good[1] > 0.8 and bad[0] > bad[1]


def test_the_report_names_each_source_its_weight_and_the_knobs() -> None:
    f = fitted(source(1.0, n=80, name="rank50_proxy"))
    lines = prior_mod.report(f, prior_mod.Weights((0.7,), 0.3, 24))
    assert lines[0] == ("- the prior of 80 trials from 1 study (weight 0.70); learned from 12 "
                        "pairs of this study's finished trials")
    assert lines[1].startswith("- rank50_proxy (regime unknown, 80 trials): weight 0.70")
    assert any(line.startswith("  - lr: best quarter") for line in lines)
    assert lines[-1] == "- this study's own move model: weight 0.30"
