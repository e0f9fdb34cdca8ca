"""``metab-opt bench`` on the CPU: both loops timed, the figures consistent with each other."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metab_opt.bench import bench
from metab_opt.config import Config


@pytest.mark.parametrize("fused", [True, False])
def test_bench_reports_both_loops(tiny_cfg: Config, tiny_data_root: Path, fused: bool) -> None:
    threads = torch.get_num_threads()
    out = bench(tiny_cfg, data_root=tiny_data_root, device="cpu", steps=40, rounds=2,
                fused=fused)
    assert torch.get_num_threads() == threads  # restored
    assert out["device"] == "cpu" and out["threads"] == 1 and out["cuda_graph"] is False
    assert out["fused"] is fused
    assert len(out["steps_per_s_rounds"]) == 2
    # The headline is the median of the rounds (of two: their mean).
    assert out["steps_per_s"] == pytest.approx(sum(out["steps_per_s_rounds"]) / 2, abs=0.1)
    assert out["reference_steps_per_s"] > 0
    assert out["speedup"] == pytest.approx(out["steps_per_s"] / out["reference_steps_per_s"],
                                           rel=0.01)
    assert out["trial_steps"] == tiny_cfg.training.n_steps(tiny_cfg.simulation.n_frames)
    # trial_seconds is rounded to 0.1 s: on a fast CPU a trial of a few seconds is off by up to
    # 0.05 s, more than 1%.
    assert out["trial_seconds"] == pytest.approx(out["trial_steps"] / out["steps_per_s"],
                                                 rel=0.01, abs=0.05)


def test_bench_rejects_zero_rounds(tiny_cfg: Config, tiny_data_root: Path) -> None:
    with pytest.raises(ValueError, match="rounds: expected at least 1, got 0"):
        bench(tiny_cfg, data_root=tiny_data_root, device="cpu", steps=40, rounds=0)
