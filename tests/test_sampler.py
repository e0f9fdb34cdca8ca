"""UCBMutationSampler on synthetic objectives over the rank50 search space (no torch)."""

from __future__ import annotations

import dataclasses
import datetime
import math
import pickle
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.samplers import RandomSampler
from optuna.storages import RDBStorage
from optuna.testing.objectives import fail_objective
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial

from metab_opt.config import Knob, load_config
from metab_opt.sampler import (
    RECORD_KEY,
    STRATEGIES,
    UCBMutationSampler,
    suggest_params,
    ucb_scores,
)
from metab_opt.ucbtree import format_changes

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(ROOT / "configs" / "rank50.yaml")
SEARCH = CFG.search
BASE = CFG.base_params()
KNOBS = {k.name: k for k in SEARCH.knobs}
NO_SEED = tuple(k for k in SEARCH.knobs if k.name != "seed")
USER_KEYS = ("node_id", "parent_id", "block", "strategy", "mutation", "parent_rule")

# The synthetic optimum: R² = 1 at these values, falling quadratically in log2 distance.
OPTIMUM = {"lr_k": 2e-3, "lr_sub": 2e-4, "lr_node": 5e-4, "data_augmentation_loop": 2000}
WEIGHTS = {"lr_k": 0.08, "lr_sub": 0.05, "lr_node": 0.03, "data_augmentation_loop": 0.02}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def truth(p: Mapping[str, Any]) -> float:
    """Noise-free synthetic R²: 1 at OPTIMUM, two minor knobs cost a little."""
    r2 = 1.0 - sum(w * math.log2(p[k] / OPTIMUM[k]) ** 2 for k, w in WEIGHTS.items())
    return (r2 - 0.02 * math.log10(1.0 + p["coeff_MLP_sub_norm"])
            - 0.01 * abs(math.log10(p["c_scale"])))


def seed_noise(seed: int) -> float:
    """Training-seed noise in [-0.02, 0.02), a fixed function of the seed."""
    return (seed * 2654435761 % 1000) / 1000 * 0.04 - 0.02


def objective(trial: Trial) -> float:
    p = suggest_params(trial, SEARCH)
    return truth(p) + seed_noise(p["seed"])


def rich_objective(trial: Trial) -> float:
    """Also sets test_pearson (degenerate while lr_sub >= 5e-4) and reports a learning curve
    that is still rising at the end when data_augmentation_loop is short."""
    p = suggest_params(trial, SEARCH)
    r2 = truth(p) + seed_noise(p["seed"])
    rate = 0.35 * p["data_augmentation_loop"] / 2000
    for step in range(8):
        trial.report(r2 * (1 - math.exp(-rate * (step + 1) * 4)), step)
    trial.set_user_attr("test_pearson", min(1.0, r2 + (0.45 if p["lr_sub"] >= 5e-4 else 0.05)))
    return r2


def make_sampler(seed: int | None = 0, *, knobs: Sequence[Knob] = SEARCH.knobs,
                 n_iter_block: int = 12, ucb_c: float = 1.414) -> UCBMutationSampler:
    base = {k.name: BASE[k.name] for k in knobs}
    return UCBMutationSampler(knobs=knobs, base_params=base, n_iter_block=n_iter_block,
                              ucb_c=ucb_c, seed=seed)


def make_study(sampler: UCBMutationSampler, storage: Any = None,
               name: str | None = None) -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=sampler, storage=storage,
                               study_name=name)


def sqlite_storage(path: Path) -> RDBStorage:
    return RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}})


