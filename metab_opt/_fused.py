"""The training loss and its gradient written out by hand: the trainer's fast path.

:class:`FusedLoss` computes the same six terms as ``training._step_terms`` for a batch of B
frames and writes the gradient of ``Σ_t w_t · term_t`` into the parameters' ``.grad``, with no
autograd graph. On the CPU this model's step is small enough that the autograd engine's
per-node cost (about 50 nodes forward, as many backward) took about half of it; here the step
is a fixed sequence of ~70 tensor ops. The MLPs go through the same :func:`tail_forward` /
:func:`tail_backward` as the autograd path. ``tests/test_fused.py`` checks terms and gradients
against autograd with ``allclose`` on every option (aggregation, through-origin, each
regularizer, MLP depths, embedding size).

The gradient, with r = dc/dt - y over the batch's n = B·N entries (the notation of
``model.py``)::

    g_dcdt = 2 w_loss r / n                    g_node = g_dcdt + w_L1 sign(MLP_node) / n
    g_v    = g_dcdt S                          (B, R)
    mul:  L = log(|f_pair|) M + ln10 log_k,    v = exp(L)
          g_log_k = ln10 Σ_b g_v v,            g_pair = (g_v v) M^T / f_pair   (|f| >= 1e-8)
    add:  g_log_k = ln10 Σ_b g_v v,            g_pair = (g_v 10^log_k) M^T
    k_center: + 2 w (mean log_k - centre) / R;  k_floor: - 2 w relu(threshold - log_k)

then the MLP_sub rows (pairs, monotonicity grid, scale anchor, and f(0, s) with
sub_through_origin) and MLP_node's rows go back through their MLPs. MLP_node's first layer is
``u0 = 2 (c w_c + W_e e_i + b)`` (see ``MetabolismGNN.node_preact``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metab_opt.config import Config
from metab_opt.model import CLAMP, LN10, MetabolismGNN, at_origin, tail_backward, tail_forward

__all__ = ["FusedLoss", "fused_supported"]


def fused_supported(model: MetabolismGNN) -> bool:
    """Whether :class:`FusedLoss` covers this model (both MLPs have a hidden layer)."""
    return len(model.mlp_sub.linears()) >= 2 and len(model.mlp_node.linears()) >= 2


@dataclass
class _Saved:
    """What :meth:`FusedLoss.backward` needs from the forward pass."""

    c: Tensor  # (B, N) the batch
    x_sub: Tensor  # (M, 2) MLP_sub's input rows
    sub_acts: list[Tensor]  # MLP_sub's saved activations
    pair: Tensor  # (B, Q) the substrate function per pair
    diff: Tensor  # (P, G - 1) f(c_g) - f(c_{g+1}) on the grid
    norm: Tensor  # () the scale anchor f(1, 1)
    v: Tensor  # (B, R) the rates
    node_acts: list[Tensor]  # MLP_node's saved activations
    node_out: Tensor  # (B, N)
    r: Tensor  # (B, N) dc/dt - y


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
        t = cfg.training
        self.model = model
        self.w = [1.0, float(t.coeff_MLP_sub_diff), float(t.coeff_MLP_node_L1),
                  float(t.coeff_k_center), float(t.coeff_k_floor), float(t.coeff_MLP_sub_norm)]
        self.k_center = float(cfg.simulation.log_k_center)
        self.k_floor_threshold = float(t.k_floor_threshold)
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
        """The six unweighted terms (TERMS' order) for frames ``c`` (B, N) and targets ``y``."""
        m, w = self.model, self.w
        B, N = c.shape
        x_sub = m.sub_input(c)
        f, sub_acts = tail_forward(m.mlp_sub.first_preact(x_sub), self.sub_w, self.sub_b)
        pair, grid, norm = m.split_sub(f.view(-1), x_sub, B)
        v = m._rates(pair, dense=True)
        node_out, node_acts = tail_forward(m.node_preact(c), self.node_w, self.node_b)
        node_out = node_out.view(B, N)
        r = torch.addmm(node_out, v, m.S_t).sub_(y)

        zero_t = r.new_zeros(())
        log_k = m.log_k
        diff = grid[:, :-1] - grid[:, 1:]
        terms = torch.stack([
            r.square().mean(),
            torch.relu(diff).sum() if w[1] else zero_t,
            node_out.abs().mean() if w[2] else zero_t,
            (log_k.mean() - self.k_center) ** 2 if w[3] else zero_t,
            torch.relu(self.k_floor_threshold - log_k).square().sum() if w[4] else zero_t,
            (norm - 1.0) ** 2 if w[5] else zero_t,
        ])
        self._saved = _Saved(c=c, x_sub=x_sub, sub_acts=sub_acts, pair=pair, diff=diff,
                             norm=norm, v=v, node_acts=node_acts, node_out=node_out, r=r)
        return terms

    @torch.no_grad()
    def backward(self) -> None:
        """Write the gradient of the weighted sum of the last :meth:`forward`'s terms."""
        m, w, sv = self.model, self.w, self._saved
        if sv is None:
            raise RuntimeError("FusedLoss.backward: call forward first")
        r, v, pair, node_out, c = sv.r, sv.v, sv.pair, sv.node_out, sv.c
        B, N = c.shape
        P, G = m.powers.numel(), m.sub_grid.numel()
        BQ, PG = pair.numel(), P * G
        n = r.numel()
        R = m.log_k.numel()

        g_dcdt = r * (2.0 * w[0] / n)
        g_node = g_dcdt.add(torch.sign(node_out), alpha=w[2] / n) if w[2] else g_dcdt
        g_v = g_dcdt @ m.S
        g_vv = g_v * v
        g_log_k = g_vv.sum(0).mul_(LN10)
        if m.aggr == "mul":
            g_pair = torch.where(pair.abs() >= CLAMP, (g_vv @ m.pair_to_reac.t()).div_(pair),
                                 0.0)
        else:
            g_pair = (g_v * torch.pow(10.0, m.log_k)) @ m.pair_to_reac.t()
        if m.through_origin:
            # The pair rows at the origin are the constant 0 (MetabolismGNN.split_sub).
            g_pair.masked_fill_(at_origin(sv.x_sub[:BQ]).view(B, -1), 0.0)
        if w[3]:
            g_log_k.add_(2.0 * w[3] / R * (m.log_k.mean() - self.k_center))
        if w[4]:
            g_log_k.sub_(torch.relu(self.k_floor_threshold - m.log_k), alpha=2.0 * w[4])

        # MLP_sub's rows: the pairs, the grid, the scale anchor, then f(0, s) if through-origin.
        g_f = pair.new_zeros(sv.x_sub.shape[0])
        g_f[:BQ] = g_pair.view(-1)
        g_grid = g_f[BQ:BQ + PG].view(P, G)
        if w[1]:
            mask = (sv.diff > 0).to(sv.diff.dtype).mul_(w[1])
            g_grid[:, :-1] += mask
            g_grid[:, 1:] -= mask
        if w[5]:
            g_f[BQ + PG] = 2.0 * w[5] * (sv.norm - 1.0)
        if m.through_origin:
            g_grid.masked_fill_(m.grid_at_origin, 0.0)  # a constant 0, like the pairs above
            g_zero = g_f[BQ + PG + 1:]
            g_zero[:P].index_add_(0, m.pair_pow_index, g_pair.sum(0), alpha=-1.0)
            g_zero[:P] -= g_grid.sum(1)
            g_zero[P] = -g_f[BQ + PG]
        g_u0, sub_grads = tail_backward(g_f.unsqueeze(1), sv.sub_acts, self.sub_w)
        # (x^T g)^T: MKL is ~4x slower on the (H, n) x (n, 2) orientation of this product.
        sub_first = [torch.mm(sv.x_sub.t(), g_u0).t().mul(2.0), g_u0.sum(0).mul_(2.0)]

        g_nu0, node_grads = tail_backward(g_node.view(-1, 1), sv.node_acts, self.node_w)
        g_per_met = g_nu0.view(B, N, -1).sum(0)  # (N, H)
        weight = self.node_first.weight
        g_weight = torch.empty_like(weight)
        g_weight[:, 0] = torch.mm(c.view(1, -1), g_nu0).view(-1)
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
