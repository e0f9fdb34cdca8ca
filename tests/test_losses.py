"""The loss-term registry (metab_opt.problem.losses): every registered term, generically.

A term added to ``LOSS_TERMS`` is tested here with no test to write: its hand-written gradient
against autograd on its own variable, then through the whole model (the fused step against the
autograd step, float64), with only that term switched on, at a state where it acts.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metab_opt import config as config_mod
from metab_opt.config import Config, TrainingConfig
from metab_opt.problem._fused import FusedLoss
from metab_opt.problem.losses import (
    LOSS_TERMS,
    TERM_NAMES,
    VARIABLES,
    LossInputs,
    LossTerm,
    weights,
)
from metab_opt.problem.training import TERMS, _step_terms, build_model, term_weights

REGULARIZERS = [t for t in LOSS_TERMS if t.weight is not None]
ALL_TERMS = [pytest.param(t, id=t.name) for t in LOSS_TERMS]


# ------------------------------------------------------------------------------ the registry


def test_registry_declares_each_term_once() -> None:
    assert TERMS == TERM_NAMES == tuple(t.name for t in LOSS_TERMS)
    assert len(set(TERM_NAMES)) == len(TERM_NAMES)
    # The trainer reports the first term as the loss, the others weighted as the regularization.
    assert LOSS_TERMS[0].name == "loss" and LOSS_TERMS[0].weight is None
    keys = [t.weight for t in REGULARIZERS]
    assert len(REGULARIZERS) == len(LOSS_TERMS) - 1 and len(set(keys)) == len(keys)
    specs = config_mod._TRAINING_SPECS
    for term in REGULARIZERS:
        # Its weight is a training key, declared once in TrainingConfig: a number >= 0.
        assert term.weight in specs, term.name
        spec = specs[term.weight]
        assert spec.kind == "float" and spec.low == 0.0 and not spec.low_open, term.name
        assert term.wrt in VARIABLES


def test_a_term_names_a_known_variable() -> None:
    with pytest.raises(ValueError, match="wrt must be one of"):
        LossTerm("x", "coeff_x", "pairs",  # type: ignore[arg-type]
                 LOSS_TERMS[0].value, LOSS_TERMS[0].grad)


def test_term_weights_follow_the_config(tiny_cfg: Config) -> None:
    """Each term's weight is its own key's value (distinct values, so no two are swapped)."""
    values = {t.weight: 0.5 + i for i, t in enumerate(REGULARIZERS)}
    training = dataclasses.replace(tiny_cfg.training, **values)
    cfg = dataclasses.replace(tiny_cfg, training=training)
    want = [1.0] + [values[t.weight] for t in REGULARIZERS]
    assert weights(training) == want
    assert term_weights(cfg).tolist() == want


# ------------------------------------------------------------- each gradient, on its variable


def random_inputs(training: TrainingConfig, seed: int) -> LossInputs:
    """float64 inputs at which every term acts: log_k on both sides of the floor and off the
    centre, a grid that falls somewhere, MLP_node's output and the anchor not 0 / 1."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return LossInputs(r=randn(4, 5), node_out=randn(4, 5),
                      log_k=training.k_floor_threshold + randn(7), grid=randn(3, 6),
                      norm=randn(()), training=training, log_k_center=-1.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("term", ALL_TERMS)
def test_hand_written_gradient_matches_autograd(tiny_cfg: Config, term: LossTerm,
                                                seed: int) -> None:
    x = random_inputs(tiny_cfg.training, seed)
    var = getattr(x, term.wrt).clone().requires_grad_(True)
    value = term.value(dataclasses.replace(x, **{term.wrt: var}))
    assert value.shape == () and torch.isfinite(value)
    (want,) = torch.autograd.grad(value, var)
    assert want.abs().sum() > 0, "the term does not act at these inputs: nothing is tested"
    w = 2.5
    before = torch.randn(var.shape, generator=torch.Generator().manual_seed(seed + 10),
                         dtype=torch.float64)
    g = before.clone()
    term.grad(x, w, g)  # adds into the buffer, keeping what the chain put there
    torch.testing.assert_close(g - before, w * want, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------- each gradient, through the model


def live_model(ds, cfg: Config):
    """A float64 model at which every term acts (test_knobs' ``_live``): log_k spread across
    the floor and off the centre, MLP_node's output not 0, MLP_sub falling somewhere."""
    model = build_model(ds, cfg, "cpu").double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.log_k.copy_(torch.linspace(-3.25, -0.75, model.log_k.numel(),
                                         dtype=torch.float64))
        for last, scale in ((model.mlp_node.last, 0.3), (model.mlp_sub.last, 3.0)):
            last.weight.copy_(scale * torch.randn(last.weight.shape, generator=gen,
                                                  dtype=torch.float64))
            last.bias.copy_(0.3 * torch.randn(last.bias.shape, generator=gen,
                                              dtype=torch.float64))
        grid = model.forward_parts(torch.ones(1, model.n_metabolites,
                                              dtype=torch.float64)).grid_sub
        if not (grid[:, :-1] > grid[:, 1:]).any():
            model.mlp_sub.last.weight.neg_()
    return model


def gradients(ds, cfg: Config, fused: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    c = torch.as_tensor(ds.x[2:8], dtype=torch.float64)
    y = torch.as_tensor(ds.y[2:8], dtype=torch.float64)
    model = live_model(ds, cfg)
    if fused:
        loss = FusedLoss(model, cfg)
        terms = loss.forward(c, y)
        loss.backward()
    else:
        terms = _step_terms(model, c, y, cfg, cfg.simulation.log_k_center)
        (terms * term_weights(cfg).double()).sum().backward()
    return terms.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def only(cfg: Config, term: LossTerm | None, graph: dict[str, object]) -> Config:
    """The config with every regularizer off but ``term`` (weight 2.5)."""
    values: dict[str, object] = {t.weight: 0.0 for t in REGULARIZERS}
    if term is not None and term.weight is not None:
        values[term.weight] = 2.5
    return dataclasses.replace(
        cfg, training=dataclasses.replace(cfg.training, **values),
        graph_model=dataclasses.replace(cfg.graph_model, **graph))


@pytest.mark.parametrize("graph", [{"aggr_type": "mul", "sub_through_origin": True},
                                   {"aggr_type": "add", "sub_through_origin": False}],
                         ids=["mul-origin", "add"])
@pytest.mark.parametrize("term", ALL_TERMS)
def test_each_term_through_the_fused_step_matches_autograd(tiny_cfg: Config, tiny_dataset,
                                                           term: LossTerm,
                                                           graph: dict[str, object]) -> None:
    cfg = only(tiny_cfg, term, graph)
    terms, grads = gradients(tiny_dataset, cfg, fused=False)
    got, fused_grads = gradients(tiny_dataset, cfg, fused=True)
    i = TERMS.index(term.name)
    assert terms[i] != 0
    assert all(terms[j] == 0 for j in range(1, len(TERMS)) if j != i)  # the others are off
    torch.testing.assert_close(got, terms, rtol=1e-10, atol=1e-12)
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-9, atol=1e-12, msg=name)
    if term.weight is not None:
        # The term's gradient reaches the parameters (else the comparison above proves little).
        _, plain = gradients(tiny_dataset, only(tiny_cfg, None, graph), fused=True)
        assert any(not torch.allclose(fused_grads[n], plain[n], rtol=1e-6, atol=1e-9)
                   for n in plain), term.name