def params_key(params: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(repr(params[name]) for name in SEARCH.names)


def records(study: optuna.Study) -> dict[int, dict[str, Any]]:
    return {t.number: t.system_attrs[RECORD_KEY] for t in study.get_trials(deepcopy=False)}


class History:
    """Builds a study's tree by hand: finished (or running) trials with sampler records."""

    def __init__(self, sampler: UCBMutationSampler) -> None:
        self.sampler = sampler
        self.study = make_study(sampler)
        self.params: dict[int, dict[str, Any]] = {}

    def add(self, parent: int, changes: Mapping[str, Any] | None = None, *,
            value: float | None = 0.5, strategy: str = "exploit",
            state: TrialState = TrialState.COMPLETE, test_pearson: float | None = None,
            curve: Sequence[float] = (), root: int = -1) -> int:
        base = self.sampler.base_params if parent == -1 else self.params[parent]
        params = dict(base)
        params.update(changes or {})
        diff = [(k, base[k], params[k]) for k in params if params[k] != base[k]]
        record = {
            "parent": parent, "block": 1, "root": root, "strategy": strategy,
            "mutation": format_changes(diff), "changes": [list(c) for c in diff],
            "spread": None, "parent_rule": "by hand", "params": params,
            "ucb_c": self.sampler.ucb_c, "n_iter_block": self.sampler.n_iter_block,
        }
        user = {} if test_pearson is None else {"test_pearson": test_pearson}
        number = len(self.study.trials)
        if state == TrialState.RUNNING:
            tid = self.study._storage.create_new_trial(self.study._study_id)
            self.study._storage.set_trial_system_attr(tid, RECORD_KEY, record)
        else:
            self.study.add_trial(create_trial(
                state=state, value=value if state == TrialState.COMPLETE else None,
                params=params, distributions=self.sampler.search_space,
                system_attrs={RECORD_KEY: record}, user_attrs=user,
                intermediate_values=dict(enumerate(curve))))
        self.params[number] = params
        return number

    def ask(self) -> FrozenTrial:
        trial = self.study.ask()
        suggest_params(trial, SEARCH)
        return self.study._storage.get_trial(trial._trial_id)


# ---------------------------------------------------------------------------------------------
# Construction


def test_the_sampler_never_imports_torch() -> None:
    code = ("import sys, metab_opt.sampler, metab_opt.trial_record, metab_opt.ucbtree; "
            "from metab_opt import UCBMutationSampler; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_from_config_path_and_config_agree() -> None:
    a = UCBMutationSampler.from_config(ROOT / "configs" / "rank50.yaml", seed=3)
    b = UCBMutationSampler.from_config(CFG, 3)
    assert list(a.search_space) == list(SEARCH.names)
    assert a.search_space == b.search_space == {k.name: k.distribution() for k in SEARCH.knobs}
    assert a.base_params == b.base_params == BASE
    assert (a.n_iter_block, a.ucb_c) == (SEARCH.n_iter_block, SEARCH.ucb_c)
    assert a.survey == b.survey == SEARCH.survey == 8
    assert a.roles == b.roles == SEARCH.roles


def test_the_survey_is_the_configs() -> None:
    assert UCBMutationSampler.from_config(ROOT / "configs" / "tiny.yaml").survey == 2
    off = load_config(ROOT / "configs" / "rank50.yaml", overrides=["search.survey=0"])
    assert UCBMutationSampler.from_config(off).survey == 0
    assert make_sampler().survey == 0  # built without a config: no survey


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_rank50_survey_covers_the_space_at_the_roots_cost(seed: int) -> None:
    study = make_study(UCBMutationSampler.from_config(CFG, seed=seed))
    study.optimize(objective, n_trials=9)
    draws = [t.params for t in study.trials[1:]]
    assert [t.user_attrs["strategy"] for t in study.trials] == ["root"] + ["survey"] * 8
    # The knobs that set a trial's step count, and the seed, stay at the root's.
    for name in ("data_augmentation_loop", "n_epochs", "batch_size", "seed"):
        assert {p[name] for p in draws} == {BASE[name]}, name
    # Yes/no: on in half the draws. A log knob whose 0 is "off": off in one draw or two, and
    # in the tens (10, 31.6) in two to four. The learning rates reach both ends of their range.
    assert sum(p["sub_through_origin"] for p in draws) == 4
    norm = [p["coeff_MLP_sub_norm"] for p in draws]
    assert 1 <= norm.count(0.0) <= 2 and 2 <= sum(10 <= v <= 40 for v in norm) <= 4
    for name in ("lr_k", "lr_node", "lr_sub", "c_scale"):
        grid = KNOBS[name].grid(BASE[name])
        index = sorted(grid.index(p[name]) for p in draws)
        assert index[0] <= 1 and index[-1] >= len(grid) - 2, name
    assert len({params_key(p) for p in [BASE, *draws]}) == 9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"knobs": ()}, r"knobs: expected a non-empty sequence of Knob"),
        ({"knobs": "lr_k"}, r"knobs: expected a non-empty sequence of Knob .*, got 'lr_k'"),
        ({"knobs": (KNOBS["lr_k"], KNOBS["lr_k"])}, r"knobs: each knob name once, got lr_k"),
        ({"base_params": {"lr_k": 1e-3}}, r"base_params: missing a value for lr_node"),
        ({"base_params": {**BASE, "lr_x": 1}}, r"base_params: lr_x is not a knob"),
        ({"base_params": {**BASE, "lr_k": 0.5}},
         r"base_params: lr_k = 0.5 is outside the knob's range \[0.0001, 0.01\]"),
        ({"base_params": [1, 2]}, r"base_params: expected a mapping .* got \[1, 2\]"),
        ({"n_iter_block": 0}, r"n_iter_block: expected an integer >= 1, got 0"),
        ({"n_iter_block": True}, r"n_iter_block: expected an integer >= 1, got True"),
        ({"n_iter_block": 2.5}, r"n_iter_block: expected an integer >= 1, got 2.5"),
        ({"ucb_c": -1.0}, r"ucb_c: expected a finite number >= 0, got -1.0"),
        ({"ucb_c": float("nan")}, r"ucb_c: expected a finite number >= 0, got nan"),
        ({"ucb_c": "1"}, r"ucb_c: expected a finite number >= 0, got '1'"),
        ({"seed": -1}, r"seed: expected None or an integer in \[0, 2\*\*32\), got -1"),
        ({"seed": 1.5}, r"seed: expected None or an integer in \[0, 2\*\*32\), got 1.5"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"knobs": SEARCH.knobs, "base_params": BASE}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        UCBMutationSampler(**args)


def test_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        UCBMutationSampler(SEARCH.knobs, BASE)  # type: ignore[misc]


def test_from_config_rejects_other_types() -> None:
    with pytest.raises(TypeError, match=r"path_or_config: expected a config file path or a "
                                        r"Config, got int 42"):
        UCBMutationSampler.from_config(42)  # type: ignore[arg-type]


def test_study_must_have_one_objective() -> None:
    study = optuna.create_study(sampler=make_sampler(), directions=["maximize", "maximize"])
    with pytest.raises(ValueError, match=r"must have one objective .* got 2"):
        study.ask()


def test_a_minimized_study_is_accepted() -> None:
    # Changed with issue 14: the sampler takes either direction (it compares sign * value),
    # where it used to refuse a minimized study. tests/ucbtree/test_direction.py checks that a
    # minimized study decides as its maximized mirror.
    study = optuna.create_study(direction="minimize", sampler=make_sampler())
    study.optimize(objective, n_trials=6)
    assert [t.user_attrs["strategy"] for t in study.trials][:4] == [
        "root", "initial-spread", "initial-spread", "initial-spread"]


# ---------------------------------------------------------------------------------------------
# suggest_params and the trial record


@pytest.mark.parametrize("sampler_factory", [lambda: RandomSampler(seed=0), make_sampler])
def test_suggest_params_suggests_every_knob_in_its_distribution(
        sampler_factory: Callable[[], optuna.samplers.BaseSampler]) -> None:
    study = optuna.create_study(direction="maximize", sampler=sampler_factory())
    for _ in range(5):
        trial = study.ask()
        params = suggest_params(trial, SEARCH)
        assert list(params) == list(SEARCH.names)
        frozen = study._storage.get_trial(trial._trial_id)
        for name, value in params.items():
            dist = KNOBS[name].distribution()
            assert frozen.distributions[name] == dist
            assert dist._contains(dist.to_internal_repr(value))
        study.tell(trial, 0.5)


