"""metab_opt: find the training settings with which a GNN recovers metabolic rate constants.

The package root imports nothing heavy: ``metab_opt.sampler`` and ``metab_opt.logbook`` run
without torch; ``metab_opt.model`` and ``metab_opt.training`` need it.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
