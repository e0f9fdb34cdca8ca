"""The simulator (PDE_M1's dynamics, on any network) and its cached dataset.

The system, for metabolite ``i`` of type ``τ(i)`` and reaction ``j``::

    dc_i/dt = -λ_τ(i) (c_i - c_base,τ(i)) + Σ_j S_ij v_j,     v_j = k_j Π_{i ∈ sub(j)} c_i^|s_ij|

The network comes from :mod:`metab_opt.problem.networks` (PDE_M1's generator or a real model).
``S`` (n_metabolites x n_reactions) is the signed stoichiometry; ``substrate_power``
(n_metabolites x n_reactions) holds ``|s_ij|`` for the substrates of each reaction and 0 elsewhere.
Integration is explicit Euler with concentrations clamped at 0; the dataset stores the states
``x[t]`` and the exact derivatives ``y[t] = dc/dt(x[t])``.

numpy only: building a dataset needs no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metab_opt import __version__
from metab_opt.config import ConfigError, SimulationConfig, simulation_hash
from metab_opt.problem.networks import Network, build_network

__all__ = [
    "Dataset",
    "Network",
    "activity_rank",
    "build_network",
    "derivative",
    "integrate",
    "load_or_build",
    "oracle_rate_constants",
    "simulate",
]

_ARRAYS = ("S", "substrate_power", "log_k_true", "metabolite_type", "x", "y", "x_test", "y_test")
_DEFAULT_DATA_ROOT = Path("studies") / "data"


@dataclass
class Dataset:
    """A simulated dataset: the network, the training trajectory and a held-out one."""

    network: Network
    x: np.ndarray  # (n_frames, n_met) concentrations
    y: np.ndarray  # (n_frames, n_met) dc/dt at x
    x_test: np.ndarray  # (n_test_frames, n_met)
    y_test: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # Convenience views used by the model and the metrics.
    @property
    def S(self) -> np.ndarray:
        return self.network.S

    @property
    def substrate_power(self) -> np.ndarray:
        return self.network.substrate_power

    @property
    def log_k_true(self) -> np.ndarray:
        return self.network.log_k

    @property
    def metabolite_type(self) -> np.ndarray:
        return self.network.metabolite_type


# ---------------------------------------------------------------------------------------------
# Dynamics


def _substrate_index(net: Network) -> tuple[np.ndarray, np.ndarray]:
    """Padded (n_reac, max_sub) metabolite indices and powers (power 0 pads: c^0 = 1)."""
    n_sub = (net.substrate_power > 0).sum(axis=0)
    width = max(int(n_sub.max()), 1)
    idx = np.zeros((net.n_reactions, width), dtype=np.int64)
    pw = np.zeros((net.n_reactions, width), dtype=np.float64)
    for j in range(net.n_reactions):
        rows = np.nonzero(net.substrate_power[:, j])[0]
        idx[j, : len(rows)] = rows
        pw[j, : len(rows)] = net.substrate_power[rows, j]
    return idx, pw


def rate_features(x: np.ndarray, idx: np.ndarray, pw: np.ndarray) -> np.ndarray:
    """``φ_j(c) = Π c_i^|s_ij|`` for a (..., n_met) array of states -> (..., n_reac)."""
    return np.prod(x[..., idx] ** pw, axis=-1)


def homeostasis(x: np.ndarray, net: Network) -> np.ndarray:
    lam = net.lambdas[net.metabolite_type]
    base = net.baselines[net.metabolite_type]
    return -lam * (x - base)


def derivative(x: np.ndarray, net: Network, idx: np.ndarray | None = None,
               pw: np.ndarray | None = None) -> np.ndarray:
    """dc/dt at the state(s) x, shape (..., n_met)."""
    if idx is None or pw is None:
        idx, pw = _substrate_index(net)
    k = 10.0 ** net.log_k
    v = k * rate_features(x, idx, pw)
    return homeostasis(x, net) + v @ net.S.T.astype(np.float64)


# S as a dense (R, N) product below this many entries (every PDE_M1 regime: their datasets stay
# bit for bit), over its nonzeros above (a genome-scale model: iJO1366's 2,862 x 1,805 S has
# 11,476 nonzeros, and the dense product was 8.2 of a rate evaluation's 8.3 ms).
DENSE_S_MAX_ENTRIES = 300_000


def _stoichiometry_product(net: Network) -> Callable[[np.ndarray], np.ndarray]:
    """``v -> v Sᵀ`` for one state's (R,) fluxes: the reactions' net effect on each metabolite."""
    if net.S.size < DENSE_S_MAX_ENTRIES:
        S_t = net.S.T.astype(np.float64)
        return lambda v: v @ S_t
    rows, cols = np.nonzero(net.S)
    coef = net.S[rows, cols].astype(np.float64)
    n = net.n_metabolites
    return lambda v: np.bincount(rows, weights=coef * v[cols], minlength=n)


def integrate(net: Network, c0: np.ndarray, n_frames: int, dt: float, substeps: int = 1
              ) -> tuple[np.ndarray, np.ndarray]:
    """Explicit Euler from c0 for n_frames, ``substeps`` steps of ``dt / substeps`` per frame
    (concentrations clamped at 0 after each); returns (x, y) with y[t] = dc/dt(x[t])."""
    idx, pw = _substrate_index(net)
    k = 10.0 ** net.log_k
    lam = net.lambdas[net.metabolite_type]
    base = net.baselines[net.metabolite_type]
    x = np.empty((n_frames, net.n_metabolites))
    y = np.empty_like(x)
    c = c0.astype(np.float64).copy()
    h = dt / substeps  # == dt exactly when substeps is 1: the one-step scheme, bit for bit
    flux_to_rates = _stoichiometry_product(net)

    def rate(c: np.ndarray) -> np.ndarray:
        return -lam * (c - base) + flux_to_rates(k * np.prod(c[idx] ** pw, axis=1))

    for t in range(n_frames):
        x[t] = c
        y[t] = dc = rate(c)
        c = np.maximum(c + h * dc, 0.0)
        for _ in range(substeps - 1):
            c = np.maximum(c + h * rate(c), 0.0)
    return x, y


def activity_rank(x: np.ndarray, variance: float = 0.99) -> int:
    """How many singular values of the centred concentration matrix hold ``variance`` of it."""
    centred = x - x.mean(axis=0, keepdims=True)
    s = np.linalg.svd(centred, compute_uv=False)
    energy = np.cumsum(s**2)
    if energy[-1] <= 0:
        return 0
    return int(np.searchsorted(energy / energy[-1], variance) + 1)


def oracle_rate_constants(net: Network, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k by linear least squares with the true kinetic form known.

    ``y + λ(c - c_base) = Σ_j S[:, j] k_j φ_j(c)`` is linear in k. Stacked over frames the
    design matrix is (T·N) x R; its normal equations factor as
    ``AᵀA = (SᵀS) ∘ (ΦᵀΦ)`` and ``Aᵀb = Σ_t φ_t ∘ (Sᵀ b_t)``, so the fit never builds A.
    """
    idx, pw = _substrate_index(net)
    phi = rate_features(x, idx, pw)  # (T, R)
    b = y - homeostasis(x, net)  # (T, N)
    S = net.S.astype(np.float64)
    ata = (S.T @ S) * (phi.T @ phi)
    atb = (phi * (b @ S)).sum(axis=0)
    # Scale the columns so the solve is well conditioned across k's orders of magnitude.
    d = np.sqrt(np.clip(np.diag(ata), 1e-300, None))
    sol, *_ = np.linalg.lstsq(ata / np.outer(d, d), atb / d, rcond=None)
    return sol / d


