"""Running a comparison: every sampler's repeats as studies in one storage, interleaved, each
resumed where it stopped; the report rebuilt after every study (see :mod:`metab_opt.compare`)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from metab_opt.compare.report import CompareReport, build_report, f3, minutes
from metab_opt.compare.results import ATTR, MAX_STEPS_ATTR, counted, studies_of, study_name
from metab_opt.compare.retrain import DEFAULT_RETRAIN_SEEDS, describe_result, retrain_incumbent
from metab_opt.config import Config, ConfigError
from metab_opt.logbook import trial_r2
from metab_opt.runner import run_study
from metab_opt.storage import open_storage
from metab_opt.study import SAMPLERS, make_sampler, open_study

__all__ = ["check_sampler_packages", "parse_samplers", "parse_seeds", "run_compare"]

# Optional packages an Optuna sampler needs at its first relative sample (not at import).
_SAMPLER_NEEDS = {"cmaes": ("cmaes", "cmaes"), "gp": ("scipy", "scipy")}


def parse_samplers(text: str | Sequence[str]) -> list[str]:
    """``"ucb,tpe"`` -> ``["ucb", "tpe"]``, order kept, duplicates dropped.

    An unknown name raises :class:`ConfigError` (the CLI's one-line error, exit 2).
    """
    known = SAMPLERS
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in items:
        kind = raw.strip().lower()
        if not kind:
            continue
        if kind not in known:
            raise ConfigError(f"--samplers: unknown sampler {raw.strip()!r} "
                              f"(expected a comma list from {','.join(known)})")
        if kind not in out:
            out.append(kind)
    if not out:
        raise ConfigError(f"--samplers: expected a comma list from {','.join(known)}, got "
                          f"{text!r}")
    return out


def _has_module(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_sampler_packages(samplers: Iterable[str]) -> None:
    """Fail before anything runs when a sampler's optional package is missing (Optuna would
    fail only at the sampler's first relative sample, trials into the study)."""
    for kind in samplers:
        if kind in _SAMPLER_NEEDS:
            module, dist = _SAMPLER_NEEDS[kind]
            if not _has_module(module):
                raise ConfigError(f"--samplers {kind}: Optuna's sampler needs the '{dist}' "
                                  f"package, which is not installed (pip install {dist}, "
                                  f"or the extra: pip install .[compare])")


# ---------------------------------------------------------------------------------------------
# Running


def _say(stream: TextIO | None, text: str) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def _discover(storage: Any, name: str, samplers: Sequence[str],
              repeats: int) -> tuple[list[str], int]:
    """The samplers and repeat count the report covers: the requested ones plus any other
    study of the same comparison already in the storage (e.g. a second run with cmaes,gp)."""
    found = studies_of(storage, name)
    extra = [s for s in SAMPLERS if s not in samplers and any(k[0] == s for k in found)]
    top = max((k[1] + 1 for k in found), default=0)
    return [*samplers, *extra], max(repeats, top)


def _record_command(study: Any, command: str) -> None:
    if not command:
        return
    cmds = list(study.user_attrs.get(f"{ATTR}compare_commands", []) or [])
    if command not in cmds:
        study.set_user_attr(f"{ATTR}compare_commands", [*cmds, command])


def _record_max_steps(study: Any, max_steps: int | None) -> None:
    """The step caps the study's trials ran under (None: none), for the report's budget line."""
    caps = list(study.user_attrs.get(MAX_STEPS_ATTR, []) or [])
    if max_steps not in caps:
        study.set_user_attr(MAX_STEPS_ATTR, [*caps, max_steps])


def parse_seeds(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"101,202"`` -> ``(101, 202)``: distinct training seeds >= 0 (ConfigError otherwise)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[int] = []
    for raw in items:
        word = str(raw).strip()
        if not word:
            continue
        try:
            seed = int(word)
        except ValueError:
            seed = -1
        if seed < 0 or seed in out:
            raise ConfigError(f"--retrain-seeds: expected distinct integers >= 0 separated by "
                              f"commas, got {text!r}")
        out.append(seed)
    if not out:
        raise ConfigError(f"--retrain-seeds: expected at least one training seed, got {text!r}")
    return tuple(out)


def run_compare(cfg: Config, *, samplers: Sequence[str], n_trials: int = 24, repeats: int = 3,
                first_seed: int = 0, root: str | Path = "studies", name: str | None = None,
                storage_url: str | None = None, n_jobs: int = 1, device: str = "auto",
                data_root: str | Path | None = None, max_steps: int | None = None,
                heartbeat_interval: int = 10, grace_period: int = 60, command: str = "",
                enqueue_base: bool = True, threads: int | None = 1,
                retrain_seeds: Sequence[int] = DEFAULT_RETRAIN_SEEDS,
                stream: TextIO | None = None) -> CompareReport:
    """Run (or resume) the comparison and write its report; returns the report.

    Studies run interleaved (repeat 0 of every sampler, then repeat 1, ...); repeat ``k`` is
    sampler seed ``k``, and ``first_seed`` starts at another one, so that several processes can
    share one comparison's storage, each with its own seeds (``--first-seed``). Each runs only the
    trials it is missing, then, once it has all ``n_trials``, its final incumbent is trained
    again with each of ``retrain_seeds`` it lacks (:mod:`metab_opt.compare.retrain`; stored in
    the study, so never twice). Every trial and retrain is capped at ``max_steps`` training
    steps. ``enqueue_base``: a new study of an Optuna sampler gets the config's
    base values as its first trial (the UCB sampler starts there anyway). ``threads``: torch
    CPU threads for the whole run (1: on a small shared CPU, a second OpenMP thread makes the
    end-of-run evaluation many times slower; None keeps torch's setting). The report is
    rebuilt after every study, so a comparison stopped early still has one.
    """
    import optuna

    kinds = parse_samplers(samplers)
    check_sampler_packages(kinds)
    seeds = parse_seeds(retrain_seeds)
    if n_trials < 1 or repeats < 1:
        raise ConfigError(f"--n-trials and --repeats must be >= 1, got {n_trials}, {repeats}")
    if first_seed < 0:
        raise ConfigError(f"--first-seed must be >= 0, got {first_seed}")
    name = name or f"compare_{cfg.name}"
    folder = Path(root) / name
    url = storage_url or f"sqlite:///{folder / 'compare.db'}"
    data = Path(data_root) if data_root is not None else Path(root) / "data"
    storage = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    if threads is not None and device != "cuda":
        import torch

        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = [(k, s) for k in range(first_seed, first_seed + repeats) for s in kinds]

    def report() -> CompareReport:
        report_samplers, report_repeats = _discover(storage, name, kinds,
                                                    first_seed + repeats)
        return build_report(storage, name, report_samplers, report_repeats, n_trials,
                            command=command, out_dir=folder)

    run = _Run(cfg=cfg, name=name, folder=folder, url=url, n_trials=n_trials, n_jobs=n_jobs,
               device=device, data=data, max_steps=max_steps,
               heartbeat_interval=heartbeat_interval, grace_period=grace_period,
               command=command, enqueue_base=enqueue_base, retrain_seeds=seeds,
               stream=stream)
    try:
        with warnings.catch_warnings():  # Optuna's experimental-feature notices, per study
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for i, (k, kind) in enumerate(plan, start=1):
                _run_one(run, storage, kind, k, f"[{i}/{len(plan)}]")
                report()
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            report()
        raise
    result = report()
    _say(stream, f"report: {result.path}, {result.png} and {result.steps_png}")
    return result


@dataclass(frozen=True)
class _Run:
    """The settings every study of one comparison run shares."""

    cfg: Config
    name: str
    folder: Path
    url: str
    n_trials: int
    n_jobs: int
    device: str
    data: Path
    max_steps: int | None
    heartbeat_interval: int
    grace_period: int
    command: str
    enqueue_base: bool
    retrain_seeds: tuple[int, ...]
    stream: TextIO | None


def _run_one(run: _Run, storage: Any, kind: str, k: int, tag: str) -> None:
    """Run the missing trials of one study, then the missing retrains of its final
    incumbent, with progress lines."""
    sname = study_name(run.name, kind, k)
    # Only to open (or create) the study: run_study builds the sampler that runs it, with the
    # config's prior (search.prior, which --prior extends).
    study = open_study(run.cfg, name=sname, storage=storage,
                       sampler=make_sampler(kind, run.cfg, k), sampler_kind=kind)
    head = f"{tag} {sname}"
    _run_trials(run, study, kind, k, head)

    def say(text: str) -> None:
        _say(run.stream, f"{head}: {text}")

    record = retrain_incumbent(run.cfg, storage, sname, n_trials=run.n_trials,
                               seeds=run.retrain_seeds, max_steps=run.max_steps,
                               out_dir=run.folder / sname / "retrains", data_root=run.data,
                               device=run.device, say=say)
    if record is not None:
        say(describe_result(record))


def _run_trials(run: _Run, study: Any, kind: str, k: int, head: str) -> None:
    """Run the trials the study is missing (none: one line saying so)."""
    from optuna.trial import TrialState

    sname = study.study_name
    trials = study.get_trials(deepcopy=False)
    done = len(counted(trials))
    missing = max(0, run.n_trials - done)
    if missing == 0:
        _say(run.stream, f"{head}: {done}/{run.n_trials} trials done, nothing to run")
        return
    waiting = any(t.state == TrialState.WAITING for t in trials)
    if run.enqueue_base and kind != "ucb" and done == 0 and not waiting:
        # the start of every study (also after the first run was interrupted before it counted)
        study.enqueue_trial(run.cfg.base_params())
    _record_command(study, run.command)
    _record_max_steps(study, run.max_steps)
    _say(run.stream, f"{head}: {done}/{run.n_trials} trials done, running {missing} "
                     f"(sampler {kind}, seed {k})")
    t0 = time.perf_counter()
    study = run_study(run.cfg, name=sname, root=run.folder, storage_url=run.url,
                      n_trials=missing, sampler_kind=kind, n_jobs=run.n_jobs, device=run.device,
                      seed=k, data_root=run.data, progress=False, max_steps=run.max_steps,
                      heartbeat_interval=run.heartbeat_interval, grace_period=run.grace_period,
                      plots=False)
    finished = counted(study.get_trials(deepcopy=False))[:run.n_trials]
    best = [v for v in (trial_r2(t) for t in finished) if v is not None]
    _say(run.stream, f"{head}: {len(finished)}/{run.n_trials} trials done in "
                     f"{minutes(time.perf_counter() - t0)}, best R2 "
                     f"{f3(max(best) if best else None)}")