def test_every_trial_carries_the_record_before_it_finishes() -> None:
    seen: list[dict[str, Any]] = []

    def obj(trial: Trial) -> float:
        seen.append(trial.user_attrs)  # what the objective sees while it runs
        return objective(trial)

    study = make_study(make_sampler())
    study.optimize(obj, n_trials=15)
    for trial, during in zip(study.trials, seen):
        user = trial.user_attrs
        assert {k: user[k] for k in USER_KEYS} == {k: during[k] for k in USER_KEYS}
        assert user["node_id"] == trial.number
        assert isinstance(user["parent_id"], int) and -1 <= user["parent_id"] < trial.number
        assert user["block"] == trial.number // SEARCH.n_iter_block + 1
        assert user["strategy"] in STRATEGIES
        assert isinstance(user["mutation"], str) and user["mutation"]
        assert isinstance(user["parent_rule"], str) and user["parent_rule"]
        record = trial.system_attrs[RECORD_KEY]
        assert record["parent"] == user["parent_id"]
        assert record["params"] == trial.params
        assert record["mutation"] == format_changes([tuple(c) for c in record["changes"]])


# ---------------------------------------------------------------------------------------------
# PUCT


def hand_tree(c: float) -> History:
    """root 0 (R² 0.5) -> 1 (0.6) -> 3 (0.7) -> 4 (running); 0 -> 2 (0.4) -> 5 (failed)."""
    h = History(make_sampler(knobs=NO_SEED, ucb_c=c))
    h.add(-1, value=0.5, strategy="root")
    h.add(0, {"lr_k": 1e-2}, value=0.6, root=0)
    h.add(0, {"lr_node": 2e-3}, value=0.4, root=0)
    h.add(1, {"lr_sub": 1e-3}, value=0.7, root=0)
    h.add(3, {"n_epochs": 2}, state=TrialState.RUNNING, root=0)
    h.add(2, {"n_epochs": 2}, state=TrialState.FAIL, root=0)
    return h


# N = 6 nodes (the running and the failed one included); V = 1 + descendants in the block:
# V(0) = 6, V(1) = 3, V(2) = 2, V(3) = 2.  sqrt(6) = 2.449490.
HAND_C1 = [  # c = 1: R2 + sqrt(6) / (1 + V)
    {"node": 3, "parent": 1, "ucb": 0.7 + 2.449490 / 3, "visits": 2, "r2": 0.7},  # 1.516497
    {"node": 2, "parent": 0, "ucb": 0.4 + 2.449490 / 3, "visits": 2, "r2": 0.4},  # 1.216497
    {"node": 1, "parent": 0, "ucb": 0.6 + 2.449490 / 4, "visits": 3, "r2": 0.6},  # 1.212372
    {"node": 0, "parent": None, "ucb": 0.5 + 2.449490 / 7, "visits": 6, "r2": 0.5},  # 0.849927
]
HAND_C0 = [  # c = 0: R² alone
    {"node": 3, "parent": 1, "ucb": 0.7, "visits": 2, "r2": 0.7},
    {"node": 1, "parent": 0, "ucb": 0.6, "visits": 3, "r2": 0.6},
    {"node": 0, "parent": None, "ucb": 0.5, "visits": 6, "r2": 0.5},
    {"node": 2, "parent": 0, "ucb": 0.4, "visits": 2, "r2": 0.4},
]


@pytest.mark.parametrize(("c", "expected"), [(1.0, HAND_C1), (0.0, HAND_C0)])
def test_puct_scores_on_a_hand_built_tree(c: float, expected: list[dict[str, Any]]) -> None:
    h = hand_tree(c)
    rows = ucb_scores(h.study)
    assert [set(r) for r in rows] == [{"node", "parent", "ucb", "visits", "r2", "test_pearson",
                                       "mutation"}] * len(rows)
    got = [{k: r[k] for k in ("node", "parent", "ucb", "visits", "r2")} for r in rows]
    assert [g["node"] for g in got] == [e["node"] for e in expected]
    for g, e in zip(got, expected):
        assert g["ucb"] == pytest.approx(e["ucb"], abs=1e-6)
        assert {k: g[k] for k in ("parent", "visits", "r2")} == {
            k: e[k] for k in ("parent", "visits", "r2")}
    assert rows[0]["mutation"] == "lr_sub: 0.0005 -> 0.001"
    # The next trial hangs from the top row.
    trial = h.ask()
    assert trial.user_attrs["parent_id"] == expected[0]["node"]
    assert trial.user_attrs["parent_rule"].startswith(
        f"highest UCB {expected[0]['ucb']:.3f} in block 1 (visits {expected[0]['visits']})")


def test_puct_ties_go_to_the_lower_trial_number() -> None:
    h = History(make_sampler(knobs=NO_SEED, ucb_c=1.0))
    h.add(-1, value=0.5, strategy="root")
    h.add(0, {"lr_k": 1e-2}, value=0.6, root=0)
    h.add(0, {"lr_k": 2.5e-3}, value=0.6, root=0)
    rows = ucb_scores(h.study)
    assert [r["node"] for r in rows] == [1, 2, 0]
    assert rows[0]["ucb"] == rows[1]["ucb"]


def test_ucb_scores_needs_the_ucb_sampler() -> None:
    with pytest.raises(ValueError, match=r"sampler must be a UCBMutationSampler, got "
                                         r"RandomSampler"):
        ucb_scores(optuna.create_study(sampler=RandomSampler()))
    with pytest.raises(ValueError, match=r"block: expected None or an integer >= 1, got 0"):
        ucb_scores(make_study(make_sampler()), block=0)


# ---------------------------------------------------------------------------------------------
# Blocks and the initial spread


