"""Every searched knob of every shipped config changes the training.

A knob whose move leaves the training as it was makes a trial that only repeats its parent (the
``lr`` knob did: it set the learning rate of a parameter group that is empty). For each knob,
the trainer's first steps with the knob at its base value and one lattice step away must
differ (the weighted loss terms, and log_k after them), or, for a knob that only sets the
duration, the number of steps.

The knobs run on the tiny dataset with each config's model and training sections: what a knob
governs does not depend on the data. Regularizers and options that are off in a config's base
are switched on first (to their first positive lattice value), so a knob that acts only through
another one (``k_floor_threshold`` through ``coeff_k_floor``) is moved where it acts; and the
model starts where every penalty acts (:func:`_live`), since a penalty that is 0 at the start
(a monotonic MLP_sub, no log_k below the floor) would hide its coefficient for a few steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metab_opt.config import Config, Knob, apply_params, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
STEPS = 6


def _live_base(cfg: Config) -> dict[str, Any]:
    """The base params with every knob that is off (0 or false) switched on."""
    params = cfg.base_params()
    for knob in cfg.search.knobs:
        value = params[knob.name]
        if value is False or (not isinstance(value, bool) and value == 0):
            params[knob.name] = next(v for v in knob.grid(value) if v)
    return params


def _neighbour(knob: Knob, value: Any) -> Any:
    """The next value on the knob's lattice (the previous one at the top end)."""
    grid = list(knob.grid(value))
    i = grid.index(value)
    return grid[i + 1] if i + 1 < len(grid) else grid[i - 1]


def _cases() -> list[Any]:
    cases = []
    for path in CONFIGS:
        cfg = load_config(path)
        for knob in cfg.search.knobs:
            cases.append(pytest.param(path, knob.name, id=f"{path.stem}-{knob.name}"))
    return cases


def _on_tiny(cfg: Config, tiny: Config) -> Config:
    return dataclasses.replace(cfg, simulation=tiny.simulation)


def _live(model: Any, seed: int) -> None:
    """Put every penalty where it acts, whatever the data: log_k spread over the thresholds'
    range, MLP_sub not monotonic, MLP_node's output not 0 (at initialisation the first two
    may be inactive and the L1 has no gradient)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.log_k.copy_(torch.linspace(-3.25, -0.75, model.log_k.numel()))
        for last, scale in ((model.mlp_node.last, 0.3), (model.mlp_sub.last, 3.0)):
            last.weight.copy_(scale * torch.randn(last.weight.shape, generator=gen))
            last.bias.copy_(0.3 * torch.randn(last.bias.shape, generator=gen))
        for _ in range(50):
            grid = model.forward_parts(torch.ones(1, model.n_metabolites)).grid_sub
            if (grid[:, :-1] > grid[:, 1:]).any():
                break
            # Rising everywhere: make it fall. Flipping the sign does it for f = MLP_sub; the
            # power form's |g|^s is blind to the sign, so it needs other last-layer weights.
            model.mlp_sub.last.weight.neg_()
            grid = model.forward_parts(torch.ones(1, model.n_metabolites)).grid_sub
            if (grid[:, :-1] > grid[:, 1:]).any():
                break
            model.mlp_sub.last.weight.copy_(3.0 * torch.randn(model.mlp_sub.last.weight.shape,
                                                              generator=gen))
        assert (grid[:, :-1] > grid[:, 1:]).any(), "MLP_sub stayed monotonic"


def _terms_after_a_few_steps(cfg: Config, dataset: Any) -> np.ndarray:
    """The weighted loss terms of the first steps of the trainer's own step, and log_k after."""
    import torch

    from metab_opt.problem.training import _make_step, build_model, term_weights

    model = build_model(dataset, cfg, "cpu")
    _live(model, seed=0)
    x = torch.as_tensor(dataset.x, dtype=torch.float32)
    y = torch.as_tensor(dataset.y, dtype=torch.float32)
    gen = torch.Generator().manual_seed(cfg.training.seed)
    step = _make_step(model, cfg, x, y, gen, cuda_graph=False)
    weights = term_weights(cfg)
    rows = [step(i) * weights for i in range(1, STEPS + 1)]
    return torch.cat([*rows, model.log_k.detach()]).double().numpy()


# Knobs that act from the homeostasis phase on, the last part of a run: the few steps of the
# trainer's step object above never reach it, so these compare a whole run of STEPS steps.
PHASE_KNOBS = ("homeostasis_phase", "homeostasis_lr_factor")


def _a_short_run(cfg: Config, dataset: Any) -> np.ndarray:
    """The weighted loss history and log_k of a whole training run of STEPS steps."""
    from metab_opt.problem.training import TERMS, train

    res = train(dataset, cfg, device="cpu", max_steps=STEPS, history_points=STEPS)
    rows = [res.history[name] for name in TERMS]
    return np.concatenate([*rows, res.model.log_k.detach().double().numpy()])


@pytest.mark.parametrize(("path", "name"), _cases())
def test_every_searched_knob_changes_the_training(path: Path, name: str, tiny_cfg: Config,
                                                  tiny_dataset: Any) -> None:
    cfg = load_config(path)
    base = _live_base(cfg)
    knob = cfg.search.knob(name)
    moved = {**base, name: _neighbour(knob, base[name])}
    a, b = (_on_tiny(apply_params(cfg, p), tiny_cfg) for p in (base, moved))
    n_frames = tiny_dataset.x.shape[0]
    if a.training.n_steps(n_frames) != b.training.n_steps(n_frames):
        return  # a duration knob: the run is longer or shorter
    if name in PHASE_KNOBS:
        run_a, run_b = (_a_short_run(c, tiny_dataset) for c in (a, b))
    else:
        run_a, run_b = (_terms_after_a_few_steps(c, tiny_dataset) for c in (a, b))
    assert run_a.shape == run_b.shape
    assert not np.allclose(run_a, run_b, rtol=1e-6, atol=0.0), (
        f"{path.name}: moving {name} {base[name]!r} -> {moved[name]!r} left the loss as it was")
