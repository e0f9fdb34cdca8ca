"""Checks shared by the PostgreSQL and fault tests: a study's views against its storage.

Not a test module (no ``test_`` prefix): ``test_postgres.py`` and ``test_faults.py`` import it.
The storage is the source of truth; these helpers check that the markdown views hold exactly
what it says, once, whole and in order.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
RUN_STUDY = ROOT / "scripts" / "run_study.py"

# The log form's lines after "## Iter N: status", in order (DESIGN.md, "Log entry").
FIELDS = ("Node: id=", "Mode/Strategy: ", "Config: ", "Metrics: ", "Visual: ", "Mutation: ",
          "Parent rule: ", "Observation: ", "Next: parent=")
_ENTRY_LINES = 2 + len(FIELDS)  # the blank separator, the heading, the fields
_HEADING = re.compile(r"## Iter (\d+): (converged|partial|failed|pruned|running|\S+)")
_PNG = b"\x89PNG\r\n\x1a\n"
_IEND = b"IEND\xaeB`\x82"


def parse_analysis(path: Path, name: str) -> list[tuple[int, list[str]]]:
    """``[(trial number, [field lines]), ...]`` in file order; fails on anything that is not a
    whole entry (a torn, duplicated or interleaved line)."""
    data = path.read_bytes()
    text = data.decode("utf-8")  # a torn multi-byte character fails here
    assert text.endswith("\n"), f"{path.name} does not end with a newline (torn append)"
    lines = text.split("\n")[:-1]
    assert lines[0] == f"# {name} — analysis log", lines[0]
    body = lines[1:]
    assert len(body) % _ENTRY_LINES == 0, (
        f"{path.name}: {len(body)} lines after the title, not a whole number of entries "
        f"of {_ENTRY_LINES} lines:\n{text[-2000:]}")
    entries = []
    for i in range(0, len(body), _ENTRY_LINES):
        chunk = body[i:i + _ENTRY_LINES]
        assert chunk[0] == "", f"entry {i // _ENTRY_LINES}: no blank line before {chunk[1]!r}"
        match = _HEADING.fullmatch(chunk[1])
        assert match, f"entry {i // _ENTRY_LINES}: bad heading {chunk[1]!r}"
        for line, prefix in zip(chunk[2:], FIELDS):
            assert line.startswith(prefix), f"Iter {match[1]}: {line!r} is not {prefix!r}..."
            assert "## Iter" not in line, f"interleaved entries: {line!r}"
        entries.append((int(match[1]), chunk[2:]))
    return entries


def check_views(folder: Path, name: str, trials: Sequence[Any], *,
                ordered: bool = True) -> list[tuple[int, list[str]]]:
    """The views of a study whose workers have all stopped: one whole entry per finished trial
    (in trial order when ``ordered``), the index agreeing with the file, the other views whole.
    Returns the parsed entries."""
    from optuna.trial import TrialState

    finished = sorted(t.number for t in trials
                      if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    analysis = folder / f"{name}_analysis.md"
    entries = parse_analysis(analysis, name)
    numbers = [n for n, _ in entries]
    assert len(numbers) == len(set(numbers)), f"duplicated entries: {numbers}"
    assert sorted(numbers) == finished, f"entries {numbers} != finished trials {finished}"
    if ordered:
        assert numbers == sorted(numbers), f"entries out of order: {numbers}"
    by_number = {t.number: t for t in trials}
    for number, fields in entries:
        node_id = by_number[number].user_attrs.get("node_id")
        if node_id is not None:
            assert fields[0].startswith(f"Node: id={node_id},"), (number, fields[0])
    index = json.loads((folder / f".{name}_logbook_index.json").read_text())
    assert index["size"] == analysis.stat().st_size, "the index does not describe the log"
    assert sorted(index["written"]) == finished
    memory = (folder / f"{name}_memory.md").read_text(encoding="utf-8")
    assert memory.endswith("\n") and 0 < len(memory.splitlines()) <= 300
    assert (folder / "ucb_scores.txt").read_text().startswith("# UCB scores")
    png = (folder / "exploration_tree.png").read_bytes()
    assert png.startswith(_PNG) and png.endswith(_IEND), "exploration_tree.png is not whole"
    return entries


def check_tree(trials: Sequence[Any]) -> None:
    """Every UCB parent (user attr ``parent_id``; -1 is the config's base values) is an earlier
    trial of the study; node ids are the trial numbers."""
    by_number = {t.number: t for t in trials}
    for t in trials:
        parent = t.user_attrs.get("parent_id")
        assert isinstance(parent, int), (t.number, parent)
        assert t.user_attrs.get("node_id") in (None, t.number), (t.number, t.user_attrs)
        if parent == -1:
            continue
        assert parent in by_number, f"trial {t.number}: parent {parent} is not a trial"
        # A block's initial spread steps from the root's params while the root still runs:
        # a parent is an earlier trial, not necessarily a finished one.
        assert parent < t.number, f"trial {t.number}: parent {parent} is not an earlier trial"


def params_key(trial: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(trial.params.items()))


def study_command(root: Path, *extra: str, storage: str | None = None,
                  data_root: Path | None = None, max_steps: int = 150,
                  n_trials: int = 3) -> list[str]:
    cmd = [sys.executable, str(RUN_STUDY), "--config", str(TINY), "--root", str(root),
           "--max-steps", str(max_steps), "--no-progress", "--n-trials", str(n_trials)]
    if storage is not None:
        cmd += ["--storage", storage]
    if data_root is not None:
        cmd += ["--data-root", str(data_root)]
    return cmd + list(extra)


def worker_env() -> dict[str, str]:
    """One torch thread per worker: the test machines have few cores and several workers."""
    import os

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               MPLBACKEND="Agg")
    return env


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Wait for a worker; kill it (and fail) if it overruns."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"worker overran {timeout} s:\n{out[-2000:]}\n{err[-4000:]}") \
            from None
    return proc.returncode, out, err


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
