"""Each plot writes a non-empty PNG from tiny inputs; what the figures show is checked on the
Figure objects and the helpers (labels, norm, markers), never on pixels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.markers import MarkerStyle

from metab_opt import tree_plot
from metab_opt.problem import network_plot, plots
from metab_opt.sampler import STRATEGIES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_no_torch_or_pyplot_import() -> None:
    code = (
        "import sys, metab_opt.problem.metrics, metab_opt.problem.plots; "
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
    assert _is_png(tree_plot.plot_exploration_tree(tmp_path / "tree1.png", nodes))


def test_plot_tree_two_blocks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nodes: list[dict] = [
        {"node": 0, "parent": None, "r2": -2.0, "mutation": "", "strategy": "exploit", "block": 0}
    ]
    strategies = ["exploit", "explore", "boundary-probe"]
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
    assert _is_png(tree_plot.plot_exploration_tree(tmp_path / "tree20.png", nodes))


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
    assert _is_png(tree_plot.plot_exploration_tree(tmp_path / "tree60.png", nodes))


# --- what the figures show ----------------------------------------------------------------


def test_every_sampler_strategy_has_its_own_marker() -> None:
    assert set(STRATEGIES) <= set(tree_plot.STRATEGY_MARKERS)
    markers = [tree_plot.STRATEGY_MARKERS[name] for name in STRATEGIES]
    assert len(set(markers)) == len(markers), "two strategies share a marker"
    assert tree_plot.OTHER_MARKER not in markers


def _tree_nodes(r2s: list[float | None], strategies: list[str]) -> list[dict]:
    return [
        {"node": i, "parent": None if i == 0 else 0, "r2": r2, "mutation": "lr_k: 1 -> 2",
         "strategy": strategy, "block": 1}
        for i, (r2, strategy) in enumerate(zip(r2s, strategies, strict=True))
    ]


def _legend_labels(fig: Figure) -> list[str]:
    legend = fig.axes[0].get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_tree_legend_lists_the_strategies_present() -> None:
    nodes = _tree_nodes([0.5, 0.9, None, -3.0],
                        ["root", "boundary-probe", "degeneracy-break", "boundary-probe"])
    labels = _legend_labels(tree_plot._exploration_tree_figure(nodes))
    assert labels == ["root", "degeneracy-break", "boundary-probe", "block 1", "no R²"]
    # An unknown name (or none) is drawn as "other", and listed once.
    nodes = _tree_nodes([0.5, 0.9, 0.1], ["exploit", "boundary", ""])
    labels = _legend_labels(tree_plot._exploration_tree_figure(nodes))
    assert labels == ["exploit", "other", "block 1"]


def test_tree_markers_follow_the_strategy() -> None:
    nodes = _tree_nodes([0.5, 0.9, 0.1], ["root", "replicate", "mystery"])
    fig = tree_plot._exploration_tree_figure(nodes)
    # Each node is one scatter; compare its marker path with the one matplotlib builds.
    paths = [c.get_paths()[0] for c in fig.axes[0].collections]
    assert len(paths) == 3
    for path, marker in zip(paths, ("*", "h", tree_plot.OTHER_MARKER), strict=True):
        expected = MarkerStyle(marker).get_path().transformed(MarkerStyle(marker).get_transform())
        np.testing.assert_allclose(path.vertices, expected.vertices)


def test_r2_norm_tells_large_negatives_and_near_ones_apart() -> None:
    norm = tree_plot.r2_norm([-114.0, -3.0, -0.1, 0.4, 0.93, 0.99, 0.999, None, float("nan")])
    assert norm.vmin == -114.0 and norm.vmax == 1.0
    xs = [-114.0, -100.0, -10.0, -1.0, -0.1, 0.0, 0.4, 0.9, 0.99, 0.999, 1.0]
    ys = [float(norm(x)) for x in xs]
    assert ys[0] == pytest.approx(0.0) and ys[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(ys[:-2], ys[1:-1], strict=True))  # monotone up to 0.999
    assert float(norm(0.0)) == pytest.approx(0.5)  # the sign is the hue
    assert float(norm(-0.1)) - float(norm(-100.0)) > 0.4  # a linear scale gives 0.001 of it
    assert float(norm(0.999)) - float(norm(0.99)) > 0.1
    assert float(norm(0.99)) - float(norm(0.9)) > 0.1
    # Nothing negative: the lower half still spans down to -1.
    assert tree_plot.r2_norm([0.5, 0.9]).vmin == -1.0
    assert tree_plot.r2_norm([]).vmin == -1.0


@pytest.mark.parametrize(
    ("x", "text"),
    [(0.999, "0.999"), (0.990, "0.990"), (0.9, "0.900"), (-0.1, "-0.100"), (-3.05, "-3.050"),
     (-12.53, "-12.5"), (-114.3, "-114"), (-1234.0, "-1234"), (0.99996, ">0.999"), (1.0, "1.000"),
     (None, "n/a"), (float("nan"), "n/a"), ("x", "n/a")],
)
def test_r2_label(x: object, text: str) -> None:
    assert tree_plot._r2_label(x) == text


def test_colour_bar_ticks_are_readable_r2_values() -> None:
    nodes = _tree_nodes([-114.0, -3.0, -0.1, 0.4, 0.93, 0.990, 0.999],
                        ["root", "exploit", "explore", "exploit", "exploit", "duration", "exploit"])
    fig = tree_plot._exploration_tree_figure(nodes)
    cbar_ax = fig.axes[1]
    labels = [t.get_text() for t in cbar_ax.get_yticklabels()]
    # The bottom is the measured minimum; -100 would crowd it and is left out.
    assert labels == ["-114", "-10", "-1", "0", "0.9", "0.99", "0.999"]
    assert "rate_constants_R2" in cbar_ax.get_ylabel()


def test_node_ids_stay_readable_on_their_face() -> None:
    assert tree_plot._text_color((0.0, 0.0, 0.3, 1.0)) == "white"
    assert tree_plot._text_color((1.0, 1.0, 0.8, 1.0)) == "black"
    nodes = _tree_nodes([-114.0, 0.0, 0.999], ["root", "exploit", "exploit"])
    fig = tree_plot._exploration_tree_figure(nodes)
    ids = {t.get_text(): t.get_color() for t in fig.axes[0].texts if t.get_text() in "012"}
    # Deep red at -114, pale yellow at 0, deep blue at 0.999.
    assert ids == {"0": "white", "1": "black", "2": "white"}


def test_mlp_node_learned_curves_get_their_own_axis() -> None:
    c = np.linspace(0.0, 10.0, 30)
    types = np.array([0, 1, 0, 1])
    learned = 1e-4 * (1.1 - 0.1 * c[:, None]) * np.ones((1, 4))  # ~1e-4 ...
    fig = plots._mlp_node_figure(c, learned, types, [0.03, 0.05], [4.0, 6.0])  # ... truth ~0.3
    both, alone = fig.axes
    # Left: learned and truth together, so its axis spans the truth.
    assert both.get_ylim()[1] > 0.25
    # Right: the learned curves only (one line per metabolite plus the zero line), on an axis
    # sized to them: the shape spans most of it.
    lines = [ln for ln in alone.get_lines() if np.ptp(ln.get_ydata()) > 0]
    assert len(lines) == 4
    lo, hi = alone.get_ylim()
    assert hi - lo < 1e-3
    assert np.ptp(learned) / (hi - lo) > 0.5
    assert "range [1.0e-05, 1.1e-04]" in alone.get_title()
    assert "×" in both.get_title()


def test_mlp_sub_shows_the_true_scale() -> None:
    c = np.linspace(0.0, 9.0, 50)
    fig = plots._mlp_sub_figure(c, {1: 0.24 * c, 2: 0.24 * c**2}, {1: 0.24, 2: 0.24})
    assert len(fig.axes) == 2
    for s, ax in zip((1, 2), fig.axes, strict=True):
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == 1
        # The dashed GT is c^s itself, not c^s rescaled to the learned curve.
        np.testing.assert_allclose(dashed[0].get_ydata(), c**s)
        assert "0.24 × c^" in ax.get_title()



def test_mlp_sub_with_a_scale_that_could_not_be_computed(tmp_path: Path) -> None:
    """metrics.json stores a non-finite MLP_sub scale as None: the plot falls back to its own
    fit instead of failing the trial (a 144k-step default-study trial once failed here)."""
    c = np.linspace(0.0, 9.0, 50)
    out = plots.plot_mlp_sub(tmp_path / "n.png", c, {1: 0.5 * c, 2: np.zeros_like(c)},
                             scales={1: None, 2: float("nan")})
    assert _is_png(out)
    fig = plots._mlp_sub_figure(c, {1: 0.5 * c, 2: np.zeros_like(c)}, {1: None, 2: None})
    assert "0.5 × c^1" in fig.axes[0].get_title()  # learned ≈ 0.5·c, from the fit
    assert "nan" in fig.axes[1].get_title()  # a flat curve has no scale


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_plot_embeddings(tmp_path: Path, dim: int) -> None:
    rng = np.random.default_rng(0)
    types = np.arange(20) % 2
    emb = rng.normal(size=(20, dim)) + 3.0 * types[:, None]
    metrics = {"embedding_cluster_acc": 1.0, "embedding_silhouette": 0.8}
    assert _is_png(plots.plot_embeddings(tmp_path / "e" / "emb.png", emb, types, metrics))
    ax = plots._embeddings_figure(emb, types, metrics).axes[0]
    assert "cluster acc 1.000" in ax.get_title() and "silhouette 0.800" in ax.get_title()
    assert len(ax.collections) == 2  # one scatter per type
    if dim == 3:  # the first two principal components, with their share of the variance
        assert ax.get_xlabel().startswith("PC 1 (") and ax.get_ylabel().startswith("PC 2 (")
    assert [len(c.get_offsets()) for c in ax.collections] == [10, 10]


def test_plot_rollout_traces_splits_the_panels_over_the_types(tmp_path: Path) -> None:
    frames = np.linspace(0.0, 1.0, 30)[:, None]
    x_true = 1.0 + frames * np.arange(1, 9)[None, :]  # metabolite j varies the more, the larger j
    x_pred = x_true.copy()
    x_pred[10:, 7] = np.nan  # a roll-out that diverged
    types = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    metrics = {"test_pearson": 0.97, "test_R2": 0.5}
    out = plots.plot_rollout_traces(tmp_path / "r.png", x_true, x_pred, types, metrics)
    assert _is_png(out)
    fig = plots._rollout_figure(x_true, x_pred, types, metrics, 4)
    titles = [ax.get_title() for ax in fig.axes]
    # The two most varying metabolites of each type.
    assert titles == ["metabolite 6 (type 0)", "metabolite 4 (type 0)",
                      "metabolite 7 (type 1)", "metabolite 5 (type 1)"]
    assert "test_pearson 0.970" in fig.texts[0].get_text()


# The network picture (metab_opt.problem.network_plot).

def _tiny_network() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a -> b (R0), b + c -> d (R1), d -> a + c (R2): 4 metabolites, 3 reactions."""
    S = np.array([[-1, 0, 1], [1, -1, 0], [0, -1, 1], [0, 1, -1]])
    return S, np.where(S < 0, -S, 0), np.array([-1.0, -1.5, -2.0])


