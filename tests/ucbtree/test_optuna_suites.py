"""Optuna's own sampler test suites on the UCB tree sampler.

Two samplers: metab_opt's (``UCBMutationSampler.from_config("configs/tiny.yaml")``: the
problem's knobs, roles and R² settings) and a bare one built from plain Optuna distributions
with no config file. The suites create their studies with Optuna's default direction
(minimize); the ``Maximize`` classes run them again with every study the suites create
maximizing, so both directions go through every case.

The suites' objectives suggest their own params (``x``, ``y``...), which are outside both
samplers' spaces: they go to the independent sampler, while ``before_trial`` still decides
every trial over the sampler's own knobs and writes its record. tests/ucbtree/test_space.py
runs objectives over the sampler's own space.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)
from optuna.trial import Trial

from metab_opt import UCBMutationSampler
from metab_opt.ucbtree import RECORD_KEY, UCBSampler

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"

BARE_SPACE = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "width": IntDistribution(8, 256, log=True),
    "dropout": FloatDistribution(0.0, 0.5, step=0.05),
    "layers": IntDistribution(1, 6),
    "momentum": FloatDistribution(0.5, 0.99),
    "act": CategoricalDistribution(["relu", "tanh", "gelu"]),
}


def config_sampler() -> BaseSampler:
    return UCBMutationSampler.from_config(TINY, seed=0)


def bare_sampler() -> BaseSampler:
    return UCBSampler(search_space=BARE_SPACE, seed=0)


class _Suites(BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase):
    """Every case of the three suites; subclasses give the ``sampler`` factory."""


@pytest.fixture
def maximize_by_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every study created without a direction maximizes (the suites name none)."""
    real = optuna.study.create_study

    def create_study(*args: Any, **kwargs: Any) -> optuna.Study:
        if kwargs.get("direction") is None and kwargs.get("directions") is None:
            kwargs["direction"] = "maximize"
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna, "create_study", create_study)
    monkeypatch.setattr(optuna.study, "create_study", create_study)
    yield


class _MaximizeSuites(_Suites):
    @pytest.fixture(autouse=True)
    def _maximize(self, maximize_by_default: None) -> None:
        assert optuna.create_study().direction == optuna.study.StudyDirection.MAXIMIZE

    def test_nan_objective_value(self, sampler: Callable[[], BaseSampler]) -> None:
        # The suite's case asserts the minimum; this is its mirror for a maximized study.
        study = optuna.create_study(sampler=sampler())

        def objective(trial: Trial, base_value: float) -> float:
            return trial.suggest_float("x", 0.1, 0.2) + base_value

        for i in range(2, 11):
            study.optimize(lambda t, i=i: objective(t, i), n_trials=1, catch=())
        assert int(study.best_value) == 10
        study.optimize(lambda t: objective(t, float("nan")), n_trials=1, catch=())
        assert int(study.best_value) == 10
        study.optimize(lambda t: objective(t, 11), n_trials=1, catch=())
        assert int(study.best_value) == 11


class TestConfigSampler(_Suites):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return config_sampler


class TestConfigSamplerMaximize(_MaximizeSuites):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return config_sampler


class TestBareSampler(_Suites):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return bare_sampler


class TestBareSamplerMaximize(_MaximizeSuites):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return bare_sampler


@pytest.mark.parametrize("factory", [config_sampler, bare_sampler])
def test_the_suites_studies_are_still_decided_by_the_tree(
        factory: Callable[[], BaseSampler]) -> None:
    """While the suites' params go to the independent sampler, every trial still gets a
    decision over the sampler's own knobs."""
    study = optuna.create_study(sampler=factory())
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=8)
    records = [t.system_attrs[RECORD_KEY] for t in study.trials]
    assert [r["strategy"] for r in records][0] == "root"
    assert len({tuple(sorted(map(str, r["params"].items()))) for r in records}) == 8
