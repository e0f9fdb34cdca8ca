"""The survey: block 1's space-filling draws over every knob's lattice, after the root."""

from __future__ import annotations

import collections
import math
import threading
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial

from metab_opt.ucbtree import RECORD_KEY, Knob, Roles, UCBSampler, format_changes
from metab_opt.ucbtree import _survey as survey
from metab_opt.ucbtree._mutation import direction_memory
from metab_opt.ucbtree._tree import read_nodes

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A yes/no knob, a log knob with an "off" 0, a log knob with more lattice points than draws, a
# linear one, an int one, a duration knob, a dear one and a seed.
KNOBS = (
    Knob("on", scale="categorical", choices=(False, True)),
    Knob("norm", low=0.0, high=100.0, scale="log", step=math.sqrt(10), min_positive=1.0),
    Knob("lr", low=1e-4, high=1e-2, scale="log", step=2.0),
    Knob("threshold", low=-3.0, high=-1.5, scale="linear", step=0.25),
    Knob("layers", low=1, high=4, scale="int", step=1),
    Knob("epochs", low=1, high=10, scale="int", step=1),
    Knob("batch", low=4, high=32, scale="log", step=2.0, integer=True),
    Knob("seed", low=0, high=2**31 - 1, scale="int", step=1),
)
BASE: dict[str, Any] = {"on": False, "norm": 0.0, "lr": 5e-4, "threshold": -2.0, "layers": 2,
                        "epochs": 1, "batch": 8, "seed": 42}
ROLES = Roles(seed="seed", duration="epochs", survey_fixed=("batch",))
FIXED = ("seed", "epochs", "batch")
DRAWN = survey.surveyed(KNOBS, FIXED)
GRIDS = {k.name: k.grid(BASE[k.name]) for k in KNOBS}


def score(p: dict[str, Any]) -> float:
    """Good only when several knobs are on together: the landscape the survey is for."""
    value = -abs(math.log10(p["lr"] / 2e-3)) - 0.1 * abs(p["threshold"] + 2.5)
    return value + (0.5 if p["on"] else 0.0) + (0.5 if p["norm"] >= 10 else 0.0)


def objective(trial: Trial) -> float:
    p: dict[str, Any] = {}
    for knob in KNOBS:
        d = knob.distribution()
        if isinstance(d, CategoricalDistribution):
            p[knob.name] = trial.suggest_categorical(knob.name, list(d.choices))
        elif isinstance(d, IntDistribution):
            p[knob.name] = trial.suggest_int(knob.name, d.low, d.high, log=d.log)
        else:
            assert isinstance(d, FloatDistribution)
            p[knob.name] = trial.suggest_float(knob.name, d.low, d.high, log=d.log)
    return score(p) + (p["seed"] * 2654435761 % 1000) / 1000 * 0.02


def sampler(seed: int = 0, n: int = 8, **kwargs: Any) -> UCBSampler:
    return UCBSampler(knobs=KNOBS, base_params=BASE, roles=ROLES, n_iter_block=12, survey=n,
                      seed=seed, converged=0.9, failed=-2.0, **kwargs)


def run(seed: int = 0, n: int = 8, n_trials: int = 12, n_jobs: int = 1) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler(seed, n))
    study.optimize(objective, n_trials=n_trials, n_jobs=n_jobs)
    return study


# ---------------------------------------------------------------------------------------------
# The design


def test_the_survey_draws_every_knob_but_the_fixed_ones() -> None:
    assert [k.name for k in DRAWN] == ["on", "norm", "lr", "threshold", "layers"]
    single = Knob("const", scale="categorical", choices=(3,))
    assert survey.surveyed((*KNOBS, single), FIXED) == DRAWN  # nothing to draw there


@pytest.mark.parametrize("seed", range(6))
def test_the_design_covers_each_knobs_lattice(seed: int) -> None:
    rows = survey.design(DRAWN, BASE, BASE, 8, seed)
    assert len(rows) == 8
    values = {name: [r[name] for r in rows] for name in rows[0]}
    # A lattice with fewer points than draws: every point n // L or n // L + 1 times.
    assert collections.Counter(values["on"]) == {False: 4, True: 4}
    assert set(values["layers"]) == {1, 2, 3, 4}
    assert set(collections.Counter(values["layers"]).values()) == {2}
    norm = collections.Counter(values["norm"])  # 0 (off), 1, 3.16, 10, 31.6, 100
    assert set(norm) == set(GRIDS["norm"]) and set(norm.values()) <= {1, 2}
    threshold = collections.Counter(values["threshold"])  # 7 points
    assert set(threshold) == set(GRIDS["threshold"]) and set(threshold.values()) <= {1, 2}
    # More lattice points than draws (lr: 9): 8 different values, one in each of 8 runs of
    # consecutive lattice points, so both ends' neighbourhoods are drawn: uniform in log space.
    grid = GRIDS["lr"]
    assert len(grid) == 9 and len(set(values["lr"])) == 8
    indices = sorted(grid.index(v) for v in values["lr"])
    assert indices[0] <= 1 and indices[-1] >= len(grid) - 2
    # Every value is a lattice value.
    for name, drawn in values.items():
        assert set(drawn) <= set(GRIDS[name]), name


