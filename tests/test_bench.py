"""``metab-opt bench`` on the CPU: both loops timed, the figures consistent with each other;
and the two-config scale bench (``metab-opt bench --config A --vs B``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metab_opt.cli import main
from metab_opt.config import Config
from metab_opt.problem.bench import bench, bench_scale


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


def test_bench_scale_reports_both_configs(tiny_cfg: Config, tiny_config, tiny_data_root: Path,
                                          ) -> None:
    """Two configs timed alternately: the figures per config and their ratio, consistent."""
    bigger = tiny_config({"simulation.n_reactions": 48})
    threads = torch.get_num_threads()
    out = bench_scale(bigger, tiny_cfg, data_root=tiny_data_root, device="cpu", rounds=3,
                      seconds=0.05, product="sparse")
    assert torch.get_num_threads() == threads  # restored
    assert out["device"] == "cpu" and out["threads"] == 1 and out["rounds"] == 3
    cfg, ref = out["config"], out["reference"]
    assert cfg["product"] == "sparse" and ref["product"] == "dense"  # forced / the rule's
    assert cfg["n_reactions"] == 48 and ref["n_reactions"] == 32
    for r in (cfg, ref):
        assert r["nnz_S"] > 0 and r["fused"] is True and r["model_mib"] > 0
        assert len(r["steps_per_s_rounds"]) == 3 and r["steps_per_round"] >= 3
        assert r["steps_per_s"] == pytest.approx(sorted(r["steps_per_s_rounds"])[1], abs=0.01)
        assert r["throughput"] == pytest.approx(r["steps_per_s"] * r["nnz_S"], rel=1e-3)
    assert out["ratio"] == pytest.approx(cfg["throughput"] / ref["throughput"], rel=1e-3)
    peak = out["peak_rss_mib"]
    assert 0 < peak["start"] <= peak["reference"] <= peak["config"] <= peak["end"]


def test_bench_scale_command_line(tiny_cfg: Config, tiny_data_root: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    assert main(["bench", "--config", tiny, "--vs", tiny, "--data-root", str(tiny_data_root),
                 "--device", "cpu", "--rounds", "1", "--seconds", "0.05"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["config"]["config"] == out["reference"]["config"] == "tiny"
    assert "ratio" in captured.err and "steps/s x nnz(S) 64" in captured.err


def test_bench_scale_rejects_bad_arguments(tiny_cfg: Config, tiny_data_root: Path) -> None:
    with pytest.raises(ValueError, match="rounds: expected at least 1, got 0"):
        bench_scale(tiny_cfg, tiny_cfg, data_root=tiny_data_root, device="cpu", rounds=0)
    with pytest.raises(ValueError, match="seconds: expected > 0, got 0"):
        bench_scale(tiny_cfg, tiny_cfg, data_root=tiny_data_root, device="cpu", seconds=0)
