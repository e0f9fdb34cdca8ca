"""The logbook: an Optuna callback that writes the study's human-readable views.

After every finished trial (complete, pruned or failed) the :class:`Logbook` callback

- appends the trial's entry, in the instructions' log form, to ``<dir>/<name>_analysis.md``
  (append-only; its first line is the title ``# <name> — analysis log``);
- rewrites ``<dir>/<name>_memory.md``, the working memory (measured mutation effects, parameter
  importances, best configurations, block summaries, the current block, open questions), never
  longer than :data:`MEMORY_MAX_LINES` lines;
- rewrites ``<dir>/ucb_scores.txt``, the current block's UCB table;
- draws ``<dir>/exploration_tree.png`` through :func:`metab_opt.plots.plot_exploration_tree`;
- stores the memory text as the study's optuna-dashboard note, each entry as its trial's note,
  and (given an artifact store) the tree and the analysis log as study artifacts
  (:mod:`metab_opt.dashboard_views`).

The Optuna storage is the single source of truth: every line is computed from the trials, and
nothing is ever read back out of the markdown files.

Numbering: an entry's ``Iter N`` is the trial number (0-based, as Optuna and its dashboard count),
which is also the sampler's node id, so ``Iter 7`` and ``Node: id=7`` name the same trial and
``parent=P`` names ``Iter P``.

Exactly-once writing. Several worker processes (and threads) share these files, and a worker may
be killed at any moment. All writing happens under a :class:`filelock.FileLock` on
``<dir>/.logbook.lock``; whole-file views are replaced atomically (temporary file, then
:func:`os.replace`). Which entries the analysis file holds is recorded in a sidecar index,
``<dir>/.<name>_logbook_index.json``, rewritten atomically after each append: the trial numbers
written and the file's size after the last recorded append. Why a sidecar rather than a storage
attribute: a finished trial cannot take attributes any more in Optuna 5, a study attribute would
claim entries that a deleted or moved folder no longer holds, and the recorded size lets a torn
append (a worker killed mid-write) be cut back to the last complete entry — so the index always
describes the file next to it. When the index is missing or disagrees with the file, the old file
is kept as ``<name>_analysis.md.<time>.bak`` and the log is rewritten from the storage.

Disk errors never reach Optuna: they become one warning line; the trial stays in the storage and
:meth:`Logbook.sync` (run at start-up) writes whatever is missing.

This module needs neither torch nor the model: the sampler and the plots are imported lazily.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import statistics
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
from optuna.trial import FrozenTrial, TrialState

from metab_opt import _ucb as ucb
from metab_opt._io import atomic_write
from metab_opt.dashboard_views import DashboardViews

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.study import Study

    from metab_opt.config import Config

__all__ = [
    "FINISHED_STATES",
    "LOG_FORM_KNOBS",
    "Logbook",
    "MEMORY_MAX_LINES",
    "format_entry",
    "format_ucb_scores",
    "param_importances",
    "render_memory",
    "replicate_groups",
    "trial_r2",
    "tree_nodes",
]

logger = logging.getLogger(__name__)

MEMORY_MAX_LINES = 300
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

# The knobs the log form's Config line always shows, in its order, with the config key that
# gives their value when a study does not search them.
LOG_FORM_KNOBS: dict[str, str] = {
    "seed": "training.seed",
    "lr_k": "training.learning_rate_k",
    "lr_node": "training.learning_rate_node",
    "lr_sub": "training.learning_rate_sub",
    "batch_size": "training.batch_size",
    "n_epochs": "training.n_epochs",
    "data_augmentation_loop": "training.data_augmentation_loop",
    "coeff_MLP_node_L1": "training.coeff_MLP_node_L1",
    "coeff_k_center": "training.coeff_k_center",
}
_METRICS = ("rate_constants_R2", "rate_constants_R2_shifted", "test_R2", "test_pearson",
            "final_loss")
_NA = "n/a"
_INDEX_FORMAT = 1
_MIN_IMPORTANCE_TRIALS = 10
# DESIGN.md's classification of rate_constants_R2.
_CONVERGED, _PARTIAL = 0.9, 0.1


# ---------------------------------------------------------------------------------------------
# Reading a trial (every attribute may be missing: a failed or interrupted trial has few)


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, not a number, nan, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def trial_r2(trial: FrozenTrial) -> float | None:
    """The trial's rate_constants_R2, or None when it has none.

    A complete trial's value is the R² (its user attr is used when the value is missing); a
    pruned trial counts with its last reported value; a failed trial has none.
    """
    if trial.state == TrialState.FAIL:
        return None
    if trial.state == TrialState.COMPLETE and trial.values is not None and len(trial.values) == 1:
        value = _finite(trial.values[0])
        if value is not None:
            return value
    value = _finite(trial.user_attrs.get("rate_constants_R2"))
    if value is not None:
        return value
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return _finite(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def _classify(r2: float | None) -> str:
    if r2 is None or r2 < _PARTIAL:
        return "failed"
    return "converged" if r2 > _CONVERGED else "partial"


def _status(trial: FrozenTrial) -> str:
    """converged / partial / failed, as the objective recorded it or as the R² implies."""
    if trial.state == TrialState.FAIL:
        return "failed"
    status = trial.user_attrs.get("status")
    if not isinstance(status, str) or not status:
        status = _classify(trial_r2(trial))
    return f"{status} (pruned)" if trial.state == TrialState.PRUNED else status


def _node_id(trial: FrozenTrial) -> int:
    node = _int_or_none(trial.user_attrs.get("node_id"))
    return trial.number if node is None else node


def _parent_id(trial: FrozenTrial) -> int | None:
    """The parent's trial number; None for a block root or when the sampler recorded none."""
    parent = _int_or_none(trial.user_attrs.get("parent_id"))
    return parent if parent is not None and parent >= 0 else None


def _parent_label(trial: FrozenTrial) -> str:
    if "parent_id" not in trial.user_attrs:
        return _NA
    parent = _parent_id(trial)
    return "root" if parent is None else str(parent)


def _block(trial: FrozenTrial, n_iter_block: int | None) -> int:
    """The sampler's block (numbered from 1); estimated from the trial number if unrecorded."""
    block = _int_or_none(trial.user_attrs.get("block"))
    if block is not None:
        return block
    return trial.number // n_iter_block + 1 if n_iter_block else 1


def _text_attr(trial: FrozenTrial, key: str) -> str:
    value = trial.user_attrs.get(key)
    if value is None or value == "":
        return _NA
    return " ".join(str(value).split())  # one line, whatever the objective stored


