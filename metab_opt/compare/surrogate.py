"""A surrogate replay: many sampler studies in a minute, on a model of trials already run.

Why it exists: one study on the rank50 proxy takes ~10 minutes, so a real comparison gets 3
repeats per sampler, and 3 cannot separate a median of 0.93 from 0.95. To choose between sampler
designs, this module fits a surrogate of the objective to every trial of some finished studies
and replays whole studies on it, 100 per sampler, in about a minute each. What it says is only
as good as the surrogate: a design it favours must still win a real comparison
(``metab-opt compare``) before it is believed.

The surrogate, in numbers:

* **Inputs** ``x ∈ [0, 1]^d``: each knob but the seed at its place on the knob's lattice
  (:meth:`Knob.grid`), interpolated between lattice points for the off-lattice values Optuna's
  samplers draw (in log space for a log knob; a log knob's 0 one step below its least positive
  point).
* **Target** ``z = -log(1 - R²)``, R² clipped to ``[-3, 0.998]``: it spreads the top (0.9 → 2.3,
  0.99 → 4.6) and squeezes the failures.
* **Mean** a Gaussian process with an automatic-relevance RBF kernel on the standardized
  ``z``: one inverse squared length per knob (from :data:`_INVERSE_LENGTHS`) and a noise variance
  (:data:`_NOISES`), chosen by coordinate ascent of the marginal likelihood.
* **A run** of params ``p`` with training seed ``s`` returns ``R² = 1 - exp(-(μ(p) + ε))`` with
  ``ε ~ N(0, σ_z²)`` (:data:`SEED_SD_Z`: an R² of 0.9 scatters by ±0.025 from seed to seed, as
  the proxy's replicate groups do), and, one run in 20, an extra drop ``Exp(1)`` in ``z``
  (a seed that trains badly). ``ε`` is a function of ``(world, params, seed)``: the same run
  twice gives the same value.

A replayed study is what ``metab-opt compare`` runs: trial 0 at the config's values, ``n_trials``
trials, then its incumbent (the replicate group with the best mean) trained again with seeds 101
and 202; the replicate-confirmed R² is the mean of the group's runs and the two retrains.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from metab_opt.compare.results import RETRAIN_ATTR
from metab_opt.config import Config, Knob
from metab_opt.sampler import UCBMutationSampler, suggest_params
from metab_opt.ucbtree import _model, canonical

__all__ = ["SEED_SD_Z", "Replay", "Surrogate", "fit_surrogate", "read_csv", "read_storage",
           "refit", "replay"]

SEED_SD_Z = 0.25
_TAIL = 0.05  # the share of runs whose seed trains badly
_INVERSE_LENGTHS = (0.0, 0.5, 2.0, 8.0, 32.0)
_NOISES = (0.03, 0.1, 0.3)
RETRAIN_SEEDS = (101, 202)

Point = tuple[str, dict[str, Any], float]  # (source, params, R²)


def _z(r2: np.ndarray) -> np.ndarray:
    return -np.log(1.0 - np.clip(r2, -3.0, 0.998))


def _r2(z: np.ndarray) -> np.ndarray:
    return 1.0 - np.exp(-z)


class Encoder:
    """Params → positions on the knobs' lattices (module docstring)."""

    def __init__(self, knobs: Sequence[Knob], base: Mapping[str, Any]) -> None:
        self.knobs = tuple(knobs)
        self._tables: list[tuple[np.ndarray, float | None] | None] = []
        for k in self.knobs:
            if k.scale == "categorical":
                self._tables.append(None)
                continue
            grid = [float(v) for v in k.grid(base[k.name])]
            if k.scale == "log":
                least = min(v for v in grid if v > 0)
                floor = math.log(least) - math.log(float(k.step or 2.0))
                self._tables.append((np.array([math.log(v) if v > 0 else floor for v in grid]),
                                     floor))
            else:
                self._tables.append((np.array(grid), None))
        self._base = dict(base)

    def __call__(self, params: Mapping[str, Any]) -> np.ndarray:
        out = []
        for k, table in zip(self.knobs, self._tables, strict=True):
            value = params[k.name]
            if table is None:
                choices = k.grid(self._base[k.name])
                i = choices.index(value) if value in choices else 0
                out.append(i / max(1, len(choices) - 1))
                continue
            t, floor = table
            x = float(value) if floor is None else (math.log(value) if value > 0 else floor)
            out.append(float(np.interp(x, t, np.arange(len(t)))) / max(1, len(t) - 1))
        return np.array(out)