def _network_args(learned: np.ndarray, **kw: object) -> dict[str, object]:
    S, power, true = _tiny_network()
    return {"S": S, "substrate_power": power, "log_k_true": true, "log_k_learned": learned, **kw}


NAMED = {"metabolite_names": ("a_c", "b_c", "c_e", "d_e"),
         "reaction_names": ("AB", "BCD", "DAC"), "metabolite_type": [0, 0, 1, 1]}


def test_network_module_imports_neither_torch_nor_pyplot() -> None:
    code = ("import sys, metab_opt.problem.network_plot; "
            "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_network_tiny_with_names(tmp_path: Path) -> None:
    learned = np.array([-0.9, -2.0, -2.0])  # errors +0.1, -0.5, 0
    out = network_plot.plot_network(tmp_path / "results" / "network.png",
                                    **_network_args(learned, **NAMED, label_top=1))
    assert _is_png(out) and out == tmp_path / "results" / "network.png"
    fig = network_plot.network_figure(**_network_args(learned, **NAMED, label_top=1))
    ax, cbar_ax = fig.axes  # the graph and its colour bar
    assert "R² of log k" in ax.get_title() and "4 metabolites, 3 reactions" in ax.get_title()
    texts = [t.get_text() for t in ax.texts]
    assert "BCD (-0.50)" in texts  # the worst reaction, by name, with its error
    assert not {"AB (+0.10)", "DAC (+0.00)"} & set(texts)  # label_top=1
    assert {"a_c", "b_c", "c_e", "d_e"} <= set(texts)  # small networks name the metabolites
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["c cytosol (2 met.)", "e extracellular (2 met.)",
                      "reaction (colour: error)"]
    reactions = ax.collections[-1]  # drawn last, above the metabolites
    assert len(reactions.get_offsets()) == 3
    assert reactions.norm.vmin == -reactions.norm.vmax > -0.51  # symmetric, clipped at p98
    assert "No hub metabolite" in ax.get_xlabel()


def test_plot_network_is_deterministic(tmp_path: Path) -> None:
    learned = np.array([-1.3, -1.1, -2.4])
    a = network_plot.plot_network(tmp_path / "a.png", **_network_args(learned, **NAMED))
    b = network_plot.plot_network(tmp_path / "b.png", **_network_args(learned, **NAMED))
    assert a.read_bytes() == b.read_bytes()
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5]])
    assert np.array_equal(network_plot.layout(6, edges), network_plot.layout(6, edges))


