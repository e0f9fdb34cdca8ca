"""The sister regimes (rank20, rank70), Euler sub-steps, and starting a study from another
config's values (``metab-opt study --start-from``)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from metab_opt.config import ConfigError, load_config
from metab_opt.problem import simulation as sim
from metab_opt.start_from import start_from

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RANK50 = load_config(CONFIGS / "rank50.yaml")
RANK20 = load_config(CONFIGS / "rank20.yaml")
RANK70 = load_config(CONFIGS / "rank70.yaml")


# -- Euler sub-steps ------------------------------------------------------------------------------


def test_substeps_are_euler_steps_of_the_frame_over_substeps() -> None:
    cfg = dataclasses.replace(load_config(CONFIGS / "tiny.yaml").simulation, substeps=3)
    net = sim.build_network(cfg)
    c0 = np.random.default_rng(0).uniform(1.0, 9.0, size=cfg.n_metabolites)
    x, y = sim.integrate(net, c0, 4, 0.1, substeps=3)
    # The same scheme written out: three clamped steps of 0.1 / 3 per frame; y is dc/dt at x.
    c = c0.copy()
    for t in range(4):
        np.testing.assert_allclose(x[t], c, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y[t], sim.derivative(c, net), rtol=1e-10, atol=1e-12)
        for _ in range(3):
            c = np.maximum(c + (0.1 / 3) * sim.derivative(c, net), 0.0)


def test_one_substep_is_the_historical_scheme() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml").simulation
    net = sim.build_network(cfg)
    c0 = np.random.default_rng(1).uniform(1.0, 9.0, size=cfg.n_metabolites)
    a = sim.integrate(net, c0, 50, 0.1)
    b = sim.integrate(net, c0, 50, 0.1, substeps=1)
    # the same computation twice: bitwise
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_substeps_at_one_keep_the_cache_key_of_existing_configs() -> None:
    # The dataset folder and the study fingerprint of rank50 as they were before the key
    # existed (a JSON of the config: the same on every CPU).
    assert RANK50.simulation_hash() == "051b803b2bcb5585"
    assert sim._config_hash(RANK50.simulation) == RANK50.simulation_hash()
    two = dataclasses.replace(RANK50.simulation, substeps=2)
    assert sim._config_hash(two) != RANK50.simulation_hash()


def test_the_joint_options_at_their_defaults_keep_existing_studies_resumable() -> None:
    from metab_opt.study import _fingerprint

    # rank50's fingerprint as it was before the joint options and search.constraints existed
    # (JSON of the config: the same on every CPU).
    fp = _fingerprint(RANK50, "ucb")
    assert fp["model and training"] == "ca7666c7f530ad1f"
    assert fp["search space"] == "c989b3051a1e5d8e"
    on = dataclasses.replace(RANK50, training=dataclasses.replace(RANK50.training, time_step=2))
    assert _fingerprint(on, "ucb")["model and training"] != fp["model and training"]
    joint = dataclasses.replace(RANK50, search=dataclasses.replace(RANK50.search,
                                                                   constraints="joint"))
    assert _fingerprint(joint, "ucb")["search space"] != fp["search space"]


# -- the regimes ----------------------------------------------------------------------------------


def test_rank20_and_rank70_share_rank50s_family_model_and_search_space() -> None:
    assert RANK20.simulation == dataclasses.replace(RANK50.simulation, log_k_min=-2.5)
    assert RANK70.simulation == dataclasses.replace(RANK50.simulation, n_reactions=512, seed=7,
                                                    substeps=2)
    for cfg in (RANK20, RANK70):
        assert cfg.graph_model == RANK50.graph_model
        assert cfg.search.knobs == RANK50.search.knobs
        assert cfg.search.roles == RANK50.search.roles


def test_rank70_dataset_is_finite_and_high_rank() -> None:
    ds = sim.simulate(RANK70.simulation)
    m = ds.manifest
    assert m["finite"] and m["n_reactions"] == 512
    assert 60 <= m["activity_rank"] <= 85
    assert m["oracle_R2"] >= 0.99


def test_rank70_with_one_euler_step_per_frame_diverges_and_says_what_to_raise() -> None:
    one = dataclasses.replace(RANK70.simulation, substeps=1)
    with pytest.raises(ConfigError, match=r"diverged at frame \d+ .* raise simulation\.substeps"):
        sim.simulate(one)


def test_rank20_dataset_is_low_rank() -> None:
    m = sim.simulate(RANK20.simulation).manifest
    assert m["finite"] and 20 <= m["activity_rank"] <= 30 and m["oracle_R2"] >= 0.99


# -- --start-from ---------------------------------------------------------------------------------


def test_start_from_takes_every_knob_of_the_file() -> None:
    best = load_config(CONFIGS / "rank50_best.yaml")
    cfg = start_from(RANK20, CONFIGS / "rank50_best.yaml")
    assert cfg.name == "rank20_from_rank50_best"
    assert cfg.base_params() == best.base_params()
    assert cfg.base_params() != RANK20.base_params()
    # the regime and the search space stay this config's
    assert cfg.simulation == RANK20.simulation
    assert cfg.search == RANK20.search


def _write(tmp_path: Path, edits: dict[str, object], name: str = "other.yaml") -> Path:
    """configs/rank50_best.yaml with ``{"section.key": value}`` edits (``search.knobs.k.key``
    too), written to ``tmp_path / name``."""
    raw = yaml.safe_load((CONFIGS / "rank50_best.yaml").read_text())
    for key, value in edits.items():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_start_from_refuses_another_family_or_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--start-from .*other\.yaml: "
                                          r"graph_model\.hidden_dim_sub is 32 there but 64"):
        start_from(RANK20, _write(tmp_path, {"graph_model.hidden_dim_sub": 32}))
    types = {"simulation.n_metabolite_types": 3,
             "simulation.homeostatic_lambda_per_type": [0.001, 0.002, 0.003],
             "simulation.homeostatic_baseline_per_type": [4.0, 6.0, 5.0]}
    with pytest.raises(ConfigError, match=r"simulation\.n_metabolite_types is 3 there"):
        start_from(RANK20, _write(tmp_path, types, "types.yaml"))


def test_start_from_refuses_a_value_outside_the_search_space(tmp_path: Path) -> None:
    path = _write(tmp_path, {"training.learning_rate_k": 0.5,
                             "search.knobs.lr_k.range": [1.0e-4, 1.0]},  # valid there, not here
                  "wide.yaml")
    with pytest.raises(ConfigError, match=r"--start-from .*wide\.yaml: training\.learning_rate_k"
                                          r" = 0\.5 is outside the range of search knob 'lr_k'"):
        start_from(RANK20, path)


def test_study_start_from_a_bad_file_exit_2_one_line_nothing_written(tmp_path: Path) -> None:
    bad = _write(tmp_path, {"graph_model.n_layers_sub": 2})
    root = tmp_path / "studies"
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, "-m", "metab_opt", "study", "--config",
                          str(CONFIGS / "rank20.yaml"), "--start-from", str(bad), "--root",
                          str(root)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "graph_model.n_layers_sub is 2 there" in res.stderr
    assert not root.exists()


def test_the_rollout_integrates_like_the_simulator() -> None:
    import torch

    from metab_opt.problem.evaluation import rollout

    class Decay(torch.nn.Module):
        def forward(self, c: torch.Tensor) -> torch.Tensor:
            return -c

    c0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = rollout(Decay(), c0, 4, 0.1, substeps=2)  # type: ignore[arg-type]
    # two clamped Euler steps of 0.05 per frame: c *= 0.95 ** 2 each frame
    expected = torch.stack([c0 * 0.95 ** (2 * t) for t in range(4)])
    torch.testing.assert_close(out.to(torch.float64), expected, rtol=1e-6, atol=1e-6)
    one = rollout(Decay(), c0, 3, 0.1)  # type: ignore[arg-type]
    expected = torch.stack([c0 * 0.9 ** t for t in range(3)])
    torch.testing.assert_close(one.to(torch.float64), expected, rtol=1e-6, atol=1e-6)
