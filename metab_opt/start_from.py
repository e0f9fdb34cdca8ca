"""Start a study from another config's settings: ``metab-opt study --start-from OTHER``.

A user who finished one regime moves to the next with the settings that worked there. The
other file's knob values become the tree's root; the regime, the search space, the roles and
the rules stay this config's (docs/regimes.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metab_opt.config import Config, ConfigError, allowed_values, config_from_dict, load_config

__all__ = ["start_from"]

# What the settings of another config were found for: a file that differs here describes
# another model or another family of networks, and its values would not mean the same.
_START_FROM_SAME = ("simulation.n_metabolites", "simulation.n_metabolite_types",
                    "simulation.max_metabolites_per_reaction", "graph_model.hidden_dim_sub",
                    "graph_model.n_layers_sub", "graph_model.hidden_dim_node",
                    "graph_model.n_layers_node", "graph_model.embedding_dim",
                    "graph_model.aggr_type")


def start_from(cfg: Config, path: str | Path) -> Config:
    """``cfg`` with every search knob at its value in the config file ``path``: a study of
    ``cfg``'s regime whose tree starts where another study ended (``metab-opt study
    --start-from``). Named ``<cfg>_from_<file>``, so that its default study is not the one
    from ``cfg``'s own values.

    Refused in one line (ConfigError, naming the file and the key) when the file is not a valid
    config; when its network family or model differs on a key of :data:`_START_FROM_SAME`
    (a real model's network against PDE_M1's: the model's keys only)
    (the rates, the reaction count, the network seed and the integration may differ: that is
    what a regime is); or when one of its knob values is outside ``cfg``'s range for that knob.
    """
    p = Path(path)
    where = f"--start-from {p}"
    other = load_config(p)
    # PDE_M1's family keys say nothing about a real model's network: moving from the generated
    # networks to a real one is what the settings are carried over for; the model must match.
    across = not (cfg.simulation.generated and other.simulation.generated)
    for key in _START_FROM_SAME:
        if across and key.startswith("simulation."):
            continue
        mine, theirs = cfg.get(key), other.get(key)
        if mine != theirs:
            raise ConfigError(f"{where}: {key} is {theirs!r} there but {mine!r} in {cfg.path}: "
                              f"its settings were found for another network family or model; "
                              f"start from a config of this one")
    values: dict[str, Any] = {}
    for knob in cfg.search.knobs:
        value = other.get(knob.key)
        if not knob.contains(value):
            raise ConfigError(f"{where}: {knob.key} = {value!r} is outside the range of search "
                              f"knob '{knob.name}' in {cfg.path} {allowed_values(knob)}; widen "
                              f"that range or start from another file")
        values[knob.key] = value
    return config_from_dict(cfg.raw, path=cfg.path, name=f"{cfg.name}_from_{other.name}",
                            overrides=values)
