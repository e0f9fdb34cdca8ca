"""YAML configuration -> typed, validated objects.

A config file has four sections: ``simulation`` (the data regime, frozen during a study),
``graph_model`` (the GNN's shape and structural options), ``training`` (the hyperparameters a
study searches) and ``search`` (the search space and the exploration settings). ``search.roles``
declares what some knobs mean to the sampler's rules (the training seed, the duration knob, the
initial spread, the degeneracy-break move: ``metab_opt/ucbtree/README.md``); the knobs and their
lattices are :class:`metab_opt.ucbtree.Knob`, re-exported here.

Every problem is raised as :class:`ConfigError` with one line that names the file, the key and
what is allowed, so a command-line tool can print it and exit with code 2.

This module imports neither torch nor optuna at import time: the sampler and the logbook use it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The knob and its lattice live in the generic sampler package (standard library only at
# import); re-exported here, where the config builds them.
from metab_opt._config_checks import (
    ConfigError,
    _b,
    _check_value,
    _f,
    _i,
    _key,
    _s,
    _Spec,
    _specs_of,
    _suggest,
    _type_name,
)
from metab_opt._network_section import (
    BUNDLED_MODELS,
    NETWORK_SOURCES,
    NetworkConfig,
    build_network_section,
)
from metab_opt._yaml import load_yaml
from metab_opt.ucbtree import Knob, KnobSpecError, Roles

__all__ = [
    "BUNDLED_MODELS", "Config", "ConfigError", "FROZEN_TRAINING_KEYS", "GraphModelConfig", "Knob",
    "NETWORK_SOURCES", "NetworkConfig", "PRUNERS", "Roles",
    "SearchConfig", "SimulationConfig", "TrainingConfig", "allowed_values", "apply_params",
    "load_config", "parse_overrides", "simulation_hash",
]


# The procedure recovers k with S given: these training keys must keep these values.
FROZEN_TRAINING_KEYS: dict[str, Any] = {
    "freeze_stoichiometry": True,
    "learning_rate_S_start": 0.0,
    "coeff_S_L1": 0.0,
    "coeff_S_integer": 0.0,
    "coeff_mass_conservation": 0.0,
}


@dataclass(frozen=True)
class SimulationConfig:
    """The PDE_M1 regime: network, kinetics, homeostasis and the two trajectories."""

    n_frames: int = _key(_i(2, 10_000_000))
    delta_t: float = _key(_f(0.0, 100.0, low_open=True))
    seed: int = _key(_i(0, 2**31 - 1))
    concentration_min: float = _key(_f(0.0, 1e6))
    concentration_max: float = _key(_f(0.0, 1e6, low_open=True))
    use_mass_action: bool = _key(_b())
    log_k_min: float = _key(_f(-12.0, 6.0))
    log_k_max: float = _key(_f(-12.0, 6.0))
    flux_limit: bool = _key(_b())
    homeostatic_lambda_per_type: tuple[float, ...] = _key(_Spec("float_list", 0.0, 100.0))
    homeostatic_baseline_per_type: tuple[float, ...] = _key(_Spec("float_list", 0.0, 1e6))
    n_test_frames: int = _key(_i(2, 10_000_000))
    test_seed_offset: int = _key(_i(1, 2**30), 1000)
    noise_level: float = _key(_f(0.0, 10.0), 0.0)
    # Euler steps per frame, each delta_t / substeps (docs/regimes.md: why 512 reactions need 2)
    substeps: int = _key(_i(1, 1000), 1)
    # Many short trajectories from independent random starts instead of one long one (a real
    # network settles onto its steady state within a few hundred frames): n_frames split evenly.
    n_trajectories: int = _key(_i(1, 1_000_000), 1)
    # Where the network comes from (absent: PDE_M1's generator; see _network_section.py).
    network: NetworkConfig | None = _key(_Spec("network"), None)
    # PDE_M1's generator (network absent or source pde_m1): required there, refused elsewhere.
    n_metabolites: int | None = _key(_i(2, 100_000), None)
    n_metabolite_types: int | None = _key(_i(1, 100), None)
    n_reactions: int | None = _key(_i(1, 1_000_000), None)
    max_metabolites_per_reaction: int | None = _key(_i(1, 16), None)
    cycle_fraction: float | None = _key(_f(0.0, 1.0), None)
    cycle_length: int | None = _key(_i(2, 100), None)

    @property
    def log_k_center(self) -> float:
        return 0.5 * (self.log_k_min + self.log_k_max)

    @property
    def generated(self) -> bool:
        """Whether PDE_M1's generator makes the network (not a real model's file)."""
        return self.network is None or self.network.source == "pde_m1"


_SIMULATION_SPECS: dict[str, _Spec] = _specs_of(SimulationConfig)


@dataclass(frozen=True)
class GraphModelConfig:
    """The GNN's shape and its structural options (defaults keep the seed's model)."""

    hidden_dim_sub: int = _key(_i(1, 4096))
    n_layers_sub: int = _key(_i(1, 16))
    hidden_dim_node: int = _key(_i(1, 4096))
    n_layers_node: int = _key(_i(1, 16))
    embedding_dim: int = _key(_i(0, 64))
    aggr_type: str = _key(_s(["mul", "add"]))
    c_scale: float = _key(_f(0.0, 1e6, low_open=True), 1.0)
    sub_through_origin: bool = _key(_b(), False)
    # coeff_MLP_sub_norm's anchor: f(1, 1) = 1 only (one), or f(1, s) = 1 for every |s| of the
    # network (every): c^s is 1 at c = 1 for every s. A power that one reaction alone has (a real
    # model's adp² in ADK1_rev) otherwise leaves f(., s) free to trade its scale with that k.
    sub_norm_powers: str = _key(_s(["one", "every"]), "one")
    # The substrate function's form: mlp, f(c, s) = MLP_sub(c, s), one learned curve per power;
    # power, f(c, s) = |g(c)|^s with g = MLP_sub(c, 1), the truth's own structure (c^s): every
    # power shares one curve, so a power that one reaction alone has borrows the others' data.
    sub_form: str = _key(_s(["mlp", "power"]), "mlp")
    # MLP_node sees c / node_c_scale: the data's c reach ~100, where tanh units fed the raw c
    # saturate and the homeostatic line cannot form (docs/joint.md); 1.0 is the seed's raw input
    node_c_scale: float = _key(_f(0.0, 1e6, low_open=True), 1.0)
    log_k_init_noise: float = _key(_f(0.0, 10.0), 0.01)


_GRAPH_MODEL_SPECS: dict[str, _Spec] = _specs_of(GraphModelConfig)


@dataclass(frozen=True)
class TrainingConfig:
    """Training hyperparameters; a study searches these (and some graph_model options).

    A loss term's weight (``coeff_*``) is declared here and named by its term in
    ``metab_opt.problem.losses.LOSS_TERMS``.
    """

    n_epochs: int = _key(_i(1, 1000))
    batch_size: int = _key(_i(1, 100_000))
    seed: int = _key(_i(0, 2**31 - 1))
    data_augmentation_loop: int = _key(_i(1, 1_000_000))
    learning_rate_start: float = _key(_f(0.0, 10.0))
    learning_rate_k: float = _key(_f(0.0, 10.0))
    learning_rate_node: float = _key(_f(0.0, 10.0))
    learning_rate_sub: float = _key(_f(0.0, 10.0))
    coeff_k_center: float = _key(_f(0.0, 1e6))
    coeff_MLP_sub_diff: float = _key(_f(0.0, 1e6))
    coeff_MLP_node_L1: float = _key(_f(0.0, 1e6))
    coeff_k_floor: float = _key(_f(0.0, 1e6), 0.0)
    k_floor_threshold: float = _key(_f(-12.0, 6.0), -2.0)
    coeff_MLP_sub_norm: float = _key(_f(0.0, 1e6), 0.0)
    freeze_stoichiometry: bool = _key(_b(), True)
    learning_rate_S_start: float = _key(_f(0.0, 10.0), 0.0)
    coeff_S_L1: float = _key(_f(0.0, 1e6), 0.0)
    coeff_S_integer: float = _key(_f(0.0, 1e6), 0.0)
    coeff_mass_conservation: float = _key(_f(0.0, 1e6), 0.0)
    report_every: int = _key(_i(0, 10_000_000), 0)  # 0: 20 reports per run
    sub_diff_grid_points: int = _key(_i(2, 10_000), 64)
    # The embeddings' own rate (MLP_node's and theirs are one group at 0, the default)
    learning_rate_embedding: float = _key(_f(0.0, 10.0), 0.0)
    # Euler steps per sample: at 1 the loss is on dc/dt; above, on the rolled-out c (issue 17)
    time_step: int = _key(_i(1, 1000), 1)
    # The run's last fraction: MLP_node's L1 off, a fresh Adam, lr_k and lr_sub times the factor
    homeostasis_phase: float = _key(_f(0.0, 1.0), 0.0)
    homeostasis_lr_factor: float = _key(_f(0.0, 1e6, low_open=True), 1.0)

    def n_steps(self, n_frames: int) -> int:
        """Gradient steps of one training run, as the original procedure counts them."""
        per_epoch = int(n_frames * self.data_augmentation_loop // self.batch_size * 0.2)
        return max(1, per_epoch * self.n_epochs)


_TRAINING_SPECS: dict[str, _Spec] = _specs_of(TrainingConfig)

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


@dataclass(frozen=True)
class SearchConfig:
    """The search space (knobs in exploration order), the knobs' roles and the UCB exploration
    settings. ``roles`` is None when the file declares none (``search.roles``)."""

    knobs: tuple[Knob, ...]
    n_iter_block: int = 12
    ucb_c: float = 1.414
    n_trials: int = 12
    roles: Roles | None = None
    survey: int = 0  # space-filling trials after the root of block 1 (0: none)
    model: bool = False  # rank moves by a model of all trials; duration may also shorten
    pruner: str = "none"  # one of PRUNERS: what stops a trial early (metab_opt.pruning)
    # One of CONSTRAINTS: "joint" makes the homeostasis conditions Optuna constraints, so that
    # no run that misses them counts as converged (metab_opt.problem.joint, docs/joint.md)
    constraints: str = "none"
    # Earlier studies the sampler learns from (metab_opt.prior: a study name, NAME@URL, a prior
    # file or a bundled prior's name); empty: none. `study --prior` adds to these.
    prior: tuple[str, ...] = ()

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
        return simulation_hash(self.simulation)

    def search_space_hash(self) -> str:
        space: list[Any] = [dataclasses.asdict(k) for k in self.search.knobs]
        if self.search.constraints != "none":  # absent before constraints existed
            space.append({"constraints": self.search.constraints})
        return _hash(space)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section in ("simulation", "graph_model", "training"):
            out[section] = _plain(dataclasses.asdict(getattr(self, section)))
        out["search"] = copy.deepcopy(dict(self.raw.get("search", {})))
        return out


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """A section as YAML writes it: lists for tuples, an absent optional key (None) left out."""
    return {k: _plain(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
            for k, v in values.items() if v is not None}


def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Simulation keys added after datasets were cached, left out of the hash at these values: older
# configs keep their dataset folders and resume their studies.
_HASH_OMIT_AT: dict[str, Any] = {"substeps": 1, "n_trajectories": 1, "network": None}


def simulation_hash(sim: SimulationConfig) -> str:
    """A ``simulation`` section's hash: the dataset cache key, the fingerprint's data part.

    A user's SBML file enters by its content, not its name: an edited file is another dataset.
    """
    data = {k: v for k, v in dataclasses.asdict(sim).items()
            if not (k in _HASH_OMIT_AT and v == _HASH_OMIT_AT[k])}
    if sim.network is not None and sim.network.source == "sbml" and sim.network.path:
        try:
            data["network_file_sha256"] = hashlib.sha256(
                Path(sim.network.path).read_bytes()).hexdigest()
        except OSError:
            raise ConfigError(f"simulation.network.path: {sim.network.path}: cannot read the "
                              f"file") from None
    return _hash(data)


# ---------------------------------------------------------------------------------------------
# Validation


def _build_section(where: str, section: str, data: Any) -> Any:
    specs = _SECTION_SPECS[section]
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_type_name(data)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in specs:
            raise ConfigError(f"{where}.{key}: unknown key{_suggest(str(key), specs)}")
        values[key] = build_network_section(f"{where}.{key}", value) \
            if specs[key].kind == "network" else _check_value(where, key, value, specs[key])
    for key, spec in specs.items():
        if spec.required and key not in values:
            raise ConfigError(f"{where}.{key}: missing required key")
    return _SECTION_TYPES[section](**values)


_SEARCH_KEYS = ("knobs", "n_iter_block", "ucb_c", "n_trials", "roles", "survey", "model", "pruner",
                "constraints", "prior")
CONSTRAINTS = ("none", "joint")
# search.pruner (and `study --pruner`): none, Optuna's median pruner, metab_opt.pruning's safe one.
PRUNERS = ("none", "median", "safe")


def _build_knob(where: str, name: str, data: Any) -> Knob:
    try:  # the spec's shape and lattice: the knob's own rules
        knob = Knob.from_mapping(name, data)
    except KnobSpecError as exc:
        raise ConfigError(f"{where}{'' if exc.field is None else '.' + exc.field}: "
                          f"{exc.reason}") from None
    key = data.get("key")  # what the key names: this config's rules
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
    return knob


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
    # Block 1 runs the root first; the survey fills at most the rest of it. Absent: no survey.
    survey = _check_value(where, "survey", data.get("survey", 0), _i(0, 10_000))
    if survey > n_iter_block - 1:
        raise ConfigError(f"{where}.survey: {survey} is outside the allowed range "
                          f"[0, {n_iter_block - 1}] (block 1 holds the root, then the survey: "
                          f"at most n_iter_block - 1)")
    # Absent: the rules' fixed knob orders, as before the model existed.
    model = _check_value(where, "model", data.get("model", False), _b())
    # Absent: no pruning, as before the key existed (the shipped rank50 configs say safe).
    pruner = _check_value(where, "pruner", data.get("pruner", "none"), _s(PRUNERS))
    constraints = _check_value(where, "constraints", data.get("constraints", "none"),
                               _s(CONSTRAINTS))
    prior = data.get("prior", [])
    prior = [prior] if isinstance(prior, str) else prior
    if not isinstance(prior, list) or not all(isinstance(p, str) and p.strip() for p in prior):
        raise ConfigError(f"{where}.prior: expected a prior (a study name, NAME@URL, a prior "
                          f"file or a bundled prior's name) or a list of them, got {prior!r}")
    roles = None
    if "roles" in data:
        # The rules that step a declared knob (replicate, initial-spread, duration,
        # degeneracy-break) learn its name here, so a knob renamed in the file without its role
        # is an error, not a rule that silently stops.
        try:
            roles = Roles.from_mapping(data["roles"], [k.name for k in knobs])
        except ValueError as exc:
            raise ConfigError(f"{where}.{exc}") from None
    return SearchConfig(knobs=knobs, n_iter_block=n_iter_block, ucb_c=ucb_c, n_trials=n_trials,
                        roles=roles, survey=survey, model=model, pruner=pruner,
                        constraints=constraints, prior=tuple(p.strip() for p in prior))


# PDE_M1's generator's own keys: required with it, meaningless with a real model's network.
_GENERATOR_KEYS = ("n_metabolites", "n_metabolite_types", "n_reactions",
                   "max_metabolites_per_reaction", "cycle_fraction", "cycle_length")


def _check_generated(where: str, sim: SimulationConfig) -> None:
    missing = [k for k in _GENERATOR_KEYS if getattr(sim, k) is None]
    if missing:
        raise ConfigError(f"{where}: simulation.{missing[0]}: missing required key (PDE_M1's "
                          f"generator needs it)")
    assert sim.n_metabolites is not None and sim.cycle_length is not None
    for key in ("homeostatic_lambda_per_type", "homeostatic_baseline_per_type"):
        if len(getattr(sim, key)) != sim.n_metabolite_types:
            raise ConfigError(f"{where}: simulation.{key} needs {sim.n_metabolite_types} values "
                              f"(one per type), got {len(getattr(sim, key))}")
    if sim.cycle_length > sim.n_metabolites:
        raise ConfigError(f"{where}: simulation.cycle_length ({sim.cycle_length}) exceeds "
                          f"n_metabolites ({sim.n_metabolites})")
    if (sim.max_metabolites_per_reaction or 0) > sim.n_metabolites:
        raise ConfigError(f"{where}: simulation.max_metabolites_per_reaction exceeds n_metabolites")


def _check_cross(where: str, cfg: Config, *, check_frozen: bool) -> None:
    sim = cfg.simulation
    if sim.log_k_min >= sim.log_k_max:
        raise ConfigError(f"{where}: simulation.log_k_min ({sim.log_k_min}) must be below "
                          f"log_k_max ({sim.log_k_max})")
    if sim.concentration_min >= sim.concentration_max:
        raise ConfigError(f"{where}: simulation.concentration_min must be below concentration_max")
    if sim.n_frames % sim.n_trajectories:
        raise ConfigError(f"{where}: simulation.n_frames ({sim.n_frames}) must split evenly into "
                          f"n_trajectories ({sim.n_trajectories})")
    if sim.n_frames // sim.n_trajectories < 2:
        raise ConfigError(f"{where}: simulation.n_trajectories ({sim.n_trajectories}) leaves fewer "
                          f"than 2 frames per trajectory; lower it or raise n_frames")
    if sim.generated:
        _check_generated(where, sim)
    else:
        given = [k for k in _GENERATOR_KEYS if getattr(sim, k) is not None]
        if given:
            source = sim.network.source if sim.network else ""
            raise ConfigError(f"{where}: simulation.{given[0]}: set by the network "
                              f"(simulation.network.source {source}); remove it")
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
            raise ConfigError(f"{where}: {knob.key} = {base!r} is outside the range of search knob "
                              f"'{knob.name}' {allowed_values(knob)}")


def allowed_values(knob: Knob) -> str:
    """What a knob accepts, for an error line: ``[0.0001, 0.01]`` or ``[False, True]``."""
    return str(list(knob.choices or ())) if knob.scale == "categorical" else \
        f"[{knob.low}, {knob.high}]"


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
            out[key] = load_yaml(text) if text.strip() else None
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
        raw = load_yaml(text)
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
