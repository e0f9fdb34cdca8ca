"""The GNN on its bipartite graph: hand-built graphs checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metab_opt.config import GraphModelConfig
from metab_opt.problem.model import CHG, MLP, SUB, MetabolismGNN, build_graph

# 3 metabolites, 2 reactions:
#   r0: m0 + 2 m1 -> 3 m2    substrates m0 (|s| = 1) and m1 (|s| = 2)
#   r1: m2 -> m0             substrate m2 (|s| = 1)
S = np.array([[-1, 1],
              [-2, 0],
              [3, -1]])
POWER = np.array([[1, 0],
                  [2, 0],
                  [0, 1]])


def graph_config(**kw: object) -> GraphModelConfig:
    base: dict[str, object] = dict(hidden_dim_sub=8, n_layers_sub=3, hidden_dim_node=8,
                                   n_layers_node=3, embedding_dim=2, aggr_type="mul",
                                   c_scale=2.0, sub_through_origin=False, log_k_init_noise=0.3)
    base.update(kw)
    return GraphModelConfig(**base)  # type: ignore[arg-type]


def make_model(*, seed: int = 0, live_node: bool = True, S: np.ndarray = S,
               power: np.ndarray = POWER, product: str = "auto",
               **kw: object) -> MetabolismGNN:
    """A model on a hand graph. ``live_node`` gives MLP_node a non-zero output (it starts at 0)
    so that the homeostasis term takes part in the checks. ``product`` forces the dense or the
    sparse products (auto: dense on every graph here)."""
    model = MetabolismGNN(build_graph(S, power), graph_config(**kw), log_k_center=-1.0,
                          seed=seed, sub_grid_max=5.0, sub_grid_points=11,
                          product=product)  # type: ignore[arg-type]
    if live_node:
        gen = torch.Generator().manual_seed(seed + 100)
        last = model.mlp_node.last
        with torch.no_grad():
            last.weight.copy_(0.5 * torch.randn(last.weight.shape, generator=gen))
            last.bias.copy_(0.5 * torch.randn(last.bias.shape, generator=gen))
    return model


def frames(batch: int, n_met: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.2 + 4.0 * torch.rand(batch, n_met, generator=gen)


def hand_dcdt(model: MetabolismGNN, c: torch.Tensor) -> torch.Tensor:
    """Σ_j S_ij k_j A_j(f(c_i, s_ij)) + MLP_node(c_i, e_i) for one frame, written out with
    the model's own MLPs and plain Python loops over the reactions and metabolites."""

    def f(ci: torch.Tensor, s: int) -> torch.Tensor:
        sv = torch.tensor(float(s), dtype=ci.dtype)
        out = model.mlp_sub(torch.stack([ci / model.c_scale, sv]))[0]
        if model.through_origin:
            out = out - model.mlp_sub(torch.stack([torch.zeros_like(ci), sv]))[0]
        return out

    n_met, n_reac = model.S.shape
    k = 10.0 ** model.log_k
    v = []
    for j in range(n_reac):
        vals = [f(c[i], int(POWER[i, j])) for i in range(n_met) if POWER[i, j]]
        if model.aggr == "mul":
            act = math.prod(float(abs(x).clamp_min(1e-8)) for x in vals)
        else:
            act = sum(float(x) for x in vals)
        v.append(float(k[j]) * act)
    out = []
    for i in range(n_met):
        node = model.mlp_node(torch.cat([c[i:i + 1], model.embedding[i]]))[0]
        out.append(sum(float(S[i, j]) * v[j] for j in range(n_reac)) + float(node))
    return torch.tensor(out, dtype=torch.float64)


# ------------------------------------------------------------------------------- the graph


