"""``metab-opt study --workers N``: one study, N processes on this machine.

Why processes: on the CPU a trial is one torch thread, and the training loop holds Python's GIL
between its small tensor operations, so ``--n-jobs`` threads do not add up (measured on the
2-core development CPU: 4 proxy trials of 10,008 steps took 95 s with ``--n-jobs 2``, about
what they take one after another). Processes do: each runs its own trial on its own core.

How: the command first opens (or creates) the study and builds the dataset, so that the
workers find both; then it starts ``N - 1`` copies of itself, each with ``--n-trials`` its share
of the trials and without ``--workers``, and runs its own share. Each copy is a worker of the
kind DESIGN.md describes (same storage, same study; the UCB sampler counts the others' running
trials as pending visits; the logbook writes each entry exactly once). A copy's output goes to
``<root>/<study>/workers/worker-<i>.log``. Ctrl-C reaches every copy (they share the
terminal's process group, and the command passes it on as well); each fails its running trial
as interrupted, so the same command resumes the study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["AUTO_CAP", "child_argv", "resolve", "shares", "Workers"]

# --workers auto: one per core, at most this many. The tree decides a trial while the others
# run; with a block of 12 trials, more than a few at once would decide most of a block blind.
AUTO_CAP = 4


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve(text: str, *, on_cpu: bool) -> int:
    """The number of worker processes ``--workers`` asks for; ``auto``: one per core (at most
    :data:`AUTO_CAP`) on the CPU, 1 on a GPU (where ``--n-jobs`` threads share it)."""
    if text == "auto":
        return min(_cores(), AUTO_CAP) if on_cpu else 1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"--workers: expected a positive integer or auto, got {text!r}")
    return value


def shares(n_trials: int, n_workers: int) -> list[int]:
    """``n_trials`` split over the workers as evenly as can be, the larger shares first; a
    worker with no trial is not started."""
    base, extra = divmod(n_trials, n_workers)
    return [s for s in (base + (i < extra) for i in range(n_workers)) if s > 0]


def child_argv(argv: Sequence[str], n_trials: int) -> list[str]:
    """``argv`` (a ``study`` command line) without ``--workers`` and ``--n-trials``, with
    ``--n-trials n_trials`` and ``--no-progress`` (a worker's log is no terminal)."""
    out: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in ("--workers", "--n-trials"):
            skip = True
            continue
        if token.startswith(("--workers=", "--n-trials=")):
            continue
        out.append(token)
    out += ["--n-trials", str(n_trials)]
    if "--no-progress" not in out:
        out.append("--no-progress")
    return out


class Workers:
    """The extra worker processes of one ``study --workers`` command."""

    def __init__(self, argv: Sequence[str], trial_shares: Sequence[int], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.logs: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, share in enumerate(trial_shares, start=2):
            log = log_dir / f"worker-{i}.log"
            with log.open("wb") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "metab_opt", *child_argv(argv, share)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            self.logs.append(log)

    def interrupt(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)

    def wait(self) -> list[int]:
        """Each worker's exit status, once all have ended."""
        return [p.wait() for p in self.procs]
