"""The training loss and its gradient written out by hand: the trainer's fast path.

:class:`FusedLoss` computes the same terms as ``training._step_terms`` for a batch of B frames
and writes the gradient of ``Σ_t w_t · term_t`` into the parameters' ``.grad``, with no
autograd graph. On the CPU this model's step is small enough that the autograd engine's
per-node cost (about 50 nodes forward, as many backward) took about half of it; here the step
is a fixed sequence of ~70 tensor ops. The MLPs go through the same :func:`tail_forward` /
:func:`tail_backward` as the autograd path. ``tests/test_fused.py`` and ``tests/test_losses.py``
check terms and gradients against autograd with ``allclose`` on every option (aggregation,
through-origin, each registered term, MLP depths, embedding size).

The terms and their own gradients come from :mod:`metab_opt.problem.losses`: each term adds
``w · ∂term/∂variable`` into its variable's buffer (``g_r``, ``g_node``, ``g_log_k``,
``g_grid``, ``g_norm`` below) when the chain reaches it. The chain, with r = dc/dt - y and M the
(Q, R) pair-to-reaction matrix (the notation of ``model.py``)::

    g_r    = Σ terms of r                      g_node = g_r + Σ terms of node_out
    g_v    = g_r S                             (B, R)   (dc/dt = MLP_node + v S^T)
    mul:  L = log(|f_pair|) M + ln10 log_k,    v = exp(L)
          g_log_k = ln10 Σ_b g_v v,            g_pair = (g_v v) M^T / f_pair   (|f| >= 1e-8)
    add:  g_log_k = ln10 Σ_b g_v v,            g_pair = (g_v 10^log_k) M^T
    g_log_k += Σ terms of log_k

The four products with M, M^T, S and S^T are the model's own (``MetabolismGNN.product``: dense
GEMMs, or CSR products on a large graph), so this gradient costs what the forward pass does.

then the MLP_sub rows (pairs, the monotonicity grid + Σ terms of grid, the scale anchor
= Σ terms of norm, and f(0, s) with sub_through_origin) and MLP_node's rows go back through
their MLPs. MLP_node's first layer is ``u0 = 2 (c w_c + W_e e_i + b)`` (see
``MetabolismGNN.node_preact``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metab_opt.config import Config
from metab_opt.problem import losses
from metab_opt.problem.losses import LOSS_TERMS, VARIABLES, LossInputs, LossTerm, Variable
from metab_opt.problem.model import (
    CLAMP,
    LN10,
    MetabolismGNN,
    at_origin,
    tail_backward,
    tail_forward,
)

__all__ = ["FusedLoss", "fused_supported"]


def fused_supported(model: MetabolismGNN) -> bool:
    """Whether :class:`FusedLoss` covers this model: both MLPs have a hidden layer, and the
    substrate function is MLP_sub's own (``sub_form: power`` trains through autograd)."""
    return (len(model.mlp_sub.linears()) >= 2 and len(model.mlp_node.linears()) >= 2
            and not model.power_form)


@dataclass
class _Saved:
    """What :meth:`FusedLoss.backward` needs from the forward pass."""

    c: Tensor  # (B, N) the batch
    x_sub: Tensor  # (M, 2) MLP_sub's input rows
    sub_acts: list[Tensor]  # MLP_sub's saved activations
    pair: Tensor  # (B, Q) the substrate function per pair
    v: Tensor  # (B, R) the rates
    node_acts: list[Tensor]  # MLP_node's saved activations
    inputs: LossInputs  # what the terms read: r, node_out, log_k, grid, norm


