"""YAML configuration -> typed, validated objects.

A config file has four sections: ``simulation`` (the data regime, frozen during a study),
``graph_model`` (the GNN's shape and structural options), ``training`` (the hyperparameters a
study searches) and ``search`` (the search space and the exploration settings).

Every problem is raised as :class:`ConfigError` with one line that names the file, the key and
what is allowed, so a command-line tool can print it and exit with code 2.

This module imports neither torch nor optuna at import time: the sampler and the logbook use it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "FROZEN_TRAINING_KEYS",
    "GraphModelConfig",
    "Knob",
    "SearchConfig",
    "SimulationConfig",
    "TrainingConfig",
    "apply_params",
    "dump_config",
    "load_config",
    "parse_overrides",
]


class ConfigError(ValueError):
    """A configuration problem, described in one line."""


# The procedure recovers k with S given: these training keys must keep these values.
FROZEN_TRAINING_KEYS: dict[str, Any] = {
    "freeze_stoichiometry": True,
    "learning_rate_S_start": 0.0,
    "coeff_S_L1": 0.0,
    "coeff_S_integer": 0.0,
    "coeff_mass_conservation": 0.0,
}


@dataclass(frozen=True)
class _Spec:
    """How one key is checked: its type, its bounds and whether it must be present."""

    kind: str  # "int", "float", "bool", "str", "float_list"
    low: float | None = None
    high: float | None = None
    required: bool = True
    choices: tuple[Any, ...] | None = None
    low_open: bool = False


def _f(low: float | None = None, high: float | None = None, *, required: bool = True,
       low_open: bool = False) -> _Spec:
    return _Spec("float", low, high, required, low_open=low_open)


def _i(low: float | None = None, high: float | None = None, *, required: bool = True) -> _Spec:
    return _Spec("int", low, high, required)


def _b(*, required: bool = True) -> _Spec:
    return _Spec("bool", required=required)


def _s(choices: Sequence[str], *, required: bool = True) -> _Spec:
    return _Spec("str", choices=tuple(choices), required=required)


@dataclass(frozen=True)
class SimulationConfig:
    """The PDE_M1 regime: network, kinetics, homeostasis and the two trajectories."""

    n_metabolites: int
    n_metabolite_types: int
    n_reactions: int
    max_metabolites_per_reaction: int
    n_frames: int
    delta_t: float
    seed: int
    concentration_min: float
    concentration_max: float
    cycle_fraction: float
    cycle_length: int
    use_mass_action: bool
    log_k_min: float
    log_k_max: float
    flux_limit: bool
    homeostatic_lambda_per_type: tuple[float, ...]
    homeostatic_baseline_per_type: tuple[float, ...]
    n_test_frames: int
    test_seed_offset: int = 1000
    noise_level: float = 0.0

    @property
    def log_k_center(self) -> float:
        return 0.5 * (self.log_k_min + self.log_k_max)


_SIMULATION_SPECS: dict[str, _Spec] = {
    "n_metabolites": _i(2, 100_000),
    "n_metabolite_types": _i(1, 100),
    "n_reactions": _i(1, 1_000_000),
    "max_metabolites_per_reaction": _i(1, 16),
    "n_frames": _i(2, 10_000_000),
    "delta_t": _f(0.0, 100.0, low_open=True),
    "seed": _i(0, 2**31 - 1),
    "concentration_min": _f(0.0, 1e6),
    "concentration_max": _f(0.0, 1e6, low_open=True),
    "cycle_fraction": _f(0.0, 1.0),
    "cycle_length": _i(2, 100),
    "use_mass_action": _b(),
    "log_k_min": _f(-12.0, 6.0),
    "log_k_max": _f(-12.0, 6.0),
    "flux_limit": _b(),
    "homeostatic_lambda_per_type": _Spec("float_list", 0.0, 100.0),
    "homeostatic_baseline_per_type": _Spec("float_list", 0.0, 1e6),
    "n_test_frames": _i(2, 10_000_000),
    "test_seed_offset": _i(1, 2**30, required=False),
    "noise_level": _f(0.0, 10.0, required=False),
}


@dataclass(frozen=True)
class GraphModelConfig:
    """The GNN's shape and its structural options (defaults keep the seed's model)."""

    hidden_dim_sub: int
    n_layers_sub: int
    hidden_dim_node: int
    n_layers_node: int
    embedding_dim: int
    aggr_type: str
    c_scale: float = 1.0
    sub_through_origin: bool = False
    log_k_init_noise: float = 0.01


_GRAPH_MODEL_SPECS: dict[str, _Spec] = {
    "hidden_dim_sub": _i(1, 4096),
    "n_layers_sub": _i(1, 16),
    "hidden_dim_node": _i(1, 4096),
    "n_layers_node": _i(1, 16),
    "embedding_dim": _i(0, 64),
    "aggr_type": _s(["mul", "add"]),
    "c_scale": _f(0.0, 1e6, required=False, low_open=True),
    "sub_through_origin": _b(required=False),
    "log_k_init_noise": _f(0.0, 10.0, required=False),
}


@dataclass(frozen=True)
class TrainingConfig:
    """Training hyperparameters; a study searches these (and some graph_model options)."""

    n_epochs: int
    batch_size: int
    seed: int
    data_augmentation_loop: int
    learning_rate_start: float
    learning_rate_k: float
    learning_rate_node: float
    learning_rate_sub: float
    coeff_k_center: float
    coeff_MLP_sub_diff: float
    coeff_MLP_node_L1: float
    coeff_k_floor: float = 0.0
    k_floor_threshold: float = -2.0
    coeff_MLP_sub_norm: float = 0.0
    freeze_stoichiometry: bool = True
    learning_rate_S_start: float = 0.0
    coeff_S_L1: float = 0.0
    coeff_S_integer: float = 0.0
    coeff_mass_conservation: float = 0.0
    report_every: int = 0  # 0: 20 reports per run
    sub_diff_grid_points: int = 64

    def n_steps(self, n_frames: int) -> int:
        """Gradient steps of one training run, as the original procedure counts them."""
        per_epoch = int(n_frames * self.data_augmentation_loop // self.batch_size * 0.2)
        return max(1, per_epoch * self.n_epochs)


_TRAINING_SPECS: dict[str, _Spec] = {
    "n_epochs": _i(1, 1000),
    "batch_size": _i(1, 100_000),
    "seed": _i(0, 2**31 - 1),
    "data_augmentation_loop": _i(1, 1_000_000),
    "learning_rate_start": _f(0.0, 10.0),
    "learning_rate_k": _f(0.0, 10.0),
    "learning_rate_node": _f(0.0, 10.0),
    "learning_rate_sub": _f(0.0, 10.0),
    "coeff_k_center": _f(0.0, 1e6),
    "coeff_MLP_sub_diff": _f(0.0, 1e6),
    "coeff_MLP_node_L1": _f(0.0, 1e6),
    "coeff_k_floor": _f(0.0, 1e6, required=False),
    "k_floor_threshold": _f(-12.0, 6.0, required=False),
    "coeff_MLP_sub_norm": _f(0.0, 1e6, required=False),
    "freeze_stoichiometry": _b(required=False),
    "learning_rate_S_start": _f(0.0, 10.0, required=False),
    "coeff_S_L1": _f(0.0, 1e6, required=False),
    "coeff_S_integer": _f(0.0, 1e6, required=False),
    "coeff_mass_conservation": _f(0.0, 1e6, required=False),
    "report_every": _i(0, 10_000_000, required=False),
    "sub_diff_grid_points": _i(2, 10_000, required=False),
}

_SECTION_SPECS: dict[str, dict[str, _Spec]] = {
    "simulation": _SIMULATION_SPECS,
    "graph_model": _GRAPH_MODEL_SPECS,
    "training": _TRAINING_SPECS,
}
_SECTION_TYPES: dict[str, type] = {
    "simulation": SimulationConfig,
    "graph_model": GraphModelConfig,
    "training": TrainingConfig,
}

_SCALES = ("log", "linear", "int", "categorical")
_MAX_SIDE = 1000  # grid values on each side of the anchor, at most


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader (libyaml's when present: 6x faster) that reads ``1e-3`` as a number.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``) and ``1e-3`` is a string;
    YAML 1.2 (and every user) reads it as a float.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def _sig(value: float, digits: int = 6) -> float:
    """Round to significant digits, so grid values print cleanly (6.25e-04, not 6.2500001e-04)."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class Knob:
    """One searchable hyperparameter.

    ``key`` is the section-qualified config key it sets (``training.learning_rate_k``).
    ``scale`` is ``log`` (multiplicative ``step``), ``linear`` (additive ``step``), ``int``
    (additive integer ``step``) or ``categorical`` (``choices``). A ``log`` knob whose range
    starts at 0 also allows 0 ("off"), below ``min_positive``. ``integer`` rounds a ``log``
    knob's values (``batch_size``, ``data_augmentation_loop``).

    The mutation lattice (:meth:`grid`) is anchored at the config's base value, so the seed's
    starting point is always on it, and it contains both ends of the range.
    """

    name: str
    key: str
    low: float | None = None
    high: float | None = None
    scale: str = "log"
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    min_positive: float | None = None
    integer: bool = False

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def field(self) -> str:
        return self.key.split(".", 1)[1]

    @property
    def is_integer(self) -> bool:
        return self.scale == "int" or self.integer

    def grid(self, anchor: Any) -> tuple[Any, ...]:
        """Every value a mutation may give this knob, sorted (categorical: in declared order)."""
        if self.scale == "categorical":
            assert self.choices is not None
            return tuple(self.choices)
        assert self.low is not None and self.high is not None and self.step is not None
        low, high, step = float(self.low), float(self.high), float(self.step)
        # The range ends, the anchor (the base value) and the log floor are kept exactly as
        # given; only the values walked from the anchor are rounded to 6 significant digits.
        # (Rounding the anchor took a base such as 0.00123456789 off its own grid, and rounding
        # an end such as 0.0123456789 put a value outside the range.)
        exact: set[float] = {low, high}
        walked: list[float] = []
        if self.scale == "log":
            floor = low if low > 0 else float(self.min_positive or 0.0)
            a = float(anchor) if anchor is not None and float(anchor) > 0 else floor
            # Walk outwards from the anchor by the factor until the range ends.
            log_step = math.log(step)
            n_down = int(math.floor(math.log(a / floor) / log_step + 1e-9)) if a > floor else 0
            n_up = int(math.floor(math.log(high / a) / log_step + 1e-9)) if high > a else 0
            walked.extend(a * step**i for i in range(-n_down, n_up + 1) if i != 0)
            exact.update((a, floor))
            if low <= 0:
                exact.add(0.0)
        else:
            a = float(anchor) if anchor is not None else low
            # A huge lattice (the seed knob: 0 .. 2^31 - 1 by 1) is cut to a window around the
            # anchor; both range ends stay on it.
            n_down = min(_MAX_SIDE, int(math.floor((a - low) / step + 1e-9)))
            n_up = min(_MAX_SIDE, int(math.floor((high - a) / step + 1e-9)))
            walked.extend(a + step * i for i in range(-n_down, n_up + 1) if i != 0)
            exact.add(a)
        if self.is_integer:
            lo, hi = math.ceil(low), math.floor(high)
            ints = {int(round(v)) for v in (*exact, *walked)} | {lo, hi}
            return tuple(sorted(v for v in ints if lo <= v <= hi))
        values = exact | {_sig(v) for v in walked}
        return tuple(sorted(v for v in values if low <= v <= high))

    def snap(self, value: Any, anchor: Any) -> Any:
        """The grid value closest to ``value`` (in log space for a log knob), so in the range."""
        grid = self.grid(anchor)
        if self.scale == "categorical":
            return value if value in grid else grid[0]

        def distance(g: float) -> float:
            if self.scale == "log" and g > 0 and value > 0:
                return abs(math.log(g) - math.log(value))
            if self.scale == "log" and (g <= 0 or value <= 0):
                return 0.0 if g == value else math.inf if value > 0 else abs(g - value)
            return abs(g - value)

        return min(grid, key=distance)

    def contains(self, value: Any) -> bool:
        if self.scale == "categorical":
            return value in (self.choices or ())
        assert self.low is not None and self.high is not None
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            self.low <= value <= self.high
        )

    def distribution(self) -> Any:
        """The Optuna distribution of this knob (imports optuna lazily)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.scale == "categorical":
            return CategoricalDistribution(list(self.choices or ()))
        assert self.low is not None and self.high is not None
        log = self.scale == "log" and self.low > 0
        if self.is_integer:
            return IntDistribution(int(self.low), int(self.high), log=log)
        return FloatDistribution(float(self.low), float(self.high), log=log)


@dataclass(frozen=True)
class SearchConfig:
    """The search space (knobs in exploration order) and the UCB exploration settings."""

    knobs: tuple[Knob, ...]
    n_iter_block: int = 12
    ucb_c: float = 1.414
    n_trials: int = 12

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)


@dataclass(frozen=True)
class Config:
    """A whole, validated configuration."""

    name: str
    path: str
    simulation: SimulationConfig
    graph_model: GraphModelConfig
    training: TrainingConfig
    search: SearchConfig
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def get(self, key: str) -> Any:
        """The value at a section-qualified key (``training.learning_rate_k``)."""
        section, name = key.split(".", 1)
        return getattr(getattr(self, section), name)

    def base_params(self) -> dict[str, Any]:
        """The knobs' values in this config: the root of the exploration tree."""
        return {k.name: self.get(k.key) for k in self.search.knobs}

    def simulation_hash(self) -> str:
        """Hash of the ``simulation`` section: the dataset cache key."""
        return _hash(dataclasses.asdict(self.simulation))

    def search_space_hash(self) -> str:
        return _hash([dataclasses.asdict(k) for k in self.search.knobs])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section in ("simulation", "graph_model", "training"):
            values = dataclasses.asdict(getattr(self, section))
            out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        out["search"] = copy.deepcopy(dict(self.raw.get("search", {})))
        return out


