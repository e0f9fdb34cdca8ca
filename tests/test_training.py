"""The batched trainer, its optimizer and regularizers, the evaluation and one run end to end."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metab_opt import metrics as M
from metab_opt.config import Config
from metab_opt.objective import HEADLINE, run_training
from metab_opt.training import (
    TERMS,
    GroupAdam,
    Report,
    TrainingDiverged,
    _step_terms,
    build_model,
    evaluate,
    param_groups,
    rollout,
    select_device,
    train,
)

COEFFS = ("coeff_MLP_sub_diff", "coeff_MLP_node_L1", "coeff_k_center", "coeff_k_floor",
          "coeff_MLP_sub_norm")
TERM_OF = dict(zip(COEFFS, TERMS[1:]))  # coefficient -> the term it weighs


def with_training(cfg: Config, **values: object) -> Config:
    """The config with training values set directly (also outside the search ranges, which
    ``load_config`` refuses as base values)."""
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **values))


def coeff_tensor(cfg: Config) -> torch.Tensor:
    t = cfg.training
    return torch.tensor([1.0, t.coeff_MLP_sub_diff, t.coeff_MLP_node_L1, t.coeff_k_center,
                         t.coeff_k_floor, t.coeff_MLP_sub_norm])


def batch(ds, idx) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(ds.x[idx], dtype=torch.float32),
            torch.as_tensor(ds.y[idx], dtype=torch.float32))


def terms_of(model, ds, cfg: Config, idx=slice(0, 8)) -> torch.Tensor:
    c, y = batch(ds, idx)
    return _step_terms(model, c, y, cfg, coeff_tensor(cfg), cfg.simulation.log_k_center)


def sgd_batches(n: int, n_frames: int, size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(n_frames, (size,), generator=gen) for _ in range(n)]


def adam_step(model, opt, ds, cfg: Config, idx: torch.Tensor) -> None:
    opt.zero_grad()
    (terms_of(model, ds, cfg, idx.numpy()) * coeff_tensor(cfg)).sum().backward()
    opt.step()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------------ parameter groups


def test_param_groups_learning_rates(tiny_config) -> None:
    cfg = tiny_config({"training.learning_rate_k": 2e-3, "training.learning_rate_node": 3e-4,
                       "training.learning_rate_sub": 4e-3, "training.learning_rate_start": 5e-4})
    model = build_model_cpu(cfg)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert set(groups) == {"k", "node", "sub"}
    assert [groups[n]["lr"] for n in ("k", "node", "sub")] == [2e-3, 3e-4, 4e-3]
    ids = {n: {id(p) for p in g["params"]} for n, g in groups.items()}
    assert ids["k"] == {id(model.log_k)}
    assert ids["node"] == {id(p) for p in model.mlp_node.parameters()} | {id(model.embedding)}
    assert ids["sub"] == {id(p) for p in model.mlp_sub.parameters()}
    # Every parameter in exactly one group.
    every = [id(p) for g in groups.values() for p in g["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))
    # GroupAdam gives each tensor its group's rate.
    opt = GroupAdam(param_groups(model, cfg))
    lr_of = {id(p): lr for p, lr in zip(opt.params, opt.lrs)}
    assert lr_of[id(model.log_k)] == 2e-3
    assert lr_of[id(model.embedding)] == 3e-4
    assert lr_of[id(model.mlp_node.last.weight)] == 3e-4
    assert lr_of[id(model.mlp_sub[0].weight)] == 4e-3


def test_param_groups_rest_gets_learning_rate_start(tiny_config) -> None:
    cfg = tiny_config({"training.learning_rate_start": 7e-4})
    model = build_model_cpu(cfg)
    model.extra = torch.nn.Parameter(torch.zeros(3))
    groups = param_groups(model, cfg)
    assert groups[-1]["name"] == "rest" and groups[-1]["lr"] == 7e-4
    assert [id(p) for p in groups[-1]["params"]] == [id(model.extra)]


def build_model_cpu(cfg: Config, ds=None):
    from metab_opt.simulation import simulate

    return build_model(ds if ds is not None else _tiny_ds(cfg), cfg, "cpu")


_DS_CACHE: dict[str, object] = {}


def _tiny_ds(cfg: Config):
    from metab_opt.simulation import simulate

    key = cfg.simulation_hash if isinstance(cfg.simulation_hash, str) else cfg.simulation_hash()
    if key not in _DS_CACHE:
        _DS_CACHE[key] = simulate(cfg.simulation)
    return _DS_CACHE[key]