def test_build_graph_edges() -> None:
    g = build_graph(S, POWER)
    assert g["metabolite"].num_nodes == 3
    assert g["reaction"].num_nodes == 2
    sub = {(int(a), int(b), float(w)) for (a, b), w in
           zip(g[SUB].edge_index.t().tolist(), g[SUB].edge_attr.tolist())}
    assert sub == {(0, 0, 1.0), (1, 0, 2.0), (2, 1, 1.0)}
    chg = {(int(a), int(b), float(w)) for (a, b), w in
           zip(g[CHG].edge_index.t().tolist(), g[CHG].edge_attr.tolist())}
    # (reaction -> metabolite, signed S_ij)
    assert chg == {(0, 0, -1.0), (0, 1, -2.0), (0, 2, 3.0), (1, 0, 1.0), (1, 2, -1.0)}
    assert g[SUB].edge_index.dtype == torch.long
    # Substrate edges of a reaction are contiguous.
    assert g[SUB].edge_index[1].tolist() == sorted(g[SUB].edge_index[1].tolist())


@pytest.mark.parametrize("n_layers", [1, 2, 4])
def test_mlp_shape(n_layers: int) -> None:
    mlp = MLP(3, 5, n_layers)
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == n_layers
    assert sum(isinstance(m, torch.nn.Tanh) for m in mlp) == n_layers - 1
    assert mlp.last is linears[-1] and mlp.last.out_features == 1
    assert mlp(torch.zeros(7, 3)).shape == (7, 1)


# ------------------------------------------------------------------------- the forward pass


