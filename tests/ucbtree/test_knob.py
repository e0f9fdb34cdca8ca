"""Knobs made from plain Optuna distributions, their default roots, and the roles."""

from __future__ import annotations

import math
from typing import Any

import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from metab_opt.ucbtree import DOWN, UP, Knob, KnobSpecError, Roles, UCBSampler, default_value

CASES: list[tuple[BaseDistribution, dict[str, Any], Any]] = [
    (FloatDistribution(1e-4, 1e-1, log=True),
     {"scale": "log", "step": pytest.approx(1000 ** 0.1)}, pytest.approx(math.sqrt(1e-5))),
    (FloatDistribution(-1.0, 1.0), {"scale": "linear", "step": 0.2}, 0.0),
    (FloatDistribution(-10.0, 10.0, step=0.1), {"scale": "linear", "step": pytest.approx(2.0)},
     0.0),
    (FloatDistribution(0.0, 0.5, step=0.05), {"scale": "linear", "step": 0.05}, 0.25),
    (IntDistribution(0, 10), {"scale": "int", "step": 1.0}, 5),
    (IntDistribution(1, 100), {"scale": "int", "step": 10.0}, 50),
    (IntDistribution(-10, 10, step=2), {"scale": "int", "step": 2.0}, 0),
    (IntDistribution(1, 100, log=True), {"scale": "log", "integer": True}, 10),
    (CategoricalDistribution(["a", "b", "c"]), {"scale": "categorical",
                                                "choices": ("a", "b", "c")}, "a"),
    (FloatDistribution(1.0, 1.0), {"scale": "categorical", "choices": (1.0,)}, 1.0),
    (IntDistribution(3, 3), {"scale": "categorical", "choices": (3,)}, 3),
]


@pytest.mark.parametrize(("dist", "fields", "default"), CASES, ids=repr)
def test_a_knob_from_each_kind_of_distribution(dist: BaseDistribution, fields: dict[str, Any],
                                               default: Any) -> None:
    knob = Knob.from_distribution("p", dist)
    for name, value in fields.items():
        assert getattr(knob, name) == value, name
    base = default_value(dist)
    assert base == default
    assert dist._contains(dist.to_internal_repr(base))
    grid = knob.grid(base)
    assert base in grid
    for value in grid:  # every lattice value is a value of the distribution, of its type
        assert dist._contains(dist.to_internal_repr(value)), value
        if isinstance(dist, IntDistribution):
            assert type(value) is int
        if isinstance(dist, FloatDistribution) and dist.low != dist.high:
            assert type(value) is float
    if knob.scale != "categorical":
        assert (grid[0], grid[-1]) == (dist.low, dist.high)  # both ends on the lattice
        assert len(grid) <= 2 * 10 + 3


def test_steps_sets_the_lattice_resolution() -> None:
    fine = Knob.from_distribution("p", FloatDistribution(0.0, 1.0), steps=100)
    assert len(fine.grid(0.5)) == 101
    with pytest.raises(ValueError, match=r"steps: expected an integer >= 1, got 0"):
        Knob.from_distribution("p", FloatDistribution(0.0, 1.0), steps=0)


def test_a_step_finer_than_the_lattice_digits_is_refused() -> None:
    # Steps of 0.0007 * 142857 from 700.0007 need 7 significant digits (800.0006).
    space = {"p": FloatDistribution(0.0, 999.9997, step=0.0007)}
    with pytest.raises(ValueError, match=r"search_space: p: lattice value .* is not 0.0 plus a "
                                         r"multiple of the step 0.0007"):
        UCBSampler(search_space=space, base_params={"p": 700.0007})


# --- roles -----------------------------------------------------------------------------------

NAMES = ["lr", "wd", "epochs", "seed"]


