"""Opening a study's Optuna storage: URLs, drivers, heartbeats, stale trials, one-line errors.

The Optuna storage is the single source of truth. A study folder ``<root>/<name>/`` holds
``study.db`` (the SQLite default), ``artifacts/`` (the trials' plots), ``trials/`` (each run's
outputs) and the logbook's views.

Kill safety: with an RDB storage (SQLite, PostgreSQL, MySQL) every running trial sends a
heartbeat; on the next start a trial whose heartbeat stopped (a worker killed outright) is
marked failed, with the reason ``worker lost ...``, and re-queued with its parameters by
``RetryHeartbeatStaleTrialCallback``. Heartbeats exist only under ``study.optimize`` and not in
a journal storage: a journal-file study keeps a killed worker's trial RUNNING until someone
fails it by hand.

Every Optuna internal used here goes through :mod:`metab_opt._optuna_internals`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from metab_opt import _optuna_internals as internals
from metab_opt.config import ConfigError

__all__ = [
    "DECISION_ATTRS",
    "StorageError",
    "default_storage_url",
    "is_journal",
    "journal_path",
    "missing_storage",
    "open_existing",
    "open_storage",
    "redact",
]

# The sampler's decision, which a retry keeps: the retried trial is the same node run again.
DECISION_ATTRS = ("node_id", "parent_id", "block", "strategy", "mutation", "parent_rule")


class StorageError(ConfigError):
    """A storage URL that cannot be used: unknown scheme, missing driver, unreachable server."""


def default_storage_url(root: str | Path, name: str) -> str:
    return f"sqlite:///{Path(root) / name / 'study.db'}"


def is_journal(url: str) -> bool:
    return url.startswith("journal://") or url.endswith((".log", ".journal"))


def journal_path(url: str) -> str:
    """``journal:///abs/path`` -> ``/abs/path``; ``journal://rel`` and a bare path as given."""
    if url.startswith("journal:///"):
        return "/" + url.removeprefix("journal:///")
    return url.removeprefix("journal://")


def missing_storage(url: str) -> str | None:
    """``"no study database at PATH"`` (or journal) when the URL names a local file that does
    not exist; None otherwise (a server's URL, or a file that exists)."""
    if url.startswith("sqlite:///") and not Path(url.split(":///", 1)[1]).exists():
        return f"no study database at {url.split(':///', 1)[1]}"
    if is_journal(url) and not Path(journal_path(url)).exists():
        return f"no study journal at {journal_path(url)}"
    return None


def redact(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        head, tail = url.split("://", 1)
        creds, host = tail.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{head}://{user}:***@{host}" if ":" in creds else url
    return url


def open_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int = 60) -> Any:
    """An Optuna storage for a URL, with heartbeats and stale-trial retry where supported.

    ``sqlite:///path``, ``postgresql://...``, ``mysql://...`` -> RDBStorage;
    ``journal:///path`` or a path ending in ``.log`` / ``.journal`` -> a journal file (no
    heartbeats: see the module docstring).
    """
    import optuna

    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend

        path = journal_path(url)
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
    # Built before the connection attempt: a changed Optuna internal is named, not reported as
    # "cannot connect" by the handler below.
    retry = internals.retry_stale_trial_callback(3, keep=DECISION_ATTRS)
    try:
        storage = _connect(engine_url, engine_kwargs, heartbeat_interval, grace_period, retry)
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
        raise StorageError(f"--storage {redact(url)}: the database driver is missing "
                           f"({module}); {how}") from None
    except Exception as exc:  # sqlalchemy.exc.OperationalError and friends
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"--storage {redact(url)}: cannot connect ({reason})") from None
    _record_stale_reason(storage, grace_period)
    return storage


def _connect(engine_url: str, engine_kwargs: dict[str, Any], heartbeat_interval: int,
             grace_period: int, retry: Any) -> Any:
    import optuna

    for attempt in range(6):
        try:
            # Heartbeats and the retry callback are "experimental".
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    engine_url, engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=retry,
                )
        except Exception as exc:
            if attempt == 5 or not _table_creation_race(exc):
                raise
            # Workers started together on a new database raced to create Optuna's tables
            # (PostgreSQL's CREATE TABLE IF NOT EXISTS is not atomic): they exist now.
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # the last attempt returned or raised


def open_existing(name: str, *, root: str | Path = "studies",
                  storage_url: str | None = None) -> tuple[Any, str]:
    """The storage of an existing study and its URL (redacted), for commands that read one
    (``dashboard``, ``best``): ConfigError, one line, when the database file is missing, the
    storage cannot be read or does not hold the study. Creates nothing."""
    import optuna

    url = storage_url or default_storage_url(root, name)
    missing = missing_storage(url)
    if missing:
        raise ConfigError(f"{missing} (run `metab-opt study` first, or pass --storage)")
    storage = open_storage(url)
    try:
        names = sorted(s.study_name for s in optuna.study.get_all_study_summaries(storage))
    except Exception as exc:  # a file that is not a database, a broken journal
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"--storage {redact(url)}: cannot read it ({reason})") from None
    if name not in names:
        raise ConfigError(f"no study '{name}' in {redact(url)} (it holds: "
                          f"{', '.join(names) or 'no study'})")
    return storage, redact(url)


def _record_stale_reason(storage: Any, grace_period: int) -> None:
    """Make the storage write a stale trial's ``fail_reason`` when it reports the trial stale.

    Optuna's ``fail_stale_trials``, which every worker runs before each of its trials, asks the
    storage for the stale trials and fails them at once; a finished trial takes no attribute,
    so the reason is written in between, while the trial still runs. (A note taken in the
    objective comes too late: by then Optuna has failed the trial.)
    """
    reason = f"worker lost (no heartbeat for over {grace_period} s: killed or crashed)"

    def note(trial_ids: list[int]) -> None:
        for trial_id in trial_ids:
            try:
                storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            except Exception:  # finished meanwhile (another worker), or a storage hiccup
                pass

    internals.on_stale_trials(storage, note)


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
