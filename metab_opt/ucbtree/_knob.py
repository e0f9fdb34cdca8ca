"""Knobs (one searched parameter and its mutation lattice) and the roles a problem gives them.

This module imports the standard library only, and Optuna lazily inside the two functions that
convert to and from Optuna distributions: a configuration loader validates knobs without paying
for Optuna's import (a third of a second on every command-line start).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DOWN", "UP", "Knob", "KnobSpecError", "Roles"]

UP = 1
DOWN = -1

_MAX_SIDE = 1000  # grid values on each side of the anchor, at most
# A knob made from an Optuna distribution divides its range into about this many steps.
DEFAULT_STEPS = 10
SCALES = ("log", "linear", "int", "categorical")
# The keys of a knob's declaration (Knob.from_mapping), as in a configuration file.
SPEC_KEYS = ("key", "range", "scale", "step", "choices", "min_positive", "integer")


def _sig(value: float, digits: int = 6) -> float:
    """Round to significant digits, so grid values print cleanly (6.25e-04, not 6.2500001e-04)."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.{digits}g}")


class KnobSpecError(ValueError):
    """A knob declaration's problem: ``field`` (None: the whole knob) and ``reason``."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason if field is None else f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Knob:
    """One searchable parameter and its mutation lattice.

    ``key`` says where the value goes in the caller's configuration (metab_opt: the
    section-qualified config key, ``training.learning_rate_k``); the sampler never reads it.
    ``scale`` is ``log`` (multiplicative ``step``), ``linear`` (additive ``step``), ``int``
    (additive integer ``step``) or ``categorical`` (``choices``). A ``log`` knob whose range
    starts at 0 also allows 0 ("off"), below ``min_positive``. ``integer`` rounds a ``log``
    knob's values.

    The mutation lattice (:meth:`grid`) is anchored at the base value, so the starting point is
    always on it, and it contains both ends of the range.
    """

    # The fields, their order and their names are part of a contract: a configuration's
    # search-space fingerprint hashes ``dataclasses.asdict`` of its knobs, and positional
    # construction (name, key, low, high, scale, step) is in use.
    name: str
    key: str = ""
    low: float | None = None
    high: float | None = None
    scale: str = "log"
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    min_positive: float | None = None
    integer: bool = False

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
            # A huge lattice (a seed: 0 .. 2^31 - 1 by 1) is cut to a window around the anchor;
            # both range ends stay on it.
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

    @classmethod
    def from_mapping(cls, name: str, data: Any) -> Knob:
        """A knob from its declaration, as a configuration file writes it: ``{key: ..., range:
        [low, high], scale: log, step: 2.0}`` (keys: ``SPEC_KEYS``; ``scale`` defaults to log,
        ``key`` to the name). Raises :class:`KnobSpecError` naming the field at fault."""
        if not isinstance(data, Mapping):
            raise KnobSpecError(None, "expected a mapping with key, range, scale, step")
        for field in data:
            if field not in SPEC_KEYS:
                raise KnobSpecError(str(field), f"unknown key{_suggest(str(field), SPEC_KEYS)}")
        key = data.get("key", name)
        key = key if isinstance(key, str) else name  # the caller checks what ``key`` names
        scale = data.get("scale", "log")
        if scale not in SCALES:
            raise KnobSpecError("scale", f"expected one of {', '.join(SCALES)}, got {scale!r}")
        if scale == "categorical":
            choices = data.get("choices")
            if not isinstance(choices, list) or len(choices) < 2:
                raise KnobSpecError("choices", "a categorical knob needs a list of 2+ choices")
            return cls(name=name, key=key, scale=scale, choices=tuple(choices))
        rng = data.get("range")
        if (not isinstance(rng, list) or len(rng) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)):
            raise KnobSpecError("range", f"expected [low, high], got {rng!r}")
        low, high = float(rng[0]), float(rng[1])
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise KnobSpecError("range", f"expected low < high, got {rng!r}")
        step = data.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            raise KnobSpecError("step", f"expected a number, got {step!r}")
        step = float(step)
        integer = data.get("integer", False)
        if not isinstance(integer, bool):
            raise KnobSpecError("integer", f"expected true or false, got {integer!r}")
        min_positive = data.get("min_positive")
        if scale == "log":
            if step <= 1.0:
                raise KnobSpecError("step", f"a log knob's step is a factor > 1, got {step!r}")
            if low < 0:
                raise KnobSpecError("range", f"a log knob's range starts at 0 or above, "
                                             f"got {rng!r}")
            if low == 0:
                if (isinstance(min_positive, bool) or not isinstance(min_positive, (int, float))
                        or not 0 < min_positive < high):
                    raise KnobSpecError("min_positive", f"a log knob whose range starts at 0 "
                                        f"needs 0 < min_positive < {high}, got {min_positive!r}")
                min_positive = float(min_positive)
        else:
            if step <= 0:
                raise KnobSpecError("step", f"expected a positive step, got {step!r}")
            if min_positive is not None:
                raise KnobSpecError("min_positive", "only a log knob takes min_positive")
            if scale == "int" and not (low.is_integer() and high.is_integer()
                                       and step.is_integer()):
                raise KnobSpecError(None, "an int knob takes integer range and step")
        return cls(name=name, key=key, low=low, high=high, scale=scale, step=step,
                   min_positive=min_positive, integer=integer)

    @classmethod
    def from_distribution(cls, name: str, distribution: Any, *,
                          steps: int = DEFAULT_STEPS) -> Knob:
        """The knob of a plain Optuna distribution; its range in about ``steps`` lattice steps.

        * log float: ``log`` scale, factor ``(high / low) ** (1 / steps)``;
        * float: ``linear``, step ``(high - low) / steps``; with Optuna's ``step`` q, the
          smallest multiple of q near that (so every lattice value is a multiple of q from low);
        * int: ``int``, the multiple of the distribution's step near ``(high - low) / steps``;
        * log int: ``log`` scale with ``integer``, factor ``(high / low) ** (1 / steps)``;
        * categorical: ``categorical``, the choices in their declared order;
        * a single-valued distribution: ``categorical`` with that one value (never mutated).
        """
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
        if isinstance(distribution, CategoricalDistribution):
            return cls(name=name, key=name, scale="categorical",
                       choices=tuple(distribution.choices))
        if not isinstance(distribution, (FloatDistribution, IntDistribution)):
            raise ValueError(f"{name}: unsupported distribution {distribution!r}")
        low, high = distribution.low, distribution.high
        if low == high:
            return cls(name=name, key=name, scale="categorical", choices=(low,))
        is_int = isinstance(distribution, IntDistribution)
        if distribution.log:
            factor = (high / low) ** (1.0 / steps)
            return cls(name=name, key=name, low=float(low), high=float(high), scale="log",
                       step=factor, integer=is_int)
        q = distribution.step
        if q is None:
            return cls(name=name, key=name, low=float(low), high=float(high), scale="linear",
                       step=(high - low) / steps)
        multiple = max(1, round((high - low) / q / steps))
        if is_int:
            return cls(name=name, key=name, low=float(low), high=float(high), scale="int",
                       step=float(q * multiple))
        return cls(name=name, key=name, low=float(low), high=float(high), scale="linear",
                   step=q * multiple)


def default_value(distribution: Any) -> Any:
    """The root value of a plain Optuna distribution: the middle of its range (geometric for a
    log scale, on the step lattice for a stepped one), a categorical's first choice."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0]
    low, high = distribution.low, distribution.high
    if distribution.log:
        middle = math.sqrt(low * high)
        if isinstance(distribution, IntDistribution):
            return min(high, max(low, int(round(middle))))
        return min(high, max(low, middle))
    q = distribution.step
    if q is None:
        return (low + high) / 2
    n = int(round((high - low) / q))
    value = low + q * (n // 2)
    return int(value) if isinstance(distribution, IntDistribution) else float(value)


# ---------------------------------------------------------------------------------------------
# Roles

_ROLE_KEYS = ("seed", "duration", "spread", "degeneracy", "survey_fixed")
_DIRECTIONS = {"up": UP, "down": DOWN}


def _suggest(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


@dataclass(frozen=True)
class Roles:
    """What some knobs mean to the rules; every role is optional (unset: its rule is off).

    ``seed``: the replicate knob (a training seed). Only the ``replicate`` rule changes it, and
    trials that differ only in it form one replicate group. ``duration``: the knob the
    ``duration`` rule raises one step when the parent's learning curve was still improving.
    ``spread``: the knobs the ``initial-spread`` steps once each from a block's root, in this
    order. ``degeneracy``: the one multi-knob move of the ``degeneracy-break`` rule, as
    ``(knob, UP or DOWN)`` pairs in order. ``survey_fixed``: knobs the ``survey`` leaves at the
    root's value besides the seed and duration knobs (which it never draws): knobs that make a
    trial longer or dearer, so that the survey compares its draws at the root's cost.
    """

    seed: str | None = None
    duration: str | None = None
    spread: tuple[str, ...] = ()
    degeneracy: tuple[tuple[str, int], ...] = ()
    survey_fixed: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Any, names: Sequence[str]) -> Roles:
        """Roles from their declaration, e.g. ``{"seed": "seed", "duration": "epochs",
        "spread": ["lr", "wd"], "degeneracy": {"lr": "up", "wd": "down"}, "survey_fixed":
        ["batch"]}`` (None: none).

        Problems raise ValueError with one line that starts with the key (``roles.spread[1]:
        ...``) and suggests a knob for a misspelt name.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"roles: expected a mapping of role -> knob(s) "
                             f"({', '.join(_ROLE_KEYS)}), got {type(data).__name__}")
        for key in data:
            if key not in _ROLE_KEYS:
                raise ValueError(f"roles.{key}: unknown role{_suggest(str(key), _ROLE_KEYS)} "
                                 f"(roles: {', '.join(_ROLE_KEYS)})")

        def one(role: str) -> str | None:
            value = data.get(role)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"roles.{role}: expected one knob name, got {value!r}")
            return value

        def names_of(role: str) -> tuple[str, ...]:
            value = data.get(role)
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise ValueError(f"roles.{role}: expected a list of knob names, got {value!r}")
            return tuple(value)

        spread = names_of("spread")
        survey_fixed = names_of("survey_fixed")
        moves = data.get("degeneracy")
        if moves is None:
            moves = {}
        if not isinstance(moves, Mapping):
            raise ValueError(f"roles.degeneracy: expected a mapping knob -> up or down, "
                             f"got {moves!r}")
        degeneracy = []
        for name, way in moves.items():
            if not isinstance(way, str) or way not in _DIRECTIONS:
                raise ValueError(f"roles.degeneracy.{name}: expected up or down, got {way!r}")
            degeneracy.append((str(name), _DIRECTIONS[way]))
        roles = cls(seed=one("seed"), duration=one("duration"), spread=spread,
                    degeneracy=tuple(degeneracy), survey_fixed=survey_fixed)
        roles.check(names)
        return roles

    def check(self, names: Sequence[str]) -> None:
        """Raise ValueError unless every role names a knob of ``names`` and the seed knob has
        no other role (the rules never step it)."""

        def known(where: str, name: Any) -> None:
            if not isinstance(name, str) or name not in names:
                raise ValueError(f"{where}: {name!r} is not a knob{_suggest(str(name), names)}")
            if name == self.seed and not where.startswith("roles.seed"):
                raise ValueError(f"{where}: {name!r} is the seed knob, which only the replicate "
                                 f"rule changes")

        if self.seed is not None:
            known("roles.seed", self.seed)
        if self.duration is not None:
            known("roles.duration", self.duration)
        for i, name in enumerate(self.spread):
            known(f"roles.spread[{i}]", name)
        if len(set(self.spread)) != len(self.spread):
            raise ValueError(f"roles.spread: each knob once, got {list(self.spread)}")
        for i, name in enumerate(self.survey_fixed):
            known(f"roles.survey_fixed[{i}]", name)
        if len(set(self.survey_fixed)) != len(self.survey_fixed):
            raise ValueError(f"roles.survey_fixed: each knob once, got {list(self.survey_fixed)}")
        for name, way in self.degeneracy:
            known(f"roles.degeneracy.{name}", name)
            if way not in (UP, DOWN):
                raise ValueError(f"roles.degeneracy.{name}: expected UP (1) or DOWN (-1), "
                                 f"got {way!r}")

    def to_dict(self) -> dict[str, Any]:
        """The declaration :meth:`from_mapping` reads back (unset roles left out)."""
        out: dict[str, Any] = {}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.duration is not None:
            out["duration"] = self.duration
        if self.spread:
            out["spread"] = list(self.spread)
        if self.degeneracy:
            out["degeneracy"] = {n: "up" if w == UP else "down" for n, w in self.degeneracy}
        if self.survey_fixed:
            out["survey_fixed"] = list(self.survey_fixed)
        return out
