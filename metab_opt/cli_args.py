"""``metab-opt``'s arguments: every subcommand's options, parsed with one-line errors.

:mod:`metab_opt.cli` dispatches the parsed arguments to the library; this module only says what
each subcommand takes, so that both stay readable as commands are added.
"""

from __future__ import annotations

import argparse
import difflib
import math
from collections.abc import Sequence
from typing import NoReturn

from metab_opt.study import PRUNERS, SAMPLERS

__all__ = ["DEFAULT_CONFIG", "RETRAIN_SEEDS", "UsageError", "build_parser", "unrecognized"]

DEFAULT_CONFIG = "configs/rank50.yaml"
# compare --retrain-seeds: metab_opt.compare.retrain.DEFAULT_RETRAIN_SEEDS (not imported: the
# command line starts without the compare package)
RETRAIN_SEEDS = "101,202"


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def unrecognized(parser: argparse.ArgumentParser, command: str, extra: Sequence[str]) -> str:
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


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


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


def _no_abbreviations(p: argparse.ArgumentParser) -> None:
    # argparse takes an unambiguous prefix for the option: ``--n-trial 3`` would silently mean
    # ``--n-trials 3`` (and change meaning the day an option with that prefix is added). A
    # study is resumed by repeating its command: spelled-out options only, and a misspelling
    # gets the parser's "did you mean" instead.
    p.allow_abbrev = False


def _add_study_common(p: argparse.ArgumentParser, db: str = "study.db") -> None:
    """The options ``study`` and ``compare`` share: config, storage, workers, heartbeats."""
    _no_abbreviations(p)
    _add_config(p)
    p.add_argument("--root", default="studies", help="output root (default: studies/)")
    p.add_argument("--storage", default=None,
                   help=f"Optuna storage URL (default: sqlite:///<root>/<name>/{db})")
    p.add_argument("--n-jobs", type=_positive_int, default=1, help="parallel trials (threads)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-root", default=None, help="dataset cache (default: <root>/data)")
    p.add_argument("--max-steps", type=_positive_int, default=None,
                   help="cap the training steps of every trial (smoke tests)")
    p.add_argument("--heartbeat-interval", type=_positive_int, default=10,
                   help="seconds between a running trial's heartbeats (RDB storages)")
    p.add_argument("--grace-period", type=_positive_int, default=60,
                   help="seconds without heartbeat before a trial counts as dead")


def _add_study_arguments(p: argparse.ArgumentParser) -> None:
    _add_study_common(p)
    p.add_argument("--study-name", default=None, help="default: the config's name")
    p.add_argument("--n-trials", type=_positive_int, default=None,
                   help="trials to run now (default: the config's search.n_trials)")
    p.add_argument("--timeout", type=_positive_float, default=None, help="seconds")
    p.add_argument("--sampler", choices=SAMPLERS, default="ucb")
    p.add_argument("--pruner", choices=PRUNERS, default=None,
                   help="stop hopeless trials early: none, median, or safe (metab_opt/pruning.py)"
                        " (default: the config's search.pruner)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--start-from", default=None, metavar="CONFIG",
                   help="start the tree from the knob values of another config file (e.g. the "
                        "best settings of another regime: configs/rank50_best.yaml); the study "
                        "is named <config>_from_<file> unless --study-name says otherwise")
    _add_prior(p)
    p.add_argument("--workers", default="1",
                   help="worker processes on this machine, sharing the trials (auto: one per "
                        "CPU core, at most 4, on the CPU; 1 on a GPU, where --n-jobs threads "
                        "share it) (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no training progress bar")
    p.add_argument("--no-plots", action="store_true",
                   help="skip each trial's plots and artifacts (metrics and logs unchanged)")


def _add_prior(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", action="append", default=[], metavar="P",
                   help="learn from earlier studies: a study in the same storage, NAME@URL, a "
                        "prior file or a bundled prior (rank50_family); repeatable; adds to "
                        "the config's search.prior")