# ---------------------------------------------------------------------------------------------
# Formatting numbers


def _fmt_param(value: Any) -> str:
    if value is None:
        return _NA
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _fmt_metric(value: Any, spec: str = ".4f") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _NA
    return format(float(value), spec) if math.isfinite(value) else str(float(value))


def _fmt_delta(value: float) -> str:
    return f"{value:+.3f}"


def _fmt_r2(value: float | None) -> str:
    return _NA if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------------------------
# The log entry


def _config_line(trial: FrozenTrial, base_params: Mapping[str, Any] | None,
                 config: Config | None) -> str:
    parts: list[str] = []
    for name, key in LOG_FORM_KNOBS.items():
        if name in trial.params:
            value: Any = trial.params[name]
        elif base_params is not None and name in base_params:
            value = base_params[name]
        elif config is not None:
            try:
                value = config.get(key)
            except (AttributeError, ValueError):
                value = None
        else:
            value = None
        parts.append(f"{name}={_fmt_param(value)}")
    # Other knobs only where they leave the base config (all of them when no base is known),
    # so the line stays readable and the structural changes stand out.
    for name in sorted(trial.params):
        if name in LOG_FORM_KNOBS:
            continue
        value = trial.params[name]
        if base_params is not None and name in base_params and base_params[name] == value:
            continue
        parts.append(f"{name}={_fmt_param(value)}")
    return ", ".join(parts)


def _metrics_line(trial: FrozenTrial) -> str:
    parts = []
    for key in _METRICS:
        value = trial.user_attrs.get(key)
        if key == "rate_constants_R2" and _finite(value) is None:
            value = trial_r2(trial) if trial.state == TrialState.COMPLETE else value
        spec = ".4g" if key == "final_loss" else ".4f"
        parts.append(f"{key}={_fmt_metric(value, spec)}")
    return ", ".join(parts)


# The instructions' reading "high R2_shifted + low R2 = scale ambiguity": k is right up to one
# global factor (log offset). "High" is their "good value" for both R², 0.9.
_AMBIGUITY_SHIFTED_R2 = 0.9  # rate_constants_R2_shifted above this: k correlated ...
_AMBIGUITY_R2 = 0.9  # ... and rate_constants_R2 below this: but globally shifted


def _observation(trial: FrozenTrial, parent: FrozenTrial | None,
                 best_before: tuple[int, float] | None) -> str:
    """One computed line: what changed against the parent, the diagnosis, scale ambiguity
    (shifted R² > 0.9 with R² < 0.9), the record."""
    parts: list[str] = []
    r2 = trial_r2(trial)
    if trial.state == TrialState.FAIL:
        reason = trial.user_attrs.get("fail_reason")
        reason_text = " ".join(str(reason).split()) if reason else "no reason recorded"
        parts.append(f"training failed ({reason_text})")
    elif trial.state == TrialState.PRUNED:
        step = max(trial.intermediate_values) if trial.intermediate_values else None
        parts.append(f"pruned at step {step}" if step is not None else "pruned")
    parent_number = _parent_id(trial)
    if parent_number is None:
        parts.append("block root" if "parent_id" in trial.user_attrs else "no parent recorded")
    else:
        parent_r2 = trial_r2(parent) if parent is not None else None
        if r2 is not None and parent_r2 is not None:
            parts.append(f"ΔR² {_fmt_delta(r2 - parent_r2)} vs parent {parent_number} "
                         f"({parent_r2:.3f} -> {r2:.3f})")
        else:
            parts.append(f"ΔR² {_NA} vs parent {parent_number}")
    diagnosis = trial.user_attrs.get("diagnosis")
    if diagnosis:
        gap = _finite(trial.user_attrs.get("degeneracy_gap"))
        gap_text = f" (gap {gap:.2f})" if gap is not None else ""
        parts.append(f"diagnosis {' '.join(str(diagnosis).split())}{gap_text}")
    shifted = _finite(trial.user_attrs.get("rate_constants_R2_shifted"))
    r2_attr = _finite(trial.user_attrs.get("rate_constants_R2"))
    r2_raw = r2_attr if r2_attr is not None else r2
    if (shifted is not None and r2_raw is not None and shifted > _AMBIGUITY_SHIFTED_R2
            and r2_raw < _AMBIGUITY_R2):
        offset = _finite(trial.user_attrs.get("mean_log_offset"))
        offset_text = f", mean log10 k off by {offset:+.2f}" if offset is not None else ""
        parts.append(f"scale ambiguity: k correlated but shifted (shifted R² {shifted:.2f} vs "
                     f"R² {r2_raw:.2f}{offset_text}) — anchor the scale (raise coeff_k_center)")
    if r2 is not None:
        if best_before is None or r2 > best_before[1]:
            parts.append("new best")
        else:
            parts.append(f"best so far {best_before[1]:.3f} (iter {best_before[0]})")
    return "; ".join(parts)