def test_plot_network_without_names_or_types(tmp_path: Path) -> None:
    learned = np.array([-1.0, -1.5, np.nan])  # a learned k that ran away
    out = network_plot.plot_network(tmp_path / "n.png", **_network_args(learned))
    assert _is_png(out)
    ax = network_plot.network_figure(**_network_args(learned)).axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == "R2 (nan)"  # the non-finite one first, named by its index
    assert not {"M0", "a_c"} & set(texts)  # no metabolite labels without names
    assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "type 0 (4 met.)"
    assert "R² of log k nan" in ax.get_title()


def test_plot_network_leaves_the_hub_out(tmp_path: Path) -> None:
    # 12 reactions x_i + h -> y_i: h takes part in all of them, the others in one each.
    n = 12
    S = np.zeros((1 + 2 * n, n), dtype=np.int64)
    S[0, :] = -1
    S[1 + np.arange(n), np.arange(n)] = -1
    S[1 + n + np.arange(n), np.arange(n)] = 1
    names = ("h_c", *(f"x{i}_c" for i in range(n)), *(f"y{i}_c" for i in range(n)))
    args = {"S": S, "substrate_power": np.where(S < 0, 1, 0), "log_k_true": np.zeros(n),
            "log_k_learned": np.linspace(-0.5, 0.5, n), "metabolite_names": names}
    assert _is_png(network_plot.plot_network(tmp_path / "hub.png", **args))
    ax = network_plot.network_figure(**args).axes[0]
    assert "hubs (in more than 10 reactions each): h_c (12)" in ax.get_xlabel()
    metabolites, reactions = ax.collections[-2], ax.collections[-1]
    assert len(metabolites.get_offsets()) == 2 * n and len(reactions.get_offsets()) == n
    assert "h_c" not in [t.get_text() for t in ax.texts]
    kept = network_plot.network_figure(**args, hub_degree=12).axes[0]
    assert len(kept.collections[-2].get_offsets()) == 2 * n + 1


def test_plot_network_too_large_is_a_summary(tmp_path: Path) -> None:
    n_met, n_reac = 700, network_plot.MAX_NODES  # over the limit: no layout
    rng = np.random.default_rng(0)
    S = np.zeros((n_met, n_reac))
    S[rng.integers(0, n_met, n_reac), np.arange(n_reac)] = -1.0
    S[rng.integers(0, n_met, n_reac), np.arange(n_reac)] += 1.0
    true = rng.uniform(-2, -1, n_reac)
    learned = true + rng.normal(0, 0.1, n_reac)
    fig = network_plot.network_figure(S, np.where(S < 0, 1.0, 0.0), true, learned)
    assert "not drawn as a graph" in fig.get_suptitle()
    assert len(fig.axes[1].get_yticklabels()) == 20  # the worst reactions, by name
    assert _is_png(network_plot.plot_network(tmp_path / "big.png", S, np.where(S < 0, 1.0, 0.0),
                                             true, learned))
