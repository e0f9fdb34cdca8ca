"""The logbook callback: entries once per trial, the memory's limit, the UCB file, safety.

Everything here runs without torch, on synthetic studies whose trials carry the user attrs the
objective and the sampler write (a small stand-in explorer below plays the sampler's part).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import random
import re
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from metab_opt import logbook as lb
from metab_opt.config import Config, load_config
from metab_opt.logbook import (
    MEMORY_MAX_LINES,
    Logbook,
    _callback,
    _journal,
    format_entry,
    format_ucb_scores,
    param_importances,
    render_memory,
    tree_nodes,
)

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("## Iter ", "Node: ", "Mode/Strategy: ", "Config: ", "Metrics: ", "Visual: ",
          "Mutation: ", "Parent rule: ", "Observation: ", "Next: parent=")
N_BLOCK = 12

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "configs" / "rank50.yaml")


# ---------------------------------------------------------------------------------------------
# A stand-in for the sampler and the objective


@dataclass
class Plan:
    params: dict[str, Any]
    attrs: dict[str, Any]
    state: TrialState
    value: float | None
    intermediate: dict[int, float] = field(default_factory=dict)


MUTABLE = ("lr_k", "lr_node", "lr_sub", "data_augmentation_loop", "n_epochs", "coeff_k_center",
           "sub_through_origin", "batch_size")


def synthetic_r2(params: dict[str, Any], rng: random.Random) -> float:
    return (1.0 - 0.5 * (math.log10(params["lr_k"]) + 2.0) ** 2
            - 0.2 * (math.log10(params["lr_sub"]) + 3.0) ** 2
            + (0.1 if params["sub_through_origin"] else 0.0) + rng.gauss(0.0, 0.05))


class Explorer:
    """Plans trials as the UCB sampler would record them: blocks, parents, one-knob mutations."""

    def __init__(self, config: Config, *, seed: int = 0, fail_every: int = 9,
                 prune_every: int = 13) -> None:
        self.config = config
        self.base = config.base_params()
        self.rng = random.Random(seed)
        self.fail_every, self.prune_every = fail_every, prune_every
        self.plans: list[Plan] = []

    def distributions(self) -> dict[str, BaseDistribution]:
        return {k.name: k.distribution() for k in self.config.search.knobs}

    def _mutate(self, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
        child = dict(params)
        if self.rng.random() < 0.1:
            child["seed"] = params["seed"] + 1
            return child, f"seed: {params['seed']} -> {child['seed']}"
        name = self.rng.choice(MUTABLE)
        knob = self.config.search.knob(name)
        grid = knob.grid(self.base[name])
        i = grid.index(knob.snap(params[name], self.base[name]))
        j = i + self.rng.choice((-1, 1)) if 0 < i < len(grid) - 1 else (1 if i == 0 else i - 1)
        child[name] = grid[j]
        return child, f"{name}: {params[name]} -> {child[name]}"

    def next(self) -> Plan:
        n = len(self.plans)
        block, pos = divmod(n, N_BLOCK)
        scored = [(i, p) for i, p in enumerate(self.plans) if p.value is not None]
        in_block = [(i, p) for i, p in scored if i >= block * N_BLOCK]
        block += 1  # the sampler numbers blocks from 1
        if pos == 0 or not in_block:
            best = max(scored, key=lambda ip: ip[1].value, default=None)
            parent = None
            params = dict(best[1].params) if best else dict(self.base)
            mutation, strategy = "none", "root"
        else:
            parent, parent_plan = self.rng.choice(in_block)
            params, mutation = self._mutate(parent_plan.params)
            strategy = self.rng.choice(("exploit", "explore", "boundary-probe"))
        r2 = synthetic_r2(params, self.rng)
        attrs: dict[str, Any] = {
            "node_id": n, "parent_id": -1 if parent is None else parent, "block": block,
            "strategy": strategy, "mutation": mutation,
            "parent_rule": "block root" if parent is None else f"highest UCB in block {block}",
        }
        if n % self.fail_every == self.fail_every - 1:
            attrs.update(status="failed", fail_reason="non-finite loss at step 12")
            plan = Plan(params, attrs, TrialState.FAIL, None)
        else:
            gap = 0.97 - r2
            attrs.update(
                rate_constants_R2=r2, rate_constants_R2_shifted=min(1.0, r2 + 0.1),
                rate_constants_slope=0.9, rate_constants_pearson=0.95, n_outliers=3,
                test_R2=0.9, test_pearson=0.97, final_loss=1.2e-6, MLP_sub_R2=0.8,
                MLP_node_R2=0.5, degeneracy_gap=gap,
                status="converged" if r2 > 0.9 else "partial" if r2 >= 0.1 else "failed",
                diagnosis="healthy" if gap < 0.1 else "degenerate",
                visual="MLP_sub=good: c^1 and c^2 match GT, MLP_node=partial: values ~0.01",
                training_seconds=1.5, steps=1000)
            if n % self.prune_every == self.prune_every - 1:
                plan = Plan(params, attrs, TrialState.PRUNED, None, {0: r2 - 0.2, 5: r2})
            else:
                plan = Plan(params, attrs, TrialState.COMPLETE, r2, {0: r2 - 0.2, 5: r2})
        self.plans.append(plan)
        return plan

    def frozen(self, plan: Plan) -> FrozenTrial:
        return optuna.trial.create_trial(
            state=plan.state, value=plan.value, params=plan.params,
            distributions=self.distributions(), user_attrs=plan.attrs,
            intermediate_values=plan.intermediate)


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def run_trials(study: optuna.Study, explorer: Explorer, n: int, callbacks: list[Any]) -> None:
    """n trials through study.optimize, each with the explorer's planned params and outcome."""
    dists = explorer.distributions()
    for _ in range(n):
        plan = explorer.next()
        study.enqueue_trial(plan.params)

        def objective(trial: optuna.Trial, plan: Plan = plan) -> float:
            for name, dist in dists.items():
                suggest(trial, name, dist)
            for key, value in plan.attrs.items():
                trial.set_user_attr(key, value)
            for step, value in plan.intermediate.items():
                trial.report(value, step)
            if plan.state == TrialState.FAIL:
                raise ValueError(plan.attrs["fail_reason"])
            if plan.state == TrialState.PRUNED:
                raise optuna.TrialPruned()
            assert plan.value is not None
            return plan.value

        study.optimize(objective, n_trials=1, callbacks=callbacks, catch=(ValueError,))