def format_entry(trial: FrozenTrial, *, parent: FrozenTrial | None = None,
                 best_before: tuple[int, float] | None = None,
                 next_parent: int | str | None = None,
                 base_params: Mapping[str, Any] | None = None,
                 config: Config | None = None) -> str:
    """One trial's entry in the log form (ends with a newline).

    ``parent`` is the parent trial (for ΔR²); ``best_before`` the ``(trial number, R²)`` of the
    best trial finished before this one; ``next_parent`` the parent of the next trial, as the
    sampler decides it (``"root"`` for the config's base values, None when unknown; see
    :meth:`Logbook._next_parent`); ``base_params`` the
    config's knob values, against which extra knobs are shown; ``config`` supplies the values
    of log-form knobs that the study does not search.
    """
    if base_params is None and config is not None:
        base_params = config.base_params()
    strategy = _text_attr(trial, "strategy")
    block = _int_or_none(trial.user_attrs.get("block"))
    mode = strategy if block is None else f"{strategy} (block {block})"
    lines = [
        f"## Iter {trial.number}: {_status(trial)}",
        f"Node: id={_node_id(trial)}, parent={_parent_label(trial)}",
        f"Mode/Strategy: {mode}",
        f"Config: {_config_line(trial, base_params, config)}",
        f"Metrics: {_metrics_line(trial)}",
        f"Visual: {_text_attr(trial, 'visual')}",
        f"Mutation: {_text_attr(trial, 'mutation')}",
        f"Parent rule: {_text_attr(trial, 'parent_rule')}",
        f"Observation: {_observation(trial, parent, best_before)}",
        f"Next: parent={_NA if next_parent is None else next_parent}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The UCB table


def _top_node(rows: Sequence[Mapping[str, Any]] | None) -> int | str | None:
    """The next parent: the top row's node, ``root`` for an empty table, None when unknown."""
    if rows is None:
        return None
    if not rows:
        return "root"
    node = rows[0].get("node")
    return _NA if node is None else node


def format_ucb_scores(rows: Sequence[Mapping[str, Any]], *, block: int | None = None,
                      after: int | None = None) -> str:
    """The current block's UCB table as fixed-width text.

    ``rows`` are :func:`metab_opt.sampler.ucb_scores` rows (keys node, parent, ucb, visits, r2,
    test_pearson, mutation), best first. An empty table is a block boundary: the file then holds
    only a header line saying that the next parent is the root.
    """
    where = f"block {block}" if block is not None else "current block"
    after_text = f", after iter {after}" if after is not None else ""
    if not rows:
        return (f"# UCB scores ({where}{after_text}): block boundary, no nodes yet "
                f"-> the next block starts at its root\n")
    head = (f"# UCB scores ({where}{after_text}): {len(rows)} nodes, "
            f"highest UCB={_top_node(rows)} (the sampler's rule picks the next parent: "
            f"see the log's Next line)")
    table = [head, f"{'node':>6}  {'UCB':>8}  {'parent':>6}  {'visits':>6}  {'R2':>8}  "
                   f"{'test_pearson':>12}  mutation"]
    for row in rows:
        parent = row.get("parent")
        parent_text = "root" if parent is None or (isinstance(parent, int) and parent < 0) \
            else str(parent)
        node = row.get("node")
        visits = row.get("visits")
        table.append(
            f"{_NA if node is None else node!s:>6}  {_fmt_metric(row.get('ucb')):>8}  "
            f"{parent_text:>6}  {_NA if visits is None else visits!s:>6}  "
            f"{_fmt_metric(row.get('r2')):>8}  {_fmt_metric(row.get('test_pearson')):>12}  "
            f"{' '.join(str(row.get('mutation') or _NA).split())}")
    return "\n".join(table) + "\n"


# ---------------------------------------------------------------------------------------------
# The exploration tree


def tree_nodes(trials: Iterable[FrozenTrial], *, n_iter_block: int | None = None
               ) -> list[dict[str, Any]]:
    """The nodes that :func:`metab_opt.plots.plot_exploration_tree` draws (finished trials)."""
    return [
        {"node": _node_id(t), "parent": _parent_id(t), "r2": trial_r2(t),
         "mutation": t.user_attrs.get("mutation"), "strategy": t.user_attrs.get("strategy"),
         "block": _block(t, n_iter_block)}
        for t in sorted(trials, key=lambda t: t.number) if t.state in FINISHED_STATES
    ]


# ---------------------------------------------------------------------------------------------
# Parameter importances


def param_importances(study: Study, *, min_trials: int = _MIN_IMPORTANCE_TRIALS
                      ) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances over the complete trials, or None and the reason why not.

    Importances need several complete trials and, per parameter, at least two distinct values;
    anything Optuna refuses becomes a reason, never an exception.
    """
    try:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.values is not None and len(t.values) == 1
                    and _finite(t.values[0]) is not None]
        if len(complete) < min_trials:
            return None, f"{len(complete)} complete trials, importances need {min_trials}"
        distinct: dict[str, set[str]] = {}
        for t in complete:
            for name, value in t.params.items():
                distinct.setdefault(name, set()).add(repr(value))
        # Optuna evaluates the parameters every trial has; those never varied carry no signal.
        common = set.intersection(*(set(t.params) for t in complete))
        params = sorted(n for n in common if len(distinct[n]) >= 2)
        if not params:
            return None, "no parameter has taken two values yet"
        from optuna.importance import get_param_importances

        result = get_param_importances(study, params=params)
        return dict(result), f"{len(complete)} complete trials"
    except Exception as exc:  # an importance failure must not cost the memory
        return None, f"unavailable ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"


# ---------------------------------------------------------------------------------------------
# The working memory


@dataclass
class _Effect:
    """The children produced by one kind of parent->child change."""

    tries: int = 0
    failed: int = 0
    deltas: list[float] = field(default_factory=list)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _changes(parent: Mapping[str, Any], child: Mapping[str, Any],
             order: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The knobs a child changed against its parent, each with its direction.

    Measured from the params themselves (not by parsing the mutation text).
    """
    rank = {name: i for i, name in enumerate(order)}
    out = []
    for name in sorted(set(parent) | set(child), key=lambda n: (rank.get(n, len(rank)), n)):
        old, new = parent.get(name), child.get(name)
        if old == new and type(old) is type(new):
            continue
        if _is_number(old) and _is_number(new):
            direction = "up" if new > old else "down"
        else:
            direction = f"-> {_fmt_param(new)}"
        out.append((name, direction))
    return tuple(out)


def _change_label(change: tuple[tuple[str, str], ...]) -> str:
    return " + ".join(f"{name} {direction}" for name, direction in change)


def _by_number(trials: Iterable[FrozenTrial]) -> dict[int, FrozenTrial]:
    return {t.number: t for t in trials}


def _effects(finished: Sequence[FrozenTrial], order: Sequence[str]
             ) -> dict[tuple[tuple[str, str], ...], _Effect]:
    by_number = _by_number(finished)
    effects: dict[tuple[tuple[str, str], ...], _Effect] = {}
    for child in finished:
        number = _parent_id(child)
        parent = by_number.get(number) if number is not None else None
        if parent is None or parent.state == TrialState.FAIL:
            continue
        change = _changes(parent.params, child.params, order)
        if not change:
            continue
        effect = effects.setdefault(change, _Effect())
        effect.tries += 1
        child_r2, parent_r2 = trial_r2(child), trial_r2(parent)
        if child.state == TrialState.FAIL:
            effect.failed += 1
        elif child_r2 is not None and parent_r2 is not None:
            effect.deltas.append(child_r2 - parent_r2)
    return effects


def _effect_line(label: str, effect: _Effect) -> str:
    tries = f"{effect.tries} {'try' if effect.tries == 1 else 'tries'}"
    failed = f", {effect.failed} failed" if effect.failed else ""
    if not effect.deltas:
        return f"- {label}: {tries}, mean ΔR² {_NA}{failed}"
    mean = statistics.fmean(effect.deltas)
    positive = sum(d > 0 for d in effect.deltas)
    n = len(effect.deltas)
    verdict = ""
    if n >= 3 and positive in (0, n):
        verdict = " — consistent " + ("gain" if positive else "loss")
    return (f"- {label}: {tries}, mean ΔR² {_fmt_delta(mean)}, {positive}/{n} positive"
            f"{failed}{verdict}")


def _knowledge_lines(effects: Mapping[tuple[tuple[str, str], ...], _Effect],
                     order: Sequence[str], cap: int) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}
    singles = [(c, e) for c, e in effects.items() if len(c) == 1 and c[0][0] != "seed"]
    compound = [(c, e) for c, e in effects.items() if len(c) > 1]
    seed = [e for c, e in effects.items() if c and c[0][0] == "seed" and len(c) == 1]
    singles.sort(key=lambda ce: (rank.get(ce[0][0][0], len(rank)), ce[0][0][0],
                                 ce[0][0][1] != "up", ce[0][0][1]))
    compound.sort(key=lambda ce: (-ce[1].tries, _change_label(ce[0])))
    lines = [_effect_line(_change_label(c), e) for c, e in singles + compound]
    if len(lines) > cap - 1:
        # Keep the best-measured effects, in their reading order.
        keep = sorted(range(len(lines)), key=lambda i: -(singles + compound)[i][1].tries)[:cap - 2]
        dropped = len(lines) - len(keep)
        lines = [lines[i] for i in sorted(keep)] + [f"- … {dropped} rarer changes not shown"]
    deltas = [abs(d) for e in seed for d in e.deltas]
    if deltas:
        pairs = f"{len(deltas)} {'pair' if len(deltas) == 1 else 'pairs'}"
        lines.append(f"- seed only (replicates): {pairs}, mean |ΔR²| "
                     f"{statistics.fmean(deltas):.3f} — the noise floor of one comparison")
    return lines or ["- no parent->child comparison yet"]


