"""The working memory: what the trials so far have taught, in at most ``MEMORY_MAX_LINES`` lines.

Sections: the knowledge base (the measured effect of each kind of parent -> child change), the
parameter importances, the best configurations (replicate groups), the previous blocks, the
current block and the open questions.

The knowledge base reads the tree as the sampler does: its moves are the sampler's
(:func:`metab_opt.ucbtree.moves`, the edges its direction memory learns from: a trial's recorded
parent and changes), so a one-knob line ("lr_k up") counts what the sampler counts when it
picks a knob's direction. The one difference is the log's presentation of a failure: a failed
child's R² shows as n/a and counts among the line's failures, not in its mean ΔR²; where that
changes the mean, the line adds the sampler's own (a failed run counting R² 0). A trial the
sampler did not decide (no record: another sampler, a trial added by hand) is read by its
``parent_id`` and its params. Replicate groups are the sampler's too
(:func:`metab_opt.ucbtree.rank_groups`), over every knob but the training seed's, which the
config's ``search.roles`` names.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from metab_opt import trial_record
from metab_opt.problem.joint import joint_summary
from metab_opt.trial_record import FAILED_VALUE, SEED_BY_NAME, own_trials
from metab_opt.ucbtree import (
    ATTR_MUTATION,
    ATTR_STRATEGY,
    CONVERGED,
    FAILED,
    PARTIAL,
    Group,
    Node,
    canonical,
    constraints_of,
    moves,
    rank_groups,
)

from ._read import (
    FINISHED_STATES,
    NA,
    best_of,
    block_of,
    finite,
    fmt_delta,
    fmt_param,
    fmt_r2,
    parent_id,
    parent_label,
    status,
    text_attr,
    trial_r2,
)

if TYPE_CHECKING:
    from optuna.study import Study

    from metab_opt.config import Config

__all__ = ["MEMORY_MAX_LINES", "param_importances", "render_memory", "replicate_groups"]

MEMORY_MAX_LINES = 300
_MIN_IMPORTANCE_TRIALS = 10

# A kind of change: the knobs a child changed against its parent, each with its direction
# ("up", "down", or "-> value" for a value that is not a number), in knob order.
_Change = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------------------------------
# Parameter importances


def param_importances(study: Study, *, seed_knob: str | None = SEED_BY_NAME,
                      min_trials: int = _MIN_IMPORTANCE_TRIALS
                      ) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances over the complete trials, or None and the reason why not.

    Importances need several complete trials and, per parameter, at least two distinct values;
    anything Optuna refuses becomes a reason, never an exception. ``seed_knob`` (the training
    seed's knob, as in :func:`render_memory`) is left out: the seed is noise, not a setting,
    and a share of the importance given to it would read as one.
    """
    try:
        complete = [t for t in own_trials(study.get_trials(deepcopy=False,
                                                            states=(TrialState.COMPLETE,)))
                    if t.values is not None and len(t.values) == 1
                    and finite(t.values[0]) is not None]
        if len(complete) < min_trials:
            return None, f"{len(complete)} complete trials, importances need {min_trials}"
        distinct: dict[str, set[str]] = {}
        for t in complete:
            for name, value in t.params.items():
                distinct.setdefault(name, set()).add(repr(value))
        # Optuna evaluates the parameters every trial has; those never varied carry no signal.
        common = set.intersection(*(set(t.params) for t in complete))
        params = sorted(n for n in common if len(distinct[n]) >= 2 and n != seed_knob)
        if not params:
            but = " but the training seed" if seed_knob in distinct else ""
            return None, f"no parameter{but} has taken two values yet"
        from optuna.importance import get_param_importances

        result = get_param_importances(study, params=params)
        # Say so where the seed was searched, so that its absence is not read as an oversight.
        left_out = (f"; the training seed ({seed_knob}) left out: noise, not a setting"
                    if seed_knob is not None and seed_knob in distinct else "")
        return dict(result), f"{len(complete)} complete trials{left_out}"
    except Exception as exc:  # an importance failure must not cost the memory
        return None, f"unavailable ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"


# ---------------------------------------------------------------------------------------------
# The tree as the sampler reads it