def test_the_design_is_reproducible_and_keyed_by_the_seed() -> None:
    a = survey.design(DRAWN, BASE, BASE, 8, 3)
    survey._design.cache_clear()  # computed again, not read back from the cache
    assert survey.design(DRAWN, BASE, BASE, 8, 3) == a
    assert survey.design(DRAWN, BASE, BASE, 8, 4) != a


@pytest.mark.parametrize("seed", range(6))
def test_the_design_has_no_duplicate_and_avoids_the_root(seed: int) -> None:
    rows = survey.design(DRAWN, BASE, BASE, 8, seed)
    keys = {tuple(r.values()) for r in rows}
    assert len(keys) == 8
    assert tuple(BASE[k.name] for k in DRAWN) not in keys


# ---------------------------------------------------------------------------------------------
# In a study


def test_block_1_runs_the_root_then_the_survey_then_the_rules() -> None:
    study = run(n_trials=24)
    trials = study.trials
    strategies = [t.user_attrs["strategy"] for t in trials]
    assert strategies[:9] == ["root"] + ["survey"] * 8
    # No initial spread in block 1 after a survey (the walk starts from the survey's best);
    # block 2 spreads from its root, the incumbent, as before.
    assert "initial-spread" not in strategies[9:12] and "survey" not in strategies[9:]
    for i, t in enumerate(trials[1:9], start=1):
        record = t.system_attrs[RECORD_KEY]
        assert record["parent"] == 0 and t.user_attrs["parent_id"] == 0
        assert t.user_attrs["parent_rule"].startswith(
            f"survey {i}/8 of block 1: space-filling draw over every knob's lattice")
        assert "epochs, batch, seed kept at the root's values" in t.user_attrs["parent_rule"]
        # The mutation line names exactly the knobs that differ from the root.
        changed = [(n, BASE[n], t.params[n]) for n in BASE if t.params[n] != BASE[n]]
        assert t.user_attrs["mutation"] == format_changes(changed)
        assert [c[0] for c in record["changes"]] == [c[0] for c in changed]
        # The seed, the duration knob and the declared survey_fixed knob stay at the root's.
        assert all(t.params[name] == BASE[name] for name in FIXED)


def test_the_best_draw_is_replicated_before_the_walk_follows_it() -> None:
    study = run(n_trials=10)
    survey_trials = study.trials[1:9]
    best = max(survey_trials, key=lambda t: t.value)
    tenth = study.trials[9]
    assert tenth.user_attrs["strategy"] == "replicate"
    assert tenth.user_attrs["parent_id"] == best.number
    assert {k: v for k, v in tenth.params.items() if k != "seed"} == {
        k: v for k, v in best.params.items() if k != "seed"}


def test_the_survey_finds_the_region_the_walk_needs_several_steps_for() -> None:
    # Both yes/no-like knobs on together (on, norm >= 10) in at least one draw.
    for seed in range(5):
        draws = [t.params for t in run(seed, n_trials=9).trials[1:]]
        assert any(p["on"] and p["norm"] >= 10 for p in draws), seed


def test_survey_draws_are_the_same_in_every_run_and_worker() -> None:
    sequential = run(seed=5, n_trials=9)
    again = run(seed=5, n_trials=9)
    threads = run(seed=5, n_trials=9, n_jobs=4)
    assert [t.params for t in again.trials] == [t.params for t in sequential.trials]
    # With four threads (the root still running while the first draws are decided) every
    # trial number gets the same draw and parent.
    key = sorted((t.number, t.user_attrs["parent_id"], tuple(sorted(t.params.items())))
                 for t in sequential.trials)
    assert sorted((t.number, t.user_attrs["parent_id"], tuple(sorted(t.params.items())))
                  for t in threads.trials) == key
    assert run(seed=6, n_trials=9).trials[1].params != sequential.trials[1].params