def add_trials(study: optuna.Study, explorer: Explorer, n: int) -> None:
    """n finished trials straight into the storage (fast; no callback runs)."""
    for _ in range(n):
        study.add_trial(explorer.frozen(explorer.next()))


def fake_ucb(study: Any) -> list[dict[str, Any]]:
    """The current block's finished nodes ranked by R² + 1/(1 + n); empty at a block boundary."""
    return fake_rows(study.get_trials(deepcopy=False))


def fake_rows(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """:func:`fake_ucb` of a list of trials."""
    finished = [t for t in trials if t.state.is_finished()]
    if not finished or len(finished) % N_BLOCK == 0:
        return []
    block = max(t.user_attrs.get("block", 0) for t in finished)
    rows = []
    for t in finished:
        if t.user_attrs.get("block") != block:
            continue
        r2 = lb.trial_r2(t)
        rows.append({"node": t.number, "parent": t.user_attrs.get("parent_id"),
                     "ucb": (r2 if r2 is not None else 0.0) + 1.0 / (1 + t.number % 7),
                     "visits": 1, "r2": r2, "test_pearson": t.user_attrs.get("test_pearson"),
                     "mutation": t.user_attrs.get("mutation")})
    return sorted(rows, key=lambda r: (-r["ucb"], r["node"]))


def fake_next_parent(study: Any, trials: list[FrozenTrial]) -> int:
    """The Explorer's next parent after ``trials``, as far as the logbook needs one: the fake
    table's top node (-1, the root, at a block boundary)."""
    rows = fake_rows(trials)
    return int(rows[0]["node"]) if rows else -1


def make_logbook(tmp_path: Path, config: Config | None, **kwargs: Any) -> Logbook:
    kwargs.setdefault("ucb_scores", fake_ucb)
    kwargs.setdefault("next_parent", fake_next_parent)
    kwargs.setdefault("draw_tree", False)
    kwargs.setdefault("raise_errors", True)
    return Logbook(tmp_path / "views", "demo", config=config, **kwargs)


def entries(path: Path) -> list[list[str]]:
    """The analysis file's entries, each as its lines (blank separators dropped)."""
    chunks: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if line.startswith("## Iter "):
            chunks.append([])
        if line:
            assert chunks, f"text before the first entry: {line!r}"
            chunks[-1].append(line)
    return chunks


def iters(path: Path) -> list[int]:
    return [int(re.match(r"## Iter (\d+):", e[0]).group(1)) for e in entries(path)]  # type: ignore[union-attr]


def check_form(entry: list[str]) -> None:
    assert len(entry) == len(FIELDS), entry
    for line, prefix in zip(entry, FIELDS):
        assert line.startswith(prefix), (prefix, line)


# ---------------------------------------------------------------------------------------------
# Entries


def test_entries_once_per_trial_with_every_field(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    explorer = Explorer(config)
    run_trials(study, explorer, 15, [book])

    text = book.analysis_path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# demo — analysis log"
    assert iters(book.analysis_path) == list(range(15))
    states = {t.number: t.state for t in study.trials}
    assert {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL} <= set(states.values())
    for entry, trial in zip(entries(book.analysis_path), study.trials):
        check_form(entry)
        parent = trial.user_attrs["parent_id"]
        assert entry[1] == f"Node: id={trial.number}, parent={'root' if parent < 0 else parent}"
        assert entry[2].startswith(f"Mode/Strategy: {trial.user_attrs['strategy']} (block ")
        knobs = [part.split("=")[0] for part in entry[3][len("Config: "):].split(", ")]
        assert knobs[:9] == list(lb.LOG_FORM_KNOBS)
        assert entry[6] == f"Mutation: {trial.user_attrs['mutation']}"
        if trial.state == TrialState.FAIL:
            assert entry[0] == f"## Iter {trial.number}: failed"
            assert "training failed (non-finite loss at step 12)" in entry[8]
            assert "rate_constants_R2=n/a" in entry[4]
        else:
            r2 = trial.user_attrs["rate_constants_R2"]
            assert f"rate_constants_R2={r2:.4f}" in entry[4]
            assert "final_loss=1.2e-06" in entry[4]
            assert entry[5].startswith("Visual: MLP_sub=good")
        if trial.state == TrialState.PRUNED:
            assert entry[0].endswith("(pruned)") and "pruned at step 5" in entry[8]
        if parent >= 0 and trial.state != TrialState.FAIL:
            assert "ΔR² " in entry[8] and f"vs parent {parent} " in entry[8]
    # Next = the top of the table after the trial; after 12 finished trials it is a boundary.
    all_entries = entries(book.analysis_path)
    assert all_entries[11][9] == "Next: parent=root"
    assert all_entries[12][9] == "Next: parent=12"


def test_extra_knobs_only_when_they_differ_from_base(tmp_path: Path, config: Config) -> None:
    explorer = Explorer(config)
    plan = explorer.next()
    plan.params["c_scale"] = 10.0
    trial = explorer.frozen(plan)
    line = format_entry(trial, config=config).splitlines()[3]
    assert line.endswith(", c_scale=10")
    assert "coeff_k_floor" not in line  # at its base value
    assert "lr_k=0.005" in line and "seed=42" in line and "data_augmentation_loop=2000" in line


def test_callback_twice_writes_one_entry(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    run_trials(study, Explorer(config), 3, [book])
    last = study.trials[-1]
    book(study, last)
    make_logbook(tmp_path, config)(study, last)  # another worker's logbook
    book.sync(study)
    assert iters(book.analysis_path) == [0, 1, 2]


def test_failed_trial_without_attrs_renders_na(tmp_path: Path) -> None:
    book = make_logbook(tmp_path, None, ucb_scores=lambda s: [])
    study = optuna.create_study(direction="maximize", study_name="demo")

    def objective(trial: optuna.Trial) -> float:
        raise RuntimeError("interrupted")

    study.optimize(objective, n_trials=1, callbacks=[book], catch=(RuntimeError,))
    (entry,) = entries(book.analysis_path)
    check_form(entry)
    assert entry == [
        "## Iter 0: failed",
        "Node: id=0, parent=n/a",
        "Mode/Strategy: n/a",
        "Config: seed=n/a, lr_k=n/a, lr_node=n/a, lr_sub=n/a, batch_size=n/a, n_epochs=n/a, "
        "data_augmentation_loop=n/a, coeff_MLP_node_L1=n/a, coeff_k_center=n/a",
        "Metrics: rate_constants_R2=n/a, rate_constants_R2_shifted=n/a, test_R2=n/a, "
        "test_pearson=n/a, final_loss=n/a",
        "Visual: n/a",
        "Mutation: n/a",
        "Parent rule: n/a",
        "Observation: training failed (no reason recorded); no parent recorded",
        "Next: parent=root",
    ]
    # The memory and the UCB file are written too, without crashing on the empty record.
    assert "0 complete, 0 pruned, 1 failed" in book.memory_path.read_text(encoding="utf-8")
    assert "block boundary" in book.ucb_path.read_text(encoding="utf-8")


def test_non_finite_metrics_and_config_fallback(config: Config) -> None:
    trial = optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=0.5, params={"lr_k": 0.01},
        distributions={"lr_k": FloatDistribution(1e-4, 1e-2, log=True)},
        user_attrs={"test_R2": float("nan"), "final_loss": float("inf"), "parent_id": None})
    trial.number = 0
    text = format_entry(trial, config=config, next_parent=None)
    assert "rate_constants_R2=0.5000" in text and "test_R2=nan" in text
    assert "final_loss=inf" in text and "Next: parent=n/a" in text
    assert "Node: id=0, parent=root" in text
    # Knobs the trial does not carry come from the config.
    assert "lr_k=0.01, lr_node=0.001" in text and "seed=42" in text


# ---------------------------------------------------------------------------------------------
# Sync and repair


def test_sync_writes_missing_entries_in_order(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    explorer = Explorer(config)
    run_trials(study, explorer, 4, [book])
    run_trials(study, explorer, 3, [])  # a worker that died before its callbacks
    add_trials(study, explorer, 2)
    assert iters(book.analysis_path) == [0, 1, 2, 3]
    book.sync(study)
    assert iters(book.analysis_path) == list(range(9))
    for entry in entries(book.analysis_path):
        check_form(entry)
    book.sync(study)
    assert iters(book.analysis_path) == list(range(9))


def test_sync_after_losing_the_index_rebuilds_without_duplicates(tmp_path: Path,
                                                                  config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    run_trials(study, Explorer(config), 14, [book])
    before = book.analysis_path.read_text(encoding="utf-8")
    book.index_path.unlink()
    book.sync(study)
    assert iters(book.analysis_path) == list(range(14))
    backups = list(book.directory.glob("demo_analysis.md.*.bak"))
    assert len(backups) == 1 and backups[0].read_text(encoding="utf-8") == before
    # Rebuilt from the storage, the entries say what the live callbacks said, Next included
    # (the study as it stood when each trial finished).
    assert book.analysis_path.read_text(encoding="utf-8") == before


def test_torn_append_is_cut_back(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    explorer = Explorer(config)
    run_trials(study, explorer, 3, [book])
    good = book.analysis_path.read_text(encoding="utf-8")
    with open(book.analysis_path, "a") as handle:  # a worker killed mid-append
        handle.write("\n## Iter 3: partial\nNode: id=3, par")
    run_trials(study, explorer, 1, [book])
    assert book.analysis_path.read_text(encoding="utf-8").startswith(good)
    assert iters(book.analysis_path) == [0, 1, 2, 3]
    for entry in entries(book.analysis_path):
        check_form(entry)


def test_deleted_analysis_file_is_rewritten(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    run_trials(study, Explorer(config), 3, [book])
    book.analysis_path.unlink()
    book.sync(study)
    assert iters(book.analysis_path) == [0, 1, 2]


def test_a_new_study_of_the_same_name_starts_a_new_log(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    first = optuna.create_study(direction="maximize", study_name="demo")
    run_trials(first, Explorer(config), 3, [book])
    second = optuna.create_study(direction="maximize", study_name="demo")
    run_trials(second, Explorer(config, seed=1), 2, [book])
    assert iters(book.analysis_path) == [0, 1]
    assert len(list(book.directory.glob("demo_analysis.md.*.bak"))) == 1


def test_study_fingerprints() -> None:
    assert _journal._same_study("2026-01-02T03:04:05.123456", "2026-01-02T03:04:05.123456")
    assert _journal._same_study("2026-01-02T03:04:05.123456", "2026-01-02T03:04:05")  # cut
    assert not _journal._same_study("2026-01-02T03:04:05.123456", "2026-01-02T03:04:05.654321")
    assert not _journal._same_study("2026-01-02T03:04:05", "2026-01-02T03:04:06")


def test_orphans_are_caught_up_by_later_callbacks(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config, catch_up_after=0.0)
    study = optuna.create_study(direction="maximize", study_name="demo")
    explorer = Explorer(config)
    run_trials(study, explorer, 2, [book])
    add_trials(study, explorer, 2)  # e.g. failed by the heartbeat of a killed worker
    run_trials(study, explorer, 1, [book])
    assert iters(book.analysis_path) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Memory


def test_memory_stays_under_its_limit_over_200_trials(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    explorer = Explorer(config, seed=3)
    add_trials(study, explorer, 196)
    run_trials(study, explorer, 4, [book])  # the callback's own rewrite, 200 trials, 17 blocks
    memory = book.memory_path.read_text(encoding="utf-8")
    lines = memory.splitlines()
    assert len(lines) <= MEMORY_MAX_LINES
    assert lines[0] == "# demo — working memory"
    for title in ("## Knowledge base", "## Parameter importances", "## Best configurations",
                  "## Previous blocks", "## Current block 17", "## Open questions"):
        assert any(line.startswith(title) for line in lines), title
    assert re.search(r"^- lr_k (up|down): \d+ tries, mean ΔR² [+-]\d\.\d{3}, \d+/\d+ positive",
                     memory, re.M)
    assert "- block 16 (iters 180–191, 12 trials)" in memory
    assert re.search(r"^- lr_k: 0\.\d{3}$", memory, re.M)  # an importance
    assert re.search(r"R² mean \S+ ± \S+ over \d+ (seeds|runs)", memory)  # replicates grouped
    # The first callback found no log and wrote it whole from the storage.
    assert iters(book.analysis_path) == list(range(200))


def test_memory_condenses_old_blocks_for_any_length(config: Config) -> None:
    explorer = Explorer(config, seed=5)
    trials = [explorer.frozen(explorer.next()) for _ in range(1200)]
    for number, t in enumerate(trials):
        t.number = number
    for limit in (60, 120, MEMORY_MAX_LINES):
        memory = render_memory(trials, study_name="big", base_params=config.base_params(),
                               knobs=config.search.names, n_iter_block=N_BLOCK, max_lines=limit)
        lines = memory.splitlines()
        assert len(lines) <= limit, (limit, len(lines))
        assert any(line.startswith("- block 99 ") for line in lines)  # the latest kept whole
        condensed = any(line.startswith("- blocks 1–") for line in lines)
        assert condensed == (limit < 150), limit


def test_mutation_effects_are_measured_from_params(config: Config) -> None:
    base = config.base_params()

    def trial(number: int, parent: int | None, r2: float | None, **change: Any) -> FrozenTrial:
        params = {**base, **change}
        dists = {k.name: k.distribution() for k in config.search.knobs}
        state = TrialState.FAIL if r2 is None else TrialState.COMPLETE
        t = optuna.trial.create_trial(
            state=state, value=r2, params=params, distributions=dists,
            user_attrs={"parent_id": -1 if parent is None else parent, "block": 0})
        t.number = number
        return t

    trials = [
        trial(0, None, 0.50),
        trial(1, 0, 0.60, lr_k=0.01),
        trial(2, 0, 0.70, lr_k=0.01, seed=77),  # a replicate of 1 under another seed
        trial(3, 0, 0.40, lr_sub=0.00025),
        trial(4, 0, None, lr_node=0.002),
        trial(5, 1, 0.65, seed=43, lr_k=0.01),
        trial(6, 0, 0.45, lr_k=0.01, lr_sub=0.00025),
    ]
    memory = render_memory(trials, study_name="hand", base_params=base,
                           knobs=config.search.names, choices={"sub_through_origin": [False, True]})
    assert "- lr_k up: 1 try, mean ΔR² +0.100, 1/1 positive" in memory
    assert "- lr_sub down: 1 try, mean ΔR² -0.100, 0/1 positive" in memory
    assert "- lr_node up: 1 try, mean ΔR² n/a, 1 failed" in memory
    assert "- lr_k up + lr_sub down: 1 try, mean ΔR² -0.050, 0/1 positive" in memory
    assert "- seed only (replicates): 1 pair, mean |ΔR²| 0.050" in memory
    # 0 -> 2 changes lr_k and seed: a compound change, counted as such.
    assert "- lr_k up + seed up: 1 try, mean ΔR² +0.200, 1/1 positive" in memory
    assert ("1. R² mean 0.650 ± 0.050 over 3 seeds (range 0.600–0.700; iters 1, 2, 5): "
            "lr_k=0.01 (rest as base)") in memory
    assert "- lr_k: down not tried yet" in memory
    assert "- sub_through_origin: -> false, -> true not tried yet" in memory
    assert "tried once only (unconfirmed): " in memory


def test_replicate_groups_leave_out_the_configs_seed_knob(config: Config) -> None:
    """The training seed's knob is the config's role, not whatever knob is named seed."""
    import dataclasses

    from metab_opt.ucbtree import Roles

    base = config.base_params()
    dists = {k.name: k.distribution() for k in config.search.knobs}
    trials = []
    for number, (r2, seed) in enumerate([(0.6, 1), (0.7, 2), (0.65, 3)]):
        t = optuna.trial.create_trial(state=TrialState.COMPLETE, value=r2,
                                      params={**base, "seed": seed}, distributions=dists)
        t.number = number
        trials.append(t)
    (group,) = lb.replicate_groups(trials, config=config)  # roles: seed: seed
    assert [n.number for n in group.runs] == [0, 1, 2]
    no_seed = dataclasses.replace(config, search=dataclasses.replace(config.search,
                                                                     roles=Roles()))
    groups = lb.replicate_groups(trials, config=no_seed)  # no seed role: each run alone
    assert [[n.number for n in g.runs] for g in groups] == [[1], [2], [0]]
    # Without a config, a knob named seed is the training seed.
    assert len(lb.replicate_groups(trials, names=config.search.names, base_params=base)) == 1


def test_one_knob_lines_are_the_samplers_direction_memory(config: Config) -> None:
    """The memory's one-knob lines count the moves the sampler's direction memory learns from;
    where failures make its mean differ from the one shown, the line gives the sampler's."""
    from metab_opt.sampler import UCBMutationSampler
    from metab_opt.trial_record import read_nodes
    from metab_opt.ucbtree._mutation import direction_memory

    sampler = UCBMutationSampler.from_config(config, seed=2)
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        params = {name: suggest(trial, name, dist)
                  for name, dist in sampler.search_space.items()}
        if trial.number % 5 == 4:
            raise ValueError("boom")
        return synthetic_r2(params, random.Random(trial.number))

    study.optimize(objective, n_trials=40, catch=(ValueError,))
    trials = study.get_trials(deepcopy=False)
    memory = make_logbook(Path("unused"), config).render_memory(trials)
    names = config.search.names
    nodes = read_nodes(trials, sampler.base_params, names,
                       [n for n in names if n != sampler.roles.seed])
    gains = direction_memory(nodes, {n.number: n for n in nodes}, sampler.knobs,
                             sampler.base_params).gains
    numeric = {k.name for k in sampler.knobs if k.scale != "categorical"}
    checked = 0
    for name, by_direction in gains.items():
        if name not in numeric or name == sampler.roles.seed:
            continue
        for direction, (total, count) in by_direction.items():
            word = "up" if direction > 0 else "down"
            (line,) = [ln for ln in memory.splitlines() if ln.startswith(f"- {name} {word}: ")]
            assert f": {count} {'try' if count == 1 else 'tries'}, " in line, line
            shown = re.search(r"sampler's mean ΔR² ([+-]\d\.\d{3})", line) or re.search(
                r"mean ΔR² ([+-]\d\.\d{3})", line)
            assert shown is not None, line
            assert float(shown.group(1)) == pytest.approx(total / count, abs=5e-4), line
            checked += 1
    assert checked >= 3
    assert "sampler's mean ΔR²" in memory  # the failures made a difference somewhere


def test_param_importances_guards() -> None:
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    importances, reason = param_importances(study)
    assert importances is None and "need 10" in reason
    constant = optuna.create_study(direction="maximize")
    constant.optimize(lambda t: t.suggest_float("x", 1, 1) + t.suggest_int("n", 0, 0), n_trials=12)
    importances, reason = param_importances(constant)
    assert importances is None and "two values" in reason
    varied = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    varied.optimize(lambda t: t.suggest_float("x", 0, 1) + 0 * t.suggest_float("y", 0, 1),
                    n_trials=12)
    importances, reason = param_importances(varied)
    assert importances is not None and set(importances) == {"x", "y"}


def test_param_importances_leave_the_training_seed_out() -> None:
    # A study whose value follows the seed: the seed would take most of the importance.
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(1))
    study.optimize(lambda t: t.suggest_int("seed", 0, 100) + 5 * t.suggest_float("x", 0, 1)
                   + 0 * t.suggest_float("y", 0, 1), n_trials=20)
    with_seed, _ = param_importances(study, seed_knob=None)
    assert with_seed is not None and max(with_seed, key=with_seed.__getitem__) == "seed"
    importances, reason = param_importances(study)  # the seed knob by default: "seed"
    assert importances is not None and set(importances) == {"x", "y"}
    assert sum(importances.values()) == pytest.approx(1.0)
    assert "training seed (seed) left out" in reason
    # Only the seed took two values: it alone is no reason for importances.
    seeds = optuna.create_study(direction="maximize")
    seeds.optimize(lambda t: t.suggest_int("seed", 0, 100) + t.suggest_float("x", 1, 1),
                   n_trials=12)
    importances, reason = param_importances(seeds)
    assert importances is None and "no parameter but the training seed" in reason


def test_memory_importances_leave_the_configs_seed_out(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    add_trials(study, Explorer(config, seed=3), 59)
    run_trials(study, Explorer(config, seed=4), 1, [book])
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len({t.params["seed"] for t in complete}) >= 2  # the seed varied: it could rank
    memory = book.memory_path.read_text(encoding="utf-8")
    section = memory.split("## Parameter importances\n", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^- lr_k: 0\.\d{3}$", section, re.M)
    assert not re.search(r"^- seed:", section, re.M), section
    assert "the training seed (seed) left out: noise, not a setting" in section


JOINT_ATTRS: dict[str, Any] = {  # a k-only run's joint metrics: k recovered, homeostasis not
    "joint_status": "partial-k",
    "joint_diagnosis": "missing: type 0 slope (ratio 0.01 outside [0.8, 1.25]); type 1 slope "
                       "(ratio 0.00 outside [0.8, 1.25]); type clusters "
                       "(embedding_cluster_acc 0.55 < 1.0)",
    "MLP_node_slope_ratio_type0": 0.01, "MLP_node_slope_ratio_type1": 0.0,
    "avg_slope_ratio": 0.005, "embedding_cluster_acc": 0.55, "embedding_silhouette": 0.02,
}


@pytest.mark.parametrize("constraints", ["none", "joint"])
def test_the_joint_verdict_shows_only_where_the_study_asks_for_it(
        tmp_path: Path, config: Config, constraints: str) -> None:
    # The same config, k-only or asking for the joint recovery (search.constraints).
    cfg = dataclasses.replace(config, search=dataclasses.replace(config.search,
                                                                 constraints=constraints))
    book = make_logbook(tmp_path, cfg)
    study = optuna.create_study(direction="maximize", study_name="demo")
    explorer = Explorer(cfg)
    for _ in range(5):
        plan = explorer.next()
        plan.attrs.update(JOINT_ATTRS)
        study.add_trial(explorer.frozen(plan))
    book.sync(study)
    log = book.analysis_path.read_text(encoding="utf-8")
    memory = book.memory_path.read_text(encoding="utf-8")
    observations = [line for line in log.splitlines() if line.startswith("Observation: ")]
    assert len(observations) == 5
    if constraints == "joint":
        assert all("joint partial-k: slope ratios 0.01/0.00 (avg 0.01), clusters 0.55" in o
                   and "type clusters (embedding_cluster_acc 0.55" in o for o in observations)
        assert re.search(r"— the incumbent \(joint, iter \d+: partial-k: slope ratios "
                         r"0\.01/0\.00 \(avg 0\.01\), clusters 0\.55", memory), memory
    else:
        for text in (log, memory):
            assert "partial-k" not in text and "slope ratios" not in text
            assert "embedding_cluster_acc" not in text and "(joint" not in text
        assert not any("joint" in o for o in observations)
        assert "— the incumbent" in memory  # the line that held the verdict is there


def test_dashboard_note_holds_the_memory(tmp_path: Path, config: Config) -> None:
    from optuna_dashboard import get_note

    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    run_trials(study, Explorer(config), 3, [book])
    assert get_note(study) == book.memory_path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# UCB file and tree


def test_ucb_scores_form() -> None:
    rows = [
        {"node": 37, "parent": 35, "ucb": 2.134, "visits": 2, "r2": 0.8123,
         "test_pearson": 0.9812, "mutation": "lr_k: 0.005 -> 0.01"},
        {"node": 35, "parent": None, "ucb": 1.5, "visits": 3, "r2": None,
         "test_pearson": None, "mutation": None},
    ]
    text = format_ucb_scores(rows, block=3, after=41)
    lines = text.splitlines()
    assert lines[0] == ("# UCB scores (block 3, after iter 41): 2 nodes, highest UCB=37 (the "
                        "sampler's rule picks the next parent: see the log's Next line)")
    assert lines[1].split() == ["node", "UCB", "parent", "visits", "R2", "test_pearson",
                                "mutation"]
    assert lines[2].split() == ["37", "2.1340", "35", "2", "0.8123", "0.9812", "lr_k:", "0.005",
                                "->", "0.01"]
    assert lines[3].split() == ["35", "1.5000", "root", "3", "n/a", "n/a", "n/a"]
    # Fixed width: the columns line up.
    assert lines[2].index("lr_k") == lines[1].index("mutation")
    assert lines[2].index("0.8123") + 6 == lines[1].index("R2") + 2
    assert format_ucb_scores([], block=4) == (
        "# UCB scores (block 4): block boundary, no nodes yet -> the next block starts at its "
        "root\n")


def test_ucb_file_is_rewritten(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo")
    run_trials(study, Explorer(config), 13, [book])
    text = book.ucb_path.read_text(encoding="utf-8")
    assert text.startswith("# UCB scores (current block, after iter 12): 1 nodes, highest UCB=12")
    assert entries(book.analysis_path)[-1][9] == "Next: parent=12"


def test_tree_is_drawn_and_a_failing_plot_costs_nothing(
        tmp_path: Path, config: Config, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[list[dict[str, Any]]] = []

    def plot(path: Path, nodes: list[dict[str, Any]]) -> None:
        calls.append(nodes)
        Path(path).write_bytes(b"\x89PNG fake")

    monkeypatch.setitem(sys.modules, "metab_opt.tree_plot",
                        types.SimpleNamespace(plot_exploration_tree=plot))
    book = make_logbook(tmp_path, config, draw_tree=True)
    study = optuna.create_study(direction="maximize", study_name="demo")
    run_trials(study, Explorer(config), 3, [book])
    assert book.tree_path.read_bytes() == b"\x89PNG fake"
    assert [n["node"] for n in calls[-1]] == [0, 1, 2]
    assert set(calls[-1][0]) == {"node", "parent", "r2", "mutation", "strategy", "block"}
    assert calls[-1][0]["parent"] is None
    assert not list(book.directory.glob(".exploration_tree*"))  # no temporary left behind

    def broken(path: Path, nodes: list[dict[str, Any]]) -> None:
        raise RuntimeError("no display")

    monkeypatch.setitem(sys.modules, "metab_opt.tree_plot",
                        types.SimpleNamespace(plot_exploration_tree=broken))
    with caplog.at_level(logging.WARNING, logger="metab_opt.logbook"):
        run_trials(study, Explorer(config), 1, [book])
    assert iters(book.analysis_path) == [0, 1, 2, 3]
    assert any("exploration tree not drawn" in r.getMessage() for r in caplog.records)


def test_tree_nodes_of_unfinished_and_failed_trials() -> None:
    done = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"parent_id": 4})
    done.number = 0
    nodes = tree_nodes([done])
    assert nodes == [{"node": 0, "parent": 4, "r2": None, "mutation": None, "strategy": None,
                      "block": 1}]


def test_missing_sampler_gives_na_next(tmp_path: Path, config: Config,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "metab_opt.sampler", None)  # import fails
    book = make_logbook(tmp_path, config, ucb_scores=None, next_parent=None)
    study = optuna.create_study(direction="maximize", study_name="demo")
    run_trials(study, Explorer(config), 2, [book])
    assert entries(book.analysis_path)[-1][9] == "Next: parent=n/a"
    assert book.ucb_path.read_text(encoding="utf-8").startswith("# UCB scores unavailable")


def test_with_the_real_sampler(tmp_path: Path, config: Config,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With UCBMutationSampler: Next is the parent the sampler then gave the next trial (not
    the UCB table's top row: a rule such as the initial spread or a replicate picks another),
    and a log rebuilt from the storage, which reads the recorded parents, repeats the live
    entries, which predicted them, exactly."""
    sampler_module = pytest.importorskip("metab_opt.sampler")
    if not hasattr(sampler_module, "UCBMutationSampler"):
        pytest.skip("metab_opt.sampler is not complete yet")
    monkeypatch.setitem(sys.modules, "metab_opt.tree_plot", None)  # the tree is tested above
    sampler = sampler_module.UCBMutationSampler.from_config(config, seed=0)
    study = optuna.create_study(direction="maximize", study_name="demo", sampler=sampler)
    book = make_logbook(tmp_path, config, ucb_scores=None, next_parent=None)

    def objective(trial: optuna.Trial) -> float:
        params = {name: suggest(trial, name, dist)
                  for name, dist in sampler.search_space.items()}
        r2 = synthetic_r2(params, random.Random(trial.number))
        trial.set_user_attr("rate_constants_R2", r2)
        trial.set_user_attr("test_pearson", 0.97)
        return r2

    tops: list[Any] = []

    def record(study: optuna.Study, trial: FrozenTrial) -> None:
        rows = sampler_module.ucb_scores(study)
        tops.append(rows[0]["node"] if rows else "root")

    study.optimize(objective, n_trials=14, callbacks=[book, record])
    assert iters(book.analysis_path) == list(range(14))
    trials = study.get_trials(deepcopy=False)
    parents = [t.user_attrs["parent_id"] for t in trials[1:]]
    parents.append(sampler_module.next_parent(study))  # the 15th trial's, not yet run
    nexts = ["root" if p < 0 else p for p in parents]
    for entry, expected in zip(entries(book.analysis_path), nexts):
        check_form(entry)
        assert entry[9] == f"Next: parent={expected}"
    # The check has teeth: the UCB table's top row is not always the parent the rules use.
    assert any(top != nxt for top, nxt in zip(tops, nexts))
    assert book.ucb_path.read_text(encoding="utf-8").startswith("# UCB scores")
    live = book.analysis_path.read_text(encoding="utf-8")
    book.index_path.unlink()
    book.sync(study)
    assert book.analysis_path.read_text(encoding="utf-8") == live


# ---------------------------------------------------------------------------------------------
# Disk errors and concurrency


def test_disk_errors_warn_and_sync_repairs(tmp_path: Path, config: Config,
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    book = make_logbook(tmp_path, config, raise_errors=False)
    study = optuna.create_study(direction="maximize", study_name="demo")
    explorer = Explorer(config)
    run_trials(study, explorer, 2, [book])

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system", str(book.analysis_path))

    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(_journal, "_append", refuse)
        patch.setattr(_journal, "atomic_write", refuse)
        patch.setattr(_callback, "atomic_write", refuse)
        run_trials(study, explorer, 2, [book])  # no exception reaches Optuna
    warnings = [r for r in caplog.records
                if r.name == "metab_opt.logbook" and r.levelno >= logging.WARNING]
    assert len(warnings) == 2  # one line per trial
    assert "Read-only file system" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage() and warnings[0].exc_info is None
    assert all(t.state.is_finished() for t in study.trials)
    assert iters(book.analysis_path) == [0, 1]
    book.sync(study)
    assert iters(book.analysis_path) == [0, 1, 2, 3]


def test_unwritable_directory_warns(tmp_path: Path, config: Config,
                                    caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    book = Logbook(blocker / "views", "demo", config=config, ucb_scores=fake_ucb,
                   next_parent=fake_next_parent, draw_tree=False)
    study = optuna.create_study(direction="maximize", study_name="demo")
    with caplog.at_level(logging.WARNING):
        run_trials(study, Explorer(config), 1, [book])
    (warning,) = [r for r in caplog.records
                  if r.name == "metab_opt.logbook" and r.levelno >= logging.WARNING]
    assert "logbook: cannot write" in warning.getMessage()
    from optuna_dashboard import get_note

    assert get_note(study).startswith("# demo — working memory")  # the storage still has it


def test_a_held_lock_times_out_with_a_warning(tmp_path: Path, config: Config,
                                              caplog: pytest.LogCaptureFixture) -> None:
    import filelock

    book = make_logbook(tmp_path, config, raise_errors=False, lock_timeout=0.2)
    study = optuna.create_study(direction="maximize", study_name="demo")
    explorer = Explorer(config)
    run_trials(study, explorer, 1, [book])
    with filelock.FileLock(str(book.lock_path)), caplog.at_level(logging.WARNING):
        run_trials(study, explorer, 1, [book])  # another worker holds the lock
    (warning,) = [r for r in caplog.records if r.name == "metab_opt.logbook"]
    assert "held for over" in warning.getMessage()
    run_trials(study, explorer, 1, [book])
    assert iters(book.analysis_path) == [0, 2]  # 1 waits for the start-up sync
    book.sync(study)
    assert iters(book.analysis_path) == [0, 2, 1]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_directory_warns(tmp_path: Path, config: Config,
                                   caplog: pytest.LogCaptureFixture) -> None:
    book = make_logbook(tmp_path, config, raise_errors=False)
    book.directory.mkdir()
    book.directory.chmod(0o555)
    try:
        study = optuna.create_study(direction="maximize", study_name="demo")
        with caplog.at_level(logging.WARNING):
            run_trials(study, Explorer(config), 1, [book])
        assert any("logbook: cannot write" in r.getMessage() for r in caplog.records)
    finally:
        book.directory.chmod(0o755)


WORKER = textwrap.dedent("""
    import sys, time
    import optuna
    from metab_opt.logbook import Logbook

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, folder, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.load_study(study_name="demo", storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=worker))
    book = Logbook(folder, "demo", ucb_scores=lambda s: [], next_parent=lambda s, t: None,
                   draw_tree=False, raise_errors=True)

    def objective(trial):
        x = trial.suggest_float("lr_k", 1e-4, 1e-2, log=True)
        trial.set_user_attr("parent_id", -1)
        trial.set_user_attr("mutation", "none")
        trial.set_user_attr("visual", "worker %d " % worker + "x" * 2000)
        return x * 100

    study.optimize(objective, n_trials=4, callbacks=[book])
""")


def test_two_processes_share_the_files(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="demo", storage=url, direction="maximize")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    folder = tmp_path / "views"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), url, str(folder), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode()
    path = folder / "demo_analysis.md"
    assert path.read_text(encoding="utf-8").splitlines()[0] == "# demo — analysis log"
    assert sorted(iters(path)) == list(range(8))
    for entry in entries(path):
        check_form(entry)
        assert re.fullmatch(r"Visual: worker [01] x{2000}", entry[5])
    assert not list(folder.glob(".*.tmp"))


def test_threads_share_the_files(tmp_path: Path, config: Config) -> None:
    book = make_logbook(tmp_path, config)
    study = optuna.create_study(direction="maximize", study_name="demo",
                                sampler=optuna.samplers.RandomSampler(0))

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("parent_id", -1)
        return trial.suggest_float("lr_k", 1e-4, 1e-2, log=True)

    study.optimize(objective, n_trials=8, n_jobs=4, callbacks=[book])
    assert sorted(iters(book.analysis_path)) == list(range(8))


def test_module_imports_without_torch() -> None:
    code = ("import sys; import metab_opt.logbook; "
            "assert 'torch' not in sys.modules; assert 'metab_opt.sampler' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_constructor_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="study_name"):
        Logbook(tmp_path, "a/b")
    with pytest.raises(ValueError, match="lock_timeout"):
        Logbook(tmp_path, "demo", lock_timeout=-1)


def test_another_sampler_gives_na_next_without_a_warning(tmp_path: Path, config: Config,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A baseline sampler (no tree) needs no override: Next is n/a, and nothing is warned."""
    book = Logbook(tmp_path / "views", "demo", config=config, ucb_scores=fake_ucb,
                   draw_tree=False)
    study = optuna.create_study(direction="maximize", study_name="demo",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    with caplog.at_level(logging.WARNING, logger="metab_opt.logbook"):
        run_trials(study, Explorer(config), 2, [book])
    assert entries(book.analysis_path)[-1][9] == "Next: parent=n/a"
    assert not [r for r in caplog.records if "next parent" in r.getMessage()]