def _r2_identity(pred: np.ndarray, true: np.ndarray) -> float:
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    return 1.0 - float(np.sum((pred - true) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


def _check_finite(cfg: SimulationConfig, which: str, x: np.ndarray, y: np.ndarray) -> None:
    """A diverged trajectory is a bad regime, reported in one line (not a NaN dataset)."""
    bad = ~(np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1))
    if bad.any():
        frame = int(np.argmax(bad))
        raise ConfigError(f"simulation: the {which} trajectory diverged at frame {frame} "
                          f"(non-finite concentrations) with delta_t {cfg.delta_t} and "
                          f"{cfg.substeps} Euler step(s) per frame; raise simulation.substeps "
                          f"or lower simulation.log_k_max")


def _starts(cfg: SimulationConfig, n_met: int) -> list[np.ndarray]:
    """The training trajectories' initial states, one per trajectory (seeded).

    The first is the one PDE_M1 always drew (so one trajectory is today's dataset, bit for bit);
    trajectory j > 0 draws from its own stream.
    """
    out = []
    for j in range(cfg.n_trajectories):
        rng = np.random.default_rng([cfg.seed, 1] if j == 0 else [cfg.seed, 1, j])
        out.append(rng.uniform(cfg.concentration_min, cfg.concentration_max, size=n_met))
    return out


# A reaction whose oracle log10 k misses the truth by more than this is reported by name as one
# the data do not identify (a tenth of a decade: a 26% error in k).
UNIDENTIFIED_LOG_ERROR = 0.1


def identifiability(net: Network, log_k_oracle: np.ndarray) -> list[str]:
    """The reactions whose oracle estimate misses the truth by more than
    :data:`UNIDENTIFIED_LOG_ERROR` in log10 k, by name, worst first."""
    err = np.abs(log_k_oracle - net.log_k)
    bad = np.nonzero(~(err <= UNIDENTIFIED_LOG_ERROR))[0]
    return [net.reaction_name(int(j)) for j in bad[np.argsort(-np.nan_to_num(err[bad],
                                                                          nan=np.inf))]]


def simulate(cfg: SimulationConfig) -> Dataset:
    """Build the network and the trajectories, and measure the dataset's figures.

    The training data are ``n_trajectories`` trajectories of ``n_frames / n_trajectories`` frames
    each, one after the other in ``x`` (a real network settles onto its steady state within a
    few hundred frames; many short runs from independent starts keep the data informative); the
    test data are one trajectory from its own start.

    Raises :class:`ConfigError` when a trajectory diverges (explicit Euler with too large a
    ``delta_t`` for the rates): such a dataset would poison the oracle and every learner.
    """
    t0 = time.perf_counter()
    net = build_network(cfg)
    rng_test = np.random.default_rng([cfg.seed + cfg.test_seed_offset, 1])
    c0_test = rng_test.uniform(cfg.concentration_min, cfg.concentration_max,
                               size=net.n_metabolites)
    per = cfg.n_frames // cfg.n_trajectories
    with np.errstate(over="ignore", invalid="ignore"):
        parts = [integrate(net, c0, per, cfg.delta_t, cfg.substeps)
                 for c0 in _starts(cfg, net.n_metabolites)]
        x = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        y = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
        _check_finite(cfg, "training", x, y)
        x_test, y_test = integrate(net, c0_test, cfg.n_test_frames, cfg.delta_t,
                                   cfg.substeps)
        _check_finite(cfg, "test", x_test, y_test)
    if cfg.noise_level > 0:
        noise_rng = np.random.default_rng([cfg.seed, 2])
        y = y + cfg.noise_level * y.std(axis=0, keepdims=True) * noise_rng.standard_normal(y.shape)
    k_oracle = oracle_rate_constants(net, x, y)
    log_k_oracle = np.log10(np.clip(k_oracle, 1e-12, None))
    manifest: dict[str, Any] = {
        "n_metabolites": net.n_metabolites,
        "n_reactions": net.n_reactions,
        "n_frames": int(cfg.n_frames),
        "n_test_frames": int(cfg.n_test_frames),
        "activity_rank": activity_rank(x),
        "concentration_min": float(x.min()),
        "concentration_max": float(x.max()),
        "oracle_R2": _r2_identity(log_k_oracle, net.log_k),
        "finite": bool(np.isfinite(x).all() and np.isfinite(y).all()),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    if cfg.n_trajectories > 1:
        manifest["n_trajectories"] = int(cfg.n_trajectories)
    if net.reaction_names:  # a real model: its ids, and what the data cannot identify
        manifest["metabolite_names"] = list(net.metabolite_names)
        manifest["reaction_names"] = list(net.reaction_names)
        manifest["nnz_S"] = int(np.count_nonzero(net.S))
        manifest["unidentified_reactions"] = identifiability(net, log_k_oracle)
    return Dataset(network=net, x=x, y=y, x_test=x_test, y_test=y_test, manifest=manifest)


# ---------------------------------------------------------------------------------------------
# Cache


def _config_hash(cfg: SimulationConfig) -> str:
    return simulation_hash(cfg)


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in _ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _arrays(ds: Dataset) -> dict[str, np.ndarray]:
    return {"S": ds.network.S, "substrate_power": ds.network.substrate_power,
            "log_k_true": ds.network.log_k, "metabolite_type": ds.network.metabolite_type,
            "x": ds.x, "y": ds.y, "x_test": ds.x_test, "y_test": ds.y_test}


def _read(folder: Path, cfg: SimulationConfig) -> Dataset | None:
    """The cached dataset if it is complete and its checksum matches; None otherwise."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    except Exception:  # a truncated zip raises zipfile.BadZipFile and friends
        return None
    if manifest.get("config_hash") != _config_hash(cfg) or manifest.get("checksum") != _checksum(
            arrays):
        return None
    net = Network(S=arrays["S"], substrate_power=arrays["substrate_power"],
                  log_k=arrays["log_k_true"], metabolite_type=arrays["metabolite_type"],
                  lambdas=np.asarray(cfg.homeostatic_lambda_per_type, dtype=np.float64),
                  baselines=np.asarray(cfg.homeostatic_baseline_per_type, dtype=np.float64),
                  metabolite_names=tuple(manifest.get("metabolite_names", ())),
                  reaction_names=tuple(manifest.get("reaction_names", ())))
    return Dataset(network=net, x=arrays["x"], y=arrays["y"], x_test=arrays["x_test"],
                   y_test=arrays["y_test"], manifest=manifest, path=folder)


def _write(ds: Dataset, folder: Path, cfg: SimulationConfig) -> None:
    """Write atomically: a temp folder beside the target, then a rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    arrays = _arrays(ds)
    manifest = dict(ds.manifest)
    manifest.update({
        "config_hash": _config_hash(cfg),
        "checksum": _checksum(arrays),
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "simulation": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
    })
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        np.savez(tmp / "arrays.npz", **arrays)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for f in tmp.iterdir():  # the data reach the disk before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if folder.exists():
            # A corrupted or stale cache: move it aside first so the rename cannot fail.
            stale = folder.with_name(f".{folder.name}.stale.{os.getpid()}.{time.time_ns()}")
            os.replace(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ds.manifest = manifest
    ds.path = folder


def dataset_dir(cfg: SimulationConfig, data_root: str | Path | None = None) -> Path:
    root = Path(data_root) if data_root is not None else _DEFAULT_DATA_ROOT
    net = cfg.network
    if net is None or net.source == "pde_m1":
        prefix = "pde_m1"
    else:  # a real model's name: textbook_..., or the SBML file's stem
        prefix = net.model if net.source == "cobra" and net.model else \
            Path(net.path or "sbml").name.split(".")[0]
    return root / f"{prefix}_{_config_hash(cfg)}"


def load_or_build(cfg: SimulationConfig, data_root: str | Path | None = None, *,
                  rebuild: bool = False) -> tuple[Dataset, bool]:
    """The dataset of a regime, from the cache when intact; returns (dataset, built_now).

    A partial or corrupted cache fails its checksum and is rebuilt, never used. Several
    processes may race to build the same dataset: each writes its own temp folder and the
    renames are atomic, so a reader sees either a whole dataset or none.
    """
    folder = dataset_dir(cfg, data_root)
    if not rebuild:
        cached = _read(folder, cfg)
        if cached is not None:
            return cached, False
    ds = simulate(cfg)
    try:
        _write(ds, folder, cfg)
    except OSError:
        # Another process may have won the race with an identical dataset.
        cached = _read(folder, cfg)
        if cached is None:
            raise
        return cached, False
    return ds, True