def _add_finished_study(p: argparse.ArgumentParser) -> None:
    """The arguments that name an existing study: ``best`` and ``prune-check``."""
    _no_abbreviations(p)
    p.add_argument("name", help="study name (its folder under --root)")
    p.add_argument("--root", default="studies", help="output root (default: studies/)")
    p.add_argument("--storage", default=None,
                   help="storage URL (default: sqlite:///<root>/<name>/study.db)")


def _add_compare_arguments(p: argparse.ArgumentParser) -> None:
    _add_study_common(p, db="compare.db")
    p.add_argument("--samplers", default="ucb,tpe,random",
                   help=f"comma-separated, from {','.join(SAMPLERS)}")
    p.add_argument("--n-trials", type=_positive_int, default=24)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--first-seed", type=_nonnegative_int, default=0,
                   help="the first sampler seed (default 0: seeds 0..repeats-1); another "
                        "process on the same storage can run other seeds at the same time")
    p.add_argument("--name", default=None, help="comparison name (default: compare_<config>)")
    _add_prior(p)
    p.add_argument("--retrain-seeds", default=RETRAIN_SEEDS, metavar="S,S",
                   help="training seeds each finished study's incumbent is trained again with, "
                        f"at the same --max-steps (default: {RETRAIN_SEEDS})")


def _add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    _no_abbreviations(p)
    p.add_argument("name", help="study name (its folder under --root)")
    p.add_argument("--root", default="studies")
    p.add_argument("--storage", default=None,
                   help="storage URL (default: sqlite:///<root>/<name>/study.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8080)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metab-opt",
                     description="``metab-opt``: a thin command line over the package's "
                                 "functions.")
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
    p.add_argument("--vs", default=None, metavar="CONFIG",
                   help="instead: the trainer's steps/s on --config and on this config, "
                        "alternating, per nonzero of S (e.g. --config configs/ijo1366.yaml "
                        "--vs configs/rank50.yaml), with the peak memory")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="with --vs: seconds per measurement")
    p.add_argument("--product", default="auto", choices=["auto", "dense", "sparse"],
                   help="with --vs: force --config's graph products (default: the trainer's "
                        "rule)")

    p = sub.add_parser("replicate", help="one config trained with several seeds: the spread")
    _add_config(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="training seeds (default: 0 1 2)")
    p.add_argument("--out", default=None,
                   help="output folder (default: studies/replicate/<name>)")
    p.add_argument("--data-root", default=None, help="dataset cache (default: studies/data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_progress(p)

    _add_study_arguments(sub.add_parser("study", help="run or resume a study"))
    _add_compare_arguments(sub.add_parser("compare", help="UCB vs Optuna's samplers"))
    p = sub.add_parser("best", help="write the study's incumbent as a runnable config")
    _add_finished_study(p)
    p.add_argument("--out", default=None,
                   help="the config file to write (default: <root>/<name>/<name>_best.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p = sub.add_parser("prune-check", help="replay the safe pruner on a finished study")
    _add_finished_study(p)
    _add_dashboard_arguments(sub.add_parser("dashboard", help="browse a study in optuna-dashboard"))
    p = sub.add_parser("prior", help="write or read a prior: earlier studies as a file")
    ops = p.add_subparsers(dest="prior_command", required=True, parser_class=_Parser)
    q = ops.add_parser("export", help="write studies' finished trials as a portable prior")
    _no_abbreviations(q)
    q.add_argument("names", nargs="+", metavar="NAME",
                   help="studies (NAME in --storage or <root>/NAME/study.db, or NAME@URL)")
    q.add_argument("--out", required=True, help="the prior file to write (JSON)")
    q.add_argument("--root", default="studies", help="output root (default: studies/)")
    q.add_argument("--storage", default=None, help="storage URL of the studies")
    q.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    q = ops.add_parser("show", help="summarise a prior (a file, a bundled name or a study)")
    _no_abbreviations(q)
    q.add_argument("prior", metavar="P")
    q.add_argument("--root", default="studies", help="output root (default: studies/)")
    q.add_argument("--storage", default=None, help="storage URL of a study named by P")
    return parser