@pytest.mark.parametrize("path", ["dense", "sparse", "reference"])
@pytest.mark.parametrize("through_origin", [False, True])
@pytest.mark.parametrize("aggr", ["mul", "add"])
def test_forward_matches_hand_computation(aggr: str, through_origin: bool, path: str) -> None:
    model = make_model(aggr_type=aggr, sub_through_origin=through_origin,
                       product="dense" if path == "reference" else path).double()
    c = frames(5).double()
    with torch.no_grad():
        got = model.forward_parts(c, reference=path == "reference").dcdt
        want = torch.stack([hand_dcdt(model, ci) for ci in c])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_forward_single_frame_shape() -> None:
    model = make_model()
    c = frames(1)
    assert model(c[0]).shape == (3,)
    # One frame and a batch are different matrix products (other shapes, other kernel
    # blockings): equal up to float32 rounding, not bitwise.
    torch.testing.assert_close(model(c[0]), model(c)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("through_origin", [False, True])
@pytest.mark.parametrize("aggr", ["mul", "add"])
def test_substrate_function_matches_forward_pieces(aggr: str, through_origin: bool) -> None:
    model = make_model(aggr_type=aggr, sub_through_origin=through_origin)
    with torch.no_grad():
        parts = model.forward_parts(frames(2))
        grid = model.sub_grid
        for row, s in enumerate(model.powers.tolist()):
            want = model.substrate_function(grid, torch.full_like(grid, s))
            torch.testing.assert_close(parts.grid_sub[row], want, rtol=1e-6, atol=1e-6)
        one = torch.tensor(1.0)
        torch.testing.assert_close(parts.norm_point, model.substrate_function(one, one),
                                   rtol=1e-6, atol=1e-6)
    assert model.powers.tolist() == [1.0, 2.0]
    assert grid[0] == 0.0 and grid[-1] == pytest.approx(5.0) and grid.numel() == 11


@pytest.mark.parametrize("product", ["dense", "sparse"])
@pytest.mark.parametrize("through_origin", [False, True])
@pytest.mark.parametrize("aggr", ["mul", "add"])
@pytest.mark.parametrize("batch", [1, 6, 33])
def test_products_and_scatter_paths_agree(batch: int, aggr: str, through_origin: bool,
                                          product: str) -> None:
    model = make_model(aggr_type=aggr, sub_through_origin=through_origin, product=product)
    c = frames(batch)
    with torch.no_grad():
        fast = model.forward_parts(c).dcdt
        reference = model.forward_parts(c, reference=True).dcdt
    torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("product", ["dense", "sparse"])
@pytest.mark.parametrize("aggr", ["mul", "add"])
def test_products_and_scatter_agree_on_tiny_graph(tiny_dataset, aggr: str,
                                                  product: str) -> None:
    model = make_model(S=tiny_dataset.S, power=tiny_dataset.substrate_power, aggr_type=aggr,
                       sub_through_origin=True, product=product)
    c = torch.as_tensor(tiny_dataset.x[:16], dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_parts(c).dcdt,
                                   model.forward_parts(c, reference=True).dcdt,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggr", ["mul", "add"])
@pytest.mark.parametrize("graph", ["hand", "tiny"])
def test_batched_forward_equals_per_frame(tiny_dataset, graph: str, aggr: str) -> None:
    if graph == "hand":
        model, c = make_model(aggr_type=aggr, sub_through_origin=True), frames(24)
    else:
        model = make_model(S=tiny_dataset.S, power=tiny_dataset.substrate_power, aggr_type=aggr,
                           sub_through_origin=True)
        c = torch.as_tensor(tiny_dataset.x[::25], dtype=torch.float32)
    with torch.no_grad():
        batched = model(c)
        single = torch.stack([model(ci.unsqueeze(0))[0] for ci in c])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- structural options


@pytest.mark.parametrize("s", [1.0, 2.0, 3.0])
def test_through_origin_zero_at_zero_exactly(s: float) -> None:
    model = make_model(sub_through_origin=True)
    c = torch.zeros(4)
    with torch.no_grad():
        assert torch.equal(model.substrate_function(c, torch.full_like(c, s)), torch.zeros(4))
        assert model.forward_parts(frames(3)).grid_sub[:, 0].eq(0).all()  # the grid starts at 0


def test_through_origin_zero_in_forward_pass() -> None:
    """With ``add`` every reaction activity is a sum of f(0, s): exactly 0, so dc/dt at c = 0 is
    exactly MLP_node's output."""
    model = make_model(sub_through_origin=True, aggr_type="add")
    c = torch.zeros(5, 3)
    with torch.no_grad():
        parts = model.forward_parts(c)
        assert torch.equal(parts.dcdt, parts.node_out)
        assert parts.node_out.abs().sum() > 0  # the check is not vacuous


def test_without_through_origin_f0_is_not_zero() -> None:
    model = make_model(sub_through_origin=False)
    with torch.no_grad():
        out = model.substrate_function(torch.zeros(2), torch.tensor([1.0, 2.0]))
    assert (out != 0).all()


@pytest.mark.parametrize("c_scale", [1.0, 10.0])
def test_c_scale_divides_the_concentration(c_scale: float) -> None:
    model = make_model(c_scale=c_scale)
    c, s = torch.tensor([0.5, 3.0]), torch.tensor([1.0, 2.0])
    with torch.no_grad():
        want = model.mlp_sub(torch.stack([c / c_scale, s], -1)).squeeze(-1)
        torch.testing.assert_close(model.substrate_function(c, s), want, rtol=0, atol=0)


def test_mul_aggregation_clamps_small_values() -> None:
    """A substrate function of exactly 0 contributes 1e-8, never log(0)."""
    model = make_model(sub_through_origin=True, live_node=False)
    with torch.no_grad():
        parts = model.forward_parts(torch.zeros(1, 3))
        assert torch.isfinite(parts.dcdt).all()
        k = 10.0 ** model.log_k
        # r0 has two substrates, r1 one: activities 1e-16 and 1e-8.
        want = torch.as_tensor(S, dtype=torch.float32) @ (k * torch.tensor([1e-16, 1e-8]))
        torch.testing.assert_close(parts.dcdt[0], want, rtol=1e-4, atol=0)


# -------------------------------------------------------------------- parameters, buffers


def test_stoichiometry_is_a_frozen_buffer() -> None:
    model = make_model()
    buffers = dict(model.named_buffers())
    params = dict(model.named_parameters())
    assert "S" in buffers and not any(n.split(".")[-1] in ("S", "S_t") for n in params)
    assert not model.S.requires_grad
    assert all(p is not model.S for p in model.parameters())
    torch.testing.assert_close(model.S, torch.as_tensor(S, dtype=torch.float32), rtol=0, atol=0)
    assert "S" in model.state_dict()
    # Moving the model keeps S with it and leaves it unchanged.
    assert torch.equal(model.double().S, torch.as_tensor(S, dtype=torch.float64))


def test_learnable_parts() -> None:
    model = make_model(embedding_dim=3)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"log_k", "embedding", "mlp_sub", "mlp_node"}
    assert model.log_k.shape == (2,)
    assert model.embedding.shape == (3, 3)
    assert model.mlp_sub[0].in_features == 2
    assert model.mlp_node[0].in_features == 1 + 3


def test_embedding_dim_zero() -> None:
    model = make_model(embedding_dim=0)
    assert model.node_function(frames(2)).shape == (2, 3)


def test_mlp_node_is_zero_at_init_but_alive() -> None:
    model = make_model(live_node=False)
    c = frames(8)
    with torch.no_grad():
        assert torch.equal(model.node_function(c), torch.zeros(8, 3))
        assert torch.equal(model.forward_parts(c).node_out, torch.zeros(8, 3))
    # Only the last layer is zero; the hidden layers are not (else they would never learn).
    assert torch.equal(model.mlp_node.last.weight, torch.zeros_like(model.mlp_node.last.weight))
    assert torch.equal(model.mlp_node.last.bias, torch.zeros_like(model.mlp_node.last.bias))
    hidden = [m for m in model.mlp_node if isinstance(m, torch.nn.Linear)][:-1]
    assert hidden and all(m.weight.abs().sum() > 0 for m in hidden)
    # First backward: the last layer gets a gradient, the hidden layers exactly 0 (they move
    # from the second step on; test_training checks that).
    model.node_function(c).sum().backward()
    assert model.mlp_node.last.weight.grad.abs().sum() > 0
    assert model.mlp_node.last.bias.grad.abs().sum() > 0
    for m in hidden:
        assert torch.equal(m.weight.grad, torch.zeros_like(m.weight))


def test_log_k_initialisation() -> None:
    big = make_model(S=np.tile(S, (1, 200)), power=np.tile(POWER, (1, 200)),
                     log_k_init_noise=0.05)
    lk = big.log_k.detach()
    assert lk.shape == (400,)
    assert float(lk.mean()) == pytest.approx(-1.0, abs=0.01)
    assert float(lk.std()) == pytest.approx(0.05, rel=0.2)
    flat = make_model(log_k_init_noise=0.0)
    assert torch.equal(flat.log_k.detach(), torch.full((2,), -1.0))


def test_seed_reproduces_the_initialisation() -> None:
    a, b, c = make_model(seed=3), make_model(seed=3), make_model(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["log_k"], sc["log_k"])
    assert not torch.equal(sa["mlp_sub.0.weight"], sc["mlp_sub.0.weight"])
    assert not torch.equal(sa["embedding"], sc["embedding"])


def test_through_origin_cancels_the_last_sub_bias() -> None:
    """f = MLP_sub(c, s) - MLP_sub(0, s): MLP_sub's last bias drops out (which is why the
    "every parameter learns" check of test_training leaves it aside under this option)."""
    model = make_model(sub_through_origin=True)
    c = frames(4)
    with torch.no_grad():
        before = model.forward_parts(c)
        model.mlp_sub.last.bias += 3.0
        after = model.forward_parts(c)
    torch.testing.assert_close(after.dcdt, before.dcdt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.grid_sub, before.grid_sub, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_in", [2, 3, 16])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_fused_mlp_matches_layer_by_layer_and_gradcheck(n_in: int, n_layers: int) -> None:
    """The one-node MLP (hand-written backward) equals nn.Sequential's Linear/Tanh chain."""
    from torch import nn

    from metab_opt.problem.model import MLP

    torch.manual_seed(0)
    mlp = MLP(n_in, 8, n_layers).double()
    x = torch.randn(5, 4, n_in, dtype=torch.float64, requires_grad=True)
    reference = nn.Sequential.forward(mlp, x)
    assert torch.allclose(mlp(x), reference, atol=1e-12)
    params = [p for layer in mlp if isinstance(layer, nn.Linear)
              for p in (layer.weight, layer.bias)]
    assert torch.autograd.gradcheck(lambda inp, *ps: mlp(inp), (x, *params))
