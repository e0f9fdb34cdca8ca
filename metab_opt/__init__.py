"""metab_opt: find the training settings with which a GNN recovers metabolic rate constants.

The package root imports nothing heavy: ``metab_opt.sampler`` and ``metab_opt.logbook`` run
without torch; ``metab_opt.problem.model`` and ``metab_opt.problem.training`` need it.
``UCBMutationSampler`` is loaded from :mod:`metab_opt.sampler` on first use, so
``import metab_opt`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metab_opt.sampler import UCBMutationSampler

__version__ = "0.1.0"

__all__ = ["UCBMutationSampler", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "UCBMutationSampler":
        from metab_opt.sampler import UCBMutationSampler

        return UCBMutationSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
