"""The :class:`Logbook` callback: after every finished trial, the study's views from the storage.

Disk errors never reach Optuna: they become one warning line; the trial stays in the storage and
:meth:`Logbook.sync` (run at start-up) writes whatever is missing. The sampler and the plots are
imported lazily (neither is needed to write the log).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
from optuna.trial import FrozenTrial

from metab_opt._io import atomic_write
from metab_opt.dashboard_views import DashboardViews
from metab_opt.problem.joint import asks_joint_recovery
from metab_opt.trial_record import own_trials, seed_knob

from ._entry import format_entry, format_ucb_scores, tree_nodes
from ._journal import AnalysisLog
from ._memory import MEMORY_MAX_LINES, param_importances, render_memory
from ._read import FINISHED_STATES, NA, best_of, parent_id, trial_r2

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.study import Study

    from metab_opt.config import Config

__all__ = ["Logbook"]

logger = logging.getLogger(__package__)

# The sampler's decision for the trial after a given one: (study, the trials to decide from)
# -> the parent's trial number (negative: the base values), or None for no tree.
NextParent = Callable[[Any, Sequence[FrozenTrial]], "int | None"]


def _parent_text(parent: int | None) -> int | str | None:
    """A parent as the log writes it: ``root`` for the config's base values (a negative id)."""
    if parent is None:
        return None
    return "root" if parent < 0 else int(parent)


def _finished_by(trials: Sequence[FrozenTrial], trial: FrozenTrial) -> list[FrozenTrial]:
    """The study as it stood when ``trial`` finished: the trials finished by then, by number.

    Trials still running at that moment are left out (their running state is not recorded), so
    a late entry's ``Next`` may differ from what a live callback would have written when
    several workers ran at once.
    """
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
    return sorted(out, key=lambda t: t.number)


