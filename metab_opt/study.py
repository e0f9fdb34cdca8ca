"""Studies: storage, create or resume, the samplers, the run loop and the CLI commands.

The Optuna storage is the single source of truth. A study folder ``<root>/<name>/`` holds
``study.db`` (the SQLite default), ``artifacts/`` (the trials' plots, Optuna's
``FileSystemArtifactStore``), ``trials/`` (each run's outputs) and the logbook's views.

Kill safety: with an RDB storage (SQLite, PostgreSQL, MySQL) every running trial sends a
heartbeat; on the next start a trial whose heartbeat stopped (a worker killed outright) is
marked failed and re-queued with its parameters by ``RetryHeartbeatStaleTrialCallback``.
Heartbeats exist only under ``study.optimize`` and not in a journal storage: a journal-file
study keeps a killed worker's trial RUNNING until someone fails it by hand.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metab_opt.config import Config, ConfigError, load_config, parse_overrides

__all__ = [
    "SAMPLERS",
    "StudyMismatch",
    "add_compare_arguments",
    "add_dashboard_arguments",
    "add_study_arguments",
    "check_device",
    "check_resumable",
    "default_storage_url",
    "make_sampler",
    "open_storage",
    "open_study",
    "run_command",
    "run_study",
]

SAMPLERS = ("ucb", "tpe", "random", "cmaes", "gp")
PRUNERS = ("none", "median")
_ATTR = "metab_opt:"  # namespace of the study's own attrs


class StudyMismatch(ConfigError):
    """An existing study was started with another config; it cannot be resumed with this one."""


class StorageError(ConfigError):
    """A storage URL that cannot be used: unknown scheme, missing driver, unreachable server."""


# ---------------------------------------------------------------------------------------------
# Storage


def default_storage_url(root: str | Path, name: str) -> str:
    return f"sqlite:///{Path(root) / name / 'study.db'}"


def open_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int = 60) -> Any:
    """An Optuna storage for a URL, with heartbeats and stale-trial retry where supported.

    ``sqlite:///path``, ``postgresql://...``, ``mysql://...`` -> RDBStorage;
    ``journal:///path`` or a path ending in ``.log`` / ``.journal`` -> a journal file (no
    heartbeats: see the module docstring).
    """
    import optuna

    if _is_journal(url):
        from optuna.storages.journal import JournalFileBackend

        path = _journal_path(url)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        except OSError as exc:
            raise StorageError(f"--storage {url}: cannot open {path} "
                               f"({exc.strerror or exc})") from None
    scheme = url.split(":", 1)[0].split("+", 1)[0] if ":" in url else ""
    if scheme not in ("sqlite", "postgresql", "postgres", "mysql"):
        raise StorageError(f"--storage {url!r}: unknown scheme '{scheme or url}' (use sqlite:///"
                           f"PATH, postgresql://USER@HOST/DB, mysql://..., or journal:///PATH)")
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"--storage {url}: cannot create {Path(path).parent} "
                                   f"({exc.strerror or exc})") from None
        # Several workers on one SQLite file wait for the lock instead of failing at once
        # with "database is locked" (Optuna FAQ).
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    engine_url = url
    if scheme.startswith("postgres"):
        engine_url = _postgres_url(url)
        if engine_url.split("://", 1)[0] in ("postgresql+psycopg2", "postgresql+psycopg"):
            # An unreachable host fails after 10 s instead of hanging on the OS's TCP timeout.
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        for attempt in range(6):
            try:
                # Heartbeats and the retry callback are "experimental".
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(
                        engine_url, engine_kwargs=engine_kwargs,
                        heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                        heartbeat_stale_trial_callback=_retry_stale_trial_callback(3),
                    )
                return _record_stale_reason(storage, grace_period)
            except Exception as exc:
                if attempt == 5 or not _table_creation_race(exc):
                    raise
                # Workers started together on a new database raced to create Optuna's tables
                # (PostgreSQL's CREATE TABLE IF NOT EXISTS is not atomic): they exist now.
                time.sleep(0.2 * (attempt + 1))
    except ImportError as exc:
        # Optuna re-raises SQLAlchemy's ModuleNotFoundError as a plain ImportError ("Failed to
        # import DB access module"): the driver's name is on the cause.
        cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
        module = getattr(cause, "name", None) or "unknown module"
        if scheme.startswith("postgres"):
            how = ("install it with `pip install .[postgres]`" if module == "psycopg2" else
                   f"install {module}, or use a postgresql:// URL after `pip install .[postgres]`")
        else:
            how = "install a MySQL driver, e.g. `pip install PyMySQL` with a mysql+pymysql:// URL"
        raise StorageError(f"--storage {_redact(url)}: the database driver is missing "
                           f"({module}); {how}") from None
    except Exception as exc:  # sqlalchemy.exc.OperationalError and friends
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"--storage {_redact(url)}: cannot connect ({reason})") from None


def open_existing(name: str, *, root: str | Path = "studies",
                  storage_url: str | None = None) -> tuple[Any, str]:
    """The storage of an existing study and its URL (redacted), for commands that read one
    (``dashboard``, ``best``): ConfigError, one line, when the database file is missing, the
    storage cannot be read or does not hold the study. Creates nothing."""
    import optuna

    url = storage_url or default_storage_url(root, name)
    if url.startswith("sqlite:///") and not Path(url.split(":///", 1)[1]).exists():
        raise ConfigError(f"no study database at {url.split(':///', 1)[1]} "
                          f"(run `metab-opt study` first, or pass --storage)")
    if _is_journal(url) and not Path(_journal_path(url)).exists():
        raise ConfigError(f"no study journal at {_journal_path(url)} "
                          f"(run `metab-opt study` first, or pass --storage)")
    storage = open_storage(url)
    try:
        names = sorted(s.study_name for s in optuna.study.get_all_study_summaries(storage))
    except Exception as exc:  # a file that is not a database, a broken journal
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"--storage {_redact(url)}: cannot read it ({reason})") from None
    if name not in names:
        raise ConfigError(f"no study '{name}' in {_redact(url)} (it holds: "
                          f"{', '.join(names) or 'no study'})")
    return storage, _redact(url)


def _record_stale_reason(storage: Any, grace_period: int) -> Any:
    """Make the storage write a stale trial's ``fail_reason`` when it reports the trial stale.

    Optuna's ``fail_stale_trials``, which every worker runs before each of its trials, asks the
    storage for the stale trials and fails them at once; a finished trial takes no attribute,
    so the reason is written in between, while the trial still runs. (A note taken in the
    objective comes too late: by then Optuna has failed the trial.)
    """
    find = storage._get_stale_trial_ids
    reason = f"worker lost (no heartbeat for over {grace_period} s: killed or crashed)"

    def stale_trial_ids(study_id: int) -> list[int]:
        ids = find(study_id)
        for trial_id in ids:
            try:
                storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            except Exception:  # finished meanwhile (another worker), or a storage hiccup
                pass
        return ids

    storage._get_stale_trial_ids = stale_trial_ids
    return storage


def _table_creation_race(exc: BaseException) -> bool:
    """Whether an error is the loss of a race to create the storage's tables."""
    text = str(getattr(exc, "orig", None) or exc)
    # PostgreSQL: "already exists" / "duplicate key". SQLite, two workers started together on
    # a new file: "UNIQUE constraint failed: alembic_version.version_num" (both stamped the
    # schema version) or an OperationalError "table ... already exists".
    return type(exc).__name__ in ("IntegrityError", "ProgrammingError", "OperationalError") and (
        "already exists" in text or "duplicate key" in text
        or "UNIQUE constraint failed" in text)


