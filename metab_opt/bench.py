"""``metab-opt bench``: the trainer's speed against a per-sample reference, in one run.

The reference trains the same model the way the original implementation did: one forward pass
per frame of the batch, a summed loss, autograd and ``torch.optim.Adam``. Both loops take real
optimizer steps on the same data with the same regularizers, after a warm-up.

The two loops are timed in alternating rounds and each figure is the median of its rounds: on a
shared machine the speed drifts by tens of percent within a minute, and back-to-back timings
would let that drift into the ratio.
"""

from __future__ import annotations

import itertools
import statistics
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


def _rate(step: Any, n: int, dev: torch.device) -> float:
    """Steps per second of ``n`` calls of ``step``."""
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(dev)
    return n / (time.perf_counter() - t0)


def bench(cfg: Config, *, data_root: str | Path | None = None, device: str = "auto",
          steps: int = 2000, threads: int | None = None, cuda_graph: bool = True,
          fused: bool = True, rounds: int = 5) -> dict[str, Any]:
    """Steps per second of the batched trainer and of the per-sample reference.

    ``steps`` trainer steps (and a quarter as many reference steps) are split over ``rounds``
    alternating rounds; the figures are the medians over the rounds.
    """
    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, got {rounds}")
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
        take_step = _make_step(build_model(ds, cfg, dev), cfg, x, y, gen, cuda_graph, fused)
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
        _rate(batched, warm, dev)
        _rate(per_sample, max(5, warm // 4), dev)
        fast_rounds, ref_rounds = [], []
        for _ in range(rounds):
            fast_rounds.append(_rate(batched, max(1, steps // rounds), dev))
            ref_rounds.append(_rate(per_sample, max(2, steps // 4 // rounds), dev))
        fast, ref = statistics.median(fast_rounds), statistics.median(ref_rounds)
        n_steps = t.n_steps(x.shape[0])
        return {
            "config": cfg.name,
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "cuda_graph": take_step.graphed,
            "fused": take_step.fused,
            "batch_size": t.batch_size,
            "steps_per_s": round(fast, 1),
            "steps_per_s_rounds": [round(r, 1) for r in fast_rounds],
            "reference_steps_per_s": round(ref, 1),
            "speedup": round(fast / ref, 2),
            "trial_steps": n_steps,
            "trial_seconds": round(n_steps / fast, 1),
        }
    finally:
        torch.set_num_threads(previous)
