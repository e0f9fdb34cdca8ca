"""The training loss, term by term: each term declared once, with its hand-written gradient.

One step's loss is ``Σ_t w_t · term_t`` over :data:`LOSS_TERMS`, in order. The first term is the
prediction loss (weight 1); each other term is a regularizer weighted by a coefficient of the
``training`` config section (:attr:`LossTerm.weight` names it). Everything else derives from
the registry: the names (``training.TERMS``, the keys of the history and the reports), the
weights (:func:`weights`, ``training.term_weights``), the autograd step
(``training._step_terms``) and the hand-written one (``_fused.FusedLoss``).

A term is a function of ONE quantity of the forward pass, its variable (:attr:`LossTerm.wrt`),
a field of :class:`LossInputs`::

    r         (B, N)  dc/dt - y, the residual of the prediction (∂/∂r = ∂/∂(dc/dt))
    node_out  (B, N)  MLP_node's output
    log_k     (R,)    the rate constants
    grid      (P, G)  the substrate function on the monotonicity grid, one row per |s| present
    norm      () (P,) the substrate function at the scale anchor c = 1, |s| = 1 (at every |s|
                      with graph_model.sub_norm_powers: every)

and declares it twice over, side by side: ``value(x)`` in differentiable torch ops (the
autograd path, and the fused forward under no_grad) and ``grad(x, w, g)``, which adds
``w · ∂term/∂variable`` into ``g`` in place: the gradient buffer of that variable, which the
fused backward then carries through the model to the parameters. In place, because a term's
share then costs one ``add_(·, alpha=w ...)`` into the buffer (no temporary, a single rounding
of ``g + w·∂``).

Adding a regularizer (tests/test_losses.py then checks its gradient against autograd, alone and
through the whole model, with no test to write):

1. its coefficient in ``config.TrainingConfig`` (``coeff_x: float = _key(_f(0.0, 1e6), 0.0)``),
   and any setting of its own next to it;
2. its ``value`` and ``grad`` and its :class:`LossTerm` below;
3. the record in :data:`LOSS_TERMS`.

A term of a quantity that is not a variable yet (the per-pair substrate function, the rates, a
weight of an MLP) needs that quantity in :class:`LossInputs` (both paths fill it) and its step
in the fused backward's chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from metab_opt.config import TrainingConfig

__all__ = [
    "LOSS_TERMS",
    "TERM_NAMES",
    "VARIABLES",
    "LossInputs",
    "LossTerm",
    "evaluate",
    "weights",
]

Variable = Literal["r", "node_out", "log_k", "grid", "norm"]
# The order in which the fused backward forms the variables' gradients.
VARIABLES: tuple[Variable, ...] = ("r", "node_out", "log_k", "grid", "norm")


@dataclass(slots=True)
class LossInputs:
    """What the terms are functions of: one batch's forward pass and the settings they read."""

    r: Tensor  # (B, N) dc/dt - y
    node_out: Tensor  # (B, N) MLP_node's output
    log_k: Tensor  # (R,) the model's log_k (the parameter itself on the autograd path)
    grid: Tensor  # (P, G) the substrate function on the monotonicity grid
    norm: Tensor  # () f at c = 1, |s| = 1; (P,) at every |s| (sub_norm_powers: every)
    training: TrainingConfig  # a term's own settings (k_floor_threshold)
    log_k_center: float  # the centre of the simulation's log_k range


@dataclass(frozen=True)
class LossTerm:
    """One loss term: its name, its weight's config key, its variable, its value, its gradient.

    ``weight`` is a ``training`` key (None: the weight is 1, the prediction loss). ``grad(x, w,
    g)`` adds ``w · ∂value/∂x.<wrt>`` into ``g`` (shaped like the variable) in place.
    """

    name: str
    weight: str | None
    wrt: Variable
    value: Callable[[LossInputs], Tensor]
    grad: Callable[[LossInputs, float, Tensor], None]

    def __post_init__(self) -> None:
        if self.wrt not in VARIABLES:
            raise ValueError(f"loss term {self.name}: wrt must be one of {VARIABLES}, "
                             f"got {self.wrt!r}")


# ------------------------------------------------------------------------- the prediction


def _prediction(x: LossInputs) -> Tensor:
    """``mean_{b,i} r_bi²``, the MSE of dc/dt over the batch's n = B·N entries.

    Gradient: ``∂/∂r = 2 r / n``.
    """
    return x.r.square().mean()


def _prediction_grad(x: LossInputs, w: float, g: Tensor) -> None:
    g.add_(x.r, alpha=2.0 * w / x.r.numel())


PREDICTION = LossTerm("loss", None, "r", _prediction, _prediction_grad)


# ------------------------------------------------------------------------- MLP_sub


def _sub_diff(x: LossInputs) -> Tensor:
    """Monotonicity: ``Σ_s Σ_g relu(f_{s,g} - f_{s,g+1})`` on the grid (f should rise with c).

    Gradient: ``∂/∂f_{s,g} = [f_{s,g} > f_{s,g+1}] - [f_{s,g-1} > f_{s,g}]`` (relu' = 1 above 0,
    0 at and below it, as autograd takes it).
    """
    return torch.relu(x.grid[:, :-1] - x.grid[:, 1:]).sum()


