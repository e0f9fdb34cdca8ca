"""The sparse graph products (metab_opt.problem._sparse) against the dense ones and the scatter
reference: forward values, autograd gradients, the hand-written gradient, and the size rule.

The two products sum in different orders, so they are compared with tolerances, never bitwise.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from metab_opt.config import Config, GraphModelConfig, load_config
from metab_opt.problem._fused import FusedLoss
from metab_opt.problem._sparse import SPARSE_MIN_ENTRIES, choose_product
from metab_opt.problem.model import MetabolismGNN, build_graph
from metab_opt.problem.networks import build_network
from metab_opt.problem.training import _make_step, _step_terms, build_model, term_weights

# 4 metabolites, 4 reactions, with what a real model has and PDE_M1 has not: fractional
# coefficients and powers (0.5 O2), a metabolite that is a substrate of several reactions with
# different powers (two pairs), a product that is also a substrate, a reaction with 3 substrates.
#   r0: 0.5 m0 + m1 -> 1.5 m2        r1: 2 m1 -> m3
#   r2: m0 + m2 + m3 -> 2 m1         r3: m3 -> 0.5 m0
S = np.array([[-0.5, 0.0, -1.0, 0.5],
              [-1.0, -2.0, 2.0, 0.0],
              [1.5, 0.0, -1.0, 0.0],
              [0.0, 1.0, -1.0, -1.0]])
POWER = np.where(S < 0, -S, 0.0)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def graph_config(**kw: object) -> GraphModelConfig:
    base: dict[str, object] = dict(hidden_dim_sub=8, n_layers_sub=3, hidden_dim_node=8,
                                   n_layers_node=3, embedding_dim=2, aggr_type="mul",
                                   c_scale=2.0, sub_through_origin=False, log_k_init_noise=0.3)
    base.update(kw)
    return GraphModelConfig(**base)  # type: ignore[arg-type]


def make_model(product: str, *, S: np.ndarray = S, power: np.ndarray = POWER,
               **kw: object) -> MetabolismGNN:
    """A model with a live MLP_node (it starts at exactly 0, which would test nothing)."""
    model = MetabolismGNN(build_graph(S, power), graph_config(**kw), log_k_center=-1.0,
                          seed=0, sub_grid_max=3.0, sub_grid_points=9,
                          product=product)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(5)
    last = model.mlp_node.last
    with torch.no_grad():
        last.weight.copy_(0.5 * torch.randn(last.weight.shape, generator=gen))
        last.bias.copy_(0.5 * torch.randn(last.bias.shape, generator=gen))
    return model


def frames(batch: int, n_met: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 + 2.0 * torch.rand(batch, n_met, generator=gen)


def random_network(n_met: int, n_reac: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random sparse mass-action network: 1-3 substrates and 1-2 products per reaction."""
    rng = np.random.default_rng(seed)
    S = np.zeros((n_met, n_reac))
    for j in range(n_reac):
        mets = rng.choice(n_met, size=rng.integers(2, 6), replace=False)
        n_sub = rng.integers(1, min(3, len(mets) - 1) + 1)
        S[mets[:n_sub], j] = -rng.choice([0.5, 1.0, 2.0], size=n_sub)
        S[mets[n_sub:], j] = rng.choice([1.0, 1.5, 3.0], size=len(mets) - n_sub)
    return S, np.where(S < 0, -S, 0.0)


# ------------------------------------------------------------------------------ the rule


