"""Each plot writes a non-empty PNG from tiny inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metab_opt import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_no_torch_or_pyplot_import() -> None:
    code = (
        "import sys, metab_opt.metrics, metab_opt.plots; "
        "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_mlp_sub(tmp_path: Path) -> None:
    c = np.linspace(0.0, 5.0, 40)
    out = plots.plot_mlp_sub(tmp_path / "a" / "b" / "MLP_sub_000.png", c, {1: 2 * c, 2: np.tanh(c)})
    assert _is_png(out)
    out2 = plots.plot_mlp_sub(tmp_path / "s.png", c, {1: 2 * c}, scales={1: 2.0})
    assert _is_png(out2)


def test_plot_mlp_node(tmp_path: Path) -> None:
    c = np.linspace(0.0, 5.0, 20)
    types = np.array([0, 1, 0, 1])
    out_vals = -0.1 * (c[:, None] - np.array([1.0, 2.0, 1.0, 2.0])) + 0.01 * np.arange(4)
    out = plots.plot_mlp_node(
        tmp_path / "rate_func" / "n.png", c, out_vals, types, [0.1, 0.1], [1, 2]
    )
    assert _is_png(out)


def test_plot_rate_constants(tmp_path: Path) -> None:
    t = np.linspace(-3, 0, 30)
    l = t + np.where(np.arange(30) % 7 == 0, 0.5, 0.0)
    metrics = {"rate_constants_R2": 0.8, "rate_constants_R2_shifted": 0.85, "n_outliers": 5}
    out = plots.plot_rate_constants(tmp_path / "rate" / "k.png", t, l, metrics)
    assert _is_png(out)


def test_plot_loss(tmp_path: Path) -> None:
    steps = np.arange(0, 100, 10)
    history = {
        "loss": list(np.geomspace(1.0, 1e-3, 10)),
        "regul_total": list(np.geomspace(1e-2, 1e-4, 10)),
        "k_center": list(np.geomspace(1e-3, 1e-5, 10)),
        "MLP_node_L1": [0.0] * 10,
    }
    assert _is_png(plots.plot_loss(tmp_path / "loss.png", steps, history))


def test_plot_kinograph(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(0, 5, (30, 8))
    pred = x + 0.1
    pred[20:, 3] = np.nan
    assert _is_png(plots.plot_kinograph(tmp_path / "results" / "kino.png", x, pred))


def test_plot_tree_single_node(tmp_path: Path) -> None:
    nodes = [{"node": 0, "parent": None, "r2": 0.5, "mutation": "", "strategy": "", "block": 0}]
    assert _is_png(plots.plot_exploration_tree(tmp_path / "tree1.png", nodes))


def test_plot_tree_two_blocks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nodes: list[dict] = [
        {"node": 0, "parent": None, "r2": -2.0, "mutation": "", "strategy": "exploit", "block": 0}
    ]
    strategies = ["exploit", "explore", "boundary"]
    for i in range(1, 20):
        block = 0 if i < 10 else 1
        parent = int(rng.integers(0, i)) if i != 10 else 7  # block 1 restarts from node 7
        nodes.append(
            {
                "node": i,
                "parent": parent,
                "r2": None if i == 5 else float(rng.uniform(-1, 1)),
                "mutation": f"learning_rate_k: {0.001 * i:g} -> {0.002 * i:g}",
                "strategy": strategies[i % 3],
                "block": block,
            }
        )
    assert _is_png(plots.plot_exploration_tree(tmp_path / "tree20.png", nodes))


@pytest.mark.parametrize("n", [60])
def test_plot_tree_many_and_unknown_parent(tmp_path: Path, n: int) -> None:
    nodes = [
        {
            "node": i,
            "parent": (i - 1) // 3 if i else 999,  # unknown parent -> drawn as a root
            "r2": float("nan") if i % 11 == 0 else i / n,
            "mutation": "coeff_MLP_sub_norm: 1 -> 10",
            "strategy": "explore",
            "block": i // 12,
        }
        for i in range(n)
    ]
    assert _is_png(plots.plot_exploration_tree(tmp_path / "tree60.png", nodes))
