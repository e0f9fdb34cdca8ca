"""The whole study in optuna-dashboard: study artifacts, the study note's footer, trial notes.

Why this module: optuna-dashboard shows what the Optuna storage holds, and the logbook's best
views live in files next to the storage (``exploration_tree.png``, ``<name>_analysis.md``), which
the dashboard cannot see. The :class:`metab_opt.logbook.Logbook` therefore also publishes them:

- **Study artifacts.** After every logbook update the exploration tree and the analysis log are
  uploaded as *study* artifacts, stored as ``optuna.artifacts.upload_artifact(study_or_trial=
  study)`` stores them but the file before its metadata; optuna-dashboard (checked with 0.21)
  lists them under "Study Artifacts" on the study's page (it needs an artifact store), the
  tree as a thumbnail. Only the latest version of each file is kept: after the upload, every
  older study artifact of the same filename is removed from the store and its metadata attr is
  set to ``null`` — exactly what the dashboard's own delete button does (Optuna has no way to
  drop a system attr). A side effect shared with that button: Optuna's
  ``get_all_artifact_meta(study)`` (study level only; trial artifacts are untouched) trips over
  the ``null`` attrs, while the dashboard skips them. An unchanged file is not uploaded again.
- **The study note** stays the logbook's memory; below it, after a rule, a footer shows the
  current tree inline (``![...](/artifacts/<study>/<artifact>)``, the form the dashboard's own
  "Insert an image" writes) and links the analysis log, so the note page shows the whole study.
  The footer is built from the storage's current artifacts, not from this process's uploads, so
  it never points at a file another worker has replaced.
- **Trial notes.** When the logbook writes a trial's entry, the entry (Parent rule, Observation
  and the rest) becomes that trial's note, as a markdown list. ``optuna_dashboard.save_note``
  takes a live ``optuna.Trial``, but the trial is finished by then and a ``Trial`` cannot be
  rebuilt without running the sampler's ``before_trial``; notes live in *study* system attrs
  (``dashboard:<trial_id>:note_*``), so a small reference object carrying what ``save_note``
  reads (``storage``, ``study``, ``_trial_id``) is enough. A note someone wrote in the dashboard
  before the entry existed is kept above it.

Nothing here may stop a study: every failure becomes one warning (once per logbook and kind)
through the logbook's ``warn``. No torch: the logbook imports this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["DashboardViews", "note_footer", "study_artifacts", "trial_note"]

# Where optuna.artifacts.upload_artifact keeps a study artifact's metadata (a study system attr
# "artifacts:<id>" holding its JSON); optuna-dashboard reads the same keys.
ARTIFACTS_ATTR_PREFIX = "artifacts:"
# With the charset the browser shows the log's "ΔR²" and "—" right when the link is opened.
_MIMETYPES = {".md": "text/markdown; charset=utf-8", ".png": "image/png"}
# Markdown characters that could turn a logged value into markup (a link, code, emphasis, HTML).
_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*[]<"})


def _storage(study: Study) -> tuple[BaseStorage, int]:
    # Study has no public accessor for these; optuna_dashboard.save_note uses the same ones.
    return study._storage, study._study_id


def study_artifacts(study: Study) -> list[dict[str, Any]]:
    """The study's live artifacts' metadata (artifact_id, filename, mimetype, encoding).

    Read from the study system attrs directly: ``optuna.artifacts.get_all_artifact_meta``
    raises on the ``null`` attrs that deleted artifacts leave.
    """
    storage, study_id = _storage(study)
    metas = []
    for key, value in storage.get_study_system_attrs(study_id).items():
        if not key.startswith(ARTIFACTS_ATTR_PREFIX) or not isinstance(value, str):
            continue
        with contextlib.suppress(ValueError):
            meta = json.loads(value)
            if isinstance(meta, dict) and "artifact_id" in meta and "filename" in meta:
                metas.append(meta)
    return metas


def note_footer(study_id: int, tree: dict[str, Any] | None,
                log: dict[str, Any] | None) -> str:
    """The study note's footer: the tree inline, a link to the analysis log ("" for neither)."""
    if tree is None and log is None:
        return ""
    lines = ["", "---", ""]
    if tree is not None:
        url = f"/artifacts/{study_id}/{tree['artifact_id']}"
        lines += [f"**Exploration tree** (study artifact `{tree['filename']}`, redrawn after "
                  f"every trial):", "", f"![{tree['filename']}]({url})", ""]
    if log is not None:
        url = f"/artifacts/{study_id}/{log['artifact_id']}"
        lines += [f"**Analysis log**: [{log['filename']}]({url}) — every trial's entry "
                  f"(each trial's note holds its own).", ""]
    return "\n".join(lines)


