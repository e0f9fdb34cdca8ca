"""metab_opt.problem.simulation: the network builder, Euler, the oracle ceiling and the dataset
cache."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metab_opt import __version__
from metab_opt.config import ConfigError, SimulationConfig, load_config
from metab_opt.problem import simulation as sim

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = load_config(CONFIGS / "tiny.yaml").simulation
RANK50 = load_config(CONFIGS / "rank50.yaml").simulation
REGIMES = {"tiny": TINY, "rank50": RANK50}

MANIFEST_FIELDS = ("config_hash", "n_metabolites", "n_reactions", "n_frames", "activity_rank",
                   "concentration_min", "concentration_max", "oracle_R2", "checksum",
                   "package_version", "created")


@pytest.fixture(scope="module")
def tiny_ds() -> sim.Dataset:
    return sim.simulate(TINY)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the tiny dataset, built once; tests copy it before breaking it."""
    root = tmp_path_factory.mktemp("cache")
    _, built = sim.load_or_build(TINY, root)
    assert built
    return root


@pytest.fixture
def cached_root(tmp_path: Path, tiny_cache: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_cache, root)
    return root


def _substrate_sets(net: sim.Network) -> list[tuple[tuple[int, int], ...]]:
    P = net.substrate_power
    return [tuple((int(i), int(P[i, j])) for i in np.nonzero(P[:, j])[0])
            for j in range(net.n_reactions)]


# --- builder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("cycle_fraction", [1.0, 0.5, 0.0])
def test_builder_invariants(regime: str, cycle_fraction: float) -> None:
    cfg = dataclasses.replace(REGIMES[regime], cycle_fraction=cycle_fraction)
    net = sim.build_network(cfg)
    S, P = net.S, net.substrate_power
    assert S.shape == P.shape == (cfg.n_metabolites, cfg.n_reactions)
    assert S.dtype.kind == "i" and P.dtype.kind == "i"
    # Mass balance: every column of S sums to 0.
    assert (S.sum(axis=0) == 0).all()
    # Every reaction participates: >= 1 substrate and a non-zero column.
    assert ((P > 0).sum(axis=0) >= 1).all()
    assert (np.abs(S).sum(axis=0) > 0).all()
    assert (P >= 0).all()
    # A substrate is consumed or (autocatalysis) produced; it never sits outside the reaction.
    assert not ((P > 0) & (S == 0)).any()
    # No two reactions share a substrate set with the same coefficients.
    sets = _substrate_sets(net)
    assert len(set(sets)) == len(sets)
    # k log-uniform within its bounds; types in contiguous blocks, the first half type 0.
    assert net.log_k.shape == (cfg.n_reactions,)
    assert (net.log_k >= cfg.log_k_min).all() and (net.log_k <= cfg.log_k_max).all()
    half = cfg.n_metabolites // 2
    assert (net.metabolite_type[:half] == 0).all() and (net.metabolite_type[half:] == 1).all()
    assert net.lambdas.tolist() == list(cfg.homeostatic_lambda_per_type)
    assert net.baselines.tolist() == list(cfg.homeostatic_baseline_per_type)


@pytest.mark.parametrize("regime", list(REGIMES))
def test_cycle_structure(regime: str) -> None:
    """cycle_fraction 1.0: every reaction is food + catalyst -> 2 catalyst."""
    cfg = REGIMES[regime]
    assert cfg.cycle_fraction == 1.0
    net = sim.build_network(cfg)
    for j in range(net.n_reactions):
        subs = np.nonzero(net.substrate_power[:, j])[0]
        assert len(subs) == 2
        assert (net.substrate_power[subs, j] == 1).all()
        assert sorted(net.S[subs, j].tolist()) == [-1, 1]
        assert np.count_nonzero(net.S[:, j]) == 2  # nothing but the food and the catalyst
    # Consecutive reactions chain: the catalyst of one is the food of the next in its cycle.
    food = np.argmin(net.S, axis=0)
    cat = np.argmax(net.S, axis=0)
    L = cfg.cycle_length
    for start in range(0, net.n_reactions - L + 1, L):
        for pos in range(L):
            j, nxt = start + pos, start + (pos + 1) % L
            assert cat[j] == food[nxt]