def test_blocks_restart_from_the_incumbent() -> None:
    sampler = make_sampler(n_iter_block=8)
    study = make_study(sampler)
    study.optimize(objective, n_trials=16)
    recs = records(study)
    # Block 1: the base values, then lr_k, lr_node, lr_sub one grid step (factor 2) each.
    assert recs[0]["strategy"] == "root" and recs[0]["parent"] == -1
    assert study.trials[0].params == BASE
    for number, knob in zip((1, 2, 3), ("lr_k", "lr_node", "lr_sub")):
        assert recs[number]["strategy"] == "initial-spread" and recs[number]["parent"] == 0
        [(name, old, new)] = recs[number]["changes"]
        assert name == knob and old == BASE[knob] and new / old in (2.0, 0.5)
    assert all(recs[n]["strategy"] not in ("root", "initial-spread") for n in range(4, 8))
    # Block 2 grows from the best of block 1 by replicate mean, fixed by its first decision.
    nodes = [t for t in study.trials[:8]]
    groups: dict[tuple[Any, ...], list[float]] = {}
    for t in nodes:
        groups.setdefault(params_key({**t.params, "seed": 0}), []).append(t.value)
    best_mean = max(statistics.mean(v) for v in groups.values())
    root = recs[8]["root"]
    assert {recs[n]["root"] for n in range(8, 16)} == {root}
    assert statistics.mean(groups[params_key({**study.trials[root].params, "seed": 0})]) == (
        best_mean)
    assert recs[8]["parent"] == root
    for number in range(8, 16):
        assert study.trials[number].user_attrs["block"] == 2
        assert recs[number]["parent"] in {root, *range(8, number)}
    # At the boundary the next block's table holds only its root: "parent = root".
    rows = ucb_scores(study)
    assert len(rows) == 1 and rows[0]["parent"] is None and rows[0]["visits"] == 1
    assert [r["node"] for r in ucb_scores(study, block=2)][-1] == root


@pytest.mark.parametrize(("n_iter_block", "spread"), [(1, 1), (2, 1), (4, 2), (12, 4)])
def test_the_initial_spread_takes_at_most_half_a_block(n_iter_block: int, spread: int) -> None:
    # The base values run first whatever the block size.
    study = make_study(make_sampler(n_iter_block=n_iter_block))
    study.optimize(objective, n_trials=max(n_iter_block, 4))
    strategies = [t.user_attrs["strategy"] for t in study.trials]
    opening = ["root", "initial-spread", "initial-spread", "initial-spread"][:spread]
    assert strategies[:spread] == opening
    assert not {"root", "initial-spread"} & set(strategies[spread:n_iter_block])
    assert study.trials[0].params == BASE


# ---------------------------------------------------------------------------------------------
# Strategies: each on its condition and only then


def strategy_history(values: Sequence[float], *, gaps: Sequence[float | None] | None = None,
                     curve: Sequence[float] = (),
                     sampler: UCBMutationSampler | None = None) -> History:
    """Root 0 and its replicate 1 (R² 0.97, the trusted incumbent; data_augmentation_loop one
    step below its maximum), then four children of the root, one knob each, finishing in this
    order with ``values`` (and ``test_pearson`` = value + gap)."""
    h = History(sampler or make_sampler())
    h.add(-1, {"data_augmentation_loop": 1000}, value=0.97, strategy="root")
    h.add(0, {"seed": 7}, value=0.97, strategy="replicate", root=0, curve=curve)
    for i, (value, knob) in enumerate(zip(values, ("lr_k", "lr_node", "lr_sub", "n_epochs"))):
        gap = None if gaps is None else gaps[i]
        step = 2 if knob == "n_epochs" else 2 * BASE[knob]
        h.add(0, {knob: step}, value=value, root=0,
              test_pearson=None if gap is None else value + gap)
    return h


STRATEGY_CASES = [
    # boundary-probe: 3 consecutive converged, R² > 0.9 (metrics.classify; issue 14 made the
    # sampler's ">= 0.9" this one definition: 0.9 itself is partial, as for explore below)
    ("boundary-probe", dict(values=[0.05, 0.91, 0.92, 0.95])),
    ("exploit", dict(values=[0.05, 0.9, 0.92, 0.95])),
    ("exploit", dict(values=[0.9, 0.92, 0.89, 0.95])),
    # degeneracy-break: 3 consecutive degenerate trials (test_pearson > 0.95, R² <= 0.9)
    ("degeneracy-break", dict(values=[0.5, 0.5, 0.5, 0.5], gaps=[0.0, 0.46, 0.47, 0.49])),
    ("explore", dict(values=[0.5, 0.5, 0.5, 0.5], gaps=[0.46, 0.46, 0.45, 0.49])),
    ("explore", dict(values=[0.5, 0.5, 0.5, 0.5], gaps=[0.46, 0.46, None, 0.49])),
    # a large gap from a hopeless R² with poor dynamics is failed, not degenerate
    ("explore", dict(values=[-50.0, -50.0, -50.0, -50.0], gaps=[50.4, 50.4, 50.4, 50.4])),
    # explore: the last 4 all partial, or all failed
    ("explore", dict(values=[0.1, 0.5, 0.6, 0.9])),
    ("explore", dict(values=[-5.0, 0.05, -100.0, 0.09])),
    ("exploit", dict(values=[0.09, 0.5, 0.6, 0.9])),
    ("exploit", dict(values=[-5.0, 0.5, 0.05, 0.6])),
    ("exploit", dict(values=[0.5, 0.5, 0.95, 0.5])),
    # replicate: a new incumbent with a single run
    ("replicate", dict(values=[0.5, 0.98, 0.5, 0.05])),
    # duration: the chosen parent's curve still rising over its last quarter
    ("duration", dict(values=[0.05, 0.5, 0.95, 0.5], curve=[0.2, 0.5, 0.7, 0.8, 0.9, 0.97])),
    ("exploit", dict(values=[0.05, 0.5, 0.95, 0.5], curve=[0.2, 0.5, 0.9, 0.97, 0.97, 0.97])),
]


