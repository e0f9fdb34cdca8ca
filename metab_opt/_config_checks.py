"""The checks a config key goes through: its spec (type, bounds, required), and the one-line
:class:`ConfigError` that names the file, the key and what is allowed.

:mod:`metab_opt.config` declares each key once, as a dataclass field with its spec
(:func:`_key`), and builds the sections with :func:`_check_value`; this module holds the
primitives, so that the config module holds the sections and their cross-checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration problem, described in one line."""



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


def _key(spec: _Spec, default: Any = dataclasses.MISSING) -> Any:
    """A section dataclass's field with its check: the one place a config key is declared.

    The validation table is read off the fields (:func:`_specs_of`), so a key is never declared
    twice. Whether the key is required follows from the default (none: required), whatever the
    spec says.
    """
    return field(default=default, metadata={"spec": spec})


def _specs_of(cls: Any) -> dict[str, _Spec]:
    """A section's validation table, in field order, from its dataclass's :func:`_key` fields."""
    return {f.name: dataclasses.replace(f.metadata["spec"],
                                        required=f.default is dataclasses.MISSING)
            for f in dataclasses.fields(cls)}



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
