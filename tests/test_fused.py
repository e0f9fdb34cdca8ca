"""The hand-written loss gradient (metab_opt.problem._fused) against autograd on the same model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from metab_opt.config import Config
from metab_opt.problem._fused import FusedLoss, fused_supported
from metab_opt.problem.losses import LOSS_TERMS, TERM_NAMES
from metab_opt.problem.training import (
    GroupAdam,
    _make_step,
    _step_terms,
    build_model,
    param_groups,
    term_weights,
)

# Every registered regularizer on (1.0 unless listed).
ALL_ON = {**{t.weight: 1.0 for t in LOSS_TERMS if t.weight is not None},
          "coeff_MLP_sub_diff": 5.0, "coeff_MLP_node_L1": 1.0, "coeff_k_center": 2.0,
          "coeff_k_floor": 3.0, "coeff_MLP_sub_norm": 1.5,
          # Above the initial log_k (about -1.5), so that k_floor's gradient is not all 0.
          "k_floor_threshold": -1.45}


def configure(cfg: Config, graph: dict[str, object], training: dict[str, object]) -> Config:
    return dataclasses.replace(
        cfg, graph_model=dataclasses.replace(cfg.graph_model, **graph),
        training=dataclasses.replace(cfg.training, **training))


def live_model(ds, cfg: Config, seed: int = 0, product: str = "auto"):
    """A float64 model whose MLP_node output is not 0 and whose MLP_sub is not monotonic (at
    initialisation the first is 0 and the second happens to rise, which would leave the L1 and
    monotonicity gradients untested). ``product`` forces the graph products (auto: dense on
    the tiny graph)."""
    model = build_model(ds, cfg, "cpu", product=product).double()  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for last, scale in ((model.mlp_node.last, 0.3), (model.mlp_sub.last, 3.0)):
            last.weight.copy_(scale * torch.randn(last.weight.shape, generator=gen,
                                                  dtype=torch.float64))
            last.bias.copy_(0.3 * torch.randn(last.bias.shape, generator=gen,
                                              dtype=torch.float64))
    return model


def both_paths(ds, cfg: Config, frames: slice = slice(0, 8), product: str = "auto"):
    """(autograd terms, autograd grads, fused terms, fused grads) on two copies of one model,
    both with the graph products ``product``."""
    c = torch.as_tensor(ds.x[frames], dtype=torch.float64)
    y = torch.as_tensor(ds.y[frames], dtype=torch.float64)
    ref, ours = live_model(ds, cfg, product=product), live_model(ds, cfg, product=product)
    terms = _step_terms(ref, c, y, cfg, cfg.simulation.log_k_center)
    (terms * term_weights(cfg).double()).sum().backward()
    fused = FusedLoss(ours, cfg)
    got = fused.forward(c, y)
    fused.backward()
    grads = {n: p.grad for n, p in ref.named_parameters()}
    fused_grads = {n: p.grad for n, p in ours.named_parameters()}
    return terms.detach(), grads, got, fused_grads


@pytest.mark.parametrize("product", ["dense", "sparse"])
@pytest.mark.parametrize("coeffs", ["all", "none"])
@pytest.mark.parametrize("through_origin", [False, True])
@pytest.mark.parametrize("aggr", ["mul", "add"])
def test_fused_terms_and_gradients_match_autograd(tiny_cfg, tiny_dataset, aggr: str,
                                                  through_origin: bool, coeffs: str,
                                                  product: str) -> None:
    """Each graph product (dense GEMMs, or CSR on a large graph, forced here on the tiny one):
    the hand-written gradient against autograd through the same product (tests/test_sparse.py
    crosses them)."""
    training = ALL_ON if coeffs == "all" else {k: 0.0 for k in ALL_ON if k.startswith("coeff")}
    cfg = configure(tiny_cfg, {"aggr_type": aggr, "sub_through_origin": through_origin},
                    training)
    terms, grads, got, fused_grads = both_paths(tiny_dataset, cfg, product=product)
    torch.testing.assert_close(got, terms, rtol=1e-10, atol=1e-12)
    if coeffs == "all":
        assert (terms[1:] != 0).all()  # every regularizer takes part
    # With through-origin, f = MLP_sub(c, s) - MLP_sub(0, s): the last bias cancels, so its
    # gradient is 0 up to rounding (compared below, not required to be non-zero).
    last = 2 * (cfg.graph_model.n_layers_sub - 1)  # Linear, tanh, ..., Linear
    cancels = {f"mlp_sub.{last}.bias"} if through_origin else set()
    for name, g in grads.items():
        assert (g is not None and g.abs().sum() > 0 or name.startswith("mlp_node")
                or name in cancels), name
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("embedding_dim", [0, 3])
@pytest.mark.parametrize("layers", [(2, 2), (3, 4), (4, 3)])
def test_fused_matches_autograd_for_other_shapes(tiny_cfg, tiny_dataset,
                                                 layers: tuple[int, int],
                                                 embedding_dim: int) -> None:
    cfg = configure(tiny_cfg, {"n_layers_sub": layers[0], "n_layers_node": layers[1],
                               "hidden_dim_sub": 5, "hidden_dim_node": 7,
                               "embedding_dim": embedding_dim}, ALL_ON)
    terms, grads, got, fused_grads = both_paths(tiny_dataset, cfg, slice(3, 8))
    torch.testing.assert_close(got, terms, rtol=1e-10, atol=1e-12)
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("product", ["dense", "sparse"])
def test_fused_gradient_zero_where_mul_clamps(tiny_cfg, tiny_dataset, product: str) -> None:
    """Below the 1e-8 floor of the product aggregation the pair gets no gradient, as with
    autograd's clamp: f(0, s) is exactly 0 with through-origin, so frames of zeros hit it."""
    cfg = configure(tiny_cfg, {"sub_through_origin": True}, ALL_ON)
    ds = dataclasses.replace(tiny_dataset, x=tiny_dataset.x * 0.0)
    terms, grads, got, fused_grads = both_paths(ds, cfg, product=product)
    assert torch.isfinite(got).all()
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_fused_writes_into_group_adam_buffer(tiny_cfg, tiny_dataset) -> None:
    """With GroupAdam the gradient lands in its buffer's views, replacing what was there."""
    c = torch.as_tensor(tiny_dataset.x[:8], dtype=torch.float32)
    y = torch.as_tensor(tiny_dataset.y[:8], dtype=torch.float32)
    plain = build_model(tiny_dataset, tiny_cfg, "cpu")
    fused = FusedLoss(plain, tiny_cfg)
    fused.forward(c, y)
    fused.backward()
    model = build_model(tiny_dataset, tiny_cfg, "cpu")
    opt = GroupAdam(param_groups(model, tiny_cfg))
    for p in opt.params:
        p.grad.fill_(7.0)  # stale values: overwritten, not added to
    fused = FusedLoss(model, tiny_cfg)
    fused.forward(c, y)
    fused.backward()
    assert all(p.grad is g for p, g in zip(opt.params, opt._grads))
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9, msg=name)