def _log_likelihood(x: np.ndarray, y: np.ndarray, inverse: np.ndarray, noise: float) -> float:
    # One length scale per knob is the move model's isotropic kernel on rescaled inputs.
    return _model._log_likelihood(x * np.sqrt(inverse), y, 1.0, noise)


@dataclass
class Surrogate:
    """The fitted surrogate: :meth:`mean` in R², :meth:`run` one noisy training."""

    encode: Encoder
    x: np.ndarray
    inverse: np.ndarray  # one inverse squared length per knob
    noise: float
    center: float
    scale: float
    alpha: np.ndarray

    def _mean_z(self, params: Mapping[str, Any]) -> float:
        xs = self.encode(params)
        k = np.exp(-(((xs[None, :] - self.x) ** 2) * self.inverse).sum(-1) / 2.0)
        return self.center + self.scale * float(k @ self.alpha)

    def mean(self, params: Mapping[str, Any]) -> float:
        return float(_r2(np.array(self._mean_z(params))))

    def run(self, params: Mapping[str, Any], seed: int, world: int = 0) -> float:
        key = json.dumps([canonical(params[k.name]) for k in self.encode.knobs])
        digest = hashlib.sha256(f"{world}|{key}|{seed}".encode()).hexdigest()
        rng = np.random.default_rng(int(digest[:15], 16))
        z = self._mean_z(params) + SEED_SD_Z * rng.normal()
        if rng.random() < _TAIL:
            z -= rng.exponential(1.0)
        return float(_r2(np.array(z)))

    def relevance(self) -> dict[str, float]:
        return {k.name: float(v) for k, v in zip(self.encode.knobs, self.inverse, strict=True)}


def fit_surrogate(cfg: Config, points: Sequence[Point], sweeps: int = 2) -> Surrogate:
    """The surrogate of ``points`` over ``cfg``'s knobs (all but the seed)."""
    seed = cfg.search.roles.seed if cfg.search.roles is not None else None
    knobs = [k for k in cfg.search.knobs if k.name != seed]
    encode = Encoder(knobs, cfg.base_params())
    x = np.stack([encode(p) for _, p, _ in points])
    z = _z(np.array([v for _, _, v in points]))
    center, scale = float(z.mean()), float(z.std()) or 1.0
    y = (z - center) / scale
    inverse, noise = np.full(x.shape[1], 2.0), 0.1
    best = _log_likelihood(x, y, inverse, noise)
    for _ in range(sweeps):
        for j in range(x.shape[1]):
            for g in _INVERSE_LENGTHS:
                trial = inverse.copy()
                trial[j] = g
                for s2 in _NOISES:
                    v = _log_likelihood(x, y, trial, s2)
                    if v > best + 1e-9:
                        best, inverse, noise = v, trial, s2
    return _condition(encode, x, z, inverse, noise)


def _condition(encode: Encoder, x: np.ndarray, z: np.ndarray, inverse: np.ndarray,
               noise: float) -> Surrogate:
    center, scale = float(z.mean()), float(z.std()) or 1.0
    d2 = (((x[:, None, :] - x[None, :, :]) ** 2) * inverse).sum(-1)
    alpha = np.linalg.solve(np.exp(-d2 / 2.0) + noise * np.eye(len(x)), (z - center) / scale)
    return Surrogate(encode, x, inverse, noise, center, scale, alpha)


def refit(model: Surrogate, points: Sequence[Point]) -> Surrogate:
    """``model``'s length scales and noise, conditioned on ``points`` instead (a held-out
    check: fit on some studies, predict another)."""
    x = np.stack([model.encode(p) for _, p, _ in points])
    return _condition(model.encode, x, _z(np.array([v for _, _, v in points])), model.inverse,
                      model.noise)