def _sub_diff_grad(x: LossInputs, w: float, g: Tensor) -> None:
    # relu' taken on the difference, as autograd takes it (the same as f_g > f_{g+1} unless
    # denormals are flushed to 0).
    diff = x.grid[:, :-1] - x.grid[:, 1:]
    mask = (diff > 0).to(diff.dtype).mul_(w)
    g[:, :-1] += mask
    g[:, 1:] -= mask


SUB_DIFF = LossTerm("MLP_sub_diff", "coeff_MLP_sub_diff", "grid", _sub_diff, _sub_diff_grad)


def _sub_norm(x: LossInputs) -> Tensor:
    """Scale anchor: ``(f(c=1, |s|=1) - 1)²``. k and MLP_sub trade a global scale (a factor
    on f is a factor on every rate); this pins it. With ``sub_norm_powers: every`` the anchor
    is ``Σ_s (f(1, s) - 1)²`` over the network's powers: a factor on f(., s) alone is a factor
    on the rates of the reactions with that power, which their k absorb. Gradient:
    ``∂/∂f = 2 (f - 1)`` at each anchor."""
    return ((x.norm - 1.0) ** 2).sum()


def _sub_norm_grad(x: LossInputs, w: float, g: Tensor) -> None:
    g.add_(x.norm - 1.0, alpha=2.0 * w)


SUB_NORM = LossTerm("MLP_sub_norm", "coeff_MLP_sub_norm", "norm", _sub_norm, _sub_norm_grad)


# ------------------------------------------------------------------------- MLP_node


def _node_l1(x: LossInputs) -> Tensor:
    """Small homeostasis: ``mean_{b,i} |MLP_node(c_bi)|`` over the n = B·N entries.

    Gradient: ``∂/∂out = sign(out) / n`` (0 at 0, as autograd takes |·|' there).
    """
    return x.node_out.abs().mean()


def _node_l1_grad(x: LossInputs, w: float, g: Tensor) -> None:
    g.add_(torch.sign(x.node_out), alpha=w / x.node_out.numel())


NODE_L1 = LossTerm("MLP_node_L1", "coeff_MLP_node_L1", "node_out", _node_l1, _node_l1_grad)


# ------------------------------------------------------------------------- log_k


def _k_center(x: LossInputs) -> Tensor:
    """Scale anchor on k: ``(mean_j log_k_j - centre)²``, centre the middle of the simulation's
    log_k range. Gradient: ``∂/∂log_k_j = 2 (mean log_k - centre) / R``."""
    return (x.log_k.mean() - x.log_k_center) ** 2


def _k_center_grad(x: LossInputs, w: float, g: Tensor) -> None:
    g.add_(2.0 * w / x.log_k.numel() * (x.log_k.mean() - x.log_k_center))


K_CENTER = LossTerm("k_center", "coeff_k_center", "log_k", _k_center, _k_center_grad)


def _k_floor(x: LossInputs) -> Tensor:
    """``Σ_j relu(θ - log_k_j)²``, θ = ``training.k_floor_threshold``: no k collapses below θ.

    Gradient: ``∂/∂log_k_j = -2 relu(θ - log_k_j)``.
    """
    return torch.relu(x.training.k_floor_threshold - x.log_k).square().sum()


def _k_floor_grad(x: LossInputs, w: float, g: Tensor) -> None:
    g.sub_(torch.relu(x.training.k_floor_threshold - x.log_k), alpha=2.0 * w)


K_FLOOR = LossTerm("k_floor", "coeff_k_floor", "log_k", _k_floor, _k_floor_grad)


# ------------------------------------------------------------------------- the registry

#: Every term, in the order of the loss vector (the prediction first).
LOSS_TERMS: tuple[LossTerm, ...] = (PREDICTION, SUB_DIFF, NODE_L1, K_CENTER, K_FLOOR, SUB_NORM)
TERM_NAMES: tuple[str, ...] = tuple(t.name for t in LOSS_TERMS)

# The trainer reports the first term as the loss and the others, weighted, as the
# regularization: the prediction comes first, with weight 1.
assert LOSS_TERMS[0].weight is None and all(t.weight for t in LOSS_TERMS[1:])
assert len(set(TERM_NAMES)) == len(TERM_NAMES)


def weights(training: TrainingConfig) -> list[float]:
    """Each term's weight in the loss (1 for the prediction), in :data:`LOSS_TERMS` order."""
    return [1.0 if t.weight is None else float(getattr(training, t.weight)) for t in LOSS_TERMS]


def evaluate(x: LossInputs, w: Sequence[float]) -> Tensor:
    """The unweighted terms as a (len(LOSS_TERMS),) tensor; a term whose weight ``w`` is 0 is
    not computed and reads 0 (it takes no part in the step, and a report shows it off)."""
    zero = x.r.new_zeros(())
    return torch.stack([t.value(x) if wt else zero for t, wt in zip(LOSS_TERMS, w)])