def _nodes(trials: Iterable[FrozenTrial], names: Sequence[str],
           base_params: Mapping[str, Any] | None, seed_knob: str | None) -> list[Node]:
    """The finished trials' nodes, read as the problem's sampler reads them; ``names`` are the
    knobs, ``base_params`` their values where a trial does not set them, ``seed_knob`` the one
    left out of a replicate group."""
    base = dict(base_params) if base_params is not None else dict.fromkeys(names)
    group_names = [n for n in names if n != seed_knob]
    finished = [t for t in trials if t.state in FINISHED_STATES]
    return trial_record.read_nodes(finished, base, list(names), group_names)


def replicate_groups(trials: Iterable[FrozenTrial], *, config: Config | None = None,
                     names: Sequence[str] | None = None,
                     base_params: Mapping[str, Any] | None = None) -> list[Group]:
    """The study's replicate groups, best first (:func:`metab_opt.ucbtree.rank_groups`, a failed
    run counting R² 0): the first is the incumbent the sampler builds on.

    ``config`` gives the knobs, their values where a trial does not set them and the training
    seed's knob (its ``search.roles``); ``names`` and ``base_params`` override the first two.
    Without a config, ``names`` are required and a knob named ``seed`` is the training seed.
    """
    if config is not None:
        names = config.search.names if names is None else names
        base_params = config.base_params() if base_params is None else base_params
    if names is None:
        raise TypeError("replicate_groups: give the config, or the knobs' names")
    return rank_groups(_nodes(own_trials(trials), names, base_params,
                              trial_record.seed_knob(config)))


# ---------------------------------------------------------------------------------------------
# The knowledge base: the effect of each kind of change


@dataclass
class _Effect:
    """The children produced by one kind of parent->child change."""

    tries: int = 0
    failed: int = 0
    deltas: list[float] = field(default_factory=list)  # ΔR² where neither run failed
    gains: list[float] = field(default_factory=list)  # the sampler's: a failure counts R² 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _change(changes: Iterable[tuple[str, Any, Any]], rank: Mapping[str, int]) -> _Change:
    """The kind of a change list ``(knob, old, new)``: each knob with its direction."""
    out = []
    for name, old, new in changes:
        if old == new and type(old) is type(new):
            continue
        if _is_number(old) and _is_number(new):
            direction = "up" if new > old else "down"
        else:
            direction = f"-> {fmt_param(new)}"
        out.append((name, direction))
    return tuple(sorted(out, key=lambda c: (rank.get(c[0], len(rank)), c[0])))


def _measured(parent: Mapping[str, Any], child: Mapping[str, Any]
              ) -> list[tuple[str, Any, Any]]:
    """The changes between two params sets, measured from the params themselves (not by
    parsing the mutation text)."""
    out = []
    for name in sorted(set(parent) | set(child)):
        old, new = parent.get(name), child.get(name)
        if not (old == new and type(old) is type(new)):
            out.append((name, old, new))
    return out


def _as_decided(node: Node, finished: Mapping[int, FrozenTrial]) -> Node:
    """A node without the sampler's record read as if the sampler had decided it: its parent
    from its ``parent_id`` attr, its changes measured from the two trials' params."""
    number = parent_id(node.trial)
    parent = finished.get(number) if number is not None else None
    if node.record is not None or parent is None:
        return node
    changes = _measured(parent.params, node.trial.params)
    return dataclasses.replace(node, record={"parent": number, "changes": changes})


def _change_label(change: _Change) -> str:
    return " + ".join(f"{name} {direction}" for name, direction in change)


_CONSTRAINED_NOTE = "; each side's R² less its constraint violation, as the sampler ranks it"


def _effects(finished: Sequence[FrozenTrial], nodes: Sequence[Node], order: Sequence[str]
             ) -> dict[_Change, _Effect]:
    """The effect of each kind of change, over the sampler's moves (see the module docstring)."""
    rank = {name: i for i, name in enumerate(order)}
    by_trial = {t.number: t for t in finished}
    decided = [_as_decided(n, by_trial) for n in nodes]
    effects: dict[_Change, _Effect] = {}
    for move in moves(decided, {n.number: n for n in decided}):
        change = _change(move.changes, rank)
        if not change:
            continue
        effect = effects.setdefault(change, _Effect())
        effect.tries += 1
        effect.gains.append(move.gain)
        if move.node.failed:
            effect.failed += 1
        elif not move.parent.failed:
            effect.deltas.append(move.gain)
    return effects


