"""The CUDA path: the same model and trainer on a GPU agree with the CPU.

Skipped where no CUDA device is present (CI, the development machines); run on a lent GPU
machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from metab_opt.config import Config
from metab_opt.objective import run_training
from metab_opt.problem.evaluation import evaluate
from metab_opt.problem.simulation import Dataset
from metab_opt.problem.training import _step_terms, build_model, select_device, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_auto_picks_cuda() -> None:
    assert select_device("auto").type == "cuda"


def test_forward_and_gradients_match_cpu(tiny_cfg: Config, tiny_dataset: Dataset) -> None:
    cpu = build_model(tiny_dataset, tiny_cfg, "cpu")
    gpu = build_model(tiny_dataset, tiny_cfg, "cuda")
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert torch.equal(p.detach(), q.detach().cpu()), name  # same seeded initialisation
    idx = np.arange(8)
    c = torch.as_tensor(tiny_dataset.x[idx], dtype=torch.float32)
    y = torch.as_tensor(tiny_dataset.y[idx], dtype=torch.float32)
    centre = tiny_cfg.simulation.log_k_center
    t_cpu = _step_terms(cpu, c, y, tiny_cfg, centre)
    t_gpu = _step_terms(gpu, c.cuda(), y.cuda(), tiny_cfg, centre)
    assert torch.allclose(t_cpu, t_gpu.cpu(), rtol=1e-4, atol=1e-6)
    t_cpu.sum().backward()
    t_gpu.sum().backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert q.grad is not None and q.grad.is_cuda, name
        assert torch.allclose(p.grad, q.grad.cpu(), rtol=1e-3, atol=1e-5), name


def test_fused_gradient_on_cuda_matches_autograd(tiny_cfg: Config,
                                                 tiny_dataset: Dataset) -> None:
    """The hand-written gradient (the eager step's path) on the GPU against autograd there."""
    from metab_opt.problem._fused import FusedLoss
    from metab_opt.problem.training import term_weights

    ref = build_model(tiny_dataset, tiny_cfg, "cuda")
    ours = build_model(tiny_dataset, tiny_cfg, "cuda")
    c = torch.as_tensor(tiny_dataset.x[:8], dtype=torch.float32, device="cuda")
    y = torch.as_tensor(tiny_dataset.y[:8], dtype=torch.float32, device="cuda")
    terms = _step_terms(ref, c, y, tiny_cfg, tiny_cfg.simulation.log_k_center)
    (terms * term_weights(tiny_cfg, "cuda")).sum().backward()
    loss = FusedLoss(ours, tiny_cfg)
    got = loss.forward(c, y)
    loss.backward()
    assert torch.allclose(got, terms.detach(), rtol=1e-4, atol=1e-6)
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        assert q.grad is not None and q.grad.is_cuda, name
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-5), name


def test_train_keeps_everything_on_the_device(tiny_cfg: Config, tiny_dataset: Dataset) -> None:
    result = train(tiny_dataset, tiny_cfg, device="cuda", max_steps=300)
    assert result.device.startswith("cuda")
    assert all(p.is_cuda for p in result.model.parameters())
    assert all(b.is_cuda for b in result.model.buffers())
    assert result.reports and all(math.isfinite(r.loss) for r in result.reports)
    for values in result.history.values():
        assert np.isfinite(values).all()
    metrics, _ = evaluate(result.model, tiny_dataset, tiny_cfg)
    assert math.isfinite(metrics["rate_constants_R2"])


def test_cuda_training_learns_like_cpu(tiny_cfg: Config, tiny_dataset: Dataset) -> None:
    """Not bitwise (other kernels), but the same run lands at the same place."""
    steps = 1500
    cpu = train(tiny_dataset, tiny_cfg, device="cpu", max_steps=steps)
    gpu = train(tiny_dataset, tiny_cfg, device="cuda", max_steps=steps)
    r2_cpu, r2_gpu = cpu.reports[-1].r2, gpu.reports[-1].r2
    assert r2_gpu > 0.5, (r2_cpu, r2_gpu)
    assert abs(r2_cpu - r2_gpu) < 0.1, (r2_cpu, r2_gpu)