@pytest.mark.parametrize(("expected", "kwargs"), STRATEGY_CASES)
def test_each_strategy_triggers_on_its_condition_only(expected: str,
                                                      kwargs: dict[str, Any]) -> None:
    h = strategy_history(**kwargs)
    trial = h.ask()
    record = trial.system_attrs[RECORD_KEY]
    assert record["strategy"] == expected, record["parent_rule"]
    changed = [c[0] for c in record["changes"]]
    parent = h.params[record["parent"]]
    if expected == "boundary-probe":
        (name,) = changed
        assert record["changes"][0][2] in (KNOBS[name].grid(BASE[name])[0],
                                           KNOBS[name].grid(BASE[name])[-1])
    elif expected == "degeneracy-break":
        assert changed == ["lr_k", "lr_node", "lr_sub"]
        assert trial.params["lr_k"] == 2 * parent["lr_k"]
        assert trial.params["lr_node"] == parent["lr_node"] / 2
        assert trial.params["lr_sub"] == parent["lr_sub"] / 2
        assert record["mutation"].count(";") == 2  # one mutation naming three knobs
    elif expected == "replicate":
        assert changed == ["seed"] and record["parent"] == 3  # the new best, 0.98
    elif expected == "duration":
        assert changed == ["data_augmentation_loop"] and record["parent"] == 1
        assert trial.params["data_augmentation_loop"] > parent["data_augmentation_loop"]
    elif expected == "explore":
        # The knob moved least recently: here the first, in exploration order, that no trial
        # moved (the root moved data_augmentation_loop, its children four others).
        moved = {"data_augmentation_loop", "lr_k", "lr_node", "lr_sub", "n_epochs"}
        assert changed == [next(n for n in SEARCH.names if n not in moved)]
    else:
        assert changed == ["lr_k"]  # exploit: the first knob in exploration order


@pytest.mark.parametrize(("cap", "expected"), [(72_000, "exploit"), (72_001, "duration"),
                                               (None, "duration")])
def test_a_step_cap_makes_a_longer_run_no_move(cap: int | None, expected: str) -> None:
    """The duration case above under ``--max-steps``: the incumbent's runs (loop 1000: 2880 x
    1000 // 8 x 0.2 = 72,000 steps) are cut at 72,000, so a longer loop would run the same
    steps and give the same R²; the rule stands down, and no other rule raises the loop."""
    plain = dataclasses.replace(CFG, search=dataclasses.replace(CFG.search, survey=0,
                                                                model=False))
    sampler = UCBMutationSampler.from_config(plain, seed=0, max_steps=cap)
    h = strategy_history([0.05, 0.5, 0.95, 0.5], curve=[0.2, 0.5, 0.7, 0.8, 0.9, 0.97],
                         sampler=sampler)
    record = h.ask().system_attrs[RECORD_KEY]
    assert record["strategy"] == expected, record["parent_rule"]
    raised = [c for c in record["changes"] if c[0] == "data_augmentation_loop" and c[2] > c[1]]
    assert bool(raised) == (expected == "duration")


def test_explore_knob_is_not_one_moved_recently() -> None:
    h = History(make_sampler())
    h.add(-1, value=0.97, strategy="root")
    h.add(0, {"seed": 7}, value=0.97, strategy="replicate", root=0)
    for knob in ("data_augmentation_loop", "lr_k", "n_epochs", "lr_node"):
        step = 2 if knob == "n_epochs" else BASE[knob] / 2
        h.add(0, {knob: step}, value=0.5, root=0)
    record = h.ask().system_attrs[RECORD_KEY]
    assert record["strategy"] == "explore"
    assert [c[0] for c in record["changes"]] == ["lr_sub"]


@pytest.mark.parametrize(
    ("up", "down", "expected"),
    [
        (0.7, 0.3, 1e-2),  # up helped more: up
        (0.3, 0.7, 2.5e-3),  # down helped more: down
        (0.3, None, 2.5e-3),  # only up tried, and it hurt: down
        (0.6, None, 1e-2),  # only up tried, and it helped: up again
        (None, 0.4, 1e-2),  # only down tried, and it hurt: up
    ],
)
def test_direction_follows_what_helped(up: float | None, down: float | None,
                                       expected: float) -> None:
    # Edges root -> lr_k up / down; the next lr_k move, from another parent, follows them.
    h = History(make_sampler(knobs=NO_SEED, ucb_c=0.0))
    h.add(-1, value=0.5, strategy="root")
    h.add(0, {"n_epochs": 2}, value=0.2, root=0)  # past the initial spread's slots
    if up is not None:
        h.add(0, {"lr_k": 1e-2}, value=up, root=0)
    if down is not None:
        h.add(0, {"lr_k": 2.5e-3}, value=down, root=0)
    # Two knobs at once: no single knob to follow through with.
    top = h.add(0, {"lr_node": 2e-3, "lr_sub": 1e-3}, value=0.95, root=0)
    record = h.ask().system_attrs[RECORD_KEY]
    assert record["strategy"] == "exploit" and record["parent"] == top
    assert record["changes"] == [["lr_k", 5e-3, expected]]


def test_a_failed_incumbent_is_not_replicated() -> None:
    h = History(make_sampler())
    h.add(-1, value=-100.0, strategy="root")
    for knob, value in (("lr_k", -90.0), ("lr_node", -95.0), ("lr_sub", -80.0)):
        h.add(0, {knob: 2 * BASE[knob]}, value=value, root=0, strategy="initial-spread")
    record = h.ask().system_attrs[RECORD_KEY]
    assert record["strategy"] == "explore", record["parent_rule"]  # four failed in a row
    assert record["parent"] == 3  # the best of them


