"""Running a study: the trials, the progress line, the logbook, and what happens on the way out.

:func:`run_study` opens the storage (:mod:`metab_opt.storage`), creates or resumes the study
(:mod:`metab_opt.study`) and runs ``n_trials`` more trials of the objective
(:class:`metab_opt.objective.Objective`) under ``study.optimize``, with the logbook and a
progress line as callbacks.

Its guarantees: a worker killed outright left its trial RUNNING; it is failed (reason ``worker
lost ...``) and re-queued before anything runs. On the way out, however it goes (Ctrl-C, an error
in the sampler), no trial started by this process is left RUNNING, and the logbook writes every
missing entry. Optuna's public API only: its internals go through
:mod:`metab_opt._optuna_internals`.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metab_opt import _optuna_internals as internals
from metab_opt.config import Config
from metab_opt.logbook import Logbook, trial_r2
from metab_opt.storage import default_storage_url, open_storage
from metab_opt.study import make_pruner, make_sampler, open_study
from metab_opt.trial_record import own_trials

__all__ = ["StudyPaths", "run_study"]


@dataclass
class StudyPaths:
    root: Path
    name: str

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"


class _ProgressLine:
    """A study-level line per finished trial: parent, strategy, mutation, R², best so far."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stdout

    def __call__(self, study: Any, trial: Any) -> None:
        self.done += 1
        a = trial.user_attrs
        # The logbook's definition of a trial's R² (a pruned trial: its last report).
        value = trial_r2(trial)
        r2 = f"{value:.4f}" if value is not None else "n/a"
        from optuna.trial import TrialState

        # The study's own trials: a prior's copied in (tpe, gp) are none of its results.
        complete = [t for t in own_trials(study.get_trials(deepcopy=False))
                    if t.state == TrialState.COMPLETE and t.value is not None]
        top = max(complete, key=lambda t: t.value, default=None)
        best = "n/a" if top is None else f"{top.value:.4f} (trial {top.number})"
        parent = a.get("parent_id")
        if parent is None:
            parent = "-"  # a baseline sampler: no tree
        elif isinstance(parent, int) and parent < 0:
            parent = "root"  # the sampler's -1: the config's base values
        retry = f" (retry of {a['retry_of']})" if a.get("retry_of") is not None else ""
        print(f"[{self.done}/{self.total}] trial {trial.number}{retry} "
              f"{trial.state.name.lower()}: R2 {r2} | parent {parent} | "
              f"{a.get('strategy', '-')} | {a.get('mutation', '-')} | best {best}",
              file=self.stream, flush=True)


def _no_ucb_table(study: Any) -> list[dict[str, Any]]:
    return []