def trial_note(entry: str) -> str:
    """A logbook entry as a trial note: its heading, then one list item per ``Key: value``.

    Plain lines would run together into one paragraph in markdown, hence the list.
    """
    lines = [line for line in entry.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    out = [lines[0], ""] if lines[0].startswith("#") else []
    for line in lines[1:] if out else lines:
        key, sep, value = line.partition(": ")
        if sep and key and len(key) <= 20:
            out.append(f"- **{key}:** {value.translate(_MARKDOWN_SPECIAL)}")
        else:
            out.append(f"- {line.translate(_MARKDOWN_SPECIAL)}")
    return "\n".join(out) + "\n"


class _TrialRef:
    """What ``optuna_dashboard.save_note``/``get_note`` read from an ``optuna.Trial``."""

    def __init__(self, study: Study, trial_id: int) -> None:
        self.study = study
        self.storage = study._storage
        self._trial_id = trial_id


class DashboardViews:
    """Publishes a logbook's views to optuna-dashboard (see the module docstring).

    ``artifact_store`` is the study's artifact store (None: no study artifacts); ``tree_path``
    and ``analysis_path`` the logbook's files; ``warn(key, message)`` warns once per key.
    """

    def __init__(self, artifact_store: ArtifactStore | None, *, tree_path: Path,
                 analysis_path: Path, warn: Callable[[str, str], None]) -> None:
        self.artifact_store = artifact_store
        self.tree_path = Path(tree_path)
        self.analysis_path = Path(analysis_path)
        self._warn = warn

    # -- study artifacts ----------------------------------------------------------------------

    def publish(self, study: Study, *, tree: bool = True) -> None:
        """Upload the analysis log (and the tree when ``tree``) as the study's artifacts."""
        if self.artifact_store is None:
            return
        paths = [self.analysis_path] + ([self.tree_path] if tree else [])
        for path in paths:
            if not path.is_file():  # the tree was not drawn (no matplotlib, a plot error)
                continue
            try:
                self._publish(study, path)
            except Exception as exc:  # the dashboard's copy is a convenience
                self._warn(f"dashboard-artifact:{path.name}",
                           f"logbook: {path.name} not published to the dashboard "
                           f"({type(exc).__name__}: {exc})")

    def _publish(self, study: Study, path: Path) -> None:
        store = self.artifact_store
        assert store is not None
        data = path.read_bytes()  # under the logbook's lock: no writer changes it meanwhile
        mimetype = _MIMETYPES.get(path.suffix.lower()) or "application/octet-stream"
        old = [m for m in study_artifacts(study) if m["filename"] == path.name]
        if len(old) == 1 and old[0].get("mimetype") == mimetype and self._holds(
                old[0]["artifact_id"], data):
            return  # unchanged (a sync with nothing new): no churn
        # What optuna.artifacts.upload_artifact(study_or_trial=study) stores (the same attr key
        # and JSON), in the safer order: the file first, then the metadata that lists it, so a
        # failing store leaves no listed artifact without a file, and none is listed half-written.
        artifact_id = str(uuid.uuid4())
        store.write(artifact_id, io.BytesIO(data))
        meta = {"artifact_id": artifact_id, "filename": path.name, "mimetype": mimetype,
                "encoding": None}
        storage, study_id = _storage(study)
        try:
            storage.set_study_system_attr(study_id, ARTIFACTS_ATTR_PREFIX + artifact_id,
                                          json.dumps(meta))
        except BaseException:
            with contextlib.suppress(Exception):
                store.remove(artifact_id)  # not listed: do not leave it in the store
            raise
        for meta in old:
            # The attr first: the dashboard must never list a file that is gone.
            storage.set_study_system_attr(study_id, ARTIFACTS_ATTR_PREFIX + meta["artifact_id"],
                                          json.dumps(None))
            with contextlib.suppress(Exception):  # already gone (ArtifactNotFound): fine
                store.remove(meta["artifact_id"])

    def _holds(self, artifact_id: str, data: bytes) -> bool:
        assert self.artifact_store is not None
        try:
            with self.artifact_store.open_reader(artifact_id) as reader:
                return bool(reader.read() == data)
        except Exception:  # missing or unreadable: upload a fresh copy
            return False

    # -- the study note -----------------------------------------------------------------------

    def study_note(self, study: Study, memory: str) -> str:
        """The study note: the memory, then the footer that shows the current artifacts."""
        try:
            latest = {m["filename"]: m for m in study_artifacts(study)}
            footer = note_footer(_storage(study)[1], latest.get(self.tree_path.name),
                                 latest.get(self.analysis_path.name))
        except Exception as exc:  # the memory is the note's point; the footer is extra
            self._warn("dashboard-footer", f"logbook: dashboard note without its artifact "
                                           f"links ({type(exc).__name__}: {exc})")
            return memory
        if not footer:
            return memory
        # A blank line before the rule: "---" right under text would make that text a heading.
        return memory.rstrip("\n") + "\n" + footer

    # -- trial notes --------------------------------------------------------------------------

    def save_trial_notes(self, study: Study, entries: Iterable[tuple[FrozenTrial, str]]) -> None:
        """Save each finished trial's logbook entry as its dashboard note."""
        try:
            from optuna_dashboard import get_note, save_note
        except ImportError as exc:
            self._warn("dashboard-trial-note-import", f"logbook: no trial notes ({exc})")
            return
        for trial, entry in entries:
            try:
                ref: Any = _TrialRef(study, trial._trial_id)
                body = trial_note(entry)
                heading = body.split("\n", 1)[0]
                # A person's note stays on top; an earlier copy of the entry is replaced.
                existing = get_note(ref)
                start = existing.find(heading) if heading else -1
                kept = existing[:start] if start >= 0 else existing
                if kept.strip():
                    body = kept.rstrip("\n") + "\n\n" + body
                save_note(ref, body)
            except Exception as exc:  # a note is a convenience: never the entry or the study
                self._warn("dashboard-trial-note",
                           f"logbook: trial {trial.number}'s dashboard note not saved "
                           f"({type(exc).__name__}: {exc})")