def _effect_line(label: str, effect: _Effect, *, sampler_mean: bool) -> str:
    tries = f"{effect.tries} {'try' if effect.tries == 1 else 'tries'}"
    failed = f", {effect.failed} failed" if effect.failed else ""
    # Where failures make the sampler's mean differ from the one shown, say what it acts on.
    counted = ""
    if sampler_mean and len(effect.gains) != len(effect.deltas):
        counted = (f" (sampler's mean ΔR² {fmt_delta(statistics.fmean(effect.gains))}, a "
                   f"failure counting R² {FAILED_VALUE:g})")
    if not effect.deltas:
        return f"- {label}: {tries}, mean ΔR² {NA}{failed}{counted}"
    mean = statistics.fmean(effect.deltas)
    positive = sum(d > 0 for d in effect.deltas)
    n = len(effect.deltas)
    verdict = ""
    if n >= 3 and positive in (0, n):
        verdict = " — consistent " + ("gain" if positive else "loss")
    return (f"- {label}: {tries}, mean ΔR² {fmt_delta(mean)}, {positive}/{n} positive"
            f"{failed}{counted}{verdict}")


def _knowledge_lines(effects: Mapping[_Change, _Effect], order: Sequence[str], cap: int,
                     seed_knob: str | None) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}
    singles = [(c, e) for c, e in effects.items() if len(c) == 1 and c[0][0] != seed_knob]
    compound = [(c, e) for c, e in effects.items() if len(c) > 1]
    seed = [e for c, e in effects.items() if len(c) == 1 and c[0][0] == seed_knob]
    singles.sort(key=lambda ce: (rank.get(ce[0][0][0], len(rank)), ce[0][0][0],
                                 ce[0][0][1] != "up", ce[0][0][1]))
    compound.sort(key=lambda ce: (-ce[1].tries, _change_label(ce[0])))
    lines = [_effect_line(_change_label(c), e, sampler_mean=True) for c, e in singles]
    lines += [_effect_line(_change_label(c), e, sampler_mean=False) for c, e in compound]
    if len(lines) > cap - 1:
        # Keep the best-measured effects, in their reading order.
        keep = sorted(range(len(lines)), key=lambda i: -(singles + compound)[i][1].tries)[:cap - 2]
        dropped = len(lines) - len(keep)
        lines = [lines[i] for i in sorted(keep)] + [f"- … {dropped} rarer changes not shown"]
    deltas = [abs(d) for e in seed for d in e.deltas]
    if deltas:
        pairs = f"{len(deltas)} {'pair' if len(deltas) == 1 else 'pairs'}"
        lines.append(f"- {seed_knob} only (replicates): {pairs}, mean |ΔR²| "
                     f"{statistics.fmean(deltas):.3f} — the noise floor of one comparison")
    return lines or ["- no parent->child comparison yet"]


# ---------------------------------------------------------------------------------------------
# Best configurations


def _describe_params(params: Mapping[str, Any], base_params: Mapping[str, Any] | None,
                     seed_knob: str | None) -> str:
    if base_params is None:
        items = [(k, v) for k, v in sorted(params.items()) if k != seed_knob and v is not None]
        return ", ".join(f"{k}={fmt_param(v)}" for k, v in items) or "no params"
    diff = [(k, v) for k, v in params.items()
            if k != seed_knob and (k not in base_params or base_params[k] != v)]
    if not diff:
        return "the base config"
    return ", ".join(f"{k}={fmt_param(v)}" for k, v in diff) + " (rest as base)"


def _group_score(group: Group, seed_knob: str | None) -> str:
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
    n_seeds = len({canonical(n.params.get(seed_knob)) if seed_knob is not None else None
                   for n in runs})
    count = f"{len(runs)} seeds" if n_seeds == len(runs) else f"{len(runs)} runs ({n_seeds} seeds)"
    return (f"R² mean {group.mean_r2:.3f} ± {group.spread:.3f} over {count} "
            f"(range {min(r2s):.3f}–{max(r2s):.3f}; iters {iters}{note})")


