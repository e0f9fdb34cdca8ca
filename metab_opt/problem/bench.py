"""``metab-opt bench``: the trainer's speed against a per-sample reference, in one run; and the
trainer's speed on two networks side by side, per nonzero of S (:func:`bench_scale`).

The reference trains the same model the way the original implementation did: one forward pass
per frame of the batch, a summed loss, autograd and ``torch.optim.Adam``. Both loops take real
optimizer steps on the same data with the same regularizers, after a warm-up.

The two loops are timed in alternating rounds and each figure is the median of its rounds: on a
shared machine the speed drifts by tens of percent within a minute, and back-to-back timings
would let that drift into the ratio.

:func:`bench_scale` asks whether the step's cost grows with the network's size nnz(S) and no
faster: it times the trainer's own step on a config and on a reference config (say iJO1366 and
rank50), alternating, and compares steps/s x nnz(S):
``metab-opt bench --config configs/ijo1366.yaml --vs configs/rank50.yaml``.
"""

from __future__ import annotations

import itertools
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from metab_opt.config import Config
from metab_opt.problem._sparse import Product
from metab_opt.problem.simulation import load_or_build
from metab_opt.problem.training import (
    _make_step,
    _step_terms,
    build_model,
    cpu_threads,
    param_groups,
    select_device,
    term_weights,
)

__all__ = ["bench", "bench_scale", "scale_lines"]


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
    with cpu_threads((threads or 1) if dev.type == "cpu" else None):
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


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB: ``getrusage(RUSAGE_SELF).ru_maxrss``
    (KiB on Linux). Torch's tensors are allocated outside Python's allocator, so tracemalloc
    would not see them; the peak RSS counts everything, the interpreter and libraries too."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _tensor_mib(module: torch.nn.Module) -> float:
    """The bytes of a model's parameters and buffers, in MiB (the graph matrices included)."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _setup(cfg: Config, data_root: str | Path | None, dev: torch.device, cuda_graph: bool,
           fused: bool, product: Product | Literal["auto"] = "auto",
           ) -> tuple[Callable[[], None], dict[str, Any]]:
    """The trainer's step on a fresh model of ``cfg``'s dataset, and what describes it."""
    ds, _ = load_or_build(cfg.simulation, data_root)
    x = torch.as_tensor(ds.x, dtype=torch.float32, device=dev)
    y = torch.as_tensor(ds.y, dtype=torch.float32, device=dev)
    model = build_model(ds, cfg, dev, product=product)
    gen = torch.Generator(device=dev).manual_seed(cfg.training.seed)
    take_step = _make_step(model, cfg, x, y, gen, cuda_graph, fused)
    numbers = itertools.count(1)

    def step() -> None:
        take_step(next(numbers))

    info = {
        "config": cfg.name,
        "n_metabolites": model.n_metabolites,
        "n_reactions": model.n_reactions,
        "nnz_S": int(np.count_nonzero(ds.S)),
        "substrate_edges": int(model.edge_pair.numel()),
        "product": model.product,
        "fused": take_step.fused,
        "cuda_graph": take_step.graphed,
        "batch_size": cfg.training.batch_size,
        "model_mib": round(_tensor_mib(model), 2),
    }
    return step, info


def bench_scale(cfg: Config, reference: Config, *, data_root: str | Path | None = None,
                device: str = "auto", threads: int | None = None, cuda_graph: bool = True,
                fused: bool = True, rounds: int = 5, seconds: float = 2.0,
                product: Product | Literal["auto"] = "auto") -> dict[str, Any]:
    """The trainer's steps/s on ``cfg`` and on ``reference``, timed alternately, per nnz(S).

    After a warm-up that also sizes each measurement to about ``seconds`` of steps, each of
    ``rounds`` rounds times the two configs once, in ABBA order (the first of a round is the
    second of the next), so that a drift of the shared machine's speed falls on both alike;
    steps/s is the median over the rounds. ``throughput`` is steps/s x nnz(S) (nonzeros of S
    the step gets through per second) and ``ratio`` the config's throughput over the
    reference's: 1 when the step's cost grows exactly like nnz(S), above 1 when the larger
    network pays less per nonzero (the fixed per-step costs weigh less on it).

    Memory: ``peak_rss_mib`` is the process's peak resident set (:func:`peak_rss_mib`) after
    each stage: the start, the reference's setup and warm-up, the config's, and the timing.
    The reference is set up first, so the growth at the config's stage is the config's own
    dataset, model and step. ``model_mib`` is each model's parameters and buffers.

    ``product`` forces ``cfg``'s graph products (dense or sparse; auto: the trainer's rule);
    the reference's are always the trainer's own.
    """
    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, got {rounds}")
    if seconds <= 0:
        raise ValueError(f"seconds: expected > 0, got {seconds}")
    dev = select_device(device)
    with cpu_threads((threads or 1) if dev.type == "cpu" else None):
        peak = {"start": round(peak_rss_mib(), 1)}
        runs: dict[str, tuple[Callable[[], None], dict[str, Any]]] = {}
        sizes: dict[str, int] = {}
        stages: list[tuple[str, Config, Product | Literal["auto"]]] = [
            ("reference", reference, "auto"), ("config", cfg, product)]
        for role, c, prod in stages:
            step, info = _setup(c, data_root, dev, cuda_graph, fused, prod)
            # Warm-up: a few steps, then enough for ~seconds/4 to estimate the speed.
            _rate(step, 3, dev)
            t0 = time.perf_counter()
            n = 0
            while time.perf_counter() - t0 < seconds / 4 or n < 3:
                step()
                n += 1
            sizes[role] = max(3, round(seconds * n / (time.perf_counter() - t0)))
            runs[role] = (step, info)
            peak[role] = round(peak_rss_mib(), 1)
        measured: dict[str, list[float]] = {"reference": [], "config": []}
        order = ["reference", "config"]
        for _ in range(rounds):
            for role in order:
                measured[role].append(_rate(runs[role][0], sizes[role], dev))
            order.reverse()
        peak["end"] = round(peak_rss_mib(), 1)
        out: dict[str, Any] = {
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "rounds": rounds,
            "order": "ABBA (alternating)",
        }
        for role in ("config", "reference"):
            info = dict(runs[role][1])
            rate = statistics.median(measured[role])
            info.update({
                "steps_per_s": round(rate, 2),
                "steps_per_s_rounds": [round(r, 2) for r in measured[role]],
                "steps_per_round": sizes[role],
                "throughput": round(rate * info["nnz_S"]),
            })
            out[role] = info
        out["ratio"] = round(out["config"]["throughput"] / out["reference"]["throughput"], 3)
        out["peak_rss_mib"] = peak
        out["peak_rss_source"] = "resource.getrusage(RUSAGE_SELF).ru_maxrss"
        return out


def scale_lines(out: dict[str, Any]) -> list[str]:
    """:func:`bench_scale`'s result as a person reads it: one line per config, then the ratio."""
    lines = []
    for role in ("config", "reference"):
        r = out[role]
        lines.append(f"{r['config']}: {r['steps_per_s']} steps/s x nnz(S) {r['nnz_S']} = "
                     f"{r['throughput']} ({r['product']} products, N {r['n_metabolites']}, "
                     f"R {r['n_reactions']}, model {r['model_mib']} MiB)")
    lines.append(f"ratio {out['ratio']} (config / reference); peak RSS MiB {out['peak_rss_mib']}")
    return lines