@pytest.mark.parametrize("strategy_values", [[0.5, 0.2, 0.3, 0.7], [0.95, 0.2, 0.96, 0.97]])
def test_a_step_that_paid_off_is_taken_again(strategy_values: list[float]) -> None:
    h = History(make_sampler(knobs=NO_SEED))
    root, a, b, up = strategy_values
    h.add(-1, value=root, strategy="root")
    h.add(0, {"n_epochs": 2}, value=a, root=0)
    h.add(0, {"lr_node": 2e-3}, value=b - 0.5, root=0)
    child = h.add(0, {"lr_sub": 1e-3}, value=up, root=0)
    record = h.ask().system_attrs[RECORD_KEY]
    assert record["parent"] == child
    assert record["changes"] == [["lr_sub", 1e-3, 2e-3]]
    assert record["parent_rule"].endswith("lr_sub raised R2 on the step before: once more")


def test_follow_through_sees_through_a_replicate() -> None:
    h = History(make_sampler(ucb_c=0.0))
    h.add(-1, value=0.5, strategy="root")
    h.add(0, {"n_epochs": 2}, value=0.2, root=0)
    h.add(0, {"lr_node": 2e-3}, value=0.3, root=0)
    child = h.add(0, {"lr_sub": 1e-3}, value=0.7, root=0)
    again = h.add(child, {"seed": 5}, value=0.71, strategy="replicate", root=0)
    record = h.ask().system_attrs[RECORD_KEY]
    assert record["parent"] == again  # the best run: the replicate
    assert record["changes"] == [["lr_sub", 1e-3, 2e-3]]


def test_no_follow_through_on_a_gain_within_noise() -> None:
    h = History(make_sampler(knobs=NO_SEED, ucb_c=0.0))
    h.add(-1, value=0.5, strategy="root")
    h.add(0, {"n_epochs": 2}, value=0.2, root=0)
    h.add(0, {"lr_node": 2e-3}, value=0.3, root=0)
    child = h.add(0, {"coeff_MLP_node_L1": 0.316228}, value=0.5001, root=0)
    record = h.ask().system_attrs[RECORD_KEY]
    assert record["parent"] == child
    assert [c[0] for c in record["changes"]] != ["coeff_MLP_node_L1"]
    assert "once more" not in record["parent_rule"]


def test_no_follow_through_from_a_failed_parent() -> None:
    h = History(make_sampler(knobs=NO_SEED))
    h.add(-1, value=-100.0, strategy="root")
    h.add(0, {"n_epochs": 2}, value=-120.0, root=0)
    h.add(0, {"lr_node": 2e-3}, value=-110.0, root=0)
    child = h.add(0, {"lr_sub": 1e-3}, value=-50.0, root=0)  # better, but still failed
    record = h.ask().system_attrs[RECORD_KEY]
    assert record["strategy"] == "explore" and record["parent"] == child
    # The survey goes on: the first knob in exploration order that no trial has moved.
    moved = {"n_epochs", "lr_node", "lr_sub"}
    assert [c[0] for c in record["changes"]] == [next(k.name for k in NO_SEED
                                                      if k.name not in moved)]


def test_exploit_leaves_knobs_that_never_paid_off_for_last() -> None:
    h = History(make_sampler(knobs=NO_SEED, ucb_c=0.0))
    h.add(-1, value=0.9, strategy="root")
    h.add(0, {"lr_k": 1e-2}, value=0.8, root=0)
    h.add(0, {"lr_k": 2.5e-3}, value=0.85, root=0)
    top = h.add(0, {"lr_node": 2e-3, "lr_sub": 1e-3}, value=0.95, root=0)
    h.add(top, {"lr_k": 1e-2}, value=0.91, root=0)  # lr_k: 3 tries, every one a loss
    record = h.ask().system_attrs[RECORD_KEY]
    assert record["strategy"] == "exploit" and record["parent"] == top
    assert [c[0] for c in record["changes"]] == ["lr_node"]


# ---------------------------------------------------------------------------------------------
# Mutations


def test_mutations_change_exactly_the_knobs_they_name_within_range() -> None:
    study = make_study(make_sampler(seed=1))
    study.optimize(rich_objective, n_trials=120)
    by_number = {t.number: t for t in study.trials}
    strategies = set()
    for trial in study.trials:
        record = trial.system_attrs[RECORD_KEY]
        strategy = record["strategy"]
        strategies.add(strategy)
        parent = BASE if record["parent"] == -1 else by_number[record["parent"]].params
        changed = {name for name in SEARCH.names if trial.params[name] != parent[name]}
        assert changed == {c[0] for c in record["changes"]}, record
        for name, old, new in record["changes"]:
            knob = KNOBS[name]
            assert old == parent[name] and new == trial.params[name]
            dist = knob.distribution()
            assert dist._contains(dist.to_internal_repr(new))
            if name != "seed":
                assert new in knob.grid(BASE[name])  # snapped to the lattice
        assert ("seed" in changed) == (strategy == "replicate")
        if strategy in ("initial-spread", "exploit", "explore", "duration", "boundary-probe",
                        "replicate"):
            assert len(changed) == 1
        if strategy in ("initial-spread", "exploit", "explore", "duration"):
            (name,) = changed
            grid = KNOBS[name].grid(BASE[name])
            assert abs(grid.index(trial.params[name]) - grid.index(parent[name])) == 1
        if strategy == "duration":
            assert changed == {"data_augmentation_loop"}
            assert trial.params["data_augmentation_loop"] > parent["data_augmentation_loop"]
        if strategy == "boundary-probe":
            (name,) = changed
            grid = KNOBS[name].grid(BASE[name])
            assert trial.params[name] in (grid[0], grid[-1])
        if strategy == "degeneracy-break":
            assert changed <= {"lr_k", "lr_node", "lr_sub"}
            assert trial.params["lr_k"] >= parent["lr_k"]
            assert trial.params["lr_node"] <= parent["lr_node"]
            assert trial.params["lr_sub"] <= parent["lr_sub"]
        if strategy == "root":
            assert trial.params == BASE and record["parent"] == -1
    assert strategies >= {"root", "initial-spread", "replicate", "degeneracy-break",
                          "boundary-probe", "duration", "explore", "exploit"}