def read_storage(url: str, cfg: Config) -> list[Point]:
    """Every complete trial of every study in an Optuna storage, with the config's values for
    the knobs a trial lacks (a pruned trial stopped early, so its last report is no R²), and
    the retrains ``metab-opt compare`` stored with each study."""
    base = cfg.base_params()
    out: list[Point] = []
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.value is None or not math.isfinite(t.value):
                continue
            params = dict(base)
            params.update({k: v for k, v in t.params.items() if k in params})
            out.append((summary.study_name, params, float(t.value)))
        # A comparison's retrains of the study's incumbent are runs too.
        record = study.user_attrs.get(RETRAIN_ATTR)
        if isinstance(record, dict) and isinstance(record.get("params"), dict):
            params = dict(base)
            params.update({k: v for k, v in record["params"].items() if k in params})
            for run in record.get("runs", ()):
                r2 = run.get("r2") if isinstance(run, dict) else None
                if isinstance(r2, (int, float)) and math.isfinite(r2):
                    out.append((summary.study_name, dict(params), float(r2)))
    return out


def read_csv(path: Path, cfg: Config, value: str = "rate_constants_R2") -> list[Point]:
    """Trials from a CSV with one column per knob and a ``value`` column; a row's source is the
    file name and its ``sampler``/``sampler_seed`` columns when it has them."""
    knobs = {k.name: k for k in cfg.search.knobs}
    out: list[Point] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            params: dict[str, Any] = dict(cfg.base_params())
            for name, knob in knobs.items():
                text = row.get(name)
                if text is None or text == "":
                    continue
                if knob.scale == "categorical":
                    params[name] = next((c for c in knob.grid(None) if str(c) == text), text)
                elif knob.is_integer or knob.scale == "int":
                    params[name] = int(float(text))
                else:
                    params[name] = float(text)
            source = f"{path.name}:{row.get('sampler', '')}{row.get('sampler_seed', '')}"
            out.append((source, params, float(row[value])))
    return out


@dataclass(frozen=True)
class Replay:
    """One replayed study."""

    confirmed: float  # the incumbent's replicate-confirmed R²
    true: float  # the surrogate's mean at the incumbent's params
    best_run: float  # the best single run of the study


SamplerFactory = Callable[[Config, int], optuna.samplers.BaseSampler]


def _ucb(cfg: Config, seed: int) -> optuna.samplers.BaseSampler:
    return UCBMutationSampler.from_config(cfg, seed=seed)


SAMPLERS: dict[str, SamplerFactory] = {
    "ucb": _ucb,
    "random": lambda cfg, seed: optuna.samplers.RandomSampler(seed=seed),
    "tpe": lambda cfg, seed: optuna.samplers.TPESampler(seed=seed),
}


def replay(cfg: Config, surrogate: Surrogate, make: SamplerFactory, seeds: Iterable[int], *,
           n_trials: int = 24, world: int = 0) -> list[Replay]:
    """A study per sampler seed on the surrogate (module docstring)."""
    names = [k.name for k in surrogate.encode.knobs]
    seed_name = cfg.search.roles.seed if cfg.search.roles is not None else None
    out = []
    for seed in seeds:
        study = optuna.create_study(direction="maximize", sampler=make(cfg, seed))
        study.enqueue_trial(dict(cfg.base_params()))

        def objective(trial: optuna.Trial) -> float:
            p = suggest_params(trial, cfg.search)
            run_seed = int(p[seed_name]) if seed_name is not None else trial.number
            return surrogate.run(p, run_seed, world)

        study.optimize(objective, n_trials=n_trials)
        groups: dict[str, tuple[dict[str, Any], list[float]]] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            p = dict(cfg.base_params())
            p.update(t.params)
            key = json.dumps([canonical(p[n]) for n in names])
            groups.setdefault(key, (p, []))[1].append(float(t.value or 0.0))
        params, runs = max(groups.values(), key=lambda g: float(np.mean(g[1])))
        retrains = [surrogate.run(params, s, world) for s in RETRAIN_SEEDS]
        out.append(Replay(float(np.mean(runs + retrains)), surrogate.mean(params),
                          max(max(r) for _, r in groups.values())))
    return out