class Logbook:
    """Optuna callback writing the study's markdown views (see :mod:`metab_opt.logbook`).

    ``directory`` is the study's folder; ``study_name`` names the files; ``config`` (optional)
    gives the base params, the knob order, the training seed's knob (left out of the
    importances), the block length, the values of log-form knobs the study does not search and
    whether the study asks for the joint recovery (the joint verdict is shown only then).
    ``ucb_scores(study)`` replaces :func:`metab_opt.sampler.ucb_scores` (e.g. for a baseline
    sampler without a tree) and
    ``next_parent(study, trials)`` replaces :func:`metab_opt.sampler.next_parent` (the parent
    the sampler gives the trial after ``trials``, the study as it stands or as it stood when an
    earlier trial finished; None from it: no tree); ``draw_tree`` and ``dashboard_note`` switch
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
                 next_parent: NextParent | None = None,
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
        self._log = AnalysisLog(self.analysis_path, self.index_path, study_name)
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
        trials = own_trials(study.get_trials(deepcopy=False))
        if current is not None:
            # A finished trial never changes, so the callback's copy equals the storage's; it
            # also covers a storage that does not list the trial yet.
            trials = [t for t in trials if t.number != current.number] + [current]
        rows = self._ucb_rows(study)
        finished = [t for t in trials if t.state in FINISHED_STATES]
        # The sampler's next decision, computed once: the memory's header and the live entry's
        # Next line both name it.
        next_now = self._predict_parent(study, trials)
        importances = param_importances(study, seed_knob=seed_knob(self.config))
        memory = self.render_memory(trials, importances=importances, next_parent=next_now,
                                    prior=self._prior_lines(study, trials))
        # No block number in the header: the sampler's table may already be the next block's.
        last = max((t.number for t in finished), default=None)
        ucb_text = (format_ucb_scores(rows, after=last) if rows is not None
                    else "# UCB scores unavailable (see the study log)\n")
        noted = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with filelock.FileLock(str(self.lock_path), timeout=self.lock_timeout):
                try:
                    self._write_entries(study, trials, current, next_now)
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
                      next_parent: int | str | None = None,
                      prior: Sequence[str] | None = None) -> str:
        """:func:`metab_opt.logbook.render_memory` with this logbook's config."""
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
                             seed_knob=seed_knob(cfg), joint=asks_joint_recovery(cfg),
                             prior=prior, max_lines=self.max_memory_lines)

    def _prior_lines(self, study: Any, trials: Sequence[FrozenTrial]) -> list[str] | None:
        """The UCB sampler's account of its prior (None: another sampler, or no prior)."""
        report = getattr(getattr(study, "sampler", None), "prior_report", None)
        if report is None:
            return None
        try:
            return report(study, trials=trials)
        except Exception as exc:  # a view: never the reason a trial's logs go unwritten
            self._warn("prior", f"the prior's account could not be computed ({exc})")
            return None

    @property
    def _base_params(self) -> dict[str, Any] | None:
        return self.config.base_params() if self.config is not None else None

    @property
    def _n_iter_block(self) -> int | None:
        return self.config.search.n_iter_block if self.config is not None else None

    # -- the analysis log ---------------------------------------------------------------------

    def _write_entries(self, study: Study, trials: Sequence[FrozenTrial],
                       current: FrozenTrial | None, next_now: int | str | None) -> None:
        """Append the missing entries; ``next_now`` is the live trial's Next (the sampler's
        decision on ``trials`` as they are), the others' is computed as of their end."""
        index = self._log.reconcile(trials)
        finished = [t for t in trials if t.state in FINISHED_STATES]
        missing = sorted((t for t in finished if t.number not in index.written),
                         key=lambda t: t.number)
        if current is not None and index.written:
            # In a callback, only this trial and long-finished orphans; trials another worker
            # has just finished are left to that worker, whose Next line is the live one.
            missing = [t for t in missing if t.number == current.number or self._orphan(t)]
        if not missing:
            return
        by_number = {t.number: t for t in finished}
        chunks = []
        for t in missing:
            live = current is not None and t.number == current.number
            next_parent = next_now if live else self._predict_parent(study,
                                                                     _finished_by(trials, t))
            chunks.append("\n" + self._entry(t, finished, by_number, next_parent))
        self._log.append(index, (t.number for t in missing), "".join(chunks))
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
        parent_number = parent_id(trial)
        parent = by_number.get(parent_number) if parent_number is not None else None
        before = [t for t in _finished_by(finished, trial) if t.number != trial.number]
        best = best_of(before)
        best_r2 = trial_r2(best) if best is not None else None
        best_before = (best.number, best_r2) if best is not None and best_r2 is not None else None
        return format_entry(trial, parent=parent, best_before=best_before,
                            next_parent=next_parent, base_params=self._base_params,
                            config=self.config)

    def _predict_parent(self, study: Any, trials: Sequence[FrozenTrial]) -> int | str | None:
        """The parent the sampler gives the next trial on ``trials`` (:func:`metab_opt.sampler
        .next_parent`: its decision computed, not the UCB table's top row)."""
        func = self._next_parent_func
        if func is None:
            try:
                from metab_opt.sampler import UCBMutationSampler, next_parent
            except ImportError as exc:
                self._warn("next-import", f"logbook: no next parent ({exc}); Next is {NA}")
                return None
            if not isinstance(getattr(study, "sampler", None), UCBMutationSampler):
                return None  # another sampler: no tree, no parent

            def func(study: Any, trials: Sequence[FrozenTrial]) -> int | None:
                return next_parent(study, trials=trials)
        try:
            return _parent_text(func(study, trials))
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
                self._warn("ucb-import", f"logbook: no UCB table ({exc}); Next is {NA}")
                return None
        try:
            return list(func(study))
        except Exception as exc:  # a table failure must not cost the entry
            self._warn(f"ucb:{type(exc).__name__}",
                       f"logbook: ucb_scores failed ({type(exc).__name__}: {exc})")
            return None

    def _draw_tree(self, trials: Sequence[FrozenTrial]) -> None:
        try:
            from metab_opt.tree_plot import plot_exploration_tree
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
