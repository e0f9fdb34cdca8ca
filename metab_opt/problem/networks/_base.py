"""The :class:`Network` every source produces and the simulator consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Network"]


@dataclass(frozen=True)
class Network:
    """A reaction network: stoichiometry, substrate powers, rate constants and types.

    PDE_M1's networks have integer coefficients (``S`` int64, as their cached datasets have
    always stored them); a real model's may be fractional (0.5 O2), so ``S`` and
    ``substrate_power`` are float64 there. Every consumer reads them as floats.
    """

    S: np.ndarray  # (n_met, n_reac) signed net stoichiometry (int64 or float64)
    substrate_power: np.ndarray  # (n_met, n_reac) rate-law |s| of substrates, 0 elsewhere
    log_k: np.ndarray  # (n_reac,) float64, log10 of the rate constants
    metabolite_type: np.ndarray  # (n_met,) int
    lambdas: np.ndarray  # (n_types,) homeostatic rates
    baselines: np.ndarray  # (n_types,) homeostatic baselines
    # A real model's identifiers (SBML ids), for reports and pictures; empty for PDE_M1's.
    metabolite_names: tuple[str, ...] = ()
    reaction_names: tuple[str, ...] = ()

    @property
    def n_metabolites(self) -> int:
        return int(self.S.shape[0])

    @property
    def n_reactions(self) -> int:
        return int(self.S.shape[1])

    def reaction_name(self, j: int) -> str:
        """Reaction ``j``'s identifier: its SBML id (``_rev`` for a reverse direction), else
        ``R<j>``."""
        return self.reaction_names[j] if self.reaction_names else f"R{j}"

    def metabolite_name(self, i: int) -> str:
        return self.metabolite_names[i] if self.metabolite_names else f"M{i}"
