"""The logbook: an Optuna callback that writes the study's human-readable views.

After every finished trial (complete, pruned or failed) the :class:`Logbook` callback

- appends the trial's entry, in the instructions' log form, to ``<dir>/<name>_analysis.md``
  (append-only, each entry exactly once, repaired from the storage: :mod:`._journal`);
- rewrites ``<dir>/<name>_memory.md``, the working memory (measured mutation effects, parameter
  importances, best configurations, block summaries, the current block, open questions), never
  longer than :data:`MEMORY_MAX_LINES` lines (:mod:`._memory`);
- rewrites ``<dir>/ucb_scores.txt``, the current block's UCB table;
- draws ``<dir>/exploration_tree.png`` through :func:`metab_opt.tree_plot.plot_exploration_tree`;
- stores the memory text as the study's optuna-dashboard note, each entry as its trial's note,
  and (given an artifact store) the tree and the analysis log as study artifacts
  (:mod:`metab_opt.dashboard_views`).

The Optuna storage is the single source of truth: every line is computed from the trials, and
nothing is ever read back out of the markdown files. A trial is read as the sampler records and
counts it (:mod:`metab_opt.trial_record`, :mod:`metab_opt.ucbtree`): its R², its status, its
parent, its changes, its replicate group; a failed trial's R² shows as n/a.

Numbering: an entry's ``Iter N`` is the trial number (0-based, as Optuna and its dashboard count),
which is also the sampler's node id, so ``Iter 7`` and ``Node: id=7`` name the same trial and
``parent=P`` names ``Iter P``.

One module per job: ``_read`` (reading a trial, writing values), ``_entry`` (the log entry, the
UCB table's text, the tree's nodes), ``_memory`` (the working memory), ``_journal`` (the durable
analysis file and its index), ``_callback`` (:class:`Logbook`). This package needs neither torch
nor the model: the sampler and the plots are imported lazily.
"""

from __future__ import annotations

from ._callback import Logbook
from ._entry import LOG_FORM_KNOBS, format_entry, format_ucb_scores, tree_nodes
from ._memory import MEMORY_MAX_LINES, param_importances, render_memory, replicate_groups
from ._read import FINISHED_STATES, trial_r2

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
