"""Seeded UCB studies on synthetic objectives, summarised as the sampler's decisions.

``record()`` runs them and returns, per study, each trial's strategy, parent and params; the
golden file ``tests/data/decisions.json`` holds what the sampler decided when it was written,
and ``tests/test_decisions.py`` replays the studies and compares. A restructure of the sampler
that changes no rule must leave every decision as it was. The objectives exercise every
strategy: the initial spread, an enqueued trial, replicates, degeneracy-break, boundary-probe,
duration (a learning curve still rising), explore (long partial and failed streaks), exploit
with follow-through, failed and pruned trials; the survey of block 1 (the configs'
``search.survey``).

Each config also runs with ``search.survey`` set to 0 (keys ``<config>:survey0:seed<n>``):
those studies decide exactly as every study did before the survey existed (the golden file
written before it, checked once when the survey was added), so they keep guarding the rules
without a survey bit for bit.

Run ``python tests/_decisions.py`` to rewrite the golden file (only when a rule changes on
purpose, and say so in the commit).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "decisions.json"
CONFIGS = ("rank50.yaml", "tiny.yaml")
SEEDS = (0, 1, 2)
# Each config as shipped (its search.survey), and with the survey off.
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("", {}), (":survey0", {"search.survey": 0, "search.model": False}))
N_TRIALS = 48


def _truth(p: Mapping[str, Any]) -> float:
    """A synthetic R²: 1 near an optimum in the learning rates and duration; far from it the
    value falls below 0 (failed), through partial to converged."""
    r2 = 1.0 - 0.3 * math.log2(p["lr_k"] / 2e-3) ** 2 - 0.2 * math.log2(p["lr_sub"] / 2e-3) ** 2
    r2 -= 0.05 * math.log2(p["lr_node"] / 5e-4) ** 2
    r2 -= 0.1 * math.log2(2000 / p["data_augmentation_loop"])
    r2 += 0.3 if p["sub_through_origin"] else 0.0
    return r2 - 0.02 * abs(math.log10(p["c_scale"]))


def _noise(seed: int) -> float:
    return (seed * 2654435761 % 1000) / 1000 * 0.04 - 0.02


def _objective(trial: optuna.Trial, search: Any) -> float:
    from metab_opt.sampler import suggest_params

    p = suggest_params(trial, search)
    r2 = _truth(p) + _noise(p["seed"])
    if p["batch_size"] >= 32:
        raise RuntimeError("synthetic failure")  # a failed trial: never a parent
    rate = 0.35 * p["data_augmentation_loop"] / 2000
    for step in range(8):
        trial.report(r2 * (1 - math.exp(-rate * (step + 1) * 4)), step)
        if p["n_epochs"] >= 3 and step == 4:
            raise optuna.TrialPruned()  # a pruned trial: its last report is its value
    # Degenerate dynamics (test_pearson high, R² not) while lr_sub is large.
    trial.set_user_attr("test_pearson", min(1.0, r2 + (0.5 if p["lr_sub"] >= 1e-3 else 0.05)))
    return r2


def _study(cfg: Any, seed: int) -> list[dict[str, Any]]:
    from metab_opt.sampler import RECORD_KEY, UCBMutationSampler

    sampler = UCBMutationSampler.from_config(cfg, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    objective = functools.partial(_objective, search=cfg.search)
    study.optimize(objective, n_trials=N_TRIALS // 2, catch=(RuntimeError,))
    study.enqueue_trial({"lr_k": 1e-3})
    study.optimize(objective, n_trials=N_TRIALS // 2, catch=(RuntimeError,))
    return [{"number": t.number, "strategy": t.system_attrs[RECORD_KEY]["strategy"],
             "parent": t.system_attrs[RECORD_KEY]["parent"],
             "params": t.system_attrs[RECORD_KEY]["params"]}
            for t in study.get_trials(deepcopy=False)]


def record() -> dict[str, list[dict[str, Any]]]:
    from metab_opt.config import load_config

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict[str, list[dict[str, Any]]] = {}
    for name in CONFIGS:
        for variant, overrides in VARIANTS:
            cfg = load_config(ROOT / "configs" / name, overrides=overrides)
            for seed in SEEDS:
                out[f"{name}{variant}:seed{seed}"] = _study(cfg, seed)
    return out

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    GOLDEN.write_text(json.dumps(record(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