def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Validation


def _suggest(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_value(where: str, key: str, value: Any, spec: _Spec) -> Any:
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
        return value
    if spec.kind == "str":
        if not isinstance(value, str) or (spec.choices and value not in spec.choices):
            allowed = ", ".join(spec.choices or ())
            raise ConfigError(f"{where}.{key}: expected one of {allowed}, got {value!r}")
        return value
    if spec.kind == "float_list":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}.{key}: expected a non-empty list of numbers, got {value!r}")
        return tuple(_check_value(where, f"{key}[{i}]", v, _Spec("float", spec.low, spec.high))
                     for i, v in enumerate(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if spec.kind == "int" else "a number"
        raise ConfigError(f"{where}.{key}: expected {kind}, got {_type_name(value)} {value!r}")
    if spec.kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}.{key}: expected a finite number, got {value!r}")
    too_low = spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low)
    too_high = spec.high is not None and value > spec.high
    if too_low or too_high:
        left = "(" if spec.low_open else "["
        raise ConfigError(f"{where}.{key}: {value!r} is outside the allowed range "
                          f"{left}{spec.low}, {spec.high}]")
    return value


def _build_section(where: str, section: str, data: Any) -> Any:
    specs = _SECTION_SPECS[section]
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_type_name(data)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in specs:
            raise ConfigError(f"{where}.{key}: unknown key{_suggest(str(key), specs)}")
        values[key] = _check_value(where, key, value, specs[key])
    for key, spec in specs.items():
        if spec.required and key not in values:
            raise ConfigError(f"{where}.{key}: missing required key")
    return _SECTION_TYPES[section](**values)


