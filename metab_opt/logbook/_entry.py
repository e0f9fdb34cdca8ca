"""Rendering one trial: its log entry, the UCB table's text and the nodes the tree plot draws.

An entry follows the instructions' log form field for field (DESIGN.md, "Log entry"); every value
is computed from the trial, its parent and the study as it stood, never written by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from metab_opt.problem.joint import asks_joint_recovery, joint_summary
from metab_opt.ucbtree import (
    ATTR_BLOCK,
    ATTR_MUTATION,
    ATTR_PARENT_ID,
    ATTR_PARENT_RULE,
    ATTR_STRATEGY,
)

from ._read import (
    FINISHED_STATES,
    NA,
    block_of,
    finite,
    fmt_delta,
    fmt_metric,
    fmt_param,
    int_or_none,
    node_id,
    parent_id,
    parent_label,
    status,
    text_attr,
    trial_r2,
)

if TYPE_CHECKING:
    from metab_opt.config import Config

__all__ = ["LOG_FORM_KNOBS", "format_entry", "format_ucb_scores", "tree_nodes"]

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

# The instructions' reading "high R2_shifted + low R2 = scale ambiguity": k is right up to one
# global factor (log offset). "High" is their "good value" for both R², 0.9.
_AMBIGUITY_SHIFTED_R2 = 0.9  # rate_constants_R2_shifted above this: k correlated ...
_AMBIGUITY_R2 = 0.9  # ... and rate_constants_R2 below this: but globally shifted


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
        parts.append(f"{name}={fmt_param(value)}")
    # Other knobs only where they leave the base config (all of them when no base is known),
    # so the line stays readable and the structural changes stand out.
    for name in sorted(trial.params):
        if name in LOG_FORM_KNOBS:
            continue
        value = trial.params[name]
        if base_params is not None and name in base_params and base_params[name] == value:
            continue
        parts.append(f"{name}={fmt_param(value)}")
    return ", ".join(parts)


def _metrics_line(trial: FrozenTrial) -> str:
    parts = []
    for key in _METRICS:
        value = trial.user_attrs.get(key)
        if key == "rate_constants_R2" and finite(value) is None:
            value = trial_r2(trial) if trial.state == TrialState.COMPLETE else value
        spec = ".4g" if key == "final_loss" else ".4f"
        parts.append(f"{key}={fmt_metric(value, spec)}")
    return ", ".join(parts)


def _observation(trial: FrozenTrial, parent: FrozenTrial | None,
                 best_before: tuple[int, float] | None, *, joint: bool) -> str:
    """One computed line: what changed against the parent, the diagnosis, the joint recovery's
    verdict (:func:`metab_opt.problem.joint.joint_summary`) where the study asks for it (``joint``),
    scale ambiguity (shifted R² > 0.9 with R² < 0.9), the record."""
    parts: list[str] = []
    r2 = trial_r2(trial)
    if trial.state == TrialState.FAIL:
        reason = trial.user_attrs.get("fail_reason")
        reason_text = " ".join(str(reason).split()) if reason else "no reason recorded"
        parts.append(f"training failed ({reason_text})")
    elif trial.state == TrialState.PRUNED:
        step = max(trial.intermediate_values) if trial.intermediate_values else None
        parts.append(f"pruned at step {step}" if step is not None else "pruned")
    parent_number = parent_id(trial)
    if parent_number is None:
        parts.append("block root" if ATTR_PARENT_ID in trial.user_attrs
                     else "no parent recorded")
    else:
        parent_r2 = trial_r2(parent) if parent is not None else None
        if r2 is not None and parent_r2 is not None:
            parts.append(f"ΔR² {fmt_delta(r2 - parent_r2)} vs parent {parent_number} "
                         f"({parent_r2:.3f} -> {r2:.3f})")
        else:
            parts.append(f"ΔR² {NA} vs parent {parent_number}")
    diagnosis = trial.user_attrs.get("diagnosis")
    if diagnosis:
        gap = finite(trial.user_attrs.get("degeneracy_gap"))
        gap_text = f" (gap {gap:.2f})" if gap is not None else ""
        parts.append(f"diagnosis {' '.join(str(diagnosis).split())}{gap_text}")
    # A k-only study records the joint metrics too, but is not judged on them: its entries
    # would otherwise list a homeostasis it never asked for as missing, run after run.
    verdict = joint_summary(trial.user_attrs) if joint else None
    if verdict:
        parts.append(f"joint {verdict}")
    shifted = finite(trial.user_attrs.get("rate_constants_R2_shifted"))
    r2_attr = finite(trial.user_attrs.get("rate_constants_R2"))
    r2_raw = r2_attr if r2_attr is not None else r2
    if (shifted is not None and r2_raw is not None and shifted > _AMBIGUITY_SHIFTED_R2
            and r2_raw < _AMBIGUITY_R2):
        offset = finite(trial.user_attrs.get("mean_log_offset"))
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
                 config: Config | None = None, joint: bool | None = None) -> str:
    """One trial's entry in the log form (ends with a newline).

    ``parent`` is the parent trial (for ΔR²); ``best_before`` the ``(trial number, R²)`` of the
    best trial finished before this one; ``next_parent`` the parent of the next trial, as the
    sampler decides it (``"root"`` for the config's base values, None when unknown; see
    :meth:`metab_opt.logbook.Logbook._next_parent`); ``base_params`` the config's knob values,
    against which extra knobs are shown; ``config`` supplies the values of log-form knobs that
    the study does not search; ``joint`` whether the Observation shows the joint recovery's
    verdict (None: where ``config`` asks for it,
    :func:`metab_opt.problem.joint.asks_joint_recovery`).
    """
    if base_params is None and config is not None:
        base_params = config.base_params()
    if joint is None:
        joint = asks_joint_recovery(config)
    strategy = text_attr(trial, ATTR_STRATEGY)
    block = int_or_none(trial.user_attrs.get(ATTR_BLOCK))
    mode = strategy if block is None else f"{strategy} (block {block})"
    lines = [
        f"## Iter {trial.number}: {status(trial)}",
        f"Node: id={node_id(trial)}, parent={parent_label(trial)}",
        f"Mode/Strategy: {mode}",
        f"Config: {_config_line(trial, base_params, config)}",
        f"Metrics: {_metrics_line(trial)}",
        f"Visual: {text_attr(trial, 'visual')}",
        f"Mutation: {text_attr(trial, ATTR_MUTATION)}",
        f"Parent rule: {text_attr(trial, ATTR_PARENT_RULE)}",
        f"Observation: {_observation(trial, parent, best_before, joint=joint)}",
        f"Next: parent={NA if next_parent is None else next_parent}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The UCB table


def _top_node(rows: Sequence[Mapping[str, Any]] | None) -> int | str | None:
    """The table's top node: ``root`` for an empty table, None when unknown."""
    if rows is None:
        return None
    if not rows:
        return "root"
    node = rows[0].get("node")
    return NA if node is None else node


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
            f"{NA if node is None else node!s:>6}  {fmt_metric(row.get('ucb')):>8}  "
            f"{parent_text:>6}  {NA if visits is None else visits!s:>6}  "
            f"{fmt_metric(row.get('r2')):>8}  {fmt_metric(row.get('test_pearson')):>12}  "
            f"{' '.join(str(row.get('mutation') or NA).split())}")
    return "\n".join(table) + "\n"


# ---------------------------------------------------------------------------------------------
# The exploration tree


def tree_nodes(trials: Iterable[FrozenTrial], *, n_iter_block: int | None = None
               ) -> list[dict[str, Any]]:
    """The nodes that :func:`metab_opt.tree_plot.plot_exploration_tree` draws (finished trials)."""
    return [
        {"node": node_id(t), "parent": parent_id(t), "r2": trial_r2(t),
         "mutation": t.user_attrs.get(ATTR_MUTATION),
         "strategy": t.user_attrs.get(ATTR_STRATEGY), "block": block_of(t, n_iter_block)}
        for t in sorted(trials, key=lambda t: t.number) if t.state in FINISHED_STATES
    ]