def _describe_params(params: Mapping[str, Any], base_params: Mapping[str, Any] | None) -> str:
    if base_params is None:
        items = [(k, v) for k, v in sorted(params.items()) if k != "seed" and v is not None]
        return ", ".join(f"{k}={_fmt_param(v)}" for k, v in items) or "no params"
    diff = [(k, v) for k, v in params.items()
            if k != "seed" and (k not in base_params or base_params[k] != v)]
    if not diff:
        return "the base config"
    return ", ".join(f"{k}={_fmt_param(v)}" for k, v in diff) + " (rest as base)"


def replicate_groups(trials: Iterable[FrozenTrial], *, names: Sequence[str],
                     base_params: Mapping[str, Any] | None = None) -> list[ucb.Group]:
    """The study's replicate groups, best first (:func:`metab_opt._ucb.rank_groups`): the first
    is the incumbent the sampler builds on. ``names`` are the knobs (a knob named ``seed`` is
    the training seed); ``base_params`` their values where a trial does not set them."""
    base = dict(base_params) if base_params is not None else dict.fromkeys(names)
    group_names = [n for n in names if n != "seed"]
    finished = [t for t in trials if t.state in FINISHED_STATES]
    return ucb.rank_groups(ucb.read_nodes(finished, base, list(names), group_names))


def _group_score(group: ucb.Group) -> str:
    """``R² mean 0.912 ± 0.010 over 3 seeds (range …; iters 3, 7, 9)`` or ``R² 0.9 (iter 3, 1
    seed)``: a failed run counts 0 and a pruned run its last report, as the sampler counts."""
    runs = group.runs
    iters = ", ".join(str(n.number) for n in runs)
    notes = [f"{k} {w}" for k, w in ((sum(n.failed for n in runs), "failed"),
                                      (sum(n.state == TrialState.PRUNED for n in runs), "pruned"))
             if k]
    note = f", {' and '.join(notes)}" if notes else ""
    if len(runs) == 1:
        return f"R² {group.mean_r2:.3f} (iter {iters}, 1 seed{note})"
    r2s = [n.r2 for n in runs if n.r2 is not None]
    n_seeds = len({ucb.canonical(n.params.get("seed")) for n in runs})
    count = f"{len(runs)} seeds" if n_seeds == len(runs) else f"{len(runs)} runs ({n_seeds} seeds)"
    return (f"R² mean {group.mean_r2:.3f} ± {group.spread:.3f} over {count} "
            f"(range {min(r2s):.3f}–{max(r2s):.3f}; iters {iters}{note})")


def _best_lines(finished: Sequence[FrozenTrial], base_params: Mapping[str, Any] | None,
                names: Sequence[str], top: int) -> list[str]:
    groups = replicate_groups(finished, names=names, base_params=base_params)
    if not groups:
        return ["- no finished trial that did not fail yet"]
    lines = []
    for i, group in enumerate(groups[:top], start=1):
        mark = " — the incumbent" if i == 1 else ""
        lines.append(f"{i}. {_group_score(group)}: "
                     f"{_describe_params(group.node.params, base_params)}{mark}")
    return lines


def _status_counts(trials: Sequence[FrozenTrial]) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        key = "pruned" if t.state == TrialState.PRUNED else _status(t)
        counts[key] = counts.get(key, 0) + 1
    order = ("converged", "partial", "failed", "pruned")
    parts = [f"{counts.pop(k)} {k}" for k in order if k in counts]
    parts += [f"{v} {k}" for k, v in sorted(counts.items())]
    return ", ".join(parts)


def _best_of(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    scored = [t for t in trials if trial_r2(t) is not None]
    return max(scored, key=lambda t: (trial_r2(t), -t.number)) if scored else None


def _span(trials: Sequence[FrozenTrial]) -> str:
    numbers = [t.number for t in trials]
    return f"{min(numbers)}–{max(numbers)}" if len(numbers) > 1 else f"{numbers[0]}"


def _block_line(blocks: Sequence[int], trials: Sequence[FrozenTrial], *, detail: bool) -> str:
    name = f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks[0]}–{blocks[-1]}"
    best = _best_of(trials)
    if best is None:
        best_text = f"best R² {_NA}"
    else:
        best_text = f"best R² {trial_r2(best):.3f} at iter {best.number}"
        mutation = best.user_attrs.get("mutation")
        if detail and mutation:
            best_text += f" ({' '.join(str(mutation).split())})"
    return (f"- {name} (iters {_span(trials)}, {len(trials)} trials): {best_text}; "
            f"{_status_counts(trials)}")


