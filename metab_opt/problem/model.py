"""The GNN that learns the rate constants, on a torch_geometric bipartite graph.

The graph (:func:`build_graph`) has two node types, ``metabolite`` (N) and ``reaction`` (R), and
two edge types:

* ``(metabolite, substrate_of, reaction)``: E_s edges, ``edge_attr`` = |s| of the substrate;
* ``(reaction, changes, metabolite)``: E_c edges, ``edge_attr`` = the signed S_ij (frozen).

For a batch of B frames ``c`` (B, N), :class:`MetabolismGNN` computes::

    f(c, s)   = MLP_sub(c / c_scale, s)                  [- MLP_sub(0, s) if sub_through_origin]
              = |g(c)|^s,  g(c) = f(c, 1) as above       (sub_form "power": one curve, c^s's form)
    a_j       = Π_{i -> j} |f(c_i, s_ij)|                (aggr "mul", in log space, clamped 1e-8)
              = Σ_{i -> j}  f(c_i, s_ij)                 (aggr "add")
    v_j       = 10^{log_k_j} · a_j                        (B, R)
    dc_i/dt   = Σ_{j -> i} S_ij v_j + MLP_node(c_i / node_c_scale, e_i)  (B, N)

``MLP_sub`` depends only on (c_i, |s|), so it runs once per (frame, metabolite, |s|) pair that
occurs in the graph (B x Q rows, Q <= E_s) and the results are gathered onto the substrate edges.
S is a buffer, never a parameter.

The two sums over the graph are products with fixed matrices: ``M`` (Q, R), how many substrate
edges take pair q into reaction j (``a = f M``, or ``log a = log|f| M`` with ``mul``), and S
(N, R) (``dc/dt = node + v S^T``); the hand-written gradient (``_fused.py``) also takes
``g_v = g_r S`` and ``g_f = g_a M^T``. The model runs them one of two ways, its ``product``:

* ``dense``: GEMMs with M and S^T held as dense (Q, R) and (R, N) matrices: a few fast kernel
  calls on a small graph, but a cost of B·R·(Q + N) per step (and R·(Q + N) floats held);
* ``sparse``: CSR sparse-times-dense products (MKL's on the CPU) with M, M^T, S and S^T held as
  CSR: B·(E_s + nnz(S)) per step, what a genome-scale network (R ~ 3,000) needs.

:func:`choose_product` (:mod:`metab_opt.problem._sparse`, with the CSR products) picks one from
the graph's size; the two agree up to rounding (tests/test_sparse.py).
``forward_parts(reference=True)`` takes a third way, torch_geometric's ``scatter`` over the
edges, as the plain reference the tests compare both products with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.utils import scatter

from metab_opt.config import GraphModelConfig
from metab_opt.problem._sparse import (
    PRODUCTS,
    Product,
    choose_product,
    csr_parts,
    csr_tensor,
    sparse_mm,
)

__all__ = ["MLP", "MetabolismGNN", "Product", "at_origin", "build_graph", "choose_product"]

SUB = ("metabolite", "substrate_of", "reaction")
CHG = ("reaction", "changes", "metabolite")
LN10 = math.log(10.0)
CLAMP = 1e-8  # the product aggregation's floor on |f|


def at_origin(inp: Tensor) -> Tensor:
    """Which MLP_sub input rows ``(..., 2)`` are at the origin c = 0 (where, with
    sub_through_origin, the substrate function is 0 by construction)."""
    return inp[..., 0] == 0


def build_graph(S: np.ndarray, substrate_power: np.ndarray) -> HeteroData:
    """The bipartite metabolite/reaction graph of a stoichiometry."""
    S = np.asarray(S)
    power = np.asarray(substrate_power)
    data = HeteroData()
    data["metabolite"].num_nodes = int(S.shape[0])
    data["reaction"].num_nodes = int(S.shape[1])
    src, dst = np.nonzero(power)
    # Sort by reaction so the edges of a reaction are contiguous (friendlier to scatter).
    order = np.lexsort((src, dst))
    src, dst = src[order], dst[order]
    data[SUB].edge_index = torch.as_tensor(np.stack([src, dst]), dtype=torch.long)
    data[SUB].edge_attr = torch.as_tensor(power[src, dst], dtype=torch.float32)
    met, reac = np.nonzero(S)
    data[CHG].edge_index = torch.as_tensor(np.stack([reac, met]), dtype=torch.long)
    data[CHG].edge_attr = torch.as_tensor(S[met, reac], dtype=torch.float32)
    return data


def tail_forward(u0: Tensor, weights: Sequence[Tensor],
                 biases: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """A tanh MLP after its first linear layer; returns the output and the saved activations.

    Input: ``u0 = 2 z0``, twice the first layer's (n, H) pre-activation (the caller builds it,
    so that a structured first layer, like MLP_node's per-metabolite one, costs no matrix
    product), and the ``(W, b)`` of the remaining layers, W of shape (H_out, H_in). With
    ``tanh(z) = 2 σ(2z) - 1`` the hidden activations are kept as ``s = σ(u)`` and the affine
    map ``h = 2 s - 1`` is folded into the next layer's weights, so no pass over the (n, H)
    activations is spent on it::

        s_0 = σ(u0);   u_i = 2 z_i = 4 W_i s_{i-1} + 2 (b_i - W_i 1);   s_i = σ(u_i)
        out = W_L h_L + b_L = 2 W_L s_{L-1} + (b_L - W_L 1)                 (n, H_L)
    """
    s = torch.sigmoid(u0)
    acts = [s]
    for w, b in zip(weights[:-1], biases[:-1]):
        s = torch.sigmoid(torch.addmm(b - w.sum(1), s, w.t(), beta=2.0, alpha=4.0))
        acts.append(s)
    w, b = weights[-1], biases[-1]
    return torch.addmm(b - w.sum(1), s, w.t(), alpha=2.0), acts


def tail_backward(grad_out: Tensor, acts: Sequence[Tensor],
                  weights: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The gradients of :func:`tail_forward`: w.r.t. ``u0`` and ``[W_1, b_1, ..., W_L, b_L]``.

    With g_z the gradient of a layer's pre-activation and S = s_{i-1} its input::

        dW = g_z^T h = 2 g_z^T S - (Σ_n g_z) 1^T,   db = Σ_n g_z,   g_u = σ'(g_z · 2 W)

    A one-wide layer (the output) multiplies by broadcasting instead of an outer-product GEMM.
    """
    grads: list[Tensor] = []
    # g is the gradient of the current layer's output; ``scale`` relates it to that layer's
    # pre-activation z: g_z = scale · g (1 for the output layer, 2 for a hidden one, whose g is
    # taken with respect to u = 2z).
    g, scale = grad_out.contiguous(), 1.0
    for i in range(len(weights) - 1, -1, -1):
        s, w = acts[i], weights[i]
        g_sum = g.sum(0)
        grad_w = torch.addmm(g_sum.unsqueeze(1), g.t(), s, beta=-scale, alpha=2.0 * scale)
        grad_b = g_sum if scale == 1.0 else g_sum * scale
        grads[:0] = [grad_w, grad_b]
        w2 = w * (2.0 * scale)
        g_s = g * w2 if w.shape[0] == 1 else torch.mm(g, w2)
        g = torch.ops.aten.sigmoid_backward(g_s, s)
        scale = 2.0
    return g, grads


