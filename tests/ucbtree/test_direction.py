"""Either direction: a minimized study decides exactly as its maximized mirror.

Everything inside the sampler compares ``sign * value``; the thresholds are declared in the
objective's units, so the mirror of (maximize f, converged c, failed l) is (minimize -f,
converged -c, failed -l). Every strategy fires in these studies (block 1 opens with a survey).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, Trial

from metab_opt.ucbtree import (
    DOWN,
    RECORD_KEY,
    STRATEGIES,
    UP,
    Roles,
    UCBSampler,
    trial_value,
    ucb_scores,
)
from metab_opt.ucbtree.example import SEARCH_SPACE

SPACE = SEARCH_SPACE  # the package example's space: a float, ints, a stepped float, a choice
ROLES = Roles(seed="seed", duration="epochs", spread=("lr", "width"),
              degeneracy=(("dropout", UP), ("width", DOWN)))


def score(params: dict[str, Any]) -> float:
    """Higher is better: 1 at lr 3e-3, width 128, dropout 0.2, adam; falls to about -3."""
    return 1.0 - ((math.log10(params["lr"]) + 2.5) ** 2 + 0.3 * math.log2(params["width"] / 128)
                  ** 2 + 4 * (params["dropout"] - 0.2) ** 2
                  + (0.0 if params["optimizer"] == "adam" else 0.3))


def objective(sign: float) -> Callable[[Trial], float]:
    """``sign * score``, reported along a curve that is still improving for short runs, and a
    train-score user attr that makes wide, low-dropout runs look degenerate."""

    def run(trial: Trial) -> float:
        params = {name: (trial.suggest_categorical(name, list(d.choices))
                         if isinstance(d, CategoricalDistribution)
                         else trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
                         if isinstance(d, IntDistribution)
                         else trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log))
                  for name, d in SPACE.items()}
        noise = (params["seed"] * 2654435761 % 1000) / 1000 * 0.02
        value = score(params) - 1.0 / params["epochs"] + noise
        for step in range(1, params["epochs"] + 1):
            trial.report(sign * (score(params) - 1.0 / step + noise), step)
        trial.set_user_attr("overfit", params["width"] >= 64 and params["dropout"] <= 0.25)
        if params["lr"] > 0.05:
            raise RuntimeError("diverged")  # a failed trial
        return sign * value

    return run


def degenerate(sign: float) -> Callable[[FrozenTrial], bool]:
    def check(trial: FrozenTrial) -> bool:
        value = trial_value(trial)
        return bool(trial.user_attrs.get("overfit")) and value is not None and sign * value < 0.6

    return check


def study_of(sign: float, seed: int, model: bool = False) -> optuna.Study:
    sampler = UCBSampler(search_space=SPACE, roles=ROLES, seed=seed, n_iter_block=10, survey=2,
                         model=model,
                         converged=sign * 0.6, failed=sign * -1.0, failed_value=sign * -3.0,
                         degenerate=degenerate(sign), follow_gain=0.01, rising_gain=0.001)
    study = optuna.create_study(direction="maximize" if sign > 0 else "minimize",
                                sampler=sampler)
    study.optimize(objective(sign), n_trials=35, catch=(RuntimeError,))
    study.enqueue_trial({"lr": 1e-3})
    study.optimize(objective(sign), n_trials=35, catch=(RuntimeError,))
    return study


def decisions(study: optuna.Study) -> list[tuple[Any, ...]]:
    return [(t.system_attrs[RECORD_KEY]["strategy"], t.system_attrs[RECORD_KEY]["parent"],
             t.system_attrs[RECORD_KEY]["params"]) for t in study.trials]


@pytest.mark.parametrize("model", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_minimized_study_decides_as_its_maximized_mirror(seed: int, model: bool) -> None:
    # With the move model too: it ranks normal scores of sign * value, so the mirror has the
    # same ranks, the same fit and the same choices.
    up, down = study_of(1.0, seed, model), study_of(-1.0, seed, model)
    assert decisions(down) == decisions(up)
    fired = {d[0] for d in decisions(up)}
    assert fired == set(STRATEGIES), fired
    # The tables agree too: the same UCB, the values mirrored.
    rows_up, rows_down = ucb_scores(up), ucb_scores(down)
    assert [r["ucb"] for r in rows_down] == [r["ucb"] for r in rows_up]
    assert [r["value"] for r in rows_down] == [-r["value"] for r in rows_up]