def _previous_block_lines(by_block: Mapping[int, Sequence[FrozenTrial]], blocks: Sequence[int],
                          budget: int) -> list[str]:
    """One line per previous block; older ones condensed into groups to stay within budget."""
    budget = max(1, budget)
    if len(blocks) <= budget:
        return [_block_line([b], by_block[b], detail=True) for b in blocks]
    recent_n = budget // 2
    older, recent = blocks[:len(blocks) - recent_n], blocks[len(blocks) - recent_n:]
    n_groups = budget - recent_n
    size = math.ceil(len(older) / n_groups)
    lines = []
    for start in range(0, len(older), size):
        group = list(older[start:start + size])
        lines.append(_block_line(group, [t for b in group for t in by_block[b]], detail=False))
    return lines + [_block_line([b], by_block[b], detail=True) for b in recent]


def _current_block_lines(trials: Sequence[FrozenTrial], by_number: Mapping[int, FrozenTrial],
                         cap: int) -> list[str]:
    lines = []
    for t in trials:
        parent_number = _parent_id(t)
        parent = by_number.get(parent_number) if parent_number is not None else None
        r2, parent_r2 = trial_r2(t), trial_r2(parent) if parent is not None else None
        delta = (f" (ΔR² {_fmt_delta(r2 - parent_r2)})"
                 if r2 is not None and parent_r2 is not None else "")
        lines.append(f"- iter {t.number} · {_text_attr(t, 'strategy')} · parent "
                     f"{_parent_label(t)} · {_text_attr(t, 'mutation')} → {_status(t)}, "
                     f"R² {_fmt_r2(r2)}{delta}")
    if len(lines) > cap:
        dropped = len(lines) - (cap - 1)
        lines = [f"- … {dropped} earlier iterations of this block not shown"] + lines[-(cap - 1):]
    return lines or ["- no finished trial in this block yet"]


def _knob_directions(name: str, finished: Sequence[FrozenTrial],
                     choices: Mapping[str, Sequence[Any]]) -> list[str]:
    if name in choices:
        return [f"-> {_fmt_param(c)}" for c in choices[name]]
    values = [t.params[name] for t in finished if name in t.params]
    if values and not all(_is_number(v) for v in values):
        return [f"-> {_fmt_param(v)}" for v in dict.fromkeys(values)]
    return ["up", "down"]


def _open_question_lines(effects: Mapping[tuple[tuple[str, str], ...], _Effect],
                         finished: Sequence[FrozenTrial], knobs: Sequence[str],
                         choices: Mapping[str, Sequence[Any]], cap: int) -> list[str]:
    tried: dict[tuple[str, str], _Effect] = {}
    for change, effect in effects.items():
        for item in change if len(change) == 1 else ():
            tried[item] = effect
    untried, unconfirmed, mixed = [], [], []
    for name in knobs:
        if name == "seed":
            continue
        missing = [d for d in _knob_directions(name, finished, choices) if (name, d) not in tried]
        if missing:
            untried.append(f"- {name}: {', '.join(missing)} not tried yet")
    for (name, direction), effect in tried.items():
        if name == "seed":  # replicates measure noise, not a direction to explore
            continue
        label = f"{name} {direction}"
        if effect.tries == 1:
            unconfirmed.append(label)
        elif effect.deltas and 0 < sum(d > 0 for d in effect.deltas) < len(effect.deltas):
            mixed.append(label)
    lines = untried
    if len(lines) > cap - 2:
        dropped = len(lines) - (cap - 3)
        lines = lines[:cap - 3] + [f"- … {dropped} more knobs with untried directions"]
    if unconfirmed:
        lines.append(f"- tried once only (unconfirmed): {', '.join(sorted(unconfirmed))}")
    if mixed:
        lines.append(f"- mixed signs (within noise?): {', '.join(sorted(mixed))}")
    return lines or ["- every knob direction has been tried at least twice"]