@pytest.mark.parametrize("regime", list(REGIMES))
def test_random_reactions(regime: str) -> None:
    cfg = dataclasses.replace(REGIMES[regime], cycle_fraction=0.0)
    net = sim.build_network(cfg)
    P, S = net.substrate_power, net.S
    n_sub = (P > 0).sum(axis=0)
    assert n_sub.min() >= 1 and n_sub.max() <= cfg.max_metabolites_per_reaction
    assert set(np.unique(P[P > 0]).tolist()) == {1, 2}
    # Substrates are consumed by exactly |s|; products take the consumed mass.
    assert (S[P > 0] == -P[P > 0]).all()
    produced = np.where(S > 0, S, 0).sum(axis=0)
    assert (produced == P.sum(axis=0)).all()
    n_prod = (S > 0).sum(axis=0)
    assert n_prod.min() >= 1 and n_prod.max() <= cfg.max_metabolites_per_reaction
    # A regime of random reactions uses all the substrate counts up to the maximum.
    assert set(n_sub.tolist()) == set(range(1, cfg.max_metabolites_per_reaction + 1))


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"n_metabolites": 3, "cycle_length": 3}, r"32 autocatalytic reactions need as many "
                                                  r"distinct substrate pairs, but 3 metabolites"),
        ({"n_metabolites": 3, "cycle_fraction": 0.0}, r"32 random reactions need distinct "
                                                      r"substrate sets"),
    ],
)
def test_too_many_reactions_fails_in_one_line(changes: dict[str, Any], match: str) -> None:
    cfg = dataclasses.replace(TINY, **changes)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=match) as info:
        sim.build_network(cfg)
    assert "\n" not in str(info.value)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("regime", list(REGIMES))