def test_roles_from_their_declaration() -> None:
    roles = Roles.from_mapping({"seed": "seed", "duration": "epochs", "spread": ["lr", "wd"],
                                "degeneracy": {"lr": "up", "wd": "down"}}, NAMES)
    assert roles == Roles(seed="seed", duration="epochs", spread=("lr", "wd"),
                          degeneracy=(("lr", UP), ("wd", DOWN)))
    assert Roles.from_mapping(roles.to_dict(), NAMES) == roles
    assert Roles.from_mapping(None, NAMES) == Roles() == Roles.from_mapping({}, NAMES)
    assert Roles.from_mapping({"spread": None, "degeneracy": None}, NAMES) == Roles()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1], r"^roles: expected a mapping of role -> knob\(s\)"),
        ({"sed": "seed"}, r"^roles.sed: unknown role \(did you mean 'seed'\?\)"),
        ({"seed": "sed"}, r"^roles.seed: 'sed' is not a knob \(did you mean 'seed'\?\)"),
        ({"seed": ["seed"]}, r"^roles.seed: expected one knob name, got \['seed'\]"),
        ({"duration": "epoch"}, r"^roles.duration: 'epoch' is not a knob \(did you mean "
                                r"'epochs'\?\)"),
        ({"spread": "lr"}, r"^roles.spread: expected a list of knob names, got 'lr'"),
        ({"spread": ["lr", "wdd"]}, r"^roles.spread\[1\]: 'wdd' is not a knob \(did you mean "
                                    r"'wd'\?\)"),
        ({"spread": ["lr", "lr"]}, r"^roles.spread: each knob once"),
        ({"degeneracy": ["lr"]}, r"^roles.degeneracy: expected a mapping knob -> up or down"),
        ({"degeneracy": {"lr": "left"}}, r"^roles.degeneracy.lr: expected up or down, got "
                                         r"'left'"),
        ({"degeneracy": {"lrr": "up"}}, r"^roles.degeneracy.lrr: 'lrr' is not a knob \(did you "
                                        r"mean 'lr'\?\)"),
        ({"seed": "seed", "spread": ["seed"]}, r"^roles.spread\[0\]: 'seed' is the seed knob"),
        ({"seed": "seed", "duration": "seed"}, r"^roles.duration: 'seed' is the seed knob"),
        ({"seed": "seed", "degeneracy": {"seed": "up"}},
         r"^roles.degeneracy.seed: 'seed' is the seed knob"),
    ],
)
def test_bad_roles_fail_in_one_line(data: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        Roles.from_mapping(data, NAMES)
    assert "\n" not in str(info.value)


def test_the_sampler_checks_its_roles_against_its_knobs() -> None:
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "epochs": IntDistribution(1, 9)}
    with pytest.raises(ValueError, match=r"roles.duration: 'epoch' is not a knob \(did you "
                                         r"mean 'epochs'\?\)"):
        UCBSampler(search_space=space, roles=Roles(duration="epoch"))
    with pytest.raises(ValueError, match=r"roles: expected a Roles"):
        UCBSampler(search_space=space, roles={"duration": "epochs"})  # type: ignore[arg-type]


def test_a_knob_from_its_declaration() -> None:
    knob = Knob.from_mapping("lr", {"range": [1e-4, 1e-2], "step": 2.0})
    assert knob == Knob("lr", "lr", 1e-4, 1e-2, "log", 2.0)
    assert Knob.from_mapping("act", {"scale": "categorical", "choices": ["a", "b"]}).choices == (
        "a", "b")
    with pytest.raises(KnobSpecError, match=r"^stepp: unknown key \(did you mean 'step'\?\)$"):
        Knob.from_mapping("lr", {"range": [1e-4, 1e-2], "stepp": 2.0})
    with pytest.raises(KnobSpecError) as info:
        Knob.from_mapping("n", {"range": [1, 4.5], "scale": "int", "step": 1})
    assert (info.value.field, info.value.reason) == (None, "an int knob takes integer range and "
                                                           "step")