def test_one_layer_mlps_fall_back_to_autograd(tiny_cfg, tiny_dataset) -> None:
    cfg = configure(tiny_cfg, {"n_layers_node": 1}, {})
    model = build_model(tiny_dataset, cfg, "cpu")
    assert not fused_supported(model)
    with pytest.raises(ValueError, match="n_layers_sub, n_layers_node >= 2"):
        FusedLoss(model, cfg)
    x = torch.as_tensor(tiny_dataset.x, dtype=torch.float32)
    step = _make_step(model, cfg, x, torch.as_tensor(tiny_dataset.y, dtype=torch.float32),
                      torch.Generator().manual_seed(0), cuda_graph=False)
    assert not step.fused
    assert torch.isfinite(step(1)).all()


@pytest.mark.parametrize("fused", [False, True])
def test_fused_and_autograd_steps_train_alike(tiny_cfg, tiny_dataset, fused: bool) -> None:
    """200 steps of each path from the same start and the same draws: log_k stays close (the
    two paths round differently, so not bitwise), and each path is itself reproducible."""
    x = torch.as_tensor(tiny_dataset.x, dtype=torch.float32)
    y = torch.as_tensor(tiny_dataset.y, dtype=torch.float32)

    def run(use_fused: bool) -> torch.Tensor:
        model = build_model(tiny_dataset, tiny_cfg, "cpu")
        step = _make_step(model, tiny_cfg, x, y, torch.Generator().manual_seed(3),
                          cuda_graph=False, fused=use_fused)
        assert step.fused == use_fused
        for i in range(200):
            step(i + 1)
        return model.log_k.detach().clone()

    first = run(fused)
    assert torch.equal(first, run(fused))
    torch.testing.assert_close(first, run(not fused), rtol=0, atol=2e-3)


@pytest.mark.parametrize("node_c_scale", [0.5, 30.0])
def test_fused_matches_autograd_with_mlp_node_input_scaled(tiny_cfg, tiny_dataset,
                                                           node_c_scale: float) -> None:
    cfg = configure(tiny_cfg, {"node_c_scale": node_c_scale}, ALL_ON)
    terms, grads, got, fused_grads = both_paths(tiny_dataset, cfg, slice(3, 11))
    torch.testing.assert_close(got, terms, rtol=1e-10, atol=1e-12)
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("through_origin", [False, True])
def test_fused_matches_autograd_with_an_anchor_at_every_power(tiny_cfg, tiny_dataset,
                                                              through_origin: bool) -> None:
    """``sub_norm_powers: every``: the scale anchor f(1, s) = 1 at each of the network's powers
    (a (P,) norm), through both paths."""
    # tiny's rate laws all have |s| = 1: give some edges |s| = 2 and one 0.5 (a real model's O2).
    net = tiny_dataset.network
    power = net.substrate_power.astype(np.float64)
    rows, cols = np.nonzero(power)
    power[rows[::3], cols[::3]] = 2.0
    power[rows[1], cols[1]] = 0.5
    ds = dataclasses.replace(tiny_dataset,
                             network=dataclasses.replace(net, substrate_power=power))
    cfg = configure(tiny_cfg, {"sub_through_origin": through_origin,
                               "sub_norm_powers": "every"}, ALL_ON)
    terms, grads, got, fused_grads = both_paths(ds, cfg)
    torch.testing.assert_close(got, terms, rtol=1e-10, atol=1e-12)
    one = configure(tiny_cfg, {"sub_through_origin": through_origin}, ALL_ON)
    norm = TERM_NAMES.index("MLP_sub_norm")
    assert terms[norm] != both_paths(ds, one)[0][norm]  # three anchors, another term
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-9, atol=1e-12, msg=name)
