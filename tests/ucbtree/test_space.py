"""UCBSampler built from plain Optuna distributions, on objectives over its own space."""

from __future__ import annotations

import pickle
from typing import Any

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, Trial

from metab_opt.ucbtree import (
    RECORD_KEY,
    USER_ATTRS,
    Knob,
    UCBSampler,
    default_value,
    next_parent,
    suggest_knobs,
    ucb_scores,
)

SPACE: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "width": IntDistribution(8, 256, log=True),
    "dropout": FloatDistribution(0.0, 0.5, step=0.05),
    "layers": IntDistribution(1, 6),
    "momentum": FloatDistribution(0.5, 0.99),
    "act": CategoricalDistribution(["relu", "tanh", "gelu"]),
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def suggest(trial: Trial) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, d in SPACE.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = trial.suggest_categorical(name, list(d.choices))
        elif isinstance(d, IntDistribution):
            out[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        else:
            assert isinstance(d, FloatDistribution)
            out[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return out


def objective(trial: Trial) -> float:
    p = suggest(trial)
    return (abs(p["dropout"] - 0.1) + abs(p["layers"] - 3) / 3 + abs(p["momentum"] - 0.9)
            + (0.0 if p["act"] == "gelu" else 0.2) + abs(p["width"] - 64) / 64
            + 1e3 * abs(p["lr"] - 1e-3))


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_proposals_are_the_record_on_the_lattice_and_in_the_space(direction: str) -> None:
    sampler = UCBSampler(search_space=SPACE, seed=0)
    study = optuna.create_study(direction=direction, sampler=sampler)
    study.optimize(objective, n_trials=30)
    knobs = {k.name: k for k in sampler.knobs}
    assert study.trials[0].params == {n: default_value(d) for n, d in SPACE.items()}
    assert len({tuple(t.params.values()) for t in study.trials}) == 30
    for t in study.trials:
        assert t.params == t.system_attrs[RECORD_KEY]["params"]
        assert set(USER_ATTRS) <= set(t.user_attrs)
        for name, value in t.params.items():
            dist = SPACE[name]
            assert t.distributions[name] == dist
            assert dist._contains(dist.to_internal_repr(value))
            assert value in knobs[name].grid(sampler.base_params[name])
            assert type(value) is type(default_value(dist))
    if direction == "minimize":  # the tree improves on the root
        assert study.best_value < study.trials[0].value


class Spy(RandomSampler):
    def __init__(self) -> None:
        super().__init__(seed=1)
        self.asked: list[str] = []
        self.events: list[str] = []

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        self.asked.append(param_name)
        return super().sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.events.append("before")

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: Any,
                    values: Any) -> None:
        self.events.append("after")


def test_params_outside_the_space_go_to_the_independent_sampler() -> None:
    spy = Spy()
    sampler = UCBSampler(search_space=SPACE, seed=0, independent_sampler=spy)
    study = optuna.create_study(sampler=sampler)

    def obj(trial: Trial) -> float:
        suggest(trial)
        trial.suggest_float("extra", 0.0, 1.0)
        trial.suggest_float("momentum_2", 0.0, 1.0)
        return objective(trial)

    study.optimize(obj, n_trials=3)
    assert spy.asked == ["extra", "momentum_2"] * 3
    assert spy.events == ["before", "after"] * 3


def test_a_known_name_with_another_range_goes_to_the_independent_sampler() -> None:
    spy = Spy()
    study = optuna.create_study(sampler=UCBSampler(search_space=SPACE, seed=0,
                                                   independent_sampler=spy))
    trial = study.ask()
    value = trial.suggest_float("momentum", 0.0, 0.1)  # not the knob's distribution
    assert 0.0 <= value <= 0.1 and spy.asked == ["momentum"]


def test_reseed_pickle_and_keyword_only() -> None:
    def run(sampler: BaseSampler) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=sampler)
        study.optimize(objective, n_trials=15)
        return [t.params for t in study.trials]

    a = UCBSampler(search_space=SPACE, seed=4)
    b = UCBSampler(search_space=SPACE, seed=4)
    b.reseed_rng()
    first = run(a)
    assert run(b) == first
    assert run(pickle.loads(pickle.dumps(a))) == first
    assert run(UCBSampler(search_space=SPACE, seed=5)) != first
    with pytest.raises(TypeError):
        UCBSampler(SPACE)  # type: ignore[misc]


def test_two_threads_share_the_tree() -> None:
    study = optuna.create_study(sampler=UCBSampler(search_space=SPACE, seed=0))
    study.optimize(objective, n_trials=12, n_jobs=2)
    pairs = {(t.user_attrs["parent_id"], t.user_attrs["mutation"]) for t in study.trials}
    assert len(pairs) == 12


def test_knobs_instead_of_distributions() -> None:
    knobs = (Knob("lr", low=1e-4, high=1e-1, scale="log", step=2.0),
             Knob("act", scale="categorical", choices=("relu", "gelu")))
    sampler = UCBSampler(knobs=knobs, base_params={"lr": 1e-3, "act": "relu"}, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: len(suggest_knobs(t, knobs)["act"]) * t.params["lr"], n_trials=6)
    assert study.trials[0].params == {"lr": 1e-3, "act": "relu"}
    assert {t.params["lr"] for t in study.trials} <= set(knobs[0].grid(1e-3))
    # Without base params: the middle of each range, a categorical's first choice.
    assert UCBSampler(knobs=knobs).base_params == {"lr": pytest.approx(10 ** -2.5),
                                                   "act": "relu"}


def test_views_of_the_tree() -> None:
    study = optuna.create_study(sampler=UCBSampler(search_space=SPACE, seed=0, ucb_c=0.0))
    study.optimize(objective, n_trials=5)
    rows = ucb_scores(study)
    assert [set(r) for r in rows] == [{"node", "parent", "ucb", "visits", "value",
                                       "mutation"}] * len(rows)
    assert [r["ucb"] for r in rows] == sorted(-t.value for t in study.trials)[::-1]
    parent = next_parent(study)
    study.optimize(objective, n_trials=1)
    assert study.trials[-1].user_attrs["parent_id"] == parent
    with pytest.raises(ValueError, match=r"ucb_scores: the study's sampler must be a "
                                         r"UCBSampler, got RandomSampler"):
        ucb_scores(optuna.create_study(sampler=RandomSampler()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"give either search_space \(Optuna distributions\) or knobs"),
        ({"search_space": SPACE, "knobs": (Knob("a", low=1, high=2, step=1.5),)},
         r"give either search_space"),
        ({"search_space": {}}, r"search_space: expected a non-empty mapping"),
        ({"search_space": {"a": (1, 2)}}, r"search_space: expected a non-empty mapping"),
        ({"search_space": SPACE, "base_params": {"lr": 1.0}}, r"base_params: missing a value"),
        ({"search_space": SPACE, "converged": "high"},
         r"converged: expected a finite number, got 'high'"),
        ({"search_space": SPACE, "follow_gain": -1}, r"follow_gain: expected a finite number "
                                                      r">= 0, got -1"),
        ({"search_space": SPACE, "degenerate": 3}, r"degenerate: expected None or a callable"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UCBSampler(**kwargs)