def run_study(cfg: Config, *, name: str | None = None, root: str | Path = "studies",
              storage_url: str | None = None, n_trials: int | None = None,
              timeout: float | None = None, sampler_kind: str = "ucb", pruner: str | None = None,
              n_jobs: int = 1, device: str = "auto", seed: int | None = 0,
              data_root: str | Path | None = None, progress: bool = True,
              max_steps: int | None = None, heartbeat_interval: int = 10,
              grace_period: int = 60, plots: bool = True) -> Any:
    """Run (or resume) a study; returns it. ``n_trials`` more trials are run (default: the
    config's ``search.n_trials``); ``pruner`` (none, median, safe) defaults to the config's
    ``search.pruner``. ``plots=False`` skips each trial's plots and artifacts (and
    the tree drawing): the metrics and logs are the same, and a trial of a short training
    costs about half as much.

    On the way out, however it goes (Ctrl-C re-raises KeyboardInterrupt), no trial started by
    this process is left RUNNING: one the objective did not finish is failed with reason
    ``interrupted`` or ``aborted: ...``; then the logbook writes every missing entry. A
    killed worker's trial (stale heartbeat, older than ``grace_period`` seconds) is failed
    at start-up with reason ``worker lost ...`` and re-queued with its params."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    from metab_opt.objective import Objective, held_params
    from metab_opt.problem.simulation import load_or_build

    # The dataset before the storage: a regime that cannot be simulated (one that diverges, an
    # SBML file refused) is a one-line error with nothing written, not a study of failed trials.
    data_root = data_root if data_root is not None else Path(root) / "data"
    load_or_build(cfg.simulation, data_root)

    # Optuna's INFO lines ("A new study created", "Trial 3 finished") would double the
    # study's own progress lines; its warnings (failed trials) stay.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = name or cfg.name
    paths = StudyPaths(Path(root), name)
    url = storage_url or default_storage_url(root, name)
    storage = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    prior = None
    if cfg.search.prior and sampler_kind != "random":  # random takes none
        from metab_opt.prior import resolve_all

        prior = resolve_all(cfg.search.prior, root=root, storage_url=storage_url)
    sampler = make_sampler(sampler_kind, cfg, seed, prior=prior, max_steps=max_steps)
    study = open_study(cfg, name=name, storage=storage, sampler=sampler,
                       sampler_kind=sampler_kind,
                       pruner=make_pruner(pruner if pruner is not None else cfg.search.pruner,
                                          cfg))
    if prior and sampler_kind in ("tpe", "gp"):
        from metab_opt.prior import add_prior_trials

        add_prior_trials(study, prior, cfg, sampler_kind)
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    # Only the UCB sampler has a tree and a UCB table; the baselines' logs say so.
    logbook = Logbook(paths.folder, name, config=cfg, draw_tree=plots and sampler_kind == "ucb",
                      ucb_scores=None if sampler_kind == "ucb" else _no_ucb_table,
                      artifact_store=FileSystemArtifactStore(str(paths.artifacts)))
    # A worker killed outright left its trial RUNNING: fail it (and queue its retry) before the
    # views are synced, so that its entry comes in trial order.
    _fail_stale_trials(study)
    logbook.sync(study)  # views missing after a crash are written from the storage
    objective = Objective(cfg, root=paths.folder,
                          data_root=data_root,
                          device=device, artifact_store=FileSystemArtifactStore(
                              str(paths.artifacts)), progress=progress and n_jobs == 1,
                          max_steps=max_steps, plots=plots,
                          held=held_params(cfg, sampler_kind))  # seed: ucb's alone
    objective.dataset()  # build or load the dataset once, before the first trial
    n = n_trials if n_trials is not None else cfg.search.n_trials
    line = _ProgressLine(n)
    owned = _track_trials(sampler)

    reason = "aborted"
    log_filter = _QuietFailures()
    optimize_logger = internals.optimize_logger()
    optimize_logger.addFilter(log_filter)
    try:
        study.optimize(objective, n_trials=n, timeout=timeout, n_jobs=n_jobs,
                       catch=(Exception,), callbacks=[logbook, line])
    except KeyboardInterrupt:
        reason = "interrupted"
        raise
    except BaseException as exc:
        reason = f"aborted: {type(exc).__name__}: {exc}".splitlines()[0]
        raise
    finally:
        optimize_logger.removeFilter(log_filter)
        # Never leave a trial of this process RUNNING (an interrupt or an error outside the
        # objective, e.g. in the sampler): nothing else would ever finish it.
        _fail_owned_running(storage, study.study_name, owned, reason)
        logbook.sync(study)
    return study


class _QuietFailures(logging.Filter):
    """Optuna logs a failed trial with its traceback; for Ctrl-C and a diverged training the
    traceback says nothing (the reason is in the trial's ``fail_reason``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # Looked up, not imported: the training module (torch) is loaded by the objective.
        training = sys.modules.get("metab_opt.problem.training")
        quiet: tuple[type[BaseException], ...] = (KeyboardInterrupt,)
        if training is not None and hasattr(training, "TrainingDiverged"):
            quiet += (training.TrainingDiverged,)
        if isinstance(exc, quiet):
            record.exc_info = None
            record.exc_text = None
        return True


def _track_trials(sampler: Any) -> set[int]:
    """The numbers of the trials this process starts.

    Every trial Optuna starts passes the sampler's ``before_trial`` (public ``BaseSampler``
    API: called right after the trial is created), even one whose sampling then fails; a
    callback would not do: Optuna calls callbacks only for trials that reached the objective.
    """
    owned: set[int] = set()
    before_trial = sampler.before_trial

    def tracked(study: Any, trial: Any) -> None:
        owned.add(trial.number)
        before_trial(study, trial)

    sampler.before_trial = tracked
    return owned


def _fail_owned_running(storage: Any, study_name: str, owned: set[int], reason: str) -> None:
    """Fail, with ``reason``, every trial in ``owned`` (numbers) that is still RUNNING."""
    import optuna
    from optuna.trial import TrialState

    study_id: int | None = None
    for number in sorted(owned):
        trial_id: int | None = None
        try:
            if study_id is None:
                study_id = storage.get_study_id_from_name(study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            if storage.get_trial(trial_id).state != TrialState.RUNNING:
                continue
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile (another worker failed it as stale)
        except Exception as exc:  # the storage itself is gone: say so, do not mask the cause
            which = f"trial id {trial_id}" if trial_id is not None else f"trial {number}"
            print(f"metab-opt study: could not mark {which} failed ({exc})", file=sys.stderr)


def _fail_stale_trials(study: Any) -> None:
    """Fail the stale trials now (Optuna would do it before the next trial) and queue their
    retries; the storage records the reason (:func:`metab_opt.storage.open_storage`)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