def _best_lines(groups: Sequence[Group], base_params: Mapping[str, Any] | None, top: int,
                seed_knob: str | None, joint: bool) -> list[str]:
    if not groups:
        return ["- no finished trial that did not fail yet"]
    lines = []
    for i, group in enumerate(groups[:top], start=1):
        mark = " — the incumbent" if i == 1 else ""
        # Only a study that asks for the joint recovery is judged on it (see render_memory).
        verdict = joint_summary(group.node.trial.user_attrs, diagnosis=False) if joint else None
        joint_text = f" (joint, iter {group.node.number}: {verdict})" if verdict else ""
        lines.append(f"{i}. {_group_score(group, seed_knob)}: "
                     f"{_describe_params(group.node.params, base_params, seed_knob)}{mark}"
                     f"{joint_text}")
    return lines


# ---------------------------------------------------------------------------------------------
# Blocks


def _status_counts(trials: Sequence[FrozenTrial]) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        key = "pruned" if t.state == TrialState.PRUNED else status(t)
        counts[key] = counts.get(key, 0) + 1
    order = (CONVERGED, PARTIAL, FAILED, "pruned")
    parts = [f"{counts.pop(k)} {k}" for k in order if k in counts]
    parts += [f"{v} {k}" for k, v in sorted(counts.items())]
    return ", ".join(parts)


def _span(trials: Sequence[FrozenTrial]) -> str:
    numbers = [t.number for t in trials]
    return f"{min(numbers)}–{max(numbers)}" if len(numbers) > 1 else f"{numbers[0]}"


def _block_line(blocks: Sequence[int], trials: Sequence[FrozenTrial], *, detail: bool) -> str:
    name = f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks[0]}–{blocks[-1]}"
    best = best_of(trials)
    if best is None:
        best_text = f"best R² {NA}"
    else:
        best_text = f"best R² {trial_r2(best):.3f} at iter {best.number}"
        mutation = best.user_attrs.get(ATTR_MUTATION)
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
        parent_number = parent_id(t)
        parent = by_number.get(parent_number) if parent_number is not None else None
        r2, parent_r2 = trial_r2(t), trial_r2(parent) if parent is not None else None
        delta = (f" (ΔR² {fmt_delta(r2 - parent_r2)})"
                 if r2 is not None and parent_r2 is not None else "")
        lines.append(f"- iter {t.number} · {text_attr(t, ATTR_STRATEGY)} · parent "
                     f"{parent_label(t)} · {text_attr(t, ATTR_MUTATION)} → {status(t)}, "
                     f"R² {fmt_r2(r2)}{delta}")
    if len(lines) > cap:
        dropped = len(lines) - (cap - 1)
        lines = [f"- … {dropped} earlier iterations of this block not shown"] + lines[-(cap - 1):]
    return lines or ["- no finished trial in this block yet"]


# ---------------------------------------------------------------------------------------------
# Open questions


def _knob_directions(name: str, finished: Sequence[FrozenTrial],
                     choices: Mapping[str, Sequence[Any]]) -> list[str]:
    if name in choices:
        return [f"-> {fmt_param(c)}" for c in choices[name]]
    values = [t.params[name] for t in finished if name in t.params]
    if values and not all(_is_number(v) for v in values):
        return [f"-> {fmt_param(v)}" for v in dict.fromkeys(values)]
    return ["up", "down"]


def _open_question_lines(effects: Mapping[_Change, _Effect], finished: Sequence[FrozenTrial],
                         knobs: Sequence[str], choices: Mapping[str, Sequence[Any]], cap: int,
                         seed_knob: str | None) -> list[str]:
    tried: dict[tuple[str, str], _Effect] = {}
    for change, effect in effects.items():
        for item in change if len(change) == 1 else ():
            tried[item] = effect
    untried, unconfirmed, mixed = [], [], []
    for name in knobs:
        if name == seed_knob:
            continue
        missing = [d for d in _knob_directions(name, finished, choices) if (name, d) not in tried]
        if missing:
            untried.append(f"- {name}: {', '.join(missing)} not tried yet")
    for (name, direction), effect in tried.items():
        if name == seed_knob:  # replicates measure noise, not a direction to explore
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


# ---------------------------------------------------------------------------------------------
# The whole memory