def test_choose_product_threshold() -> None:
    assert choose_product(92, 100, 256) == "dense"  # rank50
    assert choose_product(1769, 1805, 2862) == "sparse"  # iJO1366
    # R·(Q + N) against the threshold, at the boundary.
    assert choose_product(SPARSE_MIN_ENTRIES // 2 - 1, 0, 2) == "dense"
    assert choose_product(SPARSE_MIN_ENTRIES // 2, 0, 2) == "sparse"


@pytest.mark.parametrize("name", ["tiny", "rank50", "rank70"])
def test_pde_m1_configs_keep_the_dense_products(name: str) -> None:
    """Their seeded runs stay bit for bit what they were before the sparse path existed."""
    sim = load_config(CONFIGS / f"{name}.yaml").simulation
    net = build_network(sim)
    model = MetabolismGNN(build_graph(net.S, net.substrate_power), graph_config(),
                          log_k_center=-1.0)
    assert model.product == "dense"


def test_auto_goes_sparse_on_a_large_graph() -> None:
    S_big, power = random_network(300, 1000)
    model = make_model("auto", S=S_big, power=power)
    assert model.n_reactions * (model.pair_met.numel() + model.n_metabolites) \
        >= SPARSE_MIN_ENTRIES
    assert model.product == "sparse"
    # Only the chosen product's matrices are held: no dense (Q, R) or (R, N) copy.
    names = dict(model.named_buffers())
    assert "pair_to_reac" not in names and "S_t" not in names
    assert "csr_M_val" in names and "S" in names


def test_unknown_product_is_refused() -> None:
    with pytest.raises(ValueError, match="product: expected auto, dense or sparse"):
        make_model("coo")


# --------------------------------------------------------------------- forward values


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("through_origin", [False, True])
@pytest.mark.parametrize("aggr", ["mul", "add"])
def test_sparse_dense_and_reference_forward_agree(aggr: str, through_origin: bool,
                                                  batch: int) -> None:
    dense = make_model("dense", aggr_type=aggr, sub_through_origin=through_origin).double()
    sparse = make_model("sparse", aggr_type=aggr, sub_through_origin=through_origin).double()
    assert torch.equal(dense.log_k, sparse.log_k)  # the same parameters: one seed
    c = frames(batch, 4).double()
    with torch.no_grad():
        got = sparse.forward_parts(c)
        want = dense.forward_parts(c)
        reference = sparse.forward_parts(c, reference=True)
    torch.testing.assert_close(got.dcdt, want.dcdt, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.dcdt, reference.dcdt, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.node_out, want.node_out, rtol=0, atol=0)  # no product
    assert got.dcdt.is_contiguous()


@pytest.mark.parametrize("aggr", ["mul", "add"])
def test_sparse_forward_on_a_large_random_graph(aggr: str) -> None:
    """float32 on 300 metabolites x 1000 reactions: the rule's sparse pick against the
    reference scatter and a forced dense model."""
    S_big, power = random_network(300, 1000, seed=1)
    sparse = make_model("auto", S=S_big, power=power, aggr_type=aggr)
    dense = make_model("dense", S=S_big, power=power, aggr_type=aggr)
    c = frames(8, 300)
    with torch.no_grad():
        got = sparse(c)
        torch.testing.assert_close(got, dense(c), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got, sparse.forward_parts(c, reference=True).dcdt,
                                   rtol=1e-5, atol=1e-6)
        # One frame (the rollout's shape) too.
        torch.testing.assert_close(sparse(c[0]), got[0], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ autograd gradients


@pytest.mark.parametrize("through_origin", [False, True])
@pytest.mark.parametrize("aggr", ["mul", "add"])
def test_sparse_autograd_gradient_matches_dense(aggr: str, through_origin: bool) -> None:
    """Through the sparse products' own backward (A^T as its own CSR matrix)."""
    grads = {}
    c = frames(5, 4).double()
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for product in ("dense", "sparse"):
        model = make_model(product, aggr_type=aggr, sub_through_origin=through_origin).double()
        (model(c) * w).sum().backward()
        grads[product] = {n: p.grad for n, p in model.named_parameters()}
    for name, g in grads["dense"].items():
        assert g is not None
        torch.testing.assert_close(grads["sparse"][name], g, rtol=1e-10, atol=1e-13, msg=name)
    assert grads["sparse"]["log_k"].abs().sum() > 0


def test_sparse_product_gradcheck() -> None:
    """The sparse product's backward is the adjoint of its forward (finite differences)."""
    model = make_model("sparse").double()
    x = torch.randn(3, model.pair_met.numel(), dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, model.n_metabolites, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model.pairs_to_reactions, (x,))
    assert torch.autograd.gradcheck(model.metabolites_to_reactions, (g,))


# ------------------------------------------------------------ the hand-written gradient


ALL_ON = {"coeff_MLP_sub_diff": 5.0, "coeff_MLP_node_L1": 1.0, "coeff_k_center": 2.0,
          "coeff_k_floor": 3.0, "coeff_MLP_sub_norm": 1.5, "k_floor_threshold": -1.45}


def _live(model: MetabolismGNN) -> MetabolismGNN:
    """MLP_node's output not 0 and MLP_sub not monotonic, as in tests/test_fused.py."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for last, scale in ((model.mlp_node.last, 0.3), (model.mlp_sub.last, 3.0)):
            last.weight.copy_(scale * torch.randn(last.weight.shape, generator=gen,
                                                  dtype=last.weight.dtype))
            last.bias.copy_(0.3 * torch.randn(last.bias.shape, generator=gen,
                                              dtype=last.bias.dtype))
    return model


@pytest.mark.parametrize("through_origin", [False, True])
@pytest.mark.parametrize("aggr", ["mul", "add"])
def test_sparse_fused_gradient_matches_dense_autograd(tiny_cfg: Config, tiny_dataset,
                                                      aggr: str, through_origin: bool) -> None:
    """The fused loss on the sparse products against autograd on the dense ones (float64)."""
    cfg = dataclasses.replace(
        tiny_cfg,
        graph_model=dataclasses.replace(tiny_cfg.graph_model, aggr_type=aggr,
                                        sub_through_origin=through_origin),
        training=dataclasses.replace(tiny_cfg.training, **ALL_ON))
    c = torch.as_tensor(tiny_dataset.x[:8], dtype=torch.float64)
    y = torch.as_tensor(tiny_dataset.y[:8], dtype=torch.float64)
    ref = _live(build_model(tiny_dataset, cfg, "cpu", product="dense").double())
    terms = _step_terms(ref, c, y, cfg, cfg.simulation.log_k_center)
    (terms * term_weights(cfg).double()).sum().backward()
    ours = _live(build_model(tiny_dataset, cfg, "cpu", product="sparse").double())
    assert ours.product == "sparse"
    fused = FusedLoss(ours, cfg)
    got = fused.forward(c, y)
    fused.backward()
    torch.testing.assert_close(got, terms.detach(), rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_sparse_and_dense_steps_train_alike(tiny_cfg: Config, tiny_dataset) -> None:
    """200 fused steps with each product from the same start and draws: log_k stays close (not
    bitwise: the sums round differently), and the sparse path is itself reproducible."""
    x = torch.as_tensor(tiny_dataset.x, dtype=torch.float32)
    y = torch.as_tensor(tiny_dataset.y, dtype=torch.float32)

    def run(product: str) -> torch.Tensor:
        model = build_model(tiny_dataset, tiny_cfg, "cpu", product=product)  # type: ignore
        step = _make_step(model, tiny_cfg, x, y, torch.Generator().manual_seed(3),
                          cuda_graph=False)
        assert step.fused and model.product == product
        for i in range(200):
            step(i + 1)
        return model.log_k.detach().clone()

    sparse = run("sparse")
    assert torch.equal(sparse, run("sparse"))
    torch.testing.assert_close(sparse, run("dense"), rtol=0, atol=1e-4)


# ------------------------------------------------------------------- module mechanics


def test_sparse_model_moves_copies_and_saves_like_a_dense_one() -> None:
    dense, sparse = make_model("dense"), make_model("sparse")
    # The same state dict keys (the CSR parts, like the dense matrices, are not saved) and S.
    assert dense.state_dict().keys() == sparse.state_dict().keys()
    assert torch.equal(dense.S, sparse.S)
    sparse.load_state_dict(dense.state_dict())
    double = copy.deepcopy(sparse).double()
    assert double.csr_S_val.dtype == torch.float64
    assert double.csr_S_col.dtype == torch.int64  # indices stay indices
    c = frames(3, 4).double()
    with torch.no_grad():
        torch.testing.assert_close(double(c), dense.double()(c), rtol=1e-12, atol=1e-14)


def test_build_model_keeps_the_dense_products_off_the_cpu(tiny_cfg: Config,
                                                          tiny_dataset) -> None:
    """On a GPU the rule is not consulted (``meta`` stands in for one: no data, same path)."""
    assert build_model(tiny_dataset, tiny_cfg, "cpu", product="sparse").product == "sparse"
    assert build_model(tiny_dataset, tiny_cfg, "meta").product == "dense"