def render_memory(trials: Sequence[FrozenTrial], *, study_name: str,
                  base_params: Mapping[str, Any] | None = None,
                  knobs: Sequence[str] | None = None,
                  choices: Mapping[str, Sequence[Any]] | None = None,
                  n_iter_block: int | None = None,
                  importances: tuple[dict[str, float] | None, str] | None = None,
                  next_parent: int | str | None = None,
                  max_lines: int = MEMORY_MAX_LINES) -> str:
    """The working memory: what the trials so far have taught, in at most ``max_lines`` lines.

    ``trials`` are the study's trials (unfinished ones are ignored); ``knobs`` the search space's
    knob names in exploration order (default: the params seen); ``choices`` the values of
    categorical knobs; ``importances`` the result of :func:`param_importances`.
    """
    max_lines = max(max_lines, 40)
    finished = sorted((t for t in trials if t.state in FINISHED_STATES), key=lambda t: t.number)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    seen = sorted({name for t in finished for name in t.params})
    order = list(knobs) if knobs is not None else seen
    order += [n for n in seen if n not in order]
    choices = dict(choices or {})
    by_number = _by_number(finished)
    by_block: dict[int, list[FrozenTrial]] = {}
    for t in finished:
        by_block.setdefault(_block(t, n_iter_block), []).append(t)
    current = max(by_block) if by_block else 1
    best = _best_of(finished)

    states = {s: sum(t.state == s for t in finished) for s in FINISHED_STATES}
    head = [
        f"# {study_name} — working memory",
        "",
        "Rewritten after every trial from the study storage (a view: edits are overwritten).",
        f"After iter {finished[-1].number if finished else _NA}: {len(finished)} finished "
        f"({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL]} failed), {running} running. Best R² "
        f"{_fmt_r2(trial_r2(best)) if best else _NA}"
        f"{f' (iter {best.number})' if best else ''}. Current block {current}; next parent "
        f"{_NA if next_parent is None else next_parent}.",
    ]
    effects = _effects(finished, order)
    knowledge = _knowledge_lines(effects, order, cap=max(5, max_lines // 5))
    if importances is None:
        importance_lines = [f"- {_NA}"]
    elif importances[0] is None:
        importance_lines = [f"- not yet: {importances[1]}"]
    else:
        ranked = sorted(importances[0].items(), key=lambda kv: -kv[1])
        # The seed only changes for replicates: its share is the noise to compare others with.
        importance_lines = [f"- {name}: {value:.3f}{' (noise reference)' if name == 'seed' else ''}"
                            for name, value in ranked]
        importance_lines = importance_lines[:max(3, max_lines // 12)]
        importance_lines.append(f"- (Optuna's default evaluator over {importances[1]})")
    best_lines = _best_lines(finished, base_params, order, top=5)
    current_lines = _current_block_lines(by_block.get(current, []), by_number,
                                         cap=max(5, max_lines // 5))
    open_lines = _open_question_lines(effects, finished, order, choices,
                                      cap=max(5, max_lines // 12))

    def section(title: str, body: list[str]) -> list[str]:
        return ["", title, *body]

    before = [*head,
              *section("## Knowledge base: parent -> child changes (ΔR² = child - parent)",
                       knowledge),
              *section("## Parameter importances", importance_lines),
              *section("## Best configurations (grouped over seeds)", best_lines)]
    after = [*section(f"## Current block {current}", current_lines),
             *section("## Open questions", open_lines)]
    previous = [b for b in sorted(by_block) if b != current]
    # The previous blocks take what the other sections leave; condensing them keeps the limit.
    budget = max_lines - len(before) - len(after) - 2
    previous_lines = (_previous_block_lines(by_block, previous, budget) if previous
                      else ["- none yet"])
    lines = [*before, *section("## Previous blocks", previous_lines), *after]
    if len(lines) > max_lines:  # only a pathological max_lines gets here
        lines = lines[:max_lines - 1] + ["… (cut at the line limit)"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# A view of the study as it stood when a trial finished (for entries written late by `sync`)


class _StorageAsOf:
    """Delegates to a storage but lists only the given trials."""

    def __init__(self, storage: Any, trials: Sequence[FrozenTrial]) -> None:
        self._inner = storage
        self._trials = list(trials)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Iterable[TrialState] | None = None) -> list[FrozenTrial]:
        wanted = tuple(states) if states is not None else None
        return [t for t in self._trials if wanted is None or t.state in wanted]

    def get_n_trials(self, study_id: int, state: Any = None) -> int:
        if state is None:
            return len(self._trials)
        wanted = state if isinstance(state, tuple) else (state,)
        return sum(t.state in wanted for t in self._trials)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _StudyAsOf:
    """A study seen as it was when one trial finished: the trials finished by then.

    Trials still running at that moment are left out (their running state is not recorded),
    so a late entry's ``Next`` may differ from what a live callback would have written when
    several workers ran at once.
    """

    def __init__(self, study: Study, trials: Sequence[FrozenTrial]) -> None:
        self._study = study
        self._trials = sorted(trials, key=lambda t: t.number)
        self._storage = _StorageAsOf(study._storage, self._trials)

    def get_trials(self, deepcopy: bool = True,
                   states: Iterable[TrialState] | None = None) -> list[FrozenTrial]:
        return self._storage.get_all_trials(0, deepcopy, states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return list(self._trials)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def _parent_text(parent: int | None) -> int | str | None:
    """A parent as the log writes it: ``root`` for the config's base values (a negative id)."""
    if parent is None:
        return None
    return "root" if parent < 0 else int(parent)


def _finished_by(trials: Sequence[FrozenTrial], trial: FrozenTrial) -> list[FrozenTrial]:
    end = trial.datetime_complete
    out = []
    for t in trials:
        if t.state not in FINISHED_STATES:
            continue
        if t.number == trial.number:
            out.append(t)
        elif end is not None and t.datetime_complete is not None:
            if t.datetime_complete <= end:
                out.append(t)
        elif t.number < trial.number:
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# Files


def _append(path: Path, data: bytes) -> int:
    """Append ``data`` durably; return the file's new size."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


@dataclass
class _Index:
    """What the analysis file holds: the trials written and its size after the last append."""

    study: str
    fingerprint: str | None
    size: int
    written: set[int]

    def to_json(self) -> str:
        return json.dumps({"format": _INDEX_FORMAT, "study": self.study,
                           "fingerprint": self.fingerprint, "size": self.size,
                           "written": sorted(self.written)})

    @classmethod
    def load(cls, path: Path) -> _Index | None:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != _INDEX_FORMAT:
                return None
            return cls(study=str(data["study"]), fingerprint=data.get("fingerprint"),
                       size=int(data["size"]), written={int(n) for n in data["written"]})
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # unreadable: treated as missing, the log is rebuilt from the storage


def _fingerprint(trials: Sequence[FrozenTrial]) -> str | None:
    """Tells one incarnation of a study from another of the same name (a deleted, re-created
    study restarts at trial 0): the start time of its first trial."""
    first = min(trials, key=lambda t: t.number, default=None)
    if first is None or first.datetime_start is None:
        return None
    return first.datetime_start.isoformat()


def _same_study(recorded: str, now: str) -> bool:
    """Whether two fingerprints name one study. Some databases keep no microseconds while a
    worker's cached copy still has them: a time without microseconds matches its second."""
    try:
        a, b = _dt.datetime.fromisoformat(recorded), _dt.datetime.fromisoformat(now)
    except ValueError:
        return recorded == now
    if a == b:
        return True
    return (a.microsecond == 0 or b.microsecond == 0) and (
        a.replace(microsecond=0) == b.replace(microsecond=0))


# ---------------------------------------------------------------------------------------------
# The callback


class Logbook:
    """Optuna callback writing the study's markdown views (see the module docstring).

    ``directory`` is the study's folder; ``study_name`` names the files; ``config`` (optional)
    gives the base params, the knob order, the block length and the values of log-form knobs
    the study does not search. ``ucb_scores`` replaces :func:`metab_opt.sampler.ucb_scores`
    (e.g. for a baseline sampler without a tree) and ``next_parent`` replaces
    :func:`metab_opt.sampler.next_parent` (None from it: no tree); ``draw_tree`` and
    ``dashboard_note`` switch
    those two outputs; ``catch_up_after`` (seconds) lets a callback also write the entries of
    trials that finished that long ago without one (a worker killed after its trial was
    failed by the heartbeat), None to leave that to :meth:`sync`; ``raise_errors`` re-raises
    instead of warning (for debugging); ``artifact_store`` (the study's) receives the tree and
    the analysis log as study artifacts for optuna-dashboard, None for none.

    Use: ``study.optimize(objective, callbacks=[logbook])`` after ``logbook.sync(study)``.
    """

    def __init__(self, directory: str | os.PathLike[str], study_name: str, *,
                 config: Config | None = None, lock_timeout: float = 120.0,
                 ucb_scores: Callable[[Any], Sequence[Mapping[str, Any]]] | None = None,
                 next_parent: Callable[[Any], int | None] | None = None,
                 draw_tree: bool = True, dashboard_note: bool = True,
                 catch_up_after: float | None = 60.0,
                 max_memory_lines: int = MEMORY_MAX_LINES,
                 raise_errors: bool = False,
                 artifact_store: ArtifactStore | None = None) -> None:
        if not study_name or "/" in study_name or study_name.startswith("."):
            raise ValueError(f"study_name: expected a plain file-name stem, got {study_name!r}")
        if lock_timeout < 0:
            raise ValueError(f"lock_timeout: expected >= 0 seconds, got {lock_timeout!r}")
        self.directory = Path(directory)
        self.study_name = study_name
        self.config = config
        self.lock_timeout = float(lock_timeout)
        self.draw_tree = draw_tree
        self.dashboard_note = dashboard_note
        self.catch_up_after = catch_up_after
        self.max_memory_lines = max_memory_lines
        self.raise_errors = raise_errors
        self._ucb_scores = ucb_scores
        self._next_parent_func = next_parent
        self._warned: set[str] = set()
        self._warn_guard = threading.Lock()
        self.analysis_path = self.directory / f"{study_name}_analysis.md"
        self.memory_path = self.directory / f"{study_name}_memory.md"
        self.ucb_path = self.directory / "ucb_scores.txt"
        self.tree_path = self.directory / "exploration_tree.png"
        self.index_path = self.directory / f".{study_name}_logbook_index.json"
        self.lock_path = self.directory / ".logbook.lock"
        self._dashboard = DashboardViews(artifact_store, tree_path=self.tree_path,
                                         analysis_path=self.analysis_path, warn=self._warn)

    # -- Optuna's hook ------------------------------------------------------------------------

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        """Write ``trial``'s entry (once) and rewrite the other views."""
        if trial.state not in FINISHED_STATES:
            return
        self._run(study, trial)

    def sync(self, study: Study) -> None:
        """Write every finished trial's missing entry (in trial-number order) and the views.

        Run it when a study starts or resumes: it repairs what a crash or a disk error left.
        """
        self._run(study, None)

    # -- the work -----------------------------------------------------------------------------

    def _run(self, study: Study, current: FrozenTrial | None) -> None:
        try:
            self._update(study, current)
        except Exception as exc:
            if self.raise_errors:
                raise
            where = f"trial {current.number}" if current is not None else "sync"
            # filelock.Timeout is an OSError too: test it first.
            if isinstance(exc, filelock.Timeout):
                logger.warning("logbook: %s held for over %.0f s; views not written for %s "
                               "(the next trial or start writes them)", self.lock_path,
                               self.lock_timeout, where)
            elif isinstance(exc, OSError):
                logger.warning(
                    "logbook: cannot write %s for %s (%s); the trial is safe in the storage and "
                    "the next trial or start writes the missing views",
                    exc.filename or self.directory, where, exc.strerror or exc)
            else:
                # A bug, not the disk: keep the traceback, but never stop the study for a view.
                logger.warning("logbook: views not written for %s (%s: %s)", where,
                               type(exc).__name__, exc, exc_info=True)

    def _update(self, study: Study, current: FrozenTrial | None) -> None:
        trials = study.get_trials(deepcopy=False)
        if current is not None:
            # A finished trial never changes, so the callback's copy equals the storage's; it
            # also covers a storage that does not list the trial yet.
            trials = [t for t in trials if t.number != current.number] + [current]
        rows = self._ucb_rows(study)
        finished = [t for t in trials if t.state in FINISHED_STATES]
        memory = self.render_memory(trials, importances=param_importances(study),
                                    next_parent=self._predict_parent(study))
        # No block number in the header: the sampler's table may already be the next block's.
        last = max((t.number for t in finished), default=None)
        ucb_text = (format_ucb_scores(rows, after=last) if rows is not None
                    else "# UCB scores unavailable (see the study log)\n")
        noted = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with filelock.FileLock(str(self.lock_path), timeout=self.lock_timeout):
                try:
                    self._write_entries(study, trials, current)
                    atomic_write(self.memory_path, memory.encode())
                    atomic_write(self.ucb_path, ucb_text.encode())
                    if self.draw_tree:
                        self._draw_tree(trials)
                    self._dashboard.publish(study, tree=self.draw_tree)  # before the note
                finally:
                    # Under the lock, so workers on one machine do not interleave its chunks.
                    noted = True
                    self._save_note(study, memory)
        finally:
            if not noted:  # the note lives in the storage: saved even when the disk refuses
                self._save_note(study, memory)

    def render_memory(self, trials: Sequence[FrozenTrial], *,
                      importances: tuple[dict[str, float] | None, str] | None = None,
                      next_parent: int | str | None = None) -> str:
        """:func:`render_memory` with this logbook's config."""
        cfg = self.config
        choices: dict[str, Sequence[Any]] = {}
        knobs: list[str] | None = None
        if cfg is not None:
            knobs = list(cfg.search.names)
            choices = {k.name: list(k.choices) for k in cfg.search.knobs
                       if k.scale == "categorical" and k.choices}
        else:
            for t in trials:
                for name, dist in t.distributions.items():
                    if hasattr(dist, "choices"):
                        choices.setdefault(name, list(dist.choices))
        return render_memory(trials, study_name=self.study_name, base_params=self._base_params,
                             knobs=knobs, choices=choices, n_iter_block=self._n_iter_block,
                             importances=importances, next_parent=next_parent,
                             max_lines=self.max_memory_lines)

    @property
    def _base_params(self) -> dict[str, Any] | None:
        return self.config.base_params() if self.config is not None else None

    @property
    def _n_iter_block(self) -> int | None:
        return self.config.search.n_iter_block if self.config is not None else None

    # -- the analysis log ---------------------------------------------------------------------

    def _title(self) -> bytes:
        return f"# {self.study_name} — analysis log\n".encode()

    def _reconcile(self, trials: Sequence[FrozenTrial]) -> _Index:
        """The index, checked against the analysis file and repaired where they disagree."""
        fingerprint = _fingerprint(trials)
        index = _Index.load(self.index_path)
        title = self._title()
        try:
            size: int | None = self.analysis_path.stat().st_size
        except FileNotFoundError:
            size = None

        reason = None
        if index is not None and (index.study != self.study_name or (
                index.fingerprint is not None and fingerprint is not None
                and not _same_study(index.fingerprint, fingerprint))):
            reason = "it belongs to an earlier study of this name"
        elif size is None:
            if index is not None and index.written:
                logger.warning("logbook: %s is gone; rewriting it from the storage",
                               self.analysis_path)
        elif index is None:
            if size > len(title):
                reason = "its index is missing"
        elif size > index.size:
            # A worker died while appending: cut the unfinished entry, it is written again.
            with open(self.analysis_path, "r+b") as handle:
                handle.truncate(index.size)
                handle.flush()
                os.fsync(handle.fileno())
            logger.warning("logbook: removed %d bytes of an unfinished entry from %s",
                           size - index.size, self.analysis_path)
            size = index.size
        elif size < index.size:
            reason = "it is shorter than its index says (edited or truncated)"

        if reason is not None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            backup = self.analysis_path.with_name(f"{self.analysis_path.name}.{stamp}.bak")
            n = 1
            while backup.exists():  # never overwrite an earlier backup
                n += 1
                backup = backup.with_name(f"{self.analysis_path.name}.{stamp}-{n}.bak")
            os.replace(self.analysis_path, backup)
            logger.warning("logbook: %s kept as %s because %s; rewriting the log from the "
                           "storage", self.analysis_path.name, backup.name, reason)
            size, index = None, None
        if index is None or size is None or size <= len(title):
            # A fresh log: the title, then the entries.
            atomic_write(self.analysis_path, title)
            index = _Index(self.study_name, fingerprint, len(title), set())
            atomic_write(self.index_path, index.to_json().encode())
        if index.fingerprint is None and fingerprint is not None:
            index.fingerprint = fingerprint
        return index

    def _write_entries(self, study: Study, trials: Sequence[FrozenTrial],
                       current: FrozenTrial | None) -> None:
        index = self._reconcile(trials)
        finished = [t for t in trials if t.state in FINISHED_STATES]
        missing = sorted((t for t in finished if t.number not in index.written),
                         key=lambda t: t.number)
        if current is not None and index.written:
            # In a callback, only this trial and long-finished orphans; trials another worker
            # has just finished are left to that worker, whose Next line is the live one.
            missing = [t for t in missing if t.number == current.number or self._orphan(t)]
        if not missing:
            return
        by_number = _by_number(finished)
        chunks = []
        for t in missing:
            live = current is not None and t.number == current.number
            chunks.append("\n" + self._entry(t, finished, by_number,
                                              self._next_parent(study, trials, t, live=live)))
        # One append, then the index: a crash in between leaves the file longer than the index
        # says, and the next writer cuts it back, so every entry ends up in the file once.
        size = _append(self.analysis_path, "".join(chunks).encode())
        index.size = size
        index.written.update(t.number for t in missing)
        atomic_write(self.index_path, index.to_json().encode())
        if self.dashboard_note:  # each entry, once in the log, is also its trial's note
            self._dashboard.save_trial_notes(study, zip(missing, chunks))

    def _orphan(self, trial: FrozenTrial) -> bool:
        """Whether a trial finished so long ago that its own worker will not write its entry."""
        if self.catch_up_after is None or trial.datetime_complete is None:
            return False
        age = _dt.datetime.now() - trial.datetime_complete
        return age.total_seconds() > self.catch_up_after

    def _entry(self, trial: FrozenTrial, finished: Sequence[FrozenTrial],
               by_number: Mapping[int, FrozenTrial], next_parent: int | str | None) -> str:
        parent_number = _parent_id(trial)
        parent = by_number.get(parent_number) if parent_number is not None else None
        before = [t for t in _finished_by(finished, trial) if t.number != trial.number]
        best = _best_of(before)
        best_r2 = trial_r2(best) if best is not None else None
        best_before = (best.number, best_r2) if best is not None and best_r2 is not None else None
        return format_entry(trial, parent=parent, best_before=best_before,
                            next_parent=next_parent, base_params=self._base_params,
                            config=self.config)

    def _next_parent(self, study: Study, trials: Sequence[FrozenTrial], trial: FrozenTrial, *,
                     live: bool) -> int | str | None:
        """The parent the sampler gives the trial after ``trial`` (:func:`metab_opt.sampler
        .next_parent`: its decision computed, not the UCB table's top row), on the study as it
        is (``live``) or as it stood when ``trial`` finished (a log rebuilt by :meth:`sync`)."""
        return self._predict_parent(study if live else _StudyAsOf(
            study, _finished_by(trials, trial)))

    def _predict_parent(self, study: Any) -> int | str | None:
        func = self._next_parent_func
        if func is None:
            try:
                from metab_opt.sampler import UCBMutationSampler, next_parent
            except ImportError as exc:
                self._warn("next-import", f"logbook: no next parent ({exc}); Next is {_NA}")
                return None
            if not isinstance(getattr(study, "sampler", None), UCBMutationSampler):
                return None  # another sampler: no tree, no parent
            func = next_parent
        try:
            return _parent_text(func(study))
        except Exception as exc:  # a prediction failure must not cost the entry
            self._warn(f"next:{type(exc).__name__}",
                       f"logbook: next parent not computed ({type(exc).__name__}: {exc})")
            return None

    # -- optional outputs ---------------------------------------------------------------------

    def _ucb_rows(self, study: Any) -> list[Mapping[str, Any]] | None:
        func = self._ucb_scores
        if func is None:
            try:
                from metab_opt.sampler import ucb_scores as func
            except ImportError as exc:
                self._warn("ucb-import", f"logbook: no UCB table ({exc}); Next is {_NA}")
                return None
        try:
            return list(func(study))
        except Exception as exc:  # a table failure must not cost the entry
            self._warn(f"ucb:{type(exc).__name__}",
                       f"logbook: ucb_scores failed ({type(exc).__name__}: {exc})")
            return None

    def _draw_tree(self, trials: Sequence[FrozenTrial]) -> None:
        try:
            from metab_opt.plots import plot_exploration_tree
        except ImportError as exc:
            self._warn("tree-import", f"logbook: no exploration tree ({exc})")
            return
        nodes = tree_nodes(trials, n_iter_block=self._n_iter_block)
        # Drawn beside the target and renamed over it: a reader never sees half a PNG.
        tmp = self.tree_path.with_name(f".{self.tree_path.stem}.{os.getpid()}"
                                       f".{threading.get_ident()}.png")
        try:
            plot_exploration_tree(tmp, nodes)
            os.replace(tmp, self.tree_path)
        except Exception as exc:  # the logbook never loses an entry to a plot
            logger.warning("logbook: exploration tree not drawn (%s: %s)",
                           type(exc).__name__, exc)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _save_note(self, study: Study, memory: str) -> None:
        if not self.dashboard_note:
            return
        try:
            from optuna_dashboard import save_note
        except ImportError as exc:
            self._warn("note-import", f"logbook: no dashboard note ({exc})")
            return
        try:
            save_note(study, self._dashboard.study_note(study, memory))
        except Exception as exc:  # the note is a convenience
            logger.warning("logbook: dashboard note not saved (%s: %s)", type(exc).__name__, exc)

    def _warn(self, key: str, message: str) -> None:
        """Warn once per logbook about a lasting condition (a module missing, a table failing)."""
        with self._warn_guard:
            if key in self._warned:
                return
            self._warned.add(key)
        logger.warning("%s", message)
