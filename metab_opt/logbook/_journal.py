"""The analysis log on disk: append-only, every finished trial's entry exactly once.

Exactly-once writing. Several worker processes (and threads) share the file, and a worker may
be killed at any moment. All writing happens under the logbook's :class:`filelock.FileLock`
(``<dir>/.logbook.lock``, held by the caller); whole files are replaced atomically (temporary
file, then :func:`os.replace`). Which entries the analysis file holds is recorded in a sidecar
index, ``<dir>/.<name>_logbook_index.json``, rewritten atomically after each append: the trial
numbers written and the file's size after the last recorded append. Why a sidecar rather than a
storage attribute: a finished trial cannot take attributes any more in Optuna 5, a study
attribute would claim entries that a deleted or moved folder no longer holds, and the recorded
size lets a torn append (a worker killed mid-write) be cut back to the last complete entry — so
the index always describes the file next to it.

Repair (:meth:`AnalysisLog.reconcile`, before every append). A file longer than its index says
lost its writer mid-append: it is cut back to the recorded size, and the entry is written again.
When the index is missing, belongs to an earlier study of the same name (a deleted, re-created
study restarts at trial 0: :func:`_fingerprint`) or says the file is longer than it is (edited
or truncated), the old file is kept as ``<name>_analysis.md.<time>.bak`` and the log is
rewritten from the storage. The file's first line is its title, ``# <name> — analysis log``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import FrozenTrial

from metab_opt._io import atomic_write

__all__ = ["AnalysisLog"]

logger = logging.getLogger(__package__)

_INDEX_FORMAT = 1


def _append(path: Path, data: bytes) -> int:
    """Append ``data`` durably; return the file's new size."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


@dataclass
class _Index:
    """What the analysis file holds: the trials written and its size after the last append."""

    study: str
    fingerprint: str | None
    size: int
    written: set[int]

    def to_json(self) -> str:
        return json.dumps({"format": _INDEX_FORMAT, "study": self.study,
                           "fingerprint": self.fingerprint, "size": self.size,
                           "written": sorted(self.written)})

    @classmethod
    def load(cls, path: Path) -> _Index | None:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != _INDEX_FORMAT:
                return None
            return cls(study=str(data["study"]), fingerprint=data.get("fingerprint"),
                       size=int(data["size"]), written={int(n) for n in data["written"]})
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # unreadable: treated as missing, the log is rebuilt from the storage


def _fingerprint(trials: Sequence[FrozenTrial]) -> str | None:
    """Tells one incarnation of a study from another of the same name (a deleted, re-created
    study restarts at trial 0): the start time of its first trial."""
    first = min(trials, key=lambda t: t.number, default=None)
    if first is None or first.datetime_start is None:
        return None
    return first.datetime_start.isoformat()


def _same_study(recorded: str, now: str) -> bool:
    """Whether two fingerprints name one study. Some databases keep no microseconds while a
    worker's cached copy still has them: a time without microseconds matches its second."""
    try:
        a, b = _dt.datetime.fromisoformat(recorded), _dt.datetime.fromisoformat(now)
    except ValueError:
        return recorded == now
    if a == b:
        return True
    return (a.microsecond == 0 or b.microsecond == 0) and (
        a.replace(microsecond=0) == b.replace(microsecond=0))


class AnalysisLog:
    """``path`` (the analysis file) with its index at ``index_path``, for study ``study_name``.

    Use under the logbook's lock: :meth:`reconcile`, then :meth:`append` the missing entries.
    """

    def __init__(self, path: Path, index_path: Path, study_name: str) -> None:
        self.path = path
        self.index_path = index_path
        self.study_name = study_name

    def title(self) -> bytes:
        return f"# {self.study_name} — analysis log\n".encode()

    def reconcile(self, trials: Sequence[FrozenTrial]) -> _Index:
        """The index, checked against the analysis file and repaired where they disagree."""
        fingerprint = _fingerprint(trials)
        index = _Index.load(self.index_path)
        title = self.title()
        try:
            size: int | None = self.path.stat().st_size
        except FileNotFoundError:
            size = None

        reason = None
        if index is not None and (index.study != self.study_name or (
                index.fingerprint is not None and fingerprint is not None
                and not _same_study(index.fingerprint, fingerprint))):
            reason = "it belongs to an earlier study of this name"
        elif size is None:
            if index is not None and index.written:
                logger.warning("logbook: %s is gone; rewriting it from the storage", self.path)
        elif index is None:
            if size > len(title):
                reason = "its index is missing"
        elif size > index.size:
            # A worker died while appending: cut the unfinished entry, it is written again.
            with open(self.path, "r+b") as handle:
                handle.truncate(index.size)
                handle.flush()
                os.fsync(handle.fileno())
            logger.warning("logbook: removed %d bytes of an unfinished entry from %s",
                           size - index.size, self.path)
            size = index.size
        elif size < index.size:
            reason = "it is shorter than its index says (edited or truncated)"

        if reason is not None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            backup = self.path.with_name(f"{self.path.name}.{stamp}.bak")
            n = 1
            while backup.exists():  # never overwrite an earlier backup
                n += 1
                backup = backup.with_name(f"{self.path.name}.{stamp}-{n}.bak")
            os.replace(self.path, backup)
            logger.warning("logbook: %s kept as %s because %s; rewriting the log from the "
                           "storage", self.path.name, backup.name, reason)
            size, index = None, None
        if index is None or size is None or size <= len(title):
            # A fresh log: the title, then the entries.
            atomic_write(self.path, title)
            index = _Index(self.study_name, fingerprint, len(title), set())
            atomic_write(self.index_path, index.to_json().encode())
        if index.fingerprint is None and fingerprint is not None:
            index.fingerprint = fingerprint
        return index

    def append(self, index: _Index, numbers: Iterable[int], text: str) -> None:
        """Append the entries of trials ``numbers`` (``text``), then record them in ``index``.

        One append, then the index: a crash in between leaves the file longer than the index
        says, and the next writer cuts it back, so every entry ends up in the file once.
        """
        index.size = _append(self.path, text.encode())
        index.written.update(numbers)
        atomic_write(self.index_path, index.to_json().encode())
