"""The UCBSampler constructor's checks of its arguments: one-line ValueErrors that name the
argument, and the prior fitted once on the knobs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from ._knob import Knob, Roles, default_value
from ._prior import FittedPrior, PriorSource

__all__ = ["check_base_params", "check_knobs", "check_lattices", "check_search_space",
           "fit_prior", "knob_default", "number"]


def number(name: str, value: Any, *, minimum: float | None = None) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or (minimum is not None and value < minimum)):
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return float(value)


def check_search_space(space: Any) -> dict[str, BaseDistribution]:
    if (not isinstance(space, Mapping) or not space
            or not all(isinstance(d, BaseDistribution) for d in space.values())):
        raise ValueError(f"search_space: expected a non-empty mapping name -> Optuna "
                         f"distribution, got {space!r}")
    return {str(n): d for n, d in space.items()}


def check_knobs(knobs: Any) -> tuple[Knob, ...]:
    if (isinstance(knobs, (str, bytes, Mapping)) or not isinstance(knobs, Sequence)
            or not knobs or not all(isinstance(k, Knob) for k in knobs)):
        raise ValueError(f"knobs: expected a non-empty sequence of Knob (or Optuna "
                         f"distributions as search_space), got {knobs!r}")
    names = [k.name for k in knobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"knobs: each knob name once, got {', '.join(dupes)} more than once")
    return tuple(knobs)


def knob_default(knob: Knob) -> Any:
    return default_value(knob.distribution())


def check_base_params(base_params: Any, knobs: Sequence[Knob]) -> dict[str, Any]:
    if not isinstance(base_params, Mapping):
        raise ValueError(f"base_params: expected a mapping knob name -> value, "
                         f"got {base_params!r}")
    names = [k.name for k in knobs]
    missing = [n for n in names if n not in base_params]
    unknown = sorted(str(n) for n in base_params if n not in names)
    if missing:
        raise ValueError(f"base_params: missing a value for {', '.join(missing)} "
                         f"(one per knob: {', '.join(names)})")
    if unknown:
        raise ValueError(f"base_params: {', '.join(unknown)} is not a knob "
                         f"(allowed: {', '.join(names)})")
    for k in knobs:
        value = base_params[k.name]
        if not k.contains(value):
            allowed = (list(k.choices or ()) if k.scale == "categorical"
                       else f"[{k.low}, {k.high}]")
            raise ValueError(f"base_params: {k.name} = {value!r} is outside the knob's range "
                             f"{allowed}")
    return {k.name: base_params[k.name] for k in knobs}


def fit_prior(prior: Any, knobs: Sequence[Knob], base: Mapping[str, Any], roles: Roles,
               seed: int) -> FittedPrior | None:
    if prior is None or (isinstance(prior, Sequence) and len(prior) == 0):
        return None
    if (isinstance(prior, (str, bytes)) or not isinstance(prior, Sequence)
            or not all(isinstance(p, PriorSource) for p in prior)):
        raise ValueError(f"prior: expected None or a sequence of PriorSource, got {prior!r}")
    # The prior never moves the seed or the knobs that set a trial's cost.
    exclude = [n for n in (roles.seed, roles.duration, *roles.survey_fixed) if n is not None]
    return FittedPrior.fit(prior, knobs, base, exclude=exclude, seed=seed)


def check_lattices(knobs: Sequence[Knob], base: Mapping[str, Any],
                    space: Mapping[str, BaseDistribution]) -> None:
    """Every lattice value of a knob made from a stepped distribution lies on the step: a
    lattice rounds to 6 significant digits, which a fine step over a wide range defeats."""
    for knob in knobs:
        dist = space[knob.name]
        if not isinstance(dist, (FloatDistribution, IntDistribution)) or dist.step is None:
            continue
        if knob.scale == "categorical":
            continue
        low, q = float(dist.low), float(dist.step)
        for value in knob.grid(base[knob.name]):
            k = (value - low) / q
            if abs(k - round(k)) > 1e-8:
                raise ValueError(f"search_space: {knob.name}: lattice value {value!r} is not "
                                 f"{low} plus a multiple of the step {q}; give base_params on "
                                 f"the step, or knobs with a coarser lattice")