class FusedLoss:
    """The step's terms (:meth:`forward`) and their weighted gradient (:meth:`backward`).

    Args:
        model: the model; its parameters' ``.grad`` receive the gradient (copied into an
            existing tensor, such as ``GroupAdam``'s buffer views, or assigned).
        cfg: the config (its training coefficients weight the terms).
    """

    def __init__(self, model: MetabolismGNN, cfg: Config) -> None:
        if not fused_supported(model):
            raise ValueError("FusedLoss: both MLPs need at least one hidden layer "
                             "(n_layers_sub, n_layers_node >= 2)")
        self.model = model
        self.training = cfg.training
        self.w = losses.weights(cfg.training)
        self.k_center = float(cfg.simulation.log_k_center)
        # The terms that take part (weight != 0) by variable, in registry order: the order in
        # which backward() adds them into each buffer.
        self._terms: dict[Variable, list[tuple[LossTerm, float]]] = {v: [] for v in VARIABLES}
        for term, w in zip(LOSS_TERMS, self.w):
            if w:
                self._terms[term.wrt].append((term, w))
        sub, node = model.mlp_sub.linears(), model.mlp_node.linears()
        self.node_first = node[0]
        self.sub_w = [layer.weight for layer in sub[1:]]
        self.sub_b = [layer.bias for layer in sub[1:]]
        self.node_w = [layer.weight for layer in node[1:]]
        self.node_b = [layer.bias for layer in node[1:]]
        # The parameters in the order backward() produces their gradients.
        self._params = [model.log_k, model.embedding,
                        *[p for layer in sub for p in (layer.weight, layer.bias)],
                        *[p for layer in node for p in (layer.weight, layer.bias)]]
        assert len(self._params) == len(list(model.parameters()))
        self._saved: _Saved | None = None

    @torch.no_grad()
    def forward(self, c: Tensor, y: Tensor) -> Tensor:
        """The unweighted terms (TERMS' order) for frames ``c`` (B, N) and targets ``y``."""
        m = self.model
        B, N = c.shape
        x_sub = m.sub_input(c)
        f, sub_acts = tail_forward(m.mlp_sub.first_preact(x_sub), self.sub_w, self.sub_b)
        pair, grid, norm = m.split_sub(f.view(-1), x_sub, B)
        v = m._rates(pair)
        node_out, node_acts = tail_forward(m.node_preact(c), self.node_w, self.node_b)
        node_out = node_out.view(B, N)
        r = m.reactions_to_metabolites(node_out, v).sub_(y)

        x = LossInputs(r=r, node_out=node_out, log_k=m.log_k, grid=grid, norm=norm,
                       training=self.training, log_k_center=self.k_center)
        self._saved = _Saved(c=c, x_sub=x_sub, sub_acts=sub_acts, pair=pair, v=v,
                             node_acts=node_acts, inputs=x)
        return losses.evaluate(x, self.w)

    def _add_terms(self, wrt: Variable, g: Tensor) -> None:
        """Add the gradient of every live term of ``wrt`` into its buffer ``g``."""
        assert self._saved is not None
        for term, w in self._terms[wrt]:
            term.grad(self._saved.inputs, w, g)

    @torch.no_grad()
    def backward(self) -> None:
        """Write the gradient of the weighted sum of the last :meth:`forward`'s terms."""
        m, sv = self.model, self._saved
        if sv is None:
            raise RuntimeError("FusedLoss.backward: call forward first")
        v, pair, c = sv.v, sv.pair, sv.c
        B, N = c.shape
        P, G = m.powers.numel(), m.sub_grid.numel()
        BQ, PG = pair.numel(), P * G

        g_r = torch.zeros_like(sv.inputs.r)
        self._add_terms("r", g_r)
        if self._terms["node_out"]:
            # dc/dt = MLP_node + v S^T: MLP_node gets g_r as well as its own terms, the
            # rates g_r alone.
            g_node = g_r.clone()
            self._add_terms("node_out", g_node)
        else:
            g_node = g_r
        g_v = m.metabolites_to_reactions(g_r)
        g_vv = g_v * v
        g_log_k = g_vv.sum(0).mul_(LN10)
        if m.aggr == "mul":
            g_pair = torch.where(pair.abs() >= CLAMP, m.reactions_to_pairs(g_vv).div_(pair), 0.0)
        else:
            g_pair = m.reactions_to_pairs(g_v * torch.pow(10.0, m.log_k))
        if m.through_origin:
            # The pair rows at the origin are the constant 0 (MetabolismGNN.split_sub).
            g_pair.masked_fill_(at_origin(sv.x_sub[:BQ]).view(B, -1), 0.0)
        self._add_terms("log_k", g_log_k)

        # MLP_sub's rows: the pairs, the grid, the scale anchor, then f(0, s) if through-origin.
        g_f = pair.new_zeros(sv.x_sub.shape[0])
        g_f[:BQ] = g_pair.view(-1)
        g_grid = g_f[BQ:BQ + PG].view(P, G)
        self._add_terms("grid", g_grid)
        A = m.n_anchors
        # A view (0-dim, or (P,) with an anchor at every power): the terms add into g_f.
        g_anchor = g_f[BQ + PG:BQ + PG + A] if m.anchor_every else g_f[BQ + PG]
        if self._terms["norm"]:
            self._add_terms("norm", g_anchor)
        if m.through_origin:
            g_grid.masked_fill_(m.grid_at_origin, 0.0)  # a constant 0, like the pairs above
            g_zero = g_f[BQ + PG + A:]
            g_zero[:P].index_add_(0, m.pair_pow_index, g_pair.sum(0), alpha=-1.0)
            g_zero[:P] -= g_grid.sum(1)
            if m.anchor_every:
                g_zero[:P] -= g_anchor
            else:
                g_zero[P] = -g_anchor
        g_u0, sub_grads = tail_backward(g_f.unsqueeze(1), sv.sub_acts, self.sub_w)
        # (x^T g)^T: MKL is ~4x slower on the (H, n) x (n, 2) orientation of this product.
        sub_first = [torch.mm(sv.x_sub.t(), g_u0).t().mul(2.0), g_u0.sum(0).mul_(2.0)]

        g_nu0, node_grads = tail_backward(g_node.view(-1, 1), sv.node_acts, self.node_w)
        g_per_met = g_nu0.view(B, N, -1).sum(0)  # (N, H)
        weight = self.node_first.weight
        g_weight = torch.empty_like(weight)
        g_weight[:, 0] = torch.mm(m.node_input(c).reshape(1, -1), g_nu0).view(-1)
        g_weight[:, 1:] = torch.mm(g_per_met.t(), m.embedding)
        g_weight.mul_(2.0)
        node_first = [g_weight, g_per_met.sum(0).mul_(2.0)]
        g_emb = torch.mm(g_per_met, weight[:, 1:]).mul_(2.0)

        for p, g in zip(self._params,
                        [g_log_k, g_emb, *sub_first, *sub_grads, *node_first, *node_grads]):
            if p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)