def test_no_duplicate_params_over_200_trials() -> None:
    study = make_study(make_sampler(seed=5, n_iter_block=6))
    study.optimize(objective, n_trials=200)
    keys = [params_key(t.params) for t in study.trials]
    assert len(set(keys)) == 200


# ---------------------------------------------------------------------------------------------
# Determinism


def run_sequence(seed: int, n: int = 30) -> list[tuple[Any, ...]]:
    study = make_study(make_sampler(seed=seed))
    study.optimize(rich_objective, n_trials=n)
    return [(params_key(t.params), t.user_attrs["parent_id"], t.user_attrs["strategy"],
             t.user_attrs["mutation"], t.user_attrs["parent_rule"]) for t in study.trials]


def test_same_seed_same_trials_different_seed_different_trials() -> None:
    a, b, c = run_sequence(11), run_sequence(11), run_sequence(12)
    assert a == b
    assert a != c


def test_a_pickled_sampler_decides_the_same() -> None:
    a = make_sampler(seed=9)
    sa = make_study(a)
    sa.optimize(objective, n_trials=3)  # fills the node cache
    b = pickle.loads(pickle.dumps(a))
    sb = make_study(b)
    sa.optimize(objective, n_trials=9)
    sb.optimize(objective, n_trials=12)
    assert [t.params for t in sa.trials] == [t.params for t in sb.trials]


def test_reseed_rng_keeps_decisions() -> None:
    a = make_sampler(seed=4)
    b = make_sampler(seed=4)
    b.reseed_rng()
    sa, sb = make_study(a), make_study(b)
    sa.optimize(objective, n_trials=12)
    sb.optimize(objective, n_trials=12)
    assert [t.params for t in sa.trials] == [t.params for t in sb.trials]


# ---------------------------------------------------------------------------------------------
# Parallel workers on one storage


def check_parallel_study(study: optuna.Study, n: int) -> None:
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == n
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({params_key(t.params) for t in trials}) == n  # no duplicates
    pairs = set()
    for t in trials:
        record = t.system_attrs[RECORD_KEY]
        assert record["params"] == t.params
        assert record["parent"] == -1 or record["parent"] < t.number or record["strategy"] == (
            "enqueued")
        pairs.add((record["parent"], record["mutation"]))
    assert len(pairs) == n  # every worker got its own (parent, mutation)


def slow_objective(trial: Trial) -> float:
    value = objective(trial)
    time.sleep(0.03)
    return value


def test_four_threads_on_one_sqlite_storage(tmp_path: Path) -> None:
    study = make_study(make_sampler(seed=2, n_iter_block=6), storage=sqlite_storage(
        tmp_path / "s.db"))
    study.optimize(slow_objective, n_trials=12, n_jobs=4)
    check_parallel_study(study, 12)
    # The workers did overlap: some trial started while an earlier one was still running.
    trials = study.trials
    assert any(b.datetime_start < a.datetime_complete for a, b in zip(trials, trials[1:]))


WORKER = textwrap.dedent("""
    import math, os, sys, time
    import optuna
    from optuna.storages import RDBStorage
    from metab_opt.config import load_config
    from metab_opt.sampler import UCBMutationSampler, suggest_params

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(sys.argv[1])
    storage = RDBStorage(sys.argv[2], engine_kwargs={"connect_args": {"timeout": 60}})
    sampler = UCBMutationSampler.from_config(cfg, seed=int(sys.argv[3]))
    study = optuna.load_study(study_name="shared", storage=storage, sampler=sampler)

    def objective(trial):
        p = suggest_params(trial, cfg.search)
        trial.set_user_attr("pid", os.getpid())
        time.sleep(0.05)
        return 1.0 - 0.08 * math.log2(p["lr_k"] / 2e-3) ** 2

    study.optimize(objective, n_trials=6)
""")


def test_two_processes_on_one_sqlite_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(make_sampler(), storage=sqlite_storage(tmp_path / "s.db"), name="shared")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(ROOT / "configs" / "rank50.yaml"),
                               url, str(seed)]) for seed in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    study = optuna.load_study(study_name="shared", storage=url)
    check_parallel_study(study, 12)
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2


def test_a_decision_waits_for_a_lower_numbered_worker_still_deciding() -> None:
    h = History(make_sampler(knobs=NO_SEED))
    h.add(-1, value=0.5, strategy="root")
    # Trial 1: created by another worker that has not written its decision yet.
    tid = h.study._storage.create_new_trial(h.study._study_id)
    first = h.study.sampler  # the same sampler decides it, a little later
    done = threading.Event()

    def late_decision() -> None:
        time.sleep(0.2)
        first.before_trial(h.study, h.study._storage.get_trial(tid))
        done.set()

    thread = threading.Thread(target=late_decision)
    thread.start()
    start = time.perf_counter()
    trial = h.ask()
    waited = time.perf_counter() - start
    thread.join()
    assert done.is_set() and waited >= 0.15
    one = h.study._storage.get_trial(tid).system_attrs[RECORD_KEY]
    two = trial.system_attrs[RECORD_KEY]
    assert one["params"] != two["params"]


def test_a_stale_running_trial_without_decision_is_not_waited_for() -> None:
    h = History(make_sampler(knobs=NO_SEED))
    h.add(-1, value=0.5, strategy="root")
    old = datetime.datetime.now() - datetime.timedelta(minutes=5)
    h.study._storage.create_new_trial(h.study._study_id, template_trial=FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=old,
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=-1))
    start = time.perf_counter()
    trial = h.ask()
    assert time.perf_counter() - start < 1.0
    assert trial.user_attrs["parent_id"] == 0


# ---------------------------------------------------------------------------------------------
# Enqueued, failed and pruned trials