_KNOB_KEYS = ("key", "range", "scale", "step", "choices", "min_positive", "integer")
_SEARCH_KEYS = ("knobs", "n_iter_block", "ucb_c", "n_trials")


def _build_knob(where: str, name: str, data: Any) -> Knob:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with key, range, scale, step")
    for key in data:
        if key not in _KNOB_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key{_suggest(str(key), _KNOB_KEYS)}")
    key = data.get("key")
    if not isinstance(key, str) or "." not in key:
        raise ConfigError(f"{where}.key: expected 'section.name' (e.g. training.learning_rate_k), "
                          f"got {key!r}")
    section, fname = key.split(".", 1)
    if section not in ("graph_model", "training") or fname not in _SECTION_SPECS[section]:
        known = [f"{s}.{k}" for s in ("graph_model", "training") for k in _SECTION_SPECS[s]]
        raise ConfigError(f"{where}.key: {key!r} is not a searchable config key"
                          f"{_suggest(key, known)}")
    if section == "training" and fname in FROZEN_TRAINING_KEYS:
        raise ConfigError(f"{where}.key: {key!r} is frozen and cannot be searched")
    scale = data.get("scale", "log")
    if scale not in _SCALES:
        raise ConfigError(f"{where}.scale: expected one of {', '.join(_SCALES)}, got {scale!r}")
    if scale == "categorical":
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise ConfigError(f"{where}.choices: a categorical knob needs a list of 2+ choices")
        return Knob(name=name, key=key, scale=scale, choices=tuple(choices))
    rng = data.get("range")
    if (not isinstance(rng, list) or len(rng) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)):
        raise ConfigError(f"{where}.range: expected [low, high], got {rng!r}")
    low, high = float(rng[0]), float(rng[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{where}.range: expected low < high, got {rng!r}")
    step = data.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise ConfigError(f"{where}.step: expected a number, got {step!r}")
    step = float(step)
    integer = data.get("integer", False)
    if not isinstance(integer, bool):
        raise ConfigError(f"{where}.integer: expected true or false, got {integer!r}")
    min_positive = data.get("min_positive")
    if scale == "log":
        if step <= 1.0:
            raise ConfigError(f"{where}.step: a log knob's step is a factor > 1, got {step!r}")
        if low < 0:
            raise ConfigError(f"{where}.range: a log knob's range starts at 0 or above, "
                              f"got {rng!r}")
        if low == 0:
            if (isinstance(min_positive, bool) or not isinstance(min_positive, (int, float))
                    or not 0 < min_positive < high):
                raise ConfigError(f"{where}.min_positive: a log knob whose range starts at 0 "
                                  f"needs 0 < min_positive < {high}, got {min_positive!r}")
            min_positive = float(min_positive)
    else:
        if step <= 0:
            raise ConfigError(f"{where}.step: expected a positive step, got {step!r}")
        if min_positive is not None:
            raise ConfigError(f"{where}.min_positive: only a log knob takes min_positive")
        if scale == "int" and not (low.is_integer() and high.is_integer() and step.is_integer()):
            raise ConfigError(f"{where}: an int knob takes integer range and step")
    return Knob(name=name, key=key, low=low, high=high, scale=scale, step=step,
                min_positive=min_positive, integer=integer)


def _build_search(where: str, data: Any) -> SearchConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    for key in data:
        if key not in _SEARCH_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key{_suggest(str(key), _SEARCH_KEYS)}")
    knobs_raw = data.get("knobs")
    if not isinstance(knobs_raw, dict) or not knobs_raw:
        raise ConfigError(f"{where}.knobs: missing required key (a mapping of knob name -> spec)")
    knobs = tuple(_build_knob(f"{where}.knobs.{name}", str(name), spec)
                  for name, spec in knobs_raw.items())
    seen: dict[str, str] = {}
    for k in knobs:
        if k.key in seen:
            raise ConfigError(f"{where}.knobs.{k.name}.key: {k.key!r} is already set by knob "
                              f"'{seen[k.key]}'")
        seen[k.key] = k.name
    n_iter_block = _check_value(where, "n_iter_block", data.get("n_iter_block", 12), _i(1, 10_000))
    ucb_c = _check_value(where, "ucb_c", data.get("ucb_c", 1.414), _f(0.0, 1e6))
    n_trials = _check_value(where, "n_trials", data.get("n_trials", 12), _i(1, 1_000_000))
    return SearchConfig(knobs=knobs, n_iter_block=n_iter_block, ucb_c=ucb_c, n_trials=n_trials)


def _check_cross(where: str, cfg: Config, *, check_frozen: bool) -> None:
    sim = cfg.simulation
    if sim.log_k_min >= sim.log_k_max:
        raise ConfigError(f"{where}: simulation.log_k_min ({sim.log_k_min}) must be below "
                          f"log_k_max ({sim.log_k_max})")
    if sim.concentration_min >= sim.concentration_max:
        raise ConfigError(f"{where}: simulation.concentration_min must be below concentration_max")
    for key in ("homeostatic_lambda_per_type", "homeostatic_baseline_per_type"):
        if len(getattr(sim, key)) != sim.n_metabolite_types:
            raise ConfigError(f"{where}: simulation.{key} needs {sim.n_metabolite_types} values "
                              f"(one per type), got {len(getattr(sim, key))}")
    if sim.cycle_length > sim.n_metabolites:
        raise ConfigError(f"{where}: simulation.cycle_length ({sim.cycle_length}) exceeds "
                          f"n_metabolites ({sim.n_metabolites})")
    if sim.max_metabolites_per_reaction > sim.n_metabolites:
        raise ConfigError(f"{where}: simulation.max_metabolites_per_reaction exceeds n_metabolites")
    if not sim.use_mass_action:
        raise ConfigError(f"{where}: simulation.use_mass_action: only true (mass action) is "
                          f"implemented")
    if sim.flux_limit:
        raise ConfigError(f"{where}: simulation.flux_limit: only false is implemented")
    if check_frozen:
        for key, frozen in FROZEN_TRAINING_KEYS.items():
            value = getattr(cfg.training, key)
            if value != frozen:
                raise ConfigError(f"{where}: training.{key} is frozen at {frozen!r} (S is given); "
                                  f"got {value!r}")
    for knob in cfg.search.knobs:
        base = cfg.get(knob.key)
        if not knob.contains(base):
            allowed = (list(knob.choices or ()) if knob.scale == "categorical"
                       else f"[{knob.low}, {knob.high}]")
            raise ConfigError(f"{where}: {knob.key} = {base!r} is outside the range of search knob "
                              f"'{knob.name}' {allowed}")


# ---------------------------------------------------------------------------------------------
# Loading


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["training.learning_rate_k=0.01", ...]`` -> ``{"training.learning_rate_k": 0.01}``.

    Values are read as YAML scalars (``true``, ``1e-3``, ``[1, 2]``).
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected section.key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"--set {item}: expected section.key=value "
                              f"(e.g. training.learning_rate_k=0.01)")
        try:
            out[key] = _yaml_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: cannot read the value {text!r}") from None
    return out


def _apply_overrides(where: str, raw: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        if section == "search":
            # The exploration settings can be set; the knobs are a mapping, edited in the file.
            settings = [k for k in _SEARCH_KEYS if k != "knobs"]
            if name not in settings:
                raise ConfigError(f"--set {key}: only {', '.join(settings)} of the search "
                                  f"section can be set{_suggest(name, settings)}")
        elif section not in _SECTION_SPECS:
            raise ConfigError(f"--set {key}: unknown section '{section}'"
                              f"{_suggest(section, (*_SECTION_SPECS, 'search'))}")
        elif name not in _SECTION_SPECS[section]:
            raise ConfigError(f"--set {key}: unknown key{_suggest(name, _SECTION_SPECS[section])}")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{where}: section '{section}' is not a mapping")
        target[name] = value


def config_from_dict(raw: Mapping[str, Any], *, path: str = "<dict>", name: str | None = None,
                     overrides: Mapping[str, Any] | None = None,
                     check_frozen: bool = True) -> Config:
    """Validate a raw mapping (as read from YAML) into a :class:`Config`."""
    where = path
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with sections simulation, graph_model, "
                          f"training, search")
    data = copy.deepcopy(dict(raw))
    known = ("simulation", "graph_model", "training", "search")
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: {key}: unknown section{_suggest(str(key), known)}")
    if overrides:
        _apply_overrides(where, data, overrides)
    sections: dict[str, Any] = {}
    for section in ("simulation", "graph_model", "training"):
        if section not in data:
            raise ConfigError(f"{where}: {section}: missing required section")
        sections[section] = _build_section(f"{where}: {section}", section, data[section])
    if "search" not in data:
        raise ConfigError(f"{where}: search: missing required section")
    search = _build_search(f"{where}: search", data["search"])
    stem = name or Path(path).stem
    cfg = Config(name=stem, path=path, search=search, raw=data, **sections)
    _check_cross(where, cfg, check_frozen=check_frozen)
    return cfg


def load_config(path: str | Path, *, overrides: Mapping[str, Any] | Sequence[str] | None = None,
                check_frozen: bool = True) -> Config:
    """Read and validate a YAML config file.

    ``overrides`` are ``section.key -> value`` pairs (or ``section.key=value`` strings) applied
    before validation. ``check_frozen=False`` skips the frozen-key rule for commands that do not
    train (``simulate``).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file") from None
    try:
        raw = _yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}: unreadable YAML{at}: {problem}") from None
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    return config_from_dict(raw if raw is not None else {}, path=str(p), overrides=overrides,
                            check_frozen=check_frozen)


def apply_params(cfg: Config, params: Mapping[str, Any]) -> Config:
    """A new config with the knobs' values set (``{"lr_k": 0.01}``), validated again."""
    overrides: dict[str, Any] = {}
    for name, value in params.items():
        try:
            knob = cfg.search.knob(name)
        except KeyError:
            raise ConfigError(f"unknown search knob '{name}'"
                              f"{_suggest(name, cfg.search.names)}") from None
        overrides[knob.key] = value
    return config_from_dict(cfg.raw, path=cfg.path, name=cfg.name, overrides=overrides)


def dump_config(cfg: Config, *, header: str = "") -> str:
    """The whole config as YAML that :func:`load_config` reads back to the same config: every
    key of every section (defaults written out), one flow-style line per search knob.
    ``header`` lines are written first, each as a ``#`` comment."""
    body = cfg.to_dict()
    search = body.pop("search")
    knobs = search.pop("knobs", {})
    dump = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    parts = [f"# {line}".rstrip() for line in header.splitlines()]
    parts.append(yaml.dump(body, Dumper=dump, sort_keys=False).rstrip())
    parts.append("search:")
    if search:
        parts.append(yaml.dump(search, Dumper=dump, sort_keys=False, indent=2).rstrip()
                     .replace("\n", "\n  ").join(("  ", "")))
    parts.append("  knobs:")
    width = max((len(str(n)) for n in knobs), default=0) + 1
    for name, spec in knobs.items():
        flow = yaml.dump(spec, Dumper=dump, default_flow_style=True, sort_keys=False,
                         width=10_000).strip()
        parts.append(f"    {f'{name}:':<{width}} {flow}")
    return "\n".join(parts) + "\n"
