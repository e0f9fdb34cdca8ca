"""The training options of the joint recovery (issue 17), each off by default: the embeddings'
own learning rate, the multi-step roll-out loss, the homeostasis phase and MLP_node's input
scale. Each is checked against a computation by hand or against the default path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from metab_opt.config import Config
from metab_opt.problem.training import (
    TERMS,
    _make_step,
    _step_terms,
    build_model,
    homeostasis_config,
    param_groups,
    term_weights,
    train,
)


def with_training(cfg: Config, **values: object) -> Config:
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **values))


def with_graph(cfg: Config, **values: object) -> Config:
    return dataclasses.replace(cfg, graph_model=dataclasses.replace(cfg.graph_model, **values))


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------- learning_rate_embedding


def test_embeddings_share_mlp_nodes_group_by_default(tiny_cfg, tiny_dataset) -> None:
    model = build_model(tiny_dataset, tiny_cfg, "cpu")
    groups = {g["name"]: g for g in param_groups(model, tiny_cfg)}
    assert "embedding" not in groups
    assert any(p is model.embedding for p in groups["node"]["params"])


def test_embeddings_get_their_own_rate(tiny_cfg, tiny_dataset) -> None:
    cfg = with_training(tiny_cfg, learning_rate_embedding=3e-5)
    model = build_model(tiny_dataset, cfg, "cpu")
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert groups["embedding"]["lr"] == 3e-5 and groups["embedding"]["params"] == [
        model.embedding]
    assert all(p is not model.embedding for p in groups["node"]["params"])
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(model.parameters()))


def test_own_group_at_the_node_rate_trains_as_the_shared_one(tiny_cfg, tiny_dataset) -> None:
    same = with_training(tiny_cfg, learning_rate_embedding=tiny_cfg.training.learning_rate_node)
    a = params_of(train(tiny_dataset, tiny_cfg, device="cpu", max_steps=30).model)
    b = params_of(train(tiny_dataset, same, device="cpu", max_steps=30).model)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_slower_embedding_rate_moves_the_embeddings_less(tiny_cfg, tiny_dataset) -> None:
    start = build_model(tiny_dataset, tiny_cfg, "cpu").embedding.detach().clone()
    slow = with_training(tiny_cfg, learning_rate_embedding=tiny_cfg.training.learning_rate_node
                         / 100)
    moved = {}
    for name, cfg in (("shared", tiny_cfg), ("slow", slow)):
        emb = train(tiny_dataset, cfg, device="cpu", max_steps=30).model.embedding.detach()
        moved[name] = float((emb - start).abs().max())
    assert 0 < moved["slow"] < moved["shared"] / 10


# ------------------------------------------------------------------------------- time_step


def test_rolled_out_residual_by_hand(tiny_cfg, tiny_dataset) -> None:
    steps, dt = 3, tiny_cfg.simulation.delta_t
    cfg = with_training(tiny_cfg, time_step=steps)
    model = build_model(tiny_dataset, cfg, "cpu").double()
    idx = torch.arange(5, 13)
    x = torch.as_tensor(tiny_dataset.x, dtype=torch.float64)
    c, target = x[idx], x[idx + steps]
    with torch.no_grad():
        c_t = c.clone()
        for _ in range(steps):
            c_t = c_t + dt * model(c_t)
        r = (c_t - target) / (steps * dt)
        # The one-step loss with y chosen so that its residual is r: the same terms.
        y_same = model(c) - r
    y = torch.as_tensor(tiny_dataset.y, dtype=torch.float64)[idx]
    got = _step_terms(model, c, y, cfg, cfg.simulation.log_k_center, target)
    want = _step_terms(model, c, y_same, tiny_cfg, cfg.simulation.log_k_center)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    assert float(got[0].detach()) == pytest.approx(float(r.square().mean()), rel=1e-10)


def test_time_step_takes_the_autograd_path_and_draws_inside_the_trajectory(
        tiny_cfg, tiny_dataset) -> None:
    steps = 4
    cfg = with_training(tiny_cfg, time_step=steps)
    model = build_model(tiny_dataset, cfg, "cpu")
    x = torch.as_tensor(tiny_dataset.x, dtype=torch.float32)
    y = torch.as_tensor(tiny_dataset.y, dtype=torch.float32)
    step = _make_step(model, cfg, x, y, torch.Generator().manual_seed(0), cuda_graph=False)
    assert not step.fused and step.n_frames == x.shape[0] - steps
    assert _make_step(model, tiny_cfg, x, y, torch.Generator(), cuda_graph=False).fused


def test_a_rolled_out_run_is_finite_and_reproducible(tiny_cfg, tiny_dataset) -> None:
    cfg = with_training(tiny_cfg, time_step=3)
    runs = [train(tiny_dataset, cfg, device="cpu", max_steps=25) for _ in range(2)]
    a, b = params_of(runs[0].model), params_of(runs[1].model)
    assert all(torch.equal(a[n], b[n]) for n in a)  # the same computation twice: bitwise
    assert all(np.isfinite(v).all() for v in runs[0].history.values())
    default = params_of(train(tiny_dataset, tiny_cfg, device="cpu", max_steps=25).model)
    assert not torch.equal(a["log_k"], default["log_k"])


# ------------------------------------------------------------------------ homeostasis_phase


def test_homeostasis_config(tiny_cfg) -> None:
    cfg = with_training(tiny_cfg, homeostasis_phase=0.5, homeostasis_lr_factor=0.1)
    t, t2 = cfg.training, homeostasis_config(cfg).training
    assert t2.coeff_MLP_node_L1 == 0.0 and t.coeff_MLP_node_L1 > 0
    assert t2.learning_rate_k == pytest.approx(0.1 * t.learning_rate_k)
    assert t2.learning_rate_sub == pytest.approx(0.1 * t.learning_rate_sub)
    assert t2.learning_rate_node == t.learning_rate_node


def test_the_phase_leaves_the_first_part_alone_and_drops_the_l1_after(tiny_cfg,
                                                                      tiny_dataset) -> None:
    n = 40
    cfg = with_training(tiny_cfg, homeostasis_phase=0.5, homeostasis_lr_factor=0.1,
                        report_every=10)
    base = with_training(tiny_cfg, report_every=10)
    two = train(tiny_dataset, cfg, device="cpu", max_steps=n, history_points=n)
    one = train(tiny_dataset, base, device="cpu", max_steps=n, history_points=n)
    # Steps 1-20 are phase 1: the same computation as the plain run, so bitwise equal.
    assert [r.terms for r in two.reports[:2]] == [r.terms for r in one.reports[:2]]
    assert two.reports[2].terms != one.reports[2].terms
    # The weighted regularizer sum of each history row: with L1 in phase 1, without after.
    weights = dict(zip(TERMS, term_weights(cfg).tolist()))
    after = two.history_steps > n // 2
    for row, is_after in enumerate(after):
        want = sum(w * float(two.history[name][row]) for name, w in weights.items()
                   if name != TERMS[0] and not (is_after and name == "MLP_node_L1"))
        assert float(two.history["regul_total"][row]) == pytest.approx(want, rel=1e-5)
    # An unweighted term is not computed (it reads 0): on in phase 1, off in phase 2.
    assert np.all(two.history["MLP_node_L1"][~after][1:] > 0)  # MLP_node starts at 0
    assert np.all(two.history["MLP_node_L1"][after] == 0)


# ------------------------------------------------------------------------------ node_c_scale


def test_node_c_scale_divides_mlp_nodes_input(tiny_cfg, tiny_dataset) -> None:
    scaled = with_graph(tiny_cfg, node_c_scale=30.0)
    a = build_model(tiny_dataset, tiny_cfg, "cpu")
    b = build_model(tiny_dataset, scaled, "cpu")
    c = torch.as_tensor(tiny_dataset.x[:4], dtype=torch.float32)
    torch.testing.assert_close(b.node_function(c), a.node_function(c / 30.0))
    assert a.node_input(c) is c  # the default feeds c itself: today's computation