@pytest.mark.parametrize("n_before", [0, 14])
def test_enqueued_params_are_used_as_given(n_before: int) -> None:
    study = make_study(make_sampler())
    study.optimize(objective, n_trials=n_before)
    root = -1
    root_params = BASE
    if n_before:
        root = study.trials[-1].system_attrs[RECORD_KEY]["root"]
        root_params = study.trials[root].params
    study.enqueue_trial({"lr_k": 0.0033, "seed": 7})
    study.optimize(objective, n_trials=1)
    trial = study.trials[-1]
    assert trial.params == {**root_params, "lr_k": 0.0033, "seed": 7}
    assert trial.user_attrs["strategy"] == "enqueued"
    assert trial.user_attrs["parent_id"] == root
    assert trial.user_attrs["mutation"] == (
        f"lr_k: {root_params['lr_k']:g} -> 0.0033; seed: {root_params['seed']} -> 7")
    # The sampler goes on from there, and never re-proposes the enqueued set.
    study.optimize(objective, n_trials=3)
    assert len({params_key(t.params) for t in study.trials}) == len(study.trials)


def test_failed_trials_are_zero_r2_nodes_never_parents() -> None:
    def obj(trial: Trial) -> float:
        if trial.number in (0, 2, 5):
            suggest_params(trial, SEARCH)
            return fail_objective(trial)
        if trial.number == 6:
            suggest_params(trial, SEARCH)
            return float("nan")  # a non-finite value fails the trial too
        return objective(trial)

    study = make_study(make_sampler(knobs=NO_SEED))
    study.optimize(obj, n_trials=16, catch=(ValueError,))
    failed = {t.number for t in study.trials if t.state == TrialState.FAIL}
    assert failed == {0, 2, 5, 6}
    assert not failed & {t.user_attrs["parent_id"] for t in study.trials}
    assert not failed & {r["node"] for r in ucb_scores(study, block=1)}


def test_pruned_trials_count_with_their_last_reported_value() -> None:
    def obj(trial: Trial) -> float:
        value = objective(trial)
        if trial.number == 1:
            trial.report(0.11, 0)
            trial.report(0.42, 1)
            raise optuna.TrialPruned()
        return value

    study = make_study(make_sampler(knobs=NO_SEED, ucb_c=0.0))
    study.optimize(obj, n_trials=5)
    assert study.trials[1].state == TrialState.PRUNED
    rows = {r["node"]: r for r in ucb_scores(study)}
    assert rows[1]["r2"] == 0.42
    assert rows[1]["ucb"] == 0.42  # c = 0: UCB is the R²


# ---------------------------------------------------------------------------------------------
# Against RandomSampler


def trials_to_neighbourhood(sampler: optuna.samplers.BaseSampler, cap: int,
                            threshold: float) -> int:
    """Trials until one lands where the noise-free R² >= threshold (cap + 1 if never)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def stop(study: optuna.Study, trial: FrozenTrial) -> None:
        if truth(trial.params) >= threshold:
            study.stop()

    study.optimize(objective, n_trials=cap, callbacks=[stop])
    last = study.trials[-1]
    return len(study.trials) if truth(last.params) >= threshold else cap + 1


def compare_with_random(threshold: float, cap_ucb: int, cap_random: int) -> tuple[list[int],
                                                                                  list[int]]:
    ucb = [trials_to_neighbourhood(make_sampler(seed=s), cap_ucb, threshold) for s in range(5)]
    rnd = [trials_to_neighbourhood(RandomSampler(seed=s), cap_random, threshold)
           for s in range(5)]
    return ucb, rnd


def test_reaches_the_optimum_faster_than_random_sampling() -> None:
    ucb, rnd = compare_with_random(0.9, cap_ucb=100, cap_random=300)
    print(f"\ntrials to R2 >= 0.9: UCB {ucb} (median {statistics.median(ucb)}), "
          f"random {rnd} (median {statistics.median(rnd)})")
    assert statistics.median(ucb) < statistics.median(rnd)


@pytest.mark.slow
def test_reaches_the_optimum_faster_than_random_sampling_report() -> None:
    for threshold, cap_random in ((0.9, 5000), (0.95, 5000)):
        ucb, rnd = compare_with_random(threshold, cap_ucb=300, cap_random=cap_random)
        print(f"\ntrials to R2 >= {threshold}: UCB {ucb} (median {statistics.median(ucb)}), "
              f"random {rnd} (median {statistics.median(rnd)}; {cap_random + 1} = not within "
              f"{cap_random})")
        assert statistics.median(ucb) < statistics.median(rnd)


# ---------------------------------------------------------------------------------------------
# Speed


@pytest.mark.slow
def test_decision_time_with_500_finished_trials_in_sqlite(tmp_path: Path) -> None:
    source = make_study(make_sampler(seed=0))
    source.optimize(rich_objective, n_trials=500)
    url = f"sqlite:///{tmp_path / 'b.db'}"
    optuna.copy_study(from_study_name=source.study_name, from_storage=source._storage,
                      to_storage=url, to_study_name="bench")
    sampler = make_sampler(seed=0)
    study = optuna.load_study(study_name="bench", storage=url, sampler=sampler)
    timings: list[float] = []
    decide = sampler.before_trial

    def timed(study: optuna.Study, trial: FrozenTrial) -> None:
        start = time.perf_counter()
        decide(study, trial)
        timings.append(time.perf_counter() - start)

    sampler.before_trial = timed  # type: ignore[method-assign]
    for _ in range(21):
        trial = study.ask()
        suggest_params(trial, SEARCH)
        study.tell(trial, 0.5)
    median = statistics.median(timings[1:])  # the first one also fills the node cache
    print(f"\ndecision with {len(study.trials) - 1} trials in SQLite: median "
          f"{median * 1e3:.1f} ms, max {max(timings[1:]) * 1e3:.1f} ms, first "
          f"{timings[0] * 1e3:.1f} ms")
    assert median < 0.05