def render_memory(trials: Sequence[FrozenTrial], *, study_name: str,
                  base_params: Mapping[str, Any] | None = None,
                  knobs: Sequence[str] | None = None,
                  choices: Mapping[str, Sequence[Any]] | None = None,
                  n_iter_block: int | None = None,
                  importances: tuple[dict[str, float] | None, str] | None = None,
                  next_parent: int | str | None = None,
                  seed_knob: str | None = SEED_BY_NAME,
                  joint: bool = False,
                  prior: Sequence[str] | None = None,
                  max_lines: int = MEMORY_MAX_LINES) -> str:
    """The working memory: what the trials so far have taught, in at most ``max_lines`` lines.

    ``trials`` are the study's trials (unfinished ones are ignored); ``knobs`` the search space's
    knob names in exploration order (default: the params seen); ``choices`` the values of
    categorical knobs; ``importances`` the result of :func:`param_importances`; ``seed_knob``
    the training seed's knob (the config's ``search.roles``; default: a knob named ``seed``,
    None: no seed knob); ``joint`` whether the study asks for the joint recovery
    (:func:`metab_opt.problem.joint.asks_joint_recovery`): only then do the best configurations show
    its verdict, since in a k-only study the homeostasis it never asked for would read as a
    failure of k; ``prior`` the sampler's account of its prior (each earlier study, its weight
    and what it says of each knob: :meth:`metab_opt.ucbtree.UCBSampler.prior_report`), a
    section of its own; None: the study has no prior.
    """
    max_lines = max(max_lines, 40)
    finished = sorted((t for t in trials if t.state in FINISHED_STATES), key=lambda t: t.number)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    seen = sorted({name for t in finished for name in t.params})
    order = list(knobs) if knobs is not None else seen
    order += [n for n in seen if n not in order]
    choices = dict(choices or {})
    by_number = {t.number: t for t in finished}
    by_block: dict[int, list[FrozenTrial]] = {}
    for t in finished:
        by_block.setdefault(block_of(t, n_iter_block), []).append(t)
    current = max(by_block) if by_block else 1
    best = best_of(finished)
    nodes = _nodes(finished, order, base_params, seed_knob)

    states = {s: sum(t.state == s for t in finished) for s in FINISHED_STATES}
    head = [
        f"# {study_name} — working memory",
        "",
        "Rewritten after every trial from the study storage (a view: edits are overwritten).",
        f"After iter {finished[-1].number if finished else NA}: {len(finished)} finished "
        f"({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL]} failed), {running} running. Best R² "
        f"{fmt_r2(trial_r2(best)) if best else NA}"
        f"{f' (iter {best.number})' if best else ''}. Current block {current}; next parent "
        f"{NA if next_parent is None else next_parent}.",
    ]
    effects = _effects(finished, nodes, order)
    # With constraints the sampler compares R² less each trial's violation, and so does this.
    constrained = any(constraints_of(t) is not None for t in finished)
    knowledge = _knowledge_lines(effects, order, max(5, max_lines // 5), seed_knob)
    if importances is None:
        importance_lines = [f"- {NA}"]
    elif importances[0] is None:
        importance_lines = [f"- not yet: {importances[1]}"]
    else:
        ranked = sorted(importances[0].items(), key=lambda kv: -kv[1])
        importance_lines = [f"- {name}: {value:.3f}" for name, value in ranked]
        importance_lines = importance_lines[:max(3, max_lines // 12)]
        importance_lines.append(f"- (Optuna's default evaluator over {importances[1]})")
    best_lines = _best_lines(rank_groups(nodes), base_params, 5, seed_knob, joint)
    current_lines = _current_block_lines(by_block.get(current, []), by_number,
                                         cap=max(5, max_lines // 5))
    open_lines = _open_question_lines(effects, finished, order, choices,
                                      max(5, max_lines // 12), seed_knob)

    def section(title: str, body: list[str]) -> list[str]:
        return ["", title, *body]

    before = [*head,
              *section("## Knowledge base: parent -> child changes (ΔR² = child - parent"
                       f"{_CONSTRAINED_NOTE if constrained else ''})", knowledge),
              *section("## Parameter importances", importance_lines),
              *(section("## Prior: what earlier studies say, weighted by how well they order "
                        "this study's trials", list(prior)) if prior else []),
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
