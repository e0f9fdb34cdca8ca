"""``metab-opt``: a thin command line over the package's functions.

Every subcommand's arguments and dispatch live here; the work is the library's (simulation,
objective, bench, replicate, runner, compare, best, pruning, dashboard). Bad input (an unknown
option, a bad config or ``--set``) is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metab_opt.cli_args import RETRAIN_SEEDS, UsageError, build_parser, unrecognized
from metab_opt.config import Config, ConfigError, load_config, parse_overrides

__all__ = ["main"]

def _load(args: argparse.Namespace, *, check_frozen: bool = True) -> Any:
    return load_config(args.config, overrides=parse_overrides(args.overrides),
                       check_frozen=check_frozen)


def _check_device(name: str) -> None:
    """Fail in one line (ConfigError) on a device this machine does not have."""
    from metab_opt.problem.training import select_device

    try:
        select_device(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _cmd_simulate(args: argparse.Namespace) -> int:
    from metab_opt.problem.simulation import load_or_build

    cfg = _load(args, check_frozen=False)
    t0 = time.perf_counter()
    ds, built = load_or_build(cfg.simulation, args.data_root, rebuild=args.rebuild)
    m = ds.manifest
    print(f"dataset {ds.path} ({'built' if built else 'cached'} in "
          f"{time.perf_counter() - t0:.1f} s)")
    print(f"  metabolites {m['n_metabolites']}, reactions {m['n_reactions']}, frames "
          f"{m['n_frames']} (+{m['n_test_frames']} test)")
    print(f"  activity rank {m['activity_rank']}, concentrations "
          f"{m['concentration_min']:.3g} .. {m['concentration_max']:.3g}")
    print(f"  oracle_R2 {m['oracle_R2']:.4f} (least squares with the true kinetics)")
    if "reaction_names" in m:  # a real model
        print(f"  nnz(S) {m['nnz_S']}"
              + (f", {m['n_trajectories']} trajectories" if "n_trajectories" in m else ""))
        bad = m.get("unidentified_reactions", [])
        if bad:
            shown = ", ".join(bad[:20]) + (f" (+{len(bad) - 20} more)" if len(bad) > 20 else "")
            print(f"  not identified by these data (oracle log10 k off by > 0.1): {len(bad)} "
                  f"reactions: {shown}")
        else:
            print("  every reaction identified by these data (oracle log10 k within 0.1)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from metab_opt.objective import HEADLINE, run_training
    from metab_opt.problem.training import TrainingDiverged

    cfg = _load(args)
    _check_device(args.device)  # fail early, before anything is written
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps: expected a positive integer, got {args.max_steps}")
    out = Path(args.out) if args.out else Path("studies") / "train" / cfg.name
    try:
        res = run_training(cfg, out_dir=out, data_root=args.data_root, device=args.device,
                           progress=not args.no_progress, max_steps=args.max_steps,
                           cuda_graph=not args.no_cuda_graph)
    except TrainingDiverged as exc:
        print(f"metab-opt train: training failed: {exc}", file=sys.stderr)
        return 1
    m = res.metrics
    for key in HEADLINE:
        print(f"{key}: {m[key]:.4g}" if isinstance(m[key], float) else f"{key}: {m[key]}")
    print(f"status: {m['status']} ({m['diagnosis']}); {m['visual']}")
    print(f"{m['steps']} steps in {m['training_seconds']:.1f} s ({m['steps_per_s']:.0f} steps/s "
          f"on {m['device']}); outputs in {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from metab_opt.problem.bench import bench

    cfg = _load(args)
    _check_device(args.device)
    if args.steps < 10:
        raise UsageError(f"--steps: expected at least 10, got {args.steps}")
    if not 1 <= args.rounds <= args.steps:
        raise UsageError(f"--rounds: expected 1 to --steps ({args.steps}), got {args.rounds}")
    if args.vs is not None:
        from metab_opt.problem.bench import bench_scale, scale_lines

        if args.seconds <= 0:
            raise UsageError(f"--seconds: expected > 0, got {args.seconds}")
        reference = load_config(args.vs, overrides=parse_overrides(args.overrides))
        out = bench_scale(cfg, reference, data_root=args.data_root, device=args.device,
                          threads=args.threads, cuda_graph=not args.no_cuda_graph,
                          fused=not args.no_fused, rounds=args.rounds, seconds=args.seconds,
                          product=args.product)
        print("\n".join(scale_lines(out)), file=sys.stderr)
        print(json.dumps(out))
        return 0
    print(json.dumps(bench(cfg, data_root=args.data_root, device=args.device, steps=args.steps,
                           threads=args.threads, cuda_graph=not args.no_cuda_graph,
                           fused=not args.no_fused, rounds=args.rounds)))
    return 0


def _cmd_replicate(args: argparse.Namespace) -> int:
    from metab_opt.replicate import DIVERGED, replicate

    cfg = _load(args)
    _check_device(args.device)
    bad = [s for s in args.seeds if s < 0]
    if bad or len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds: expected distinct integers >= 0, got "
                         f"{' '.join(map(str, args.seeds))}")
    out = Path(args.out) if args.out else Path("studies") / "replicate" / cfg.name

    def show(row: dict[str, Any]) -> None:
        if row["status"] == DIVERGED:
            print(f"seed {row['seed']}: diverged ({row['reason']})", flush=True)
            return
        print(f"seed {row['seed']}: R2 {row['rate_constants_R2']:.4f}, shifted "
              f"{row['rate_constants_R2_shifted']:.4f}, test_pearson {row['test_pearson']:.3f}, "
              f"outliers {row['n_outliers']}, {row['steps']} steps in "
              f"{row['training_seconds']:.0f} s ({row['wall_seconds']:.0f} s wall)", flush=True)

    result = replicate(cfg, seeds=args.seeds, out=out, data_root=args.data_root,
                       device=args.device, progress=not args.no_progress, on_run=show)
    for key, s in result["summary"].items():
        print(f"{key}: mean {s['mean']:.4f} sd {s['sd']:.4f} "
              f"(range {s['min']:.4f} .. {s['max']:.4f}, n = {s['n']})")
    print(f"runs and summary in {out}")
    # Exit 1 when a run diverged (no result); a finished run is a result whatever its R².
    return 0 if all(r["status"] != DIVERGED for r in result["runs"]) else 1


def _cmd_best(args: argparse.Namespace) -> int:
    from metab_opt.best import export_best
    from metab_opt.storage import open_existing

    storage, label = open_existing(args.name, root=args.root, storage_url=args.storage)
    out = Path(args.out) if args.out else Path(args.root) / args.name / f"{args.name}_best.yaml"
    inc, command = export_best(storage, args.name, out=out, storage_label=label,
                               force=args.force)
    print(f"incumbent of '{args.name}': {inc.describe()}")
    print(f"wrote {out} (trial {inc.run.number}'s training seed); train it again with "
          f"`{command}`")
    return 0


def _cmd_prune_check(args: argparse.Namespace) -> int:
    """Exit 0 when the replayed pruner stops no trial that mattered, 1 when it does."""
    import optuna

    from metab_opt.pruning import replay
    from metab_opt.storage import open_existing

    storage, _ = open_existing(args.name, root=args.root, storage_url=args.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.name, storage=storage,
                              sampler=optuna.samplers.RandomSampler())
    report = replay(study)
    print("\n".join(report.lines()))
    return 1 if report.lost else 0


def _cmd_study(args: argparse.Namespace) -> int:
    from metab_opt.storage import is_journal
    from metab_opt.study import check_resumable

    cfg = _with_prior(_load(args), args)
    if args.start_from is not None:
        from metab_opt.start_from import start_from

        before = cfg.base_params()
        cfg = start_from(cfg, args.start_from)
        moved = [f"{k} {before[k]} -> {v}" for k, v in cfg.base_params().items()
                 if v != before[k]]
        print(f"metab-opt study: the tree starts from {args.start_from}'s values"
              + (f" ({'; '.join(moved)})" if moved else " (the same as this config's)"),
              file=sys.stderr)
    # A refusal to resume and a bad storage are seconds faster than torch's import.
    check_resumable(cfg, name=args.study_name, root=args.root, storage_url=args.storage,
                    sampler_kind=args.sampler)
    _check_device(args.device)
    if args.storage and is_journal(args.storage):
        print("metab-opt study: note: a journal storage has no heartbeats; a worker killed "
              "outright leaves its trial RUNNING (fail it by hand before resuming)",
              file=sys.stderr)
    from metab_opt import workers as wk
    from metab_opt.problem.training import select_device
    from metab_opt.runner import run_study

    try:
        n_workers = wk.resolve(args.workers, on_cpu=select_device(args.device).type == "cpu")
    except ValueError as exc:
        raise UsageError(f"metab-opt study: error: {exc}") from None
    n_trials = args.n_trials if args.n_trials is not None else cfg.search.n_trials
    trial_shares = wk.shares(n_trials, n_workers)

    def run(n: int | None, progress: bool = not args.no_progress) -> Any:
        return run_study(cfg, name=args.study_name, root=args.root,
                         storage_url=args.storage, n_trials=n,
                         timeout=args.timeout, sampler_kind=args.sampler,
                         pruner=args.pruner, n_jobs=args.n_jobs, device=args.device,
                         seed=args.seed, data_root=args.data_root,
                         progress=progress, max_steps=args.max_steps,
                         plots=not args.no_plots,
                         heartbeat_interval=args.heartbeat_interval,
                         grace_period=args.grace_period)

    t0 = time.perf_counter()
    extra: wk.Workers | None = None
    failed: list[str] = []
    try:
        if len(trial_shares) > 1:
            # The study and the dataset first, so that the workers find both.
            study = run(0, progress=False)
            folder = Path(args.root) / study.study_name / "workers"
            extra = wk.Workers(args.argv, trial_shares[1:], folder)
            print(f"metab-opt study: {len(trial_shares)} worker processes share {n_trials} "
                  f"trials ({', '.join(map(str, trial_shares))}); this one shows its own, the "
                  f"others log to {folder}/", file=sys.stderr)
        study = run(trial_shares[0] if extra is not None else args.n_trials)
    except KeyboardInterrupt:
        if extra is not None:
            extra.interrupt()
            extra.wait()
        print("metab-opt study: interrupted; the running trial is marked failed and the "
              "logs are flushed. Run the same command to resume.", file=sys.stderr)
        return 130
    if extra is not None:
        try:
            codes = extra.wait()
        except KeyboardInterrupt:
            extra.interrupt()
            extra.wait()
            print("metab-opt study: interrupted; the workers' running trials are marked "
                  "failed. Run the same command to resume.", file=sys.stderr)
            return 130
        failed = [str(log) for log, code in zip(extra.logs, codes, strict=True) if code != 0]
        if failed:
            print(f"metab-opt study: {len(failed)} worker(s) did not finish: see "
                  f"{', '.join(failed)}", file=sys.stderr)
    _print_summary(study, cfg, args.root, time.perf_counter() - t0)
    return 1 if extra is not None and failed else 0


def _with_prior(cfg: Config, args: argparse.Namespace) -> Config:
    """The config with ``--prior`` added to its ``search.prior``, each checked now (resolved,
    sharing a knob with the study): a bad prior is one line before anything is written."""
    from metab_opt.prior import check_prior, with_prior

    cfg = with_prior(cfg, args.prior)
    if cfg.search.prior:
        kinds = getattr(args, "samplers", None) or [getattr(args, "sampler", "ucb")]
        check_prior(cfg, root=args.root, storage_url=args.storage, samplers=kinds)
    return cfg


def _cmd_prior(args: argparse.Namespace) -> int:
    from metab_opt.prior import export_prior, resolve, show_prior, write_prior

    if args.prior_command == "show":
        print(show_prior(resolve(args.prior, root=args.root, storage_url=args.storage)))
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"metab-opt prior export: {out} exists (--force to overwrite it)")
    content = export_prior(args.names, root=args.root, storage_url=args.storage)
    write_prior(content, out)
    n = sum(len(s["trials"]) for s in content["studies"])
    print(f"wrote {out}: {len(content['studies'])} studies, {n} finished trials")
    return 0


def _print_summary(study: Any, cfg: Config, root: str, seconds: float) -> None:
    import optuna

    from metab_opt.best import trials_incumbent
    from metab_opt.trial_record import own_trials

    trials = own_trials(study.trials)  # a prior's trials copied in (tpe, gp) are not its own
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    also = f", {pruned} pruned" if pruned else ""
    print(f"study '{study.study_name}': {len(trials)} trials ({len(done)} complete{also}) "
          f"in storage; this run {seconds / 60:.1f} min")
    # The incumbent the sampler and the memory file name (a replicate group), not Optuna's
    # single best trial, which a lucky training seed can put on top.
    inc = trials_incumbent(study.study_name, study.get_trials(deepcopy=False), cfg)
    if inc is not None:
        print(f"incumbent: {inc.describe()}; export it with `metab-opt best "
              f"{study.study_name} --root {root}`")
    folder = Path(root) / study.study_name
    print(f"logs: {folder / (study.study_name + '_analysis.md')}, "
          f"{folder / (study.study_name + '_memory.md')}")
    print(f"browse: metab-opt dashboard {study.study_name} --root {root}")


def _compare_command_line(args: argparse.Namespace, samplers: Sequence[str],
                          retrain_seeds: Sequence[int] | None = None) -> str:
    """The command that reproduces this run (options in a fixed order, defaults left out)."""
    parts = ["metab-opt", "compare", "--config", str(args.config)]
    for item in getattr(args, "overrides", []) or []:
        parts += ["--set", item]
    for item in getattr(args, "prior", []) or []:
        parts += ["--prior", item]
    parts += ["--samplers", ",".join(samplers),
              "--n-trials", str(args.n_trials), "--repeats", str(args.repeats)]
    optional = (("--first-seed", "first_seed", 0), ("--name", "name", None),
                ("--root", "root", "studies"),
                ("--storage", "storage", None), ("--n-jobs", "n_jobs", 1),
                ("--device", "device", "auto"), ("--data-root", "data_root", None),
                ("--max-steps", "max_steps", None))
    for flag, attr, default in optional:
        value = getattr(args, attr, default)
        if value != default:
            parts += [flag, str(value)]
    seeds = ",".join(map(str, retrain_seeds)) if retrain_seeds is not None else RETRAIN_SEEDS
    if seeds != RETRAIN_SEEDS:
        parts += ["--retrain-seeds", seeds]
    return shlex.join(parts)


def _cmd_compare(args: argparse.Namespace) -> int:
    """Bad input is a ConfigError (one line, exit 2, nothing written)."""
    from metab_opt.compare import check_sampler_packages, parse_samplers, run_compare
    from metab_opt.compare.run import parse_seeds

    samplers = parse_samplers(args.samplers)
    check_sampler_packages(samplers)
    seeds = parse_seeds(args.retrain_seeds)
    args.samplers = samplers
    cfg = _with_prior(_load(args), args)
    if args.device != "auto":
        _check_device(args.device)
    try:
        run_compare(cfg, samplers=samplers, n_trials=args.n_trials, repeats=args.repeats,
                    first_seed=args.first_seed, root=args.root, name=args.name,
                    storage_url=args.storage,
                    n_jobs=args.n_jobs, device=args.device, data_root=args.data_root,
                    max_steps=args.max_steps, heartbeat_interval=args.heartbeat_interval,
                    grace_period=args.grace_period, retrain_seeds=seeds,
                    command=_compare_command_line(args, samplers, seeds))
    except KeyboardInterrupt:
        print("metab-opt compare: interrupted; a running trial is marked failed and does not "
              "count, an unfinished retrain is run again. Run the same command to resume.",
              file=sys.stderr)
        return 130
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from metab_opt.dashboard import serve
    from metab_opt.storage import open_existing

    storage, _ = open_existing(args.name, root=args.root, storage_url=args.storage)
    serve(storage, host=args.host, port=args.port,
          artifacts=Path(args.root) / args.name / "artifacts")
    return 0


_COMMANDS = {"simulate": _cmd_simulate, "train": _cmd_train, "bench": _cmd_bench,
             "replicate": _cmd_replicate, "study": _cmd_study, "compare": _cmd_compare,
             "best": _cmd_best, "prune-check": _cmd_prune_check, "dashboard": _cmd_dashboard,
             "prior": _cmd_prior}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # study --workers: the copies
        if extra:
            raise UsageError(unrecognized(parser, args.command, extra))
        return _COMMANDS[args.command](args)
    except (UsageError, ConfigError) as exc:
        msg = str(exc)
        prefix = "" if msg.startswith("metab-opt") else "metab-opt: error: "
        print(f"{prefix}{msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metab-opt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
