"""The end-of-run evaluation: every metric of DESIGN.md and the arrays the plots need.

The learned model is rolled out on the held-out trajectory with the simulator's scheme
(:func:`rollout`); k, MLP_sub and MLP_node are compared with the truth
(:mod:`metab_opt.problem.metrics`)
and the joint recovery is judged (:mod:`metab_opt.problem.joint`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from metab_opt.config import Config
from metab_opt.problem import metrics as M
from metab_opt.problem.joint import joint_metrics
from metab_opt.problem.model import MetabolismGNN
from metab_opt.problem.simulation import Dataset

__all__ = ["evaluate", "rollout"]


@torch.no_grad()
def rollout(model: MetabolismGNN, c0: Tensor, n_frames: int, dt: float,
            substeps: int = 1) -> Tensor:
    """Euler roll-out of the learned model from c0, concentrations clamped at 0: the
    simulator's scheme (``substeps`` steps of ``dt / substeps`` per frame)."""
    out = torch.empty(n_frames, c0.shape[-1], device=c0.device)
    c = c0.clone()
    h = dt / substeps
    for t in range(n_frames):
        out[t] = c
        for _ in range(substeps):
            c = torch.clamp(c + h * model(c.unsqueeze(0)).squeeze(0), min=0.0)
        if not torch.isfinite(c).all():
            out[t + 1:] = float("nan")
            break
    return out


@torch.no_grad()
def evaluate(model: MetabolismGNN, ds: Dataset, cfg: Config) -> tuple[dict[str, Any],
                                                                      dict[str, np.ndarray]]:
    """All end-of-run metrics (DESIGN.md) and the arrays the plots need."""
    model.eval()
    dev = model.log_k.device
    x = torch.as_tensor(ds.x, dtype=torch.float32, device=dev)
    y = torch.as_tensor(ds.y, dtype=torch.float32, device=dev)
    sq = 0.0
    for start in range(0, x.shape[0], 1024):
        pred = model(x[start:start + 1024])
        sq += float(((pred - y[start:start + 1024]) ** 2).sum())
    final_loss = sq / y.numel()

    log_k = model.log_k.detach().cpu().double().numpy()
    out: dict[str, Any] = {"final_loss": final_loss}
    out.update(M.rate_constant_metrics(ds.log_k_true, log_k))

    x_test = torch.as_tensor(ds.x_test, dtype=torch.float32, device=dev)
    roll = rollout(model, x_test[0], x_test.shape[0], cfg.simulation.delta_t,
                   cfg.simulation.substeps).cpu().numpy()
    out.update(M.rollout_metrics(ds.x_test, roll))

    c_max = float(ds.x.max())
    c_grid = torch.linspace(0.0, c_max, 200, device=dev)
    # MLP_sub is scored against c^s on the integer powers (a real model's 0.5 O2 takes part in
    # training but has no c^s curve of its own in the metrics).
    powers = sorted({int(p) for p in np.unique(ds.substrate_power)
                     if p > 0 and float(p).is_integer()})
    curves = {s: model.substrate_function(c_grid, torch.full_like(c_grid, float(s))).cpu().numpy()
              for s in powers}
    sub = M.mlp_sub_metrics(c_grid.cpu().numpy(), curves)
    out.update(sub)

    c_node = torch.linspace(float(ds.x.min()), c_max, 50, device=dev)
    c_mat = c_node[:, None].expand(-1, model.n_metabolites).contiguous()
    node_out = model.node_function(c_mat).cpu().numpy()
    node = M.mlp_node_metrics(c_mat.cpu().numpy(), node_out, ds.metabolite_type,
                              ds.network.lambdas, ds.network.baselines)
    out.update(node)
    emb = model.embedding.detach().cpu().double().numpy()
    out.update(joint_metrics(emb, ds.metabolite_type, out))

    r2 = out["rate_constants_R2"]
    out["status"] = M.classify(r2)
    out["degeneracy_gap"] = M.degeneracy_gap(out["test_pearson"], r2)
    out["diagnosis"] = M.diagnose(out["test_pearson"], r2)
    out["visual"] = M.visual_line({**sub, **node})
    arrays = {
        "log_k_true": ds.log_k_true, "log_k_learned": log_k,
        "c_grid": c_grid.cpu().numpy(), "x_test": ds.x_test, "x_rollout": roll,
        "c_node": c_mat.cpu().numpy(), "node_out": node_out, "embedding": emb,
        **{f"sub_curve_{s}": v for s, v in curves.items()},
    }
    model.train()
    return out, arrays