def _postgres_url(url: str) -> str:
    """``postgres://`` or ``postgresql://`` with an installed driver named.

    SQLAlchemy no longer knows ``postgres://``, and its default driver for a bare
    ``postgresql://`` is psycopg2 before 2.1 and psycopg (3) from 2.1; the ``postgres`` extra
    installs psycopg2. A URL that names its driver (``postgresql+pg8000://``) is kept.
    """
    import importlib.util

    head, rest = url.split("://", 1) if "://" in url else (url, "")
    driver = head.partition("+")[2]
    if not driver:
        driver = next((d for d in ("psycopg2", "psycopg") if importlib.util.find_spec(d)),
                      "psycopg2")
    return f"postgresql+{driver}://{rest}"


# The sampler's decision, which a retry keeps: the retried trial is the same node run again.
_DECISION_ATTRS = ("node_id", "parent_id", "block", "strategy", "mutation", "parent_rule")


def _is_journal(url: str) -> bool:
    return url.startswith("journal://") or url.endswith((".log", ".journal"))


def _journal_path(url: str) -> str:
    """``journal:///abs/path`` -> ``/abs/path``; ``journal://rel`` and a bare path as given."""
    if url.startswith("journal:///"):
        return "/" + url.removeprefix("journal:///")
    return url.removeprefix("journal://")