def test_two_samplers_sharing_one_storage_agree() -> None:
    # Two workers, each with its own sampler object, take turns on one storage.
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(direction="maximize", sampler=sampler(7), storage=storage,
                            study_name="s")
    b = optuna.load_study(study_name="s", storage=storage, sampler=sampler(7))
    barrier = threading.Barrier(2)

    def work(study: optuna.Study) -> None:
        barrier.wait()
        study.optimize(objective, n_trials=5)

    workers = [threading.Thread(target=work, args=(s,)) for s in (a, b)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    alone = run(seed=7, n_trials=10)
    assert ({t.number: t.params for t in a.trials}
            == {t.number: t.params for t in alone.trials})


def test_a_row_already_taken_gives_way_to_a_uniform_draw() -> None:
    first = run(seed=2, n_trials=2).trials[1].params  # the design's first row
    study = optuna.create_study(direction="maximize", sampler=sampler(2))
    study.optimize(objective, n_trials=1)
    study.enqueue_trial(first)
    study.optimize(objective, n_trials=3)
    enqueued, draw = study.trials[1], study.trials[2]
    assert enqueued.user_attrs["strategy"] == "enqueued" and enqueued.params == first
    assert draw.user_attrs["strategy"] == "survey" and draw.params != first
    assert draw.user_attrs["parent_rule"].startswith("survey 1/8 of block 1")
    assert draw.user_attrs["parent_rule"].endswith("the design's draw was taken: a uniform draw")
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4


def test_no_survey_by_default_and_none_in_later_blocks() -> None:
    study = optuna.create_study(direction="maximize", sampler=UCBSampler(
        knobs=KNOBS, base_params=BASE, roles=ROLES, n_iter_block=4, seed=0))
    study.optimize(objective, n_trials=8)
    assert "survey" not in {t.user_attrs["strategy"] for t in study.trials}
    study = optuna.create_study(direction="maximize", sampler=UCBSampler(
        knobs=KNOBS, base_params=BASE, roles=ROLES, n_iter_block=4, survey=3, seed=0))
    study.optimize(objective, n_trials=12)
    strategies = [t.user_attrs["strategy"] for t in study.trials]
    assert strategies[:4] == ["root", "survey", "survey", "survey"]
    assert "survey" not in strategies[4:]


def test_a_survey_draw_is_no_knobs_step_in_the_direction_memory() -> None:
    study = run(n_trials=9)
    names = [k.name for k in KNOBS]
    nodes = read_nodes(study.trials, BASE, names, [n for n in names if n != "seed"])
    memory = direction_memory(nodes, {n.number: n for n in nodes}, KNOBS, BASE)
    assert memory.last_used == {} and memory.gains == {}


@pytest.mark.parametrize(
    ("survey_size", "n_iter_block", "match"),
    [
        (12, 12, r"survey: expected an integer in \[0, n_iter_block - 1 = 11\], got 12"),
        (-1, 12, r"survey: expected an integer in \[0, n_iter_block - 1 = 11\], got -1"),
        (True, 12, r"survey: expected an integer .* got True"),
        (1.5, 12, r"survey: expected an integer .* got 1.5"),
        (1, 1, r"survey: expected an integer in \[0, n_iter_block - 1 = 0\], got 1"),
    ],
)
def test_bad_survey_sizes(survey_size: Any, n_iter_block: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UCBSampler(knobs=KNOBS, base_params=BASE, n_iter_block=n_iter_block,
                   survey=survey_size)


def test_survey_fixed_role() -> None:
    names = [k.name for k in KNOBS]
    roles = Roles.from_mapping({"seed": "seed", "survey_fixed": ["batch", "layers"]}, names)
    assert roles.survey_fixed == ("batch", "layers")
    assert Roles.from_mapping(roles.to_dict(), names) == roles
    for data, match in (
        ({"survey_fixed": "batch"}, r"roles\.survey_fixed: expected a list of knob names"),
        ({"survey_fixed": ["bach"]}, r"roles\.survey_fixed\[0\]: 'bach' is not a knob \(did "
                                     r"you mean 'batch'\?\)"),
        ({"survey_fixed": ["batch", "batch"]}, r"roles\.survey_fixed: each knob once"),
        ({"seed": "seed", "survey_fixed": ["seed"]}, r"roles\.survey_fixed\[0\]: 'seed' is "
                                                     r"the seed knob"),
    ):
        with pytest.raises(ValueError, match=match):
            Roles.from_mapping(data, names)
