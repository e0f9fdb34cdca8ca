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
import hashlib
import json
import math
import sys
import time
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

    if url.startswith("journal://") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal://").removeprefix("/") if url.startswith(
            "journal:///") else url.removeprefix("journal://")
        if url.startswith("journal:///"):
            path = "/" + path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    scheme = url.split(":", 1)[0].split("+", 1)[0] if ":" in url else ""
    if scheme not in ("sqlite", "postgresql", "postgres", "mysql"):
        raise StorageError(f"--storage {url!r}: unknown scheme '{scheme or url}' (use sqlite:///"
                           f"PATH, postgresql://USER@HOST/DB, mysql://..., or journal:///PATH)")
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Several workers on one SQLite file wait for the lock instead of failing at once
        # with "database is locked" (Optuna FAQ).
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=3),
        )
    except ModuleNotFoundError as exc:
        extra = "postgres" if scheme.startswith("postgres") else scheme
        raise StorageError(f"--storage {_redact(url)}: the database driver is missing "
                           f"({exc.name}); install it with `pip install .[{extra}]`") from None
    except Exception as exc:  # sqlalchemy.exc.OperationalError and friends
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"--storage {_redact(url)}: cannot connect ({reason})") from None


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
    if name in existing:
        stored = study.user_attrs.get(f"{_ATTR}fingerprint")
        if stored is not None:
            differs = [k for k in fp if stored.get(k) != fp[k]]
            if differs:
                raise StudyMismatch(
                    f"study '{name}' was started with another {' and '.join(differs)} "
                    f"(config {study.user_attrs.get(_ATTR + 'config_path', '?')}); "
                    f"resume it with that config or choose another --study-name")
            return study
    study.set_user_attr(f"{_ATTR}fingerprint", fp)
    study.set_user_attr(f"{_ATTR}config_path", cfg.path)
    study.set_user_attr(f"{_ATTR}config", cfg.to_dict())
    study.set_metric_names(["rate_constants_R2"])
    return study


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
        print(f"[{self.done}/{self.total}] trial {trial.number} {trial.state.name.lower()}: "
              f"R2 {r2} | parent {parent if parent is not None else 'root'} | "
              f"{a.get('strategy', '-')} | {a.get('mutation', '-')} | best {best}",
              file=self.stream, flush=True)


def run_study(cfg: Config, *, name: str | None = None, root: str | Path = "studies",
              storage_url: str | None = None, n_trials: int | None = None,
              timeout: float | None = None, sampler_kind: str = "ucb", pruner: str = "none",
              n_jobs: int = 1, device: str = "auto", seed: int | None = 0,
              data_root: str | Path | None = None, progress: bool = True,
              max_steps: int | None = None, heartbeat_interval: int = 10,
              grace_period: int = 60) -> Any:
    """Run (or resume) a study; returns it. ``n_trials`` more trials are run (default: the
    config's ``search.n_trials``)."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    from metab_opt.logbook import Logbook
    from metab_opt.objective import Objective

    name = name or cfg.name
    paths = StudyPaths(Path(root), name)
    url = storage_url or default_storage_url(root, name)
    storage = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    sampler = make_sampler(sampler_kind, cfg, seed)
    study = open_study(cfg, name=name, storage=storage, sampler=sampler,
                       sampler_kind=sampler_kind, pruner=_make_pruner(pruner))
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    logbook = Logbook(paths.folder, name, config=cfg)
    logbook.sync(study)  # views missing after a crash are written from the storage
    objective = Objective(cfg, root=paths.folder,
                          data_root=data_root if data_root is not None else Path(root) / "data",
                          device=device, artifact_store=FileSystemArtifactStore(
                              str(paths.artifacts)), progress=progress and n_jobs == 1,
                          max_steps=max_steps)
    objective.dataset()  # build or load the dataset once, before the first trial
    n = n_trials if n_trials is not None else cfg.search.n_trials
    line = _ProgressLine(n)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study.optimize(objective, n_trials=n, timeout=timeout, n_jobs=n_jobs,
                       catch=(Exception,), callbacks=[logbook, line])
    finally:
        logbook.sync(study)
    return study


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
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


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--samplers", default="ucb,tpe,random",
                   help=f"comma-separated, from {','.join(SAMPLERS)}")
    p.add_argument("--n-trials", type=_positive_int, default=24)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--name", default=None, help="comparison name (default: compare_<config>)")


def add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="study name (its folder under --root)")
    p.add_argument("--root", default="studies")
    p.add_argument("--storage", default=None,
                   help="storage URL (default: sqlite:///<root>/<name>/study.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive_int, default=8080)


def _load_cfg(args: argparse.Namespace) -> Config:
    return load_config(args.config, overrides=parse_overrides(args.overrides))


def _check_device(name: str) -> None:
    from metab_opt.training import select_device

    try:
        select_device(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run_command(args: argparse.Namespace) -> int:
    if args.command == "study":
        cfg = _load_cfg(args)
        _check_device(args.device)
        t0 = time.perf_counter()
        try:
            study = run_study(cfg, name=args.study_name, root=args.root,
                              storage_url=args.storage, n_trials=args.n_trials,
                              timeout=args.timeout, sampler_kind=args.sampler,
                              pruner=args.pruner, n_jobs=args.n_jobs, device=args.device,
                              seed=args.seed, data_root=args.data_root,
                              progress=not args.no_progress, max_steps=args.max_steps,
                              heartbeat_interval=args.heartbeat_interval,
                              grace_period=args.grace_period)
        except KeyboardInterrupt:
            print("metab-opt study: interrupted; the running trial is marked failed and the "
                  "logs are flushed. Run the same command to resume.", file=sys.stderr)
            return 130
        _print_summary(study, args.root, time.perf_counter() - t0)
        return 0
    if args.command == "compare":
        from metab_opt.compare import run_compare_command

        return run_compare_command(args)
    if args.command == "dashboard":
        return _dashboard(args)
    raise ConfigError(f"unknown command {args.command!r}")


def _print_summary(study: Any, root: str, seconds: float) -> None:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    print(f"study '{study.study_name}': {len(study.trials)} trials ({len(done)} complete) "
          f"in storage; this run {seconds / 60:.1f} min")
    if done:
        best = study.best_trial
        print(f"best: trial {best.number}, rate_constants_R2 {best.value:.4f}")
    folder = Path(root) / study.study_name
    print(f"logs: {folder / (study.study_name + '_analysis.md')}, "
          f"{folder / (study.study_name + '_memory.md')}")
    print(f"browse: metab-opt dashboard {study.study_name} --root {root}")


def _dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    url = args.storage or default_storage_url(args.root, args.name)
    if url.startswith("sqlite:///") and not Path(url.split(":///", 1)[1]).exists():
        raise ConfigError(f"no study database at {url.split(':///', 1)[1]} "
                          f"(run `metab-opt study` first, or pass --storage)")
    storage = open_storage(url)
    artifacts = Path(args.root) / args.name / "artifacts"
    store = FileSystemArtifactStore(str(artifacts)) if artifacts.exists() else None
    print(f"optuna-dashboard on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port,
                                    artifact_store=store)
    except KeyboardInterrupt:
        return 0
    return 0
