"""Model-ranked moves: the rules' parent, the move model's choice of knob and value.

The rules (:mod:`._rules`) keep choosing the parent (by UCB) and the kind of move (exploit,
explore, boundary-probe); here the parent's untried one-knob moves are scored by the move model
(:mod:`._model`) and the first by ``mean + KAPPA[strategy] * sd`` is taken. The knobs that set a
trial's cost (the ``duration`` and ``survey_fixed`` roles) are never moved here: the runs mostly
share their values, so a step along one looks near and unknown to the model (the most
attractive move, whatever it costs); the duration rule moves the duration knob, and the fixed
orders the others once the model has no move left.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from . import _model, _prior
from . import _mutation as mut
from . import _tree as tree
from ._knob import Knob

__all__ = ["fit", "ranked_move"]


class Planner(Protocol):
    """What a ranked move reads of :class:`._rules.Planner` (which imports this module)."""

    s: Any  # ._rules.Settings: group_names, roles, value_name
    knobs: tuple[Knob, ...]
    nodes: list[tree.Node]
    anchors: Mapping[str, Any]
    sign: float
    mutable: list[Knob]

    @property
    def model(self) -> _model.MoveModel | _prior.Ensemble | None: ...

    def parents(self) -> Sequence[Any]: ...  # ._rules._Parent: number, params, describe

    def apply(self, parent: Mapping[str, Any],
              changes: Sequence[mut.Change]) -> dict[str, Any] | None: ...


def points(planner: Planner) -> list[tuple[Mapping[str, Any], float | None]]:
    """(params, score) of the planner's finished trials, by number; None for a failed one."""
    return [(n.params, None if n.failed else n.score) for n in planner.nodes
            if n.finished and (n.failed or n.score is not None)]


def fit(planner: Planner) -> _model.MoveModel | None:
    """The move model of the planner's finished trials (a failed one ranks last)."""
    names = set(planner.s.group_names)
    knobs = [k for k in planner.knobs if k.name in names]
    return _model.fit(knobs, planner.anchors, points(planner), sign=planner.sign)


def _values(knob: Knob, anchor: Any, ends_only: bool) -> Iterator[Any]:
    if ends_only:
        yield from (mut.range_end(knob, d, anchor) for d in (mut.DOWN, mut.UP))
    else:
        yield from knob.grid(anchor)


def ranked_move(planner: Planner, strategy: str, *, ends_only: bool = False
                ) -> tuple[int, dict[str, Any], mut.Change, str] | None:
    """(parent, params, change, parent_rule) of the best-ranked parent that has an untried
    candidate: one knob set to any value of its lattice, or with ``ends_only`` to an end of its
    range. None without a model or a candidate."""
    model = planner.model
    if model is None:
        return None
    roles = planner.s.roles
    compute = {n for n in (roles.duration, *roles.survey_fixed) if n is not None}
    kappa = _model.KAPPA[strategy]
    for parent in planner.parents():
        candidates: list[tuple[dict[str, Any], mut.Change]] = []
        for knob in planner.mutable:
            if knob.name in compute:
                continue
            old = parent.params[knob.name]
            for new in _values(knob, planner.anchors[knob.name], ends_only):
                if tree.canonical(new) == tree.canonical(old):
                    continue
                change = (knob.name, old, new)
                params = planner.apply(parent.params, [change])
                if params is not None:
                    candidates.append((params, change))
        if not candidates:
            continue
        predictions = model.predict([p for p, _ in candidates], kappa)
        # Ties: the earlier candidate (exploration order, then lattice order). Rounded first, so
        # that two CPUs whose linear algebra differs in the last bits still choose alike.
        best = max(range(len(candidates)),
                   key=lambda i: (round(predictions[i].acquisition, 9), -i))
        params, change = candidates[best]
        p = predictions[best]
        name, old, new = change
        kind = "range-end probes" if ends_only else "one-knob moves"
        rule = (parent.describe(strategy)
                + f"; {model.label} ranks {name} "
                  f"{mut.format_value(old)} -> {mut.format_value(new)} first of "
                  f"{len(candidates)} {kind} (predicted {planner.s.value_name} "
                  f"{p.value:.3f}, one sd {p.low:.3f} to {p.high:.3f})")
        return parent.number, params, change, rule
    return None
