"""``metab-opt``: a thin command line over the package's functions.

Bad input (an unknown option, a bad config or ``--set``) is one line on stderr and exit code 2,
with nothing written.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from metab_opt.config import ConfigError, load_config, parse_overrides
from metab_opt.study import check_device

__all__ = ["main"]

DEFAULT_CONFIG = "configs/rank50.yaml"


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _unrecognized(parser: argparse.ArgumentParser, command: str, extra: Sequence[str]) -> str:
    """The error for arguments the subcommand ``command`` does not take, with a suggestion from
    that subcommand's own options (argparse would report them from the top-level parser, and
    suggest from every subcommand: ``train --no-progress`` was told "did you mean
    --no-progress?")."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    known = sorted({o for a in sub.choices[command]._actions for o in a.option_strings})
    message = f"metab-opt {command}: error: unrecognized arguments: {' '.join(extra)}"
    for word in extra:
        match = difflib.get_close_matches(word.split("=")[0], known, n=1)
        if word.startswith("-") and match:
            return f"{message} (did you mean {match[0]}?)"
    return message


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_config(p: argparse.ArgumentParser, *, default: str | None = DEFAULT_CONFIG) -> None:
    p.add_argument("--config", default=default, help=f"YAML config (default: {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metab-opt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("simulate", help="build (or reuse) the dataset of a config")
    _add_config(p)
    p.add_argument("--data-root", default=None, help="dataset cache (default: studies/data)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if cached")

    p = sub.add_parser("train", help="one training run with plots and metrics")
    _add_config(p)
    p.add_argument("--out", default=None, help="output folder (default: studies/train/<name>)")
    p.add_argument("--data-root", default=None, help="dataset cache (default: studies/data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="on a GPU, run each step eagerly instead of replaying a CUDA graph")
    _add_progress(p)

    p = sub.add_parser("bench", help="trainer speed against a per-sample reference")
    _add_config(p)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=2000, help="timed steps per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="on a GPU, time the eager step instead of the CUDA-graph replay")
    p.add_argument("--no-fused", action="store_true",
                   help="time the step with autograd instead of the hand-written gradient")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating timing rounds; the figures are their medians")

    p = sub.add_parser("replicate", help="one config trained with several seeds: the spread")
    _add_config(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="training seeds (default: 0 1 2)")
    p.add_argument("--out", default=None,
                   help="output folder (default: studies/replicate/<name>)")
    p.add_argument("--data-root", default=None, help="dataset cache (default: studies/data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_progress(p)

    from metab_opt import study as study_mod

    study_mod.add_study_arguments(sub.add_parser("study", help="run or resume a study"))
    study_mod.add_compare_arguments(sub.add_parser("compare", help="UCB vs Optuna's samplers"))
    p = sub.add_parser("best", help="write the study's incumbent as a runnable config")
    p.allow_abbrev = False
    p.add_argument("name", help="study name (its folder under --root)")
    p.add_argument("--root", default="studies", help="output root (default: studies/)")
    p.add_argument("--storage", default=None,
                   help="storage URL (default: sqlite:///<root>/<name>/study.db)")
    p.add_argument("--out", default=None,
                   help="the config file to write (default: <root>/<name>/<name>_best.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p = sub.add_parser("dashboard", help="browse a study in optuna-dashboard")
    study_mod.add_dashboard_arguments(p)
    return parser


def _load(args: argparse.Namespace, *, check_frozen: bool = True) -> Any:
    return load_config(args.config, overrides=parse_overrides(args.overrides),
                       check_frozen=check_frozen)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from metab_opt.simulation import load_or_build

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
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from metab_opt.objective import HEADLINE, run_training
    from metab_opt.training import TrainingDiverged

    cfg = _load(args)
    check_device(args.device)  # fail early, before anything is written
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
    from metab_opt.bench import bench

    cfg = _load(args)
    check_device(args.device)
    if args.steps < 10:
        raise UsageError(f"--steps: expected at least 10, got {args.steps}")
    if not 1 <= args.rounds <= args.steps:
        raise UsageError(f"--rounds: expected 1 to --steps ({args.steps}), got {args.rounds}")
    print(json.dumps(bench(cfg, data_root=args.data_root, device=args.device, steps=args.steps,
                           threads=args.threads, cuda_graph=not args.no_cuda_graph,
                           fused=not args.no_fused, rounds=args.rounds)))
    return 0


def _cmd_replicate(args: argparse.Namespace) -> int:
    from metab_opt.replicate import replicate

    cfg = _load(args)
    check_device(args.device)
    bad = [s for s in args.seeds if s < 0]
    if bad or len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds: expected distinct integers >= 0, got "
                         f"{' '.join(map(str, args.seeds))}")
    out = Path(args.out) if args.out else Path("studies") / "replicate" / cfg.name

    def show(row: dict[str, Any]) -> None:
        if row["status"] == "failed":
            print(f"seed {row['seed']}: failed ({row['reason']})", flush=True)
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
    return 0 if all(r["status"] != "failed" for r in result["runs"]) else 1


def _cmd_best(args: argparse.Namespace) -> int:
    from metab_opt.best import export_best
    from metab_opt.study import open_existing

    storage, label = open_existing(args.name, root=args.root, storage_url=args.storage)
    out = Path(args.out) if args.out else Path(args.root) / args.name / f"{args.name}_best.yaml"
    inc, command = export_best(storage, args.name, out=out, storage_label=label,
                               force=args.force)
    print(f"incumbent of '{args.name}': {inc.describe()}")
    print(f"wrote {out} (trial {inc.run.number}'s training seed); train it again with "
          f"`{command}`")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = _build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(_unrecognized(parser, args.command, extra))
        if args.command == "simulate":
            return _cmd_simulate(args)
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "replicate":
            return _cmd_replicate(args)
        if args.command == "best":
            return _cmd_best(args)
        from metab_opt import study as study_mod

        return study_mod.run_command(args)
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