def test_run_training_on_cuda_writes_outputs(tiny_cfg: Config, tiny_dataset: Dataset,
                                             tmp_path: Path) -> None:
    run = run_training(tiny_cfg, out_dir=tmp_path, dataset=tiny_dataset, device="cuda",
                       max_steps=200)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda")
    assert math.isfinite(metrics["rate_constants_R2"])
    assert run.metrics["steps"] == 200
    assert (tmp_path / "tmp_training" / "loss.png").is_file()


def test_cuda_graph_step_matches_eager_step(tiny_cfg: Config, tiny_dataset: Dataset) -> None:
    """Replayed from a CUDA graph, the run follows the eager run (same batches, same update)."""
    steps = 500
    eager = train(tiny_dataset, tiny_cfg, device="cuda", max_steps=steps, cuda_graph=False)
    graphed = train(tiny_dataset, tiny_cfg, device="cuda", max_steps=steps, cuda_graph=True)
    # log_k agrees to 1e-3 (seen on an H100). The MLP weights do not agree element by element
    # (rtol 5e-2 failed there): the two optimizers round their bias corrections differently
    # (float64 on the host against float32 on the device), and the MLPs have directions the
    # loss barely sees, where such differences drift.
    assert torch.allclose(eager.model.log_k, graphed.model.log_k, atol=1e-3)
    assert [r.step for r in eager.reports] == [r.step for r in graphed.reports]
    assert abs(eager.reports[-1].r2 - graphed.reports[-1].r2) < 0.01
    assert float(np.mean(graphed.history["loss"])) == pytest.approx(
        float(np.mean(eager.history["loss"])), rel=0.1)


def test_cuda_graph_run_stops_on_a_non_finite_loss(tiny_cfg: Config,
                                                   tiny_dataset: Dataset) -> None:
    import dataclasses

    from metab_opt.problem.training import TrainingDiverged

    bad = dataclasses.replace(tiny_cfg, training=dataclasses.replace(
        tiny_cfg.training, learning_rate_k=1000.0))
    with pytest.raises(TrainingDiverged):
        train(tiny_dataset, bad, device="cuda", max_steps=400, cuda_graph=True)


def test_bench_on_cuda_uses_the_graph(tiny_cfg: Config, tiny_data_root: Path,
                                      tiny_dataset: Dataset) -> None:
    from metab_opt.problem.bench import bench

    out = bench(tiny_cfg, data_root=tiny_data_root, device="cuda", steps=200)
    assert out["cuda_graph"] is True and out["steps_per_s"] > 0


def test_cuda_graph_follows_the_joint_options(tiny_cfg: Config, tiny_dataset: Dataset) -> None:
    """The roll-out loss and the homeostasis phase (a second graph, captured at the switch)
    replayed from CUDA graphs follow the eager run, as the one-step run does above."""
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg, training=dataclasses.replace(
        tiny_cfg.training, time_step=2, homeostasis_phase=0.5, homeostasis_lr_factor=0.1,
        learning_rate_embedding=3e-3))
    steps = 400
    eager = train(tiny_dataset, cfg, device="cuda", max_steps=steps, cuda_graph=False)
    graphed = train(tiny_dataset, cfg, device="cuda", max_steps=steps, cuda_graph=True)
    assert torch.allclose(eager.model.log_k, graphed.model.log_k, atol=1e-3)
    assert abs(eager.reports[-1].r2 - graphed.reports[-1].r2) < 0.01
    # The L1 term is off in the second half on both paths.
    for res in (eager, graphed):
        late = res.history_steps > steps // 2
        assert np.all(res.history["MLP_node_L1"][late] == 0)