def test_build_is_deterministic(regime: str) -> None:
    cfg = REGIMES[regime]
    a, b = sim.build_network(cfg), sim.build_network(cfg)
    for field in ("S", "substrate_power", "log_k", "metabolite_type"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    c = sim.build_network(dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert not np.array_equal(a.S, c.S)
    assert not np.array_equal(a.log_k, c.log_k)


def test_simulate_is_deterministic(tiny_ds: sim.Dataset) -> None:
    again = sim.simulate(TINY)
    arrays, arrays2 = sim._arrays(tiny_ds), sim._arrays(again)
    for name in arrays:
        assert arrays[name].dtype == arrays2[name].dtype
        assert arrays[name].tobytes() == arrays2[name].tobytes(), name
    other = sim.simulate(dataclasses.replace(TINY, seed=TINY.seed + 1))
    for name in ("S", "log_k_true", "x", "y", "x_test", "y_test"):
        assert not np.array_equal(arrays[name], sim._arrays(other)[name]), name


# --- dynamics --------------------------------------------------------------------------------


def test_shapes_and_initial_states(tiny_ds: sim.Dataset) -> None:
    n = TINY.n_metabolites
    assert tiny_ds.x.shape == tiny_ds.y.shape == (TINY.n_frames, n)
    assert tiny_ds.x_test.shape == tiny_ds.y_test.shape == (TINY.n_test_frames, n)
    for x0 in (tiny_ds.x[0], tiny_ds.x_test[0]):
        assert (x0 >= TINY.concentration_min).all() and (x0 <= TINY.concentration_max).all()
    # The held-out trajectory starts elsewhere, on the same network.
    assert not np.allclose(tiny_ds.x[0], tiny_ds.x_test[0])
    assert (tiny_ds.x >= 0).all() and np.isfinite(tiny_ds.y).all()


@pytest.mark.parametrize("which", ["train", "test"])
def test_euler(tiny_ds: sim.Dataset, which: str) -> None:
    x, y = (tiny_ds.x, tiny_ds.y) if which == "train" else (tiny_ds.x_test, tiny_ds.y_test)
    net = tiny_ds.network
    # y[t] is the exact derivative at x[t] ...
    np.testing.assert_allclose(y, sim.derivative(x, net), rtol=1e-12, atol=1e-14)
    # ... and x[t+1] the clamped Euler step.
    np.testing.assert_array_equal(x[1:], np.maximum(x[:-1] + TINY.delta_t * y[:-1], 0.0))


def test_derivative_by_hand() -> None:
    """Two metabolites, one reaction A + B -> 2 B: dc/dt by the formula."""
    net = sim.Network(S=np.array([[-1], [1]]), substrate_power=np.array([[1], [1]]),
                      log_k=np.array([-1.0]), metabolite_type=np.array([0, 1]),
                      lambdas=np.array([0.5, 0.25]), baselines=np.array([2.0, 4.0]))
    c = np.array([3.0, 5.0])
    v = 0.1 * 3.0 * 5.0
    expected = np.array([-0.5 * (3.0 - 2.0) - v, -0.25 * (5.0 - 4.0) + v])
    np.testing.assert_allclose(sim.derivative(c, net), expected, rtol=1e-14)
    # |s| = 2 raises the concentration to the power 2.
    net2 = dataclasses.replace(net, substrate_power=np.array([[2], [0]]), S=np.array([[-2], [2]]))
    v2 = 0.1 * 3.0**2
    np.testing.assert_allclose(sim.derivative(c, net2),
                               [-0.5 - 2 * v2, -0.25 + 2 * v2], rtol=1e-14)


def test_euler_clamps_at_zero() -> None:
    """A fast sink: A -> B with k = 10 and dt = 0.5 overshoots below 0 and is clamped."""
    net = sim.Network(S=np.array([[-1], [1]]), substrate_power=np.array([[1], [0]]),
                      log_k=np.array([1.0]), metabolite_type=np.array([0, 0]),
                      lambdas=np.array([0.0]), baselines=np.array([0.0]))
    x, y = sim.integrate(net, np.array([1.0, 0.0]), 3, 0.5)
    assert x[0].tolist() == [1.0, 0.0]
    assert y[0].tolist() == [-10.0, 10.0]
    assert x[1].tolist() == [0.0, 5.0]  # 1 - 0.5 * 10 = -4, clamped
    assert y[1].tolist() == [0.0, 0.0]


def test_diverging_regime_is_one_line_config_error() -> None:
    cfg = dataclasses.replace(TINY, delta_t=2.0)
    with pytest.raises(ConfigError, match=r"trajectory diverged at frame \d+ .*delta_t") as info:
        sim.simulate(cfg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "x,expected",
    [
        (np.zeros((10, 4)), 0),
        (np.ones((10, 4)), 0),
        (np.outer(np.arange(10.0), [1.0, 2.0, 3.0]), 1),
        (np.eye(6) * 3.0, 5),  # centred identity: 5 equal singular values
    ],
)
def test_activity_rank(x: np.ndarray, expected: int) -> None:
    assert sim.activity_rank(x) == expected


# --- oracle ----------------------------------------------------------------------------------


def test_oracle_tiny(tiny_ds: sim.Dataset) -> None:
    assert tiny_ds.manifest["oracle_R2"] >= 0.99
    k = sim.oracle_rate_constants(tiny_ds.network, tiny_ds.x, tiny_ds.y)
    np.testing.assert_allclose(np.log10(k), tiny_ds.log_k_true, atol=1e-6)


def test_oracle_tiny_with_noise() -> None:
    ds = sim.simulate(dataclasses.replace(TINY, noise_level=0.01))
    assert 0.99 <= ds.manifest["oracle_R2"] < 1.0


def test_tiny_manifest_figures(tiny_ds: sim.Dataset) -> None:
    m = tiny_ds.manifest
    assert m["n_metabolites"] == TINY.n_metabolites
    assert m["n_reactions"] == TINY.n_reactions
    assert m["n_frames"] == TINY.n_frames
    assert m["n_test_frames"] == TINY.n_test_frames
    assert m["activity_rank"] == sim.activity_rank(tiny_ds.x)
    assert 1 <= m["activity_rank"] <= TINY.n_metabolites
    assert m["concentration_min"] == tiny_ds.x.min()
    assert m["concentration_max"] == tiny_ds.x.max()
    assert m["finite"] is True


def test_rank50_figures() -> None:
    """The seed regime: build, both trajectories and the oracle under 30 s; ceiling >= 0.99;
    activity rank near 50."""
    t0 = time.perf_counter()
    ds = sim.simulate(RANK50)
    seconds = time.perf_counter() - t0
    assert seconds < 30.0
    m = ds.manifest
    assert m["oracle_R2"] >= 0.99
    assert 40 <= m["activity_rank"] <= 60
    assert (m["n_metabolites"], m["n_reactions"], m["n_frames"]) == (100, 256, 2880)
    assert ds.x_test.shape == (600, 100)
    assert np.isfinite(ds.x).all() and (ds.x >= 0).all()
    print(f"rank50: built in {seconds:.2f} s, activity rank {m['activity_rank']}, "
          f"oracle_R2 {m['oracle_R2']:.4f}")


# --- cache -----------------------------------------------------------------------------------


def _load(root: Path, **kwargs: Any) -> tuple[sim.Dataset, bool]:
    return sim.load_or_build(TINY, root, **kwargs)


def _assert_same(a: sim.Dataset, b: sim.Dataset) -> None:
    for (name, x), y in zip(sim._arrays(a).items(), sim._arrays(b).values()):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name


def test_cache_reuse(tmp_path: Path, tiny_ds: sim.Dataset) -> None:
    ds, built = _load(tmp_path)
    assert built is True
    assert ds.path == sim.dataset_dir(TINY, tmp_path)
    assert ds.path.name == f"pde_m1_{load_config(CONFIGS / 'tiny.yaml').simulation_hash()}"
    assert sorted(p.name for p in ds.path.iterdir()) == ["arrays.npz", "manifest.json"]
    again, built = _load(tmp_path)
    assert built is False
    assert again.path == ds.path
    _assert_same(ds, again)
    _assert_same(ds, tiny_ds)
    assert again.manifest == ds.manifest
    np.testing.assert_array_equal(again.network.lambdas, ds.network.lambdas)
    # Nothing else was left in the data root (no temp folders).
    assert [p.name for p in tmp_path.iterdir()] == [ds.path.name]


def test_cache_manifest_fields(cached_root: Path) -> None:
    ds, _ = _load(cached_root)
    manifest = json.loads((ds.path / "manifest.json").read_text())
    for key in MANIFEST_FIELDS:
        assert key in manifest, key
    assert manifest["config_hash"] == sim._config_hash(TINY)
    assert manifest["package_version"] == __version__
    assert manifest["checksum"] == sim._checksum(sim._arrays(ds))
    assert manifest["n_frames"] == TINY.n_frames
    assert manifest["oracle_R2"] >= 0.99
    assert time.strptime(manifest["created"][:19], "%Y-%m-%dT%H:%M:%S")
    assert manifest["simulation"]["seed"] == TINY.seed
    assert manifest == ds.manifest


def test_cache_rebuild_flag(cached_root: Path) -> None:
    first, built = _load(cached_root)
    assert built is False
    second, built = _load(cached_root, rebuild=True)
    assert built is True
    _assert_same(first, second)
    assert [p.name for p in cached_root.iterdir()] == [first.path.name]


def test_cache_keyed_by_simulation_section(cached_root: Path) -> None:
    a, _ = sim.load_or_build(TINY, cached_root)
    b, built = sim.load_or_build(dataclasses.replace(TINY, seed=TINY.seed + 1), cached_root)
    assert built is True and a.path != b.path
    assert len(list(cached_root.iterdir())) == 2


def _truncate(folder: Path) -> None:
    npz = folder / "arrays.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])


def _overwrite_middle(folder: Path) -> None:
    npz = folder / "arrays.npz"
    data = bytearray(npz.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 64] = b"\x00" * 64
    npz.write_bytes(bytes(data))


def _replace_array(folder: Path) -> None:
    """A well-formed npz whose data no longer match the checksum."""
    with np.load(folder / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["x"] = arrays["x"].copy()
    arrays["x"][3, 2] += 1e-9
    np.savez(folder / "arrays.npz", **arrays)


def _drop_array(folder: Path) -> None:
    with np.load(folder / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "y_test"}
    np.savez(folder / "arrays.npz", **arrays)


def _edit_checksum(folder: Path) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["checksum"] = "0" * 64
    path.write_text(json.dumps(manifest))


def _edit_config_hash(folder: Path) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["config_hash"] = "deadbeef"
    path.write_text(json.dumps(manifest))


def _break_manifest(folder: Path) -> None:
    (folder / "manifest.json").write_text('{"checksum": ')


def _delete_manifest(folder: Path) -> None:
    (folder / "manifest.json").unlink()


def _delete_arrays(folder: Path) -> None:
    (folder / "arrays.npz").unlink()


def _empty_npz(folder: Path) -> None:
    (folder / "arrays.npz").write_bytes(b"")


@pytest.mark.parametrize(
    "corrupt",
    [_truncate, _overwrite_middle, _replace_array, _drop_array, _edit_checksum,
     _edit_config_hash, _break_manifest, _delete_manifest, _delete_arrays, _empty_npz],
)
def test_cache_corruption_is_rebuilt(cached_root: Path, tiny_ds: sim.Dataset,
                                     corrupt: Any) -> None:
    good, built = _load(cached_root)
    assert built is False
    checksum = good.manifest["checksum"]
    corrupt(good.path)
    assert sim._read(good.path, TINY) is None  # detected, never used
    ds, built = _load(cached_root)
    assert built is True
    _assert_same(ds, good)
    # The rebuilt cache is whole again and is reused.
    manifest = json.loads((ds.path / "manifest.json").read_text())
    assert manifest["checksum"] == checksum
    again, built = _load(cached_root)
    assert built is False
    _assert_same(again, tiny_ds)
    assert [p.name for p in cached_root.iterdir()] == [good.path.name]


def test_leftover_temp_folder_is_harmless(tmp_path: Path) -> None:
    target = sim.dataset_dir(TINY, tmp_path)
    # A writer killed before its rename leaves a temp folder (here a half-written one).
    leftover = tmp_path / f".{target.name}.crashed"
    leftover.mkdir()
    (leftover / "arrays.npz").write_bytes(b"PK\x03\x04partial")
    ds, built = _load(tmp_path)
    assert built is True and ds.path == target
    again, built = _load(tmp_path)
    assert built is False
    _assert_same(ds, again)
    # A partial target folder (no manifest yet) is rebuilt too.
    (target / "manifest.json").unlink()
    ds2, built = _load(tmp_path)
    assert built is True
    _assert_same(ds, ds2)


def test_default_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sim.dataset_dir(TINY) == Path("studies") / "data" / f"pde_m1_{sim._config_hash(TINY)}"


def test_simulation_config_hash_matches_config() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert sim._config_hash(cfg.simulation) == cfg.simulation_hash()
    assert isinstance(cfg.simulation, SimulationConfig)
