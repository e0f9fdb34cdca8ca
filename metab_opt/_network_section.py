"""The ``simulation.network`` section: where the reaction network comes from.

Absent (or ``source: pde_m1``): PDE_M1's generator, from the ``simulation`` keys as always.
``{source: sbml, path: FILE}`` reads a user's SBML model; ``{source: cobra, model: NAME}`` one
of the models cobra ships (``textbook`` is e_coli_core). The other keys say how a COBRA model's
reactions become mass-action kinetics; :mod:`metab_opt.problem.networks.sbml` documents each
choice and its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metab_opt._config_checks import (
    ConfigError,
    _check_value,
    _i,
    _key,
    _s,
    _Spec,
    _specs_of,
    _suggest,
    _type_name,
)

__all__ = ["BUNDLED_MODELS", "NETWORK_SOURCES", "NetworkConfig", "build_network_section"]

NETWORK_SOURCES = ("pde_m1", "sbml", "cobra")
# The SBML models cobra ships in its package data (no download): e_coli_core, iJO1366, LT2.
BUNDLED_MODELS = ("textbook", "iJO1366", "salmonella")


@dataclass(frozen=True)
class NetworkConfig:
    """Where the network comes from and how a real model's reactions become kinetics."""

    source: str = _key(_s(NETWORK_SOURCES))
    path: str | None = _key(_Spec("str"), None)  # source sbml: the file (.xml or .xml.gz)
    model: str | None = _key(_s(BUNDLED_MODELS), None)  # source cobra
    boundary: str = _key(_s(("drop", "keep")), "drop")
    biomass: str = _key(_s(("drop", "keep")), "drop")
    maintenance: str = _key(_s(("keep", "drop")), "keep")
    reversible: str = _key(_s(("split", "forward")), "split")
    rate_law_exclude: tuple[str, ...] = _key(_Spec("str_list"), ("h2o", "h"))
    drop_reactions: tuple[str, ...] = _key(_Spec("str_list"), ())  # ids left out by hand
    metabolite_types: str = _key(_s(("compartment", "one")), "compartment")
    max_substrates: int = _key(_i(1, 16), 6)

    @property
    def is_generated(self) -> bool:
        return self.source == "pde_m1"


_NETWORK_SPECS = _specs_of(NetworkConfig)


def build_network_section(where: str, data: Any) -> NetworkConfig | None:
    """Validate a ``simulation.network`` mapping (one line naming the key when it is wrong).

    ``{source: pde_m1}`` is the section left out (None): the same regime, the same dataset.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping (e.g. {{source: cobra, model: textbook}}),"
                          f" got {_type_name(data)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _NETWORK_SPECS:
            raise ConfigError(f"{where}.{key}: unknown key{_suggest(str(key), _NETWORK_SPECS)}")
        spec = _NETWORK_SPECS[key]
        if spec.kind == "str_list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of ids, got {value!r}")
            values[key] = tuple(value)
        else:
            values[key] = _check_value(where, key, value, spec)
    if "source" not in values:
        raise ConfigError(f"{where}.source: missing required key (one of "
                          f"{', '.join(NETWORK_SOURCES)})")
    cfg = NetworkConfig(**values)
    if cfg.source == "sbml":
        if not cfg.path:
            raise ConfigError(f"{where}.path: missing (source sbml reads an SBML file)")
        if not Path(cfg.path).is_file():
            raise ConfigError(f"{where}.path: {cfg.path}: no such file")
    elif cfg.path is not None:
        raise ConfigError(f"{where}.path: only for source sbml (source is {cfg.source})")
    if cfg.source == "cobra" and not cfg.model:
        raise ConfigError(f"{where}.model: missing (source cobra loads one of "
                          f"{', '.join(BUNDLED_MODELS)})")
    if cfg.source != "cobra" and cfg.model is not None:
        raise ConfigError(f"{where}.model: only for source cobra (source is {cfg.source})")
    if cfg.source == "pde_m1":
        defaults = NetworkConfig(source="pde_m1")
        other = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) !=
                 getattr(defaults, f.name)]
        if other:
            raise ConfigError(f"{where}.{other[0]}: only for a real model (source sbml or "
                              f"cobra); PDE_M1 generates its own network")
        return None
    return cfg
