"""Where a reaction network comes from; a new source is a module beside these.

* :mod:`.pde_m1` — PDE_M1's generator (the default: ``simulation.network`` absent).
* :mod:`.sbml` — a real model's stoichiometry, from a user's SBML file or a model bundled with
  cobra (``simulation.network: {source: sbml, path: FILE}`` / ``{source: cobra, model: NAME}``).

Every source returns a :class:`Network` (stoichiometry, rate-law powers, seeded rate constants,
metabolite types); the simulator (:mod:`metab_opt.problem.simulation`) knows nothing else of it.
"""

from __future__ import annotations

from metab_opt.config import SimulationConfig
from metab_opt.problem.networks._base import Network

__all__ = ["Network", "build_network"]


def build_network(cfg: SimulationConfig) -> Network:
    """The network of a ``simulation`` section, from the source its ``network`` key names."""
    if cfg.generated:
        from metab_opt.problem.networks import pde_m1

        return pde_m1.build(cfg)
    from metab_opt.problem.networks import sbml  # cobra loads only when a real model is asked

    return sbml.build(cfg)