class _TanhMLPFunction(torch.autograd.Function):
    """:func:`tail_forward` as one autograd node, with :func:`tail_backward` as its backward."""

    @staticmethod
    def forward(ctx, u0: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        weights = params[0::2]
        out, acts = tail_forward(u0, weights, params[1::2])
        ctx.save_for_backward(*acts, *weights)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        n = len(saved) // 2
        g, grads = tail_backward(grad_out, saved[:n], saved[n:])
        return (g, *grads)


class MLP(nn.Sequential):
    """``n_layers`` linear layers of width ``hidden``, tanh between them, one output.

    The layers are ordinary ``nn.Linear`` modules (parameters, state dicts and initialisation
    as usual). The forward pass runs the first layer as one ``addmm`` and the rest as one
    autograd node, :class:`_TanhMLPFunction` (:func:`tail_forward` / :func:`tail_backward`,
    checked with ``torch.autograd.gradcheck`` in float64): fewer, larger ops than layer by
    layer, which is what a CPU step of this small model is bound by.
    """

    def __init__(self, n_in: int, hidden: int, n_layers: int) -> None:
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(n_layers - 1):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)

    def linears(self) -> list[nn.Linear]:
        return [layer for layer in self if isinstance(layer, nn.Linear)]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        flat = x.reshape(-1, x.shape[-1])
        if len(self) == 1:  # one linear layer, no activation
            first = self[0]
            return torch.addmm(first.bias, flat, first.weight.t()).reshape(*x.shape[:-1], 1)
        return self.tail(self.first_preact(flat)).reshape(*x.shape[:-1], 1)

    def first_preact(self, x: Tensor) -> Tensor:
        """``u0 = 2 z0 = 2 (W_0 x + b_0)`` for (n, n_in) rows: the input of :meth:`tail`."""
        first = self[0]
        return torch.addmm(first.bias, x, first.weight.t(), beta=2.0, alpha=2.0)

    def tail(self, u0: Tensor) -> Tensor:
        """The network from ``u0 = 2 z0``, twice the first layer's (n, H) pre-activation."""
        params = [p for layer in self.linears()[1:] for p in (layer.weight, layer.bias)]
        return _TanhMLPFunction.apply(u0, *params)

    @property
    def last(self) -> nn.Linear:
        layer = self[-1]
        assert isinstance(layer, nn.Linear)
        return layer


