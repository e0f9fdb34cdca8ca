"""The density move: a stuck walk steps toward the values the best quarter of the trials share."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState, create_trial

from metab_opt.ucbtree import RECORD_KEY, UCBSampler
from metab_opt.ucbtree import _density as density
from metab_opt.ucbtree._rules import Planner

from .test_model import BASE, KNOBS, ROLES, run

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTRIBUTIONS: dict[str, BaseDistribution] = {k.name: k.distribution() for k in KNOBS}


def sampler(use_model: bool = True) -> UCBSampler:
    return UCBSampler(knobs=KNOBS, base_params=BASE, roles=ROLES, n_iter_block=12, survey=0,
                      model=use_model, seed=5, converged=0.9, failed=-2.0, follow_gain=0.02,
                      rising_gain=1e-3)


def trials(n: int) -> list[optuna.trial.FrozenTrial]:
    """``n`` finished trials: the best quarter has ``on`` and ``norm`` 100; the rest neither,
    at lr and threshold values spread over their lattices."""
    lrs = (1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 3.2e-3, 6.4e-3)
    out = []
    for i in range(n):
        good = i % 4 == 0
        p: dict[str, Any] = dict(BASE, lr=lrs[i % len(lrs)], threshold=-3.0 + 0.25 * (i % 7),
                                 on=good, norm=100.0 if good else (0.0, 1.0)[i % 2],
                                 seed=1000 + i)
        value = 1.0 + 0.01 * i if good else -1.0 - 0.01 * i
        t = create_trial(params=p, distributions=DISTRIBUTIONS, value=value,
                         state=TrialState.COMPLETE)
        t.number = i
        out.append(t)
    return out


def planner(n: int, use_model: bool = True) -> Planner:
    return Planner(sampler(use_model)._settings, trials(n), n, sign=1.0)


def test_no_density_move_below_the_minimum() -> None:
    assert density.density_move(planner(density.MIN_POINTS - 1), "explore") is None
    assert density.density_move(planner(density.MIN_POINTS), "explore") is not None


def test_the_move_goes_toward_the_best_quarter_and_keeps_the_cost_knobs() -> None:
    p = planner(12)
    found = density.density_move(p, "explore")
    assert found is not None
    parent, params, changes, rule = found
    top = p.parents()[0]
    assert parent == top.number
    assert params["on"] is True and params["norm"] >= 10.0
    # The seed and the duration knob (epochs) stay at the parent's values.
    assert params["seed"] == top.params["seed"] and params["epochs"] == top.params["epochs"]
    assert {name for name, _, _ in changes} <= {"on", "norm", "lr", "threshold"}
    for name, old, new in changes:
        assert old == top.params[name] and new == params[name] and old != new
    assert p.is_new(params)
    assert rule.startswith(top.describe("explore"))
    assert "density move" in rule and "best 3 of 12 finished runs" in rule


def test_the_density_move_is_reproducible() -> None:
    a, b = density.density_move(planner(12), "explore"), density.density_move(planner(12),
                                                                               "explore")
    assert a == b


def test_only_under_the_model() -> None:
    assert planner(12, use_model=False).density_step("explore") is None
    assert planner(12).density_step("explore") is not None


@pytest.mark.parametrize("seed", [0, 1])
def test_in_a_study_the_explore_rule_takes_it_and_says_so(seed: int) -> None:
    study = run(seed, True)
    moved = [t for t in study.trials if "density move" in t.user_attrs["parent_rule"]]
    assert moved, [t.user_attrs["parent_rule"] for t in study.trials]
    for t in moved:
        assert t.system_attrs[RECORD_KEY]["strategy"] == "explore"
    t = moved[0]
    s = study.sampler
    assert isinstance(s, UCBSampler)
    again = Planner(s._settings, study.trials[: t.number], t.number, sign=1.0).decide(None)
    assert again.params == t.system_attrs[RECORD_KEY]["params"]
    assert again.parent_rule == t.user_attrs["parent_rule"]
