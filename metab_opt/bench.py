"""``metab-opt bench``: the trainer's speed against a per-sample reference, in one run.

The reference trains the same model the way the original implementation did: one forward pass
per frame of the batch and a summed loss. Both loops take real optimizer steps on the same data
with the same regularizers, after a warm-up.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import torch

from metab_opt.config import Config
from metab_opt.simulation import load_or_build
from metab_opt.training import (
    _make_step,
    _step_terms,
    build_model,
    param_groups,
    select_device,
    term_weights,
)

__all__ = ["bench"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(step: Any, n: int, warmup: int, dev: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(dev)
    return n / (time.perf_counter() - t0)


def bench(cfg: Config, *, data_root: str | Path | None = None, device: str = "auto",
          steps: int = 2000, threads: int | None = None,
          cuda_graph: bool = True) -> dict[str, Any]:
    """Steps per second of the batched trainer and of the per-sample reference."""
    dev = select_device(device)
    previous = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads or 1)
    try:
        ds, _ = load_or_build(cfg.simulation, data_root)
        t = cfg.training
        x = torch.as_tensor(ds.x, dtype=torch.float32, device=dev)
        y = torch.as_tensor(ds.y, dtype=torch.float32, device=dev)
        coeffs = term_weights(cfg, dev)
        centre = cfg.simulation.log_k_center
        gen = torch.Generator(device=dev).manual_seed(t.seed)

        # The trainer's own step (on a GPU: replayed from a CUDA graph).
        take_step = _make_step(build_model(ds, cfg, dev), cfg, x, y, gen, cuda_graph)
        step_numbers = itertools.count(1)

        def batched() -> None:
            take_step(next(step_numbers))

        ref_model = build_model(ds, cfg, dev)
        ref_opt = torch.optim.Adam(param_groups(ref_model, cfg))

        def per_sample() -> None:
            idx = torch.randint(x.shape[0], (t.batch_size,), generator=gen, device=dev)
            total = x.new_zeros(())
            for i in idx.tolist():
                terms = _step_terms(ref_model, x[i:i + 1], y[i:i + 1], cfg, centre)
                total = total + (terms * coeffs).sum()
            ref_opt.zero_grad(set_to_none=True)
            (total / t.batch_size).backward()
            ref_opt.step()

        warm = max(10, steps // 20)
        fast = _timed(batched, steps, warm, dev)
        ref = _timed(per_sample, max(10, steps // 4), max(5, warm // 4), dev)
        n_steps = t.n_steps(x.shape[0])
        return {
            "config": cfg.name,
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "cuda_graph": take_step.graphed,
            "batch_size": t.batch_size,
            "steps_per_s": round(fast, 1),
            "reference_steps_per_s": round(ref, 1),
            "speedup": round(fast / ref, 2),
            "trial_steps": n_steps,
            "trial_seconds": round(n_steps / fast, 1),
        }
    finally:
        torch.set_num_threads(previous)