@dataclass(frozen=True)
class ForwardParts:
    """What one batched forward pass produces; the trainer's regularizers reuse it."""

    dcdt: Tensor  # (B, N)
    node_out: Tensor  # (B, N) MLP_node output
    grid_sub: Tensor  # (P, G) substrate function on the monotonicity grid, per |s|
    norm_point: Tensor  # () f at c = 1, |s| = 1, the scale anchor ((P,): at every |s|)


class MetabolismGNN(nn.Module):
    """log_k, MLP_sub and MLP_node over a frozen stoichiometry (see the module docstring).

    Args:
        graph: from :func:`build_graph`.
        model_cfg: the ``graph_model`` section.
        log_k_center: initial value of every log_k (the centre of the simulation's range).
        seed: initialises the parameters (log_k noise, MLPs, embeddings) reproducibly.
        sub_grid_max, sub_grid_points: the grid [0, max] on which MLP_sub's monotonicity is
            penalised (the data's concentration range).
        product: how the graph's sums run (the module docstring): ``dense``, ``sparse`` or
            ``auto``, :func:`choose_product`'s pick for this graph. Only the chosen product's
            matrices are built (S itself, a persistent buffer, is always there dense).
    """

    def __init__(self, graph: HeteroData, model_cfg: GraphModelConfig, *, log_k_center: float,
                 seed: int = 0, sub_grid_max: float = 10.0, sub_grid_points: int = 64,
                 product: Product | Literal["auto"] = "auto") -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        n_met = int(graph["metabolite"].num_nodes)
        n_reac = int(graph["reaction"].num_nodes)
        self.n_metabolites, self.n_reactions = n_met, n_reac
        self.aggr = model_cfg.aggr_type
        self.c_scale = float(model_cfg.c_scale)
        self.through_origin = bool(model_cfg.sub_through_origin)
        self.anchor_every = model_cfg.sub_norm_powers == "every"
        self.power_form = model_cfg.sub_form == "power"
        self.node_c_scale = float(model_cfg.node_c_scale)

        # Learnable parts. Initialise inside a private generator so a seed reproduces them.
        noise = torch.randn(n_reac, generator=gen) * model_cfg.log_k_init_noise
        self.log_k = nn.Parameter(torch.full((n_reac,), float(log_k_center)) + noise)
        self.mlp_sub = MLP(2, model_cfg.hidden_dim_sub, model_cfg.n_layers_sub)
        self.mlp_node = MLP(1 + model_cfg.embedding_dim, model_cfg.hidden_dim_node,
                            model_cfg.n_layers_node)
        self.embedding = nn.Parameter(torch.randn(n_met, model_cfg.embedding_dim, generator=gen))
        for mlp in (self.mlp_sub, self.mlp_node):
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    with torch.no_grad():
                        layer.weight.uniform_(-bound, bound, generator=gen)
                        layer.bias.uniform_(-bound, bound, generator=gen)
        # MLP_node starts at exactly 0 output. Only the last layer is zeroed: it gets a gradient
        # at the first step (the hidden activations are non-zero), the hidden layers from the
        # second step on. Zeroing every layer would leave all gradients 0 for ever.
        with torch.no_grad():
            self.mlp_node.last.weight.zero_()
            self.mlp_node.last.bias.zero_()

        # Frozen graph tensors.
        sub_index = graph[SUB].edge_index
        sub_power = graph[SUB].edge_attr
        # A pair is (metabolite, |s|); |s| may be fractional (0.5 O2 in a real model), so the
        # pairs are keyed in float64, which holds both the index and the power exactly.
        pairs = torch.stack([sub_index[0].double(), sub_power.double()], dim=1)
        uniq, edge_pair = torch.unique(pairs, dim=0, return_inverse=True)
        powers = torch.unique(sub_power)
        self.register_buffer("pair_met", uniq[:, 0].long().contiguous(), persistent=False)
        self.register_buffer("pair_pow", uniq[:, 1].float().contiguous(), persistent=False)
        self.register_buffer("edge_pair", edge_pair.contiguous(), persistent=False)
        self.register_buffer("edge_reac", sub_index[1].contiguous(), persistent=False)
        self.register_buffer("powers", powers.float(), persistent=False)
        n_pairs = uniq.shape[0]
        if product == "auto":
            product = choose_product(n_pairs, n_met, n_reac)
        if product not in PRODUCTS:
            raise ValueError(f"product: expected auto, dense or sparse, got {product!r}")
        self.product: Product = product
        chg_index = graph[CHG].edge_index
        self.register_buffer("chg_reac", chg_index[0].contiguous(), persistent=False)
        self.register_buffer("chg_met", chg_index[1].contiguous(), persistent=False)
        self.register_buffer("chg_coef", graph[CHG].edge_attr.float(), persistent=False)
        S = torch.zeros(n_met, n_reac)
        S[chg_index[1], chg_index[0]] = graph[CHG].edge_attr.float()
        self.register_buffer("S", S)
        self._csr_shapes: dict[str, tuple[int, int]] = {}
        if product == "dense":
            # M (Q, R): how many substrate edges take pair q into reaction j. Gathering the pairs
            # onto the edges and summing the edges of each reaction is one product with it.
            pair_to_reac = torch.zeros(n_pairs, n_reac)
            pair_to_reac.index_put_((edge_pair, sub_index[1]), torch.ones(edge_pair.numel()),
                                    accumulate=True)
            self.register_buffer("pair_to_reac", pair_to_reac, persistent=False)
            self.register_buffer("S_t", S.t().contiguous(), persistent=False)
        else:
            # The same M and S, and their transposes, as CSR matrices; each product's autograd
            # backward and the fused gradient take the transpose. Held as their three index and
            # value tensors (ordinary buffers: .to(), .double() and deepcopy treat them as any
            # other) and wrapped as a CSR tensor per product (:meth:`_sparse_mm`, a few µs).
            ones = torch.ones(edge_pair.numel())
            coef = graph[CHG].edge_attr.float()
            for name, rows, cols, vals, shape in (
                    ("M", edge_pair, sub_index[1], ones, (n_pairs, n_reac)),
                    ("M_t", sub_index[1], edge_pair, ones, (n_reac, n_pairs)),
                    ("S", chg_index[1], chg_index[0], coef, (n_met, n_reac)),
                    ("S_t", chg_index[0], chg_index[1], coef, (n_reac, n_met))):
                crow, col, val = csr_parts(rows, cols, vals, shape)
                self.register_buffer(f"csr_{name}_crow", crow, persistent=False)
                self.register_buffer(f"csr_{name}_col", col, persistent=False)
                self.register_buffer(f"csr_{name}_val", val, persistent=False)
                self._csr_shapes[name] = shape
        self.register_buffer("pair_pow_index", torch.searchsorted(powers, uniq[:, 1].float()),
                             persistent=False)
        self.register_buffer("sub_grid", torch.zeros(0), persistent=False)
        self.register_buffer("extra_inp", torch.zeros(0, 2), persistent=False)
        self.register_buffer("grid_at_origin", torch.zeros(0, 0, dtype=torch.bool),
                             persistent=False)
        self.set_sub_grid(sub_grid_max, sub_grid_points)

    # ---------------------------------------------------------------- substrate function
    def substrate_function(self, c: Tensor, s: Tensor) -> Tensor:
        """f(c, s) for matching tensors c and s (any shape): the substrate function."""
        power = s
        if self.power_form:  # |g(c)|^s, g = MLP_sub(c, 1)
            s = torch.ones_like(s)
        inp = torch.stack([c / self.c_scale, s], dim=-1)
        out = self.mlp_sub(inp).squeeze(-1)
        if self.through_origin:
            out = out - self.mlp_sub(torch.stack([torch.zeros_like(c), s], -1)).squeeze(-1)
            out = out.masked_fill(at_origin(inp), 0.0)
        return self._raise(out, power) if self.power_form else out

    @staticmethod
    def _raise(g: Tensor, power: Tensor) -> Tensor:
        """The power form's ``|g|^s`` (g floored at the product's clamp, as ``mul`` takes it)."""
        return g.abs().clamp_min(CLAMP) ** power

    def set_sub_grid(self, c_max: float, n_points: int) -> None:
        """The concentration grid over the data range on which monotonicity is penalised.

        Also precomputes the constant MLP_sub input rows each step appends to the batch: the
        grid for every |s|, the scale anchor (c = 1, |s| = 1) and, with sub_through_origin,
        (0, s) for every |s| and (0, 1).
        """
        device = self.log_k.device
        grid = torch.linspace(0.0, float(c_max), n_points, device=device)
        P = self.powers.numel()
        A = self.n_anchors
        # The MLP's s input per power: the power itself, or 1 with the power form (g = f(., 1)).
        s_in = torch.ones_like(self.powers) if self.power_form else self.powers
        c_rows = [grid.repeat(P), torch.ones(A, device=device)]
        s_rows = [s_in.repeat_interleave(n_points),
                  s_in.clone() if self.anchor_every else torch.ones(1, device=device)]
        if self.through_origin:
            c_rows.append(torch.zeros(P + 1, device=device))
            s_rows += [s_in, torch.ones(1, device=device)]
        self.sub_grid = grid
        self.extra_inp = torch.stack([torch.cat(c_rows) / self.c_scale, torch.cat(s_rows)], -1)
        self.grid_at_origin = (grid == 0).expand(P, n_points).contiguous()

    @property
    def n_anchors(self) -> int:
        """The scale anchor's rows: (1, 1), or (1, s) for every power s (``sub_norm_powers``)."""
        return self.powers.numel() if self.anchor_every else 1

    # ------------------------------------------------------------------- the graph's sums
    def _sparse_mm(self, x: Tensor, name: str, name_t: str) -> Tensor:
        """``x A^T`` (B, m) for the CSR matrix A = ``name`` (m, k) of the sparse product,
        differentiable in x (its backward takes A^T = ``name_t``)."""
        a, a_t = (csr_tensor(getattr(self, f"csr_{n}_crow"), getattr(self, f"csr_{n}_col"),
                             getattr(self, f"csr_{n}_val"), self._csr_shapes[n])
                  for n in (name, name_t))
        return sparse_mm(x, a, a_t)

    def pairs_to_reactions(self, x: Tensor) -> Tensor:
        """``x M``: (B, Q) per pair -> (B, R), each reaction's sum over its substrate edges."""
        if self.product == "dense":
            return x @ self.pair_to_reac
        return self._sparse_mm(x, "M_t", "M")

    def reactions_to_pairs(self, g: Tensor) -> Tensor:
        """``g M^T``: (B, R) -> (B, Q), the transpose of :meth:`pairs_to_reactions` (the fused
        gradient's step from the reactions back to the pairs)."""
        if self.product == "dense":
            return g @ self.pair_to_reac.t()
        return self._sparse_mm(g, "M", "M_t")

    def reactions_to_metabolites(self, node_out: Tensor, v: Tensor) -> Tensor:
        """``node_out + v S^T``: (B, R) rates -> (B, N) dc/dt, with MLP_node's (B, N) part."""
        if self.product == "dense":
            return torch.addmm(node_out, v, self.S_t)
        return node_out + self._sparse_mm(v, "S", "S_t")

    def metabolites_to_reactions(self, g: Tensor) -> Tensor:
        """``g S``: (B, N) -> (B, R), the transpose of :meth:`reactions_to_metabolites`'s
        product (the fused gradient's ``g_v = g_r S``)."""
        if self.product == "dense":
            return g @ self.S
        return self._sparse_mm(g, "S_t", "S")

    def _rates(self, pair_out: Tensor, reference: bool = False) -> Tensor:
        """(B, Q) substrate function per pair -> (B, R) reaction rates ``10^log_k · a_j``.

        The trainer's path: one product with M (:meth:`pairs_to_reactions`, dense or sparse);
        with ``mul`` the logs are taken per pair before it, and ``ln10 · log_k`` is added inside
        the exponential (the dense GEMM's bias). ``reference``: gather onto the E_s edges and
        torch_geometric's ``scatter`` over each reaction's edges.
        """
        dense = self.product == "dense" and not reference
        if self.aggr == "mul":
            logs = torch.log(pair_out.abs().clamp_min(CLAMP))
            if dense:
                return torch.exp(torch.addmm(self.log_k * LN10, logs, self.pair_to_reac))
            if not reference:
                return torch.exp(self.pairs_to_reactions(logs) + self.log_k * LN10)
            agg = torch.exp(scatter(logs[:, self.edge_pair], self.edge_reac, dim=1,
                                    dim_size=self.n_reactions, reduce="sum"))
        elif not reference:
            agg = self.pairs_to_reactions(pair_out)
        else:
            agg = scatter(pair_out[:, self.edge_pair], self.edge_reac, dim=1,
                          dim_size=self.n_reactions, reduce="sum")
        return torch.pow(10.0, self.log_k) * agg

    def forward_parts(self, c: Tensor, *, reference: bool = False) -> ForwardParts:
        """One batched pass over B frames; also evaluates the regularizers' points.

        Every MLP_sub evaluation of the step (the batch's (frame, metabolite, |s|) pairs, the
        monotonicity grid, the scale anchor and, with sub_through_origin, f(0, s)) goes through
        the MLP in a single call. The rates reach the reactions and the metabolites by the
        model's ``product`` (dense or sparse), or with ``reference`` by torch_geometric's
        scatter over the edges; the three agree (tests/test_model.py, tests/test_sparse.py).
        """
        x_sub = self.sub_input(c)
        out = self.mlp_sub(x_sub).squeeze(-1)
        pair_out, grid_out, norm_point = self.split_sub(out, x_sub, c.shape[0])
        v = self._rates(pair_out, reference)  # (B, R)
        node_out = self.node_function(c)
        if not reference:
            dcdt = self.reactions_to_metabolites(node_out, v)
        else:
            msg = v[:, self.chg_reac] * self.chg_coef
            dcdt = node_out + scatter(msg, self.chg_met, dim=1, dim_size=self.n_metabolites,
                                      reduce="sum")
        return ForwardParts(dcdt=dcdt, node_out=node_out, grid_sub=grid_out,
                            norm_point=norm_point)

    def sub_input(self, c: Tensor) -> Tensor:
        """MLP_sub's (M, 2) input rows for a (B, N) batch: the B·Q (frame, pair) rows, then the
        constant rows of :meth:`set_sub_grid` (grid, scale anchor, f(0, s))."""
        B, Q = c.shape[0], self.pair_met.numel()
        s_in = torch.ones_like(self.pair_pow) if self.power_form else self.pair_pow
        batch_inp = torch.stack([c[:, self.pair_met] / self.c_scale,
                                 s_in.expand(B, Q)], dim=-1).reshape(B * Q, 2)
        return torch.cat([batch_inp, self.extra_inp])

    def split_sub(self, out: Tensor, x_sub: Tensor,
                  batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """MLP_sub's (M,) outputs on the :meth:`sub_input` rows ``x_sub`` (M, 2) -> the
        substrate function per pair (B, Q), on the grid (P, G) and at the scale anchor ().

        With sub_through_origin, f(0, s) is subtracted, and every row whose input is the origin
        (c = 0) is set to exactly 0 (:func:`at_origin`): the pair and grid rows at c = 0 are other
        rows of the same product than the f(0, s) rows, and a GEMM kernel may round two rows
        of equal input differently (one CPU's kernels gave 1.5e-8), so the difference alone
        would be 0 only by luck. The mask changes nothing else: it is the value's true 0, and
        the gradient through a constant is 0.
        """
        BQ = batch * self.pair_met.numel()
        P, G = self.powers.numel(), self.sub_grid.numel()
        pair_out = out[:BQ].view(batch, -1)
        grid_out = out[BQ:BQ + P * G].view(P, G)
        A = self.n_anchors
        norm_point = out[BQ + P * G:BQ + P * G + A] if self.anchor_every else out[BQ + P * G]
        if self.through_origin:
            zero = out[BQ + P * G + A:]  # f(0, s) for each power, then for s = 1
            pair_out = (pair_out - zero[self.pair_pow_index]).masked_fill(
                at_origin(x_sub[:BQ]).view(batch, -1), 0.0)
            grid_out = (grid_out - zero[:P, None]).masked_fill(self.grid_at_origin, 0.0)
            norm_point = norm_point - (zero[:P] if self.anchor_every else zero[P])
        if self.power_form:  # the rows are g = f(., 1): raise each to its power
            pair_out = self._raise(pair_out, self.pair_pow)
            grid_out = self._raise(grid_out, self.powers[:, None])
            norm_point = self._raise(norm_point, self.powers if self.anchor_every
                                     else torch.ones_like(norm_point))
        return pair_out, grid_out, norm_point

    def node_input(self, c: Tensor) -> Tensor:
        """MLP_node's concentration input ``c / node_c_scale`` (c itself at the default 1)."""
        return c if self.node_c_scale == 1.0 else c / self.node_c_scale

    def node_preact(self, c: Tensor) -> Tensor:
        """MLP_node's ``u0 = 2 z0`` for (B, N) concentrations, as (B·N, H) rows (n_layers >= 2).

        The first layer ``W [c_i, e_i] + b`` is split as ``c_i w_c + (W_e e_i + b)``: the
        per-metabolite part is computed once for the N metabolites and broadcast over the batch,
        instead of a (B·N, 1 + E) x (1 + E, H) product on the concatenated input.
        """
        w, b = self.mlp_node[0].weight, self.mlp_node[0].bias
        per_met = torch.addmm(b, self.embedding, w[:, 1:].t(), beta=2.0, alpha=2.0)
        u0 = torch.addcmul(per_met, self.node_input(c).unsqueeze(-1), w[:, 0],
                           value=2.0)  # (B, N, H)
        return u0.view(-1, w.shape[0])

    def node_function(self, c: Tensor) -> Tensor:
        """MLP_node(c_i, e_i) for (B, N) concentrations -> (B, N) (see :meth:`node_preact`)."""
        B, N = c.shape
        if len(self.mlp_node) == 1:
            emb = self.embedding.unsqueeze(0).expand(B, N, -1)
            return self.mlp_node(torch.cat([self.node_input(c).unsqueeze(-1), emb],
                                           dim=-1)).squeeze(-1)
        return self.mlp_node.tail(self.node_preact(c)).view(B, N)

    def forward(self, c: Tensor) -> Tensor:
        """dc/dt for a (B, N) batch of concentrations (or one (N,) frame)."""
        single = c.dim() == 1
        out = self.forward_parts(c.unsqueeze(0) if single else c).dcdt
        return out.squeeze(0) if single else out