def _retry_stale_trial_callback(max_retry: int | None) -> Any:
    """Optuna's ``RetryHeartbeatStaleTrialCallback``, minus the dead run's results.

    Optuna's callback re-queues a stale trial (its worker killed outright) as a WAITING trial
    with the same params and system attrs (``failed_trial``, ``retry_history``, the sampler's
    record) and *all* its user attrs. A dead run may have stored metrics or a ``fail_reason``
    before it died, and a retry that inherited them would report them as its own: only the
    sampler's decision is passed on (the objective renumbers ``node_id`` and adds ``retry_of``).
    """
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
        def __call__(self, study: Any, trial: Any) -> None:
            trimmed = copy.copy(trial)
            trimmed.user_attrs = {k: v for k, v in trial.user_attrs.items()
                                  if k in _DECISION_ATTRS}
            super().__call__(study, trimmed)

    return RetryStaleTrial(max_retry=max_retry)


def _redact(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        head, tail = url.split("://", 1)
        creds, host = tail.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{head}://{user}:***@{host}" if ":" in creds else url
    return url


# ---------------------------------------------------------------------------------------------
# Samplers


def make_sampler(kind: str, cfg: Config, seed: int | None) -> Any:
    """The UCB sampler or one of Optuna's samplers over the same search space."""
    import optuna

    if kind == "ucb":
        from metab_opt.sampler import UCBMutationSampler

        return UCBMutationSampler.from_config(cfg, seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        # CMA-ES handles the numeric knobs; categoricals fall back to independent sampling.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {kind!r}")


def _make_pruner(kind: str) -> Any:
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------------------------
# Create or resume


def _fingerprint(cfg: Config, sampler: str) -> dict[str, str]:
    """What must match for a study to be resumed: the data, the search space, the model."""
    body = cfg.to_dict()
    model_training = json.dumps({"graph_model": body["graph_model"],
                                 "training": body["training"]}, sort_keys=True, default=str)
    return {
        "simulation": cfg.simulation_hash(),
        "search space": cfg.search_space_hash(),
        "model and training": hashlib.sha256(model_training.encode()).hexdigest()[:16],
        "sampler": sampler,
    }


def open_study(cfg: Config, *, name: str, storage: Any, sampler: Any, sampler_kind: str,
               pruner: Any = None) -> Any:
    """Create the study, or load it after checking it was started with the same config."""
    import optuna

    fp = _fingerprint(cfg, sampler_kind)
    existing = {s.study_name for s in optuna.study.get_all_study_summaries(storage)}
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    if name in existing and _check_fingerprint(study.user_attrs, cfg, name, fp):
        return study
    study.set_user_attr(f"{_ATTR}fingerprint", fp)
    study.set_user_attr(f"{_ATTR}config_path", cfg.path)
    study.set_user_attr(f"{_ATTR}config", cfg.to_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["rate_constants_R2"])
    return study


def _check_fingerprint(user_attrs: dict[str, Any], cfg: Config, name: str,
                       fp: dict[str, str]) -> bool:
    """True when the study was started with this config; StudyMismatch when with another;
    False when it has no fingerprint (created by something else, or before one was stored)."""
    stored = user_attrs.get(f"{_ATTR}fingerprint")
    if stored is None:
        return False
    differs = [k for k in fp if stored.get(k) != fp[k]]
    if differs:
        raise StudyMismatch(
            f"study '{name}' was started with another {' and '.join(differs)} "
            f"({_describe_changes(user_attrs, cfg, fp, stored, differs)}); resume it with "
            f"that config ({user_attrs.get(_ATTR + 'config_path', '?')} as it was) or choose "
            f"another --study-name")
    return True


def check_resumable(cfg: Config, *, name: str | None = None, root: str | Path = "studies",
                    storage_url: str | None = None, sampler_kind: str = "ucb") -> None:
    """Refuse, before anything heavy is imported or anything is written, to resume a study that
    was started with another config (:class:`StudyMismatch`); a bad storage URL raises
    :class:`StorageError`. A storage that does not exist yet is left alone (not created)."""
    import optuna

    name = name or cfg.name
    url = storage_url or default_storage_url(root, name)
    if url.startswith("sqlite:///") and not Path(url.split(":///", 1)[1]).exists():
        return
    if _is_journal(url) and not Path(_journal_path(url)).exists():
        return
    storage = open_storage(url)
    if name not in {s.study_name for s in optuna.study.get_all_study_summaries(storage)}:
        return
    user_attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    _check_fingerprint(user_attrs, cfg, name, _fingerprint(cfg, sampler_kind))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _describe_changes(user_attrs: dict[str, Any], cfg: Config, fp: dict[str, str],
                      stored: dict[str, str], differs: list[str], limit: int = 3) -> str:
    """``simulation.seed: 7 -> 8, ...``: the config keys that differ from the stored config."""
    parts = []
    if "sampler" in differs:
        parts.append(f"sampler: {stored.get('sampler')} -> {fp['sampler']}")
    before = user_attrs.get(f"{_ATTR}config")
    if isinstance(before, dict):
        old = _flatten(before)
        # The stored config went through JSON: compare the current one in the same form.
        new = _flatten(json.loads(json.dumps(cfg.to_dict(), default=str)))
        sections = {"simulation": ("simulation",), "search space": ("search.knobs",),
                    "model and training": ("graph_model", "training")}
        where = tuple(f"{p}." for k in differs for p in sections.get(k, ()))
        keys = sorted(k for k in set(old) | set(new) if k.startswith(where))
        missing = object()
        for key in keys:
            a, b = old.get(key, missing), new.get(key, missing)
            if a != b:
                parts.append(f"{key}: {'unset' if a is missing else a} -> "
                             f"{'unset' if b is missing else b}")
    if not parts:
        return "the stored config differs in a way not listed"
    more = f", and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


# ---------------------------------------------------------------------------------------------
# Running


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
        value = trial.value if trial.value is not None else a.get("rate_constants_R2")
        r2 = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"
        try:
            best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "n/a"
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


def _no_next_parent(study: Any) -> None:
    return None  # a baseline sampler has no tree


def run_study(cfg: Config, *, name: str | None = None, root: str | Path = "studies",
              storage_url: str | None = None, n_trials: int | None = None,
              timeout: float | None = None, sampler_kind: str = "ucb", pruner: str = "none",
              n_jobs: int = 1, device: str = "auto", seed: int | None = 0,
              data_root: str | Path | None = None, progress: bool = True,
              max_steps: int | None = None, heartbeat_interval: int = 10,
              grace_period: int = 60, plots: bool = True) -> Any:
    """Run (or resume) a study; returns it. ``n_trials`` more trials are run (default: the
    config's ``search.n_trials``). ``plots=False`` skips each trial's plots and artifacts (and
    the tree drawing): the metrics and logs are the same, and a trial of a short training
    costs about half as much.

    On the way out, however it goes (Ctrl-C re-raises KeyboardInterrupt), no trial started by
    this process is left RUNNING: one the objective did not finish is failed with reason
    ``interrupted`` or ``aborted: ...``; then the logbook writes every missing entry. A
    killed worker's trial (stale heartbeat, older than ``grace_period`` seconds) is failed
    at start-up with reason ``worker lost ...`` and re-queued with its params."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    from metab_opt.logbook import Logbook
    from metab_opt.objective import Objective

    # Optuna's INFO lines ("A new study created", "Trial 3 finished") would double the
    # study's own progress lines; its warnings (failed trials) stay.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = name or cfg.name
    paths = StudyPaths(Path(root), name)
    url = storage_url or default_storage_url(root, name)
    storage = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    sampler = make_sampler(sampler_kind, cfg, seed)
    study = open_study(cfg, name=name, storage=storage, sampler=sampler,
                       sampler_kind=sampler_kind, pruner=_make_pruner(pruner))
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    # Only the UCB sampler has a tree and a UCB table; the baselines' logs say so.
    logbook = Logbook(paths.folder, name, config=cfg, draw_tree=plots and sampler_kind == "ucb",
                      ucb_scores=None if sampler_kind == "ucb" else _no_ucb_table,
                      next_parent=None if sampler_kind == "ucb" else _no_next_parent,
                      artifact_store=FileSystemArtifactStore(str(paths.artifacts)))
    # A worker killed outright left its trial RUNNING: fail it (and queue its retry) before the
    # views are synced, so that its entry comes in trial order.
    _fail_stale_trials(study)
    logbook.sync(study)  # views missing after a crash are written from the storage
    objective = Objective(cfg, root=paths.folder,
                          data_root=data_root if data_root is not None else Path(root) / "data",
                          device=device, artifact_store=FileSystemArtifactStore(
                              str(paths.artifacts)), progress=progress and n_jobs == 1,
                          max_steps=max_steps, plots=plots)
    objective.dataset()  # build or load the dataset once, before the first trial
    n = n_trials if n_trials is not None else cfg.search.n_trials
    line = _ProgressLine(n)
    owned = _track_trials(sampler)

    reason = "aborted"
    log_filter = _QuietFailures()
    optimize_logger = logging.getLogger("optuna.study._optimize")
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
        _fail_owned_running(study, owned, reason)
        logbook.sync(study)
    return study


class _QuietFailures(logging.Filter):
    """Optuna logs a failed trial with its traceback; for Ctrl-C and a diverged training the
    traceback says nothing (the reason is in the trial's ``fail_reason``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        training = sys.modules.get("metab_opt.training")
        quiet: tuple[type[BaseException], ...] = (KeyboardInterrupt,)
        if training is not None and hasattr(training, "TrainingDiverged"):
            quiet += (training.TrainingDiverged,)
        if isinstance(exc, quiet):
            record.exc_info = None
            record.exc_text = None
        return True


def _track_trials(sampler: Any) -> set[int]:
    """The ids of the trials this process starts (every started trial passes the sampler's
    ``before_trial``, even one whose sampling then fails)."""
    owned: set[int] = set()
    before_trial = sampler.before_trial

    def tracked(study: Any, trial: Any) -> None:
        owned.add(trial._trial_id)
        before_trial(study, trial)

    sampler.before_trial = tracked
    return owned


def _fail_owned_running(study: Any, owned: set[int], reason: str) -> None:
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    for trial_id in sorted(owned):
        try:
            if storage.get_trial(trial_id).state != TrialState.RUNNING:
                continue
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile (another worker failed it as stale)
        except Exception as exc:  # the storage itself is gone: say so, do not mask the cause
            print(f"metab-opt study: could not mark trial id {trial_id} failed ({exc})",
                  file=sys.stderr)


def _fail_stale_trials(study: Any) -> None:
    """Fail the stale trials now (Optuna would do it before the next trial) and queue their
    retries; the storage records the reason (:func:`_record_stale_reason`)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


# ---------------------------------------------------------------------------------------------
# CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    _no_abbreviations(p)
    p.add_argument("--config", default="configs/rank50.yaml",
                   help="YAML config (default: configs/rank50.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--root", default="studies", help="output root (default: studies/)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///<root>/<name>/study.db)")
    p.add_argument("--n-jobs", type=_positive_int, default=1, help="parallel trials (threads)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-root", default=None, help="dataset cache (default: <root>/data)")
    p.add_argument("--max-steps", type=_positive_int, default=None,
                   help="cap the training steps of every trial (smoke tests)")
    p.add_argument("--heartbeat-interval", type=_positive_int, default=10,
                   help="seconds between a running trial's heartbeats (RDB storages)")
    p.add_argument("--grace-period", type=_positive_int, default=60,
                   help="seconds without heartbeat before a trial counts as dead")


def _no_abbreviations(p: argparse.ArgumentParser) -> None:
    # argparse takes an unambiguous prefix for the option: ``--n-trial 3`` would silently mean
    # ``--n-trials 3`` (and change meaning the day an option with that prefix is added). A
    # study is resumed by repeating its command: spelled-out options only, and a misspelling
    # gets the parser's "did you mean" instead.
    p.allow_abbrev = False


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--study-name", default=None, help="default: the config's name")
    p.add_argument("--n-trials", type=_positive_int, default=None,
                   help="trials to run now (default: the config's search.n_trials)")
    p.add_argument("--timeout", type=_positive_float, default=None, help="seconds")
    p.add_argument("--sampler", choices=SAMPLERS, default="ucb")
    p.add_argument("--pruner", choices=PRUNERS, default="none")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no training progress bar")
    p.add_argument("--no-plots", action="store_true",
                   help="skip each trial's plots and artifacts (metrics and logs unchanged)")


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--samplers", default="ucb,tpe,random",
                   help=f"comma-separated, from {','.join(SAMPLERS)}")
    p.add_argument("--n-trials", type=_positive_int, default=24)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--name", default=None, help="comparison name (default: compare_<config>)")


def add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    _no_abbreviations(p)
    p.add_argument("name", help="study name (its folder under --root)")
    p.add_argument("--root", default="studies")
    p.add_argument("--storage", default=None,
                   help="storage URL (default: sqlite:///<root>/<name>/study.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8080)


def _load_cfg(args: argparse.Namespace) -> Config:
    return load_config(args.config, overrides=parse_overrides(args.overrides))


def check_device(name: str) -> None:
    """Fail in one line (ConfigError) on a device this machine does not have."""
    from metab_opt.training import select_device

    try:
        select_device(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run_command(args: argparse.Namespace) -> int:
    if args.command == "study":
        cfg = _load_cfg(args)
        # A refusal to resume and a bad storage are seconds faster than torch's import.
        check_resumable(cfg, name=args.study_name, root=args.root, storage_url=args.storage,
                        sampler_kind=args.sampler)
        check_device(args.device)
        if args.storage and _is_journal(args.storage):
            print("metab-opt study: note: a journal storage has no heartbeats; a worker killed "
                  "outright leaves its trial RUNNING (fail it by hand before resuming)",
                  file=sys.stderr)
        t0 = time.perf_counter()
        try:
            study = run_study(cfg, name=args.study_name, root=args.root,
                              storage_url=args.storage, n_trials=args.n_trials,
                              timeout=args.timeout, sampler_kind=args.sampler,
                              pruner=args.pruner, n_jobs=args.n_jobs, device=args.device,
                              seed=args.seed, data_root=args.data_root,
                              progress=not args.no_progress, max_steps=args.max_steps,
                              plots=not args.no_plots,
                              heartbeat_interval=args.heartbeat_interval,
                              grace_period=args.grace_period)
        except KeyboardInterrupt:
            print("metab-opt study: interrupted; the running trial is marked failed and the "
                  "logs are flushed. Run the same command to resume.", file=sys.stderr)
            return 130
        _print_summary(study, cfg, args.root, time.perf_counter() - t0)
        return 0
    if args.command == "compare":
        from metab_opt.compare import run_compare_command

        return run_compare_command(args)
    if args.command == "dashboard":
        return _dashboard(args)
    raise ConfigError(f"unknown command {args.command!r}")


def _print_summary(study: Any, cfg: Config, root: str, seconds: float) -> None:
    import optuna

    from metab_opt.best import study_incumbent

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    print(f"study '{study.study_name}': {len(study.trials)} trials ({len(done)} complete) "
          f"in storage; this run {seconds / 60:.1f} min")
    # The incumbent the sampler and the memory file name (a replicate group), not Optuna's
    # single best trial, which a lucky training seed can put on top.
    inc = study_incumbent(study._storage, study.study_name, cfg)
    if inc is not None:
        print(f"incumbent: {inc.describe()}; export it with `metab-opt best "
              f"{study.study_name} --root {root}`")
    folder = Path(root) / study.study_name
    print(f"logs: {folder / (study.study_name + '_analysis.md')}, "
          f"{folder / (study.study_name + '_memory.md')}")
    print(f"browse: metab-opt dashboard {study.study_name} --root {root}")


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind(address)
    except (OSError, OverflowError) as exc:  # OverflowError: a port above 65535
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot serve on {host}:{port} ({reason})") from None


def _dashboard(args: argparse.Namespace) -> int:
    import optuna
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    url = args.storage or default_storage_url(args.root, args.name)
    if url.startswith("sqlite:///") and not Path(url.split(":///", 1)[1]).exists():
        raise ConfigError(f"no study database at {url.split(':///', 1)[1]} "
                          f"(run `metab-opt study` first, or pass --storage)")
    if _is_journal(url) and not Path(_journal_path(url)).exists():
        raise ConfigError(f"no study journal at {_journal_path(url)} "
                          f"(run `metab-opt study` first, or pass --storage)")
    storage = open_storage(url)
    names = sorted(s.study_name for s in optuna.study.get_all_study_summaries(storage))
    if args.name not in names:
        raise ConfigError(f"no study '{args.name}' in {_redact(url)} (it holds: "
                          f"{', '.join(names) or 'no study'})")
    artifacts = Path(args.root) / args.name / "artifacts"
    store = FileSystemArtifactStore(str(artifacts)) if artifacts.exists() else None
    _check_port(args.host, args.port)  # before the server prints its banner
    print(f"optuna-dashboard on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port,
                                    artifact_store=store)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # the port is taken, the host is not ours
        raise ConfigError(f"cannot serve on {args.host}:{args.port} "
                          f"({exc.strerror or exc})") from None
    return 0
