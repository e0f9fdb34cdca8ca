"""Faults (issue 7): a study never loses a trial.

- SIGKILL at seeded random moments of a tiny study run in its own process — during training,
  during the logbook's write, during the dataset build, and at an arbitrary moment — then a
  resume: no trial lost or duplicated, every log entry present once and whole, in order, the
  killed trial failed by heartbeat and retried with its params, the dataset cache intact or
  rebuilt (checksum).
- A training that diverges (non-finite loss), raises, ends with a non-finite R², or gets params
  outside the search space: FAIL with its ``fail_reason``, never a parent, the study goes on.
- Disk full (ENOSPC) or a read-only study folder (EROFS) while the logbook, the trial outputs
  and the artifacts are written: the trials' results are in the storage, each failure is one
  warning line, and the next start writes the missing views.

The kills are real SIGKILLs in a child process; where the moment matters (in the middle of an
append, between a write and a rename) a small driver patches the function to die there.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _study_checks import (
    ROOT,
    TINY,
    check_tree,
    check_views,
    finish,
    study_command,
    wait_for,
    worker_env,
)

from metab_opt.config import load_config

STUDY = "tiny"
SEED = 20240607  # every random moment below comes from this seed
BEAT = ["--heartbeat-interval", "1", "--grace-period", "2"]

# The driver: `python driver.py` with METAB_FAULT set runs `metab-opt study <args>` with one
# function patched to SIGKILL the process at the chosen moment.
DRIVER = r'''
import os, signal, sys, tempfile
sys.path.insert(0, os.environ["METAB_ROOT"])
kind, *arg = os.environ.get("METAB_FAULT", "none").split(":")


def die(what):
    print(f"FAULT: SIGKILL {what}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if kind == "training":  # arg: the n-th training of this process, the report to die at
    import metab_opt.problem.training as tr
    nth, at_report = int(arg[0]), int(arg[1])
    real_train, calls = tr.train, [0]

    def train(*a, on_report=None, **k):
        mine = calls[0] == nth
        calls[0] += 1
        seen = [0]

        def report(rep):
            if on_report is not None:
                on_report(rep)
            seen[0] += 1
            if mine and seen[0] == at_report:
                die(f"in training, step {rep.step} of {rep.n_steps}")
        return real_train(*a, on_report=report, **k)
    tr.train = train

elif kind == "logbook":  # arg: the n-th entry appended, where, the fraction written
    from metab_opt.logbook import _callback, _journal
    nth, where, fraction = int(arg[0]), arg[1], float(arg[2])
    real_append, real_atomic, appends = _journal._append, _callback.atomic_write, [0]

    def _append(path, data):
        appends[0] += 1
        if appends[0] != nth:
            return real_append(path, data)
        if where == "torn":
            cut = max(1, int(len(data) * fraction))
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, data[:cut])
            os.fsync(fd)
            die(f"in the middle of an entry ({cut} of {len(data)} bytes written)")
        size = real_append(path, data)
        if where == "before-index":
            die("after the entry, before its index")
        return size

    def _atomic_write(path, data):
        if where == "memory" and appends[0] == nth and path.name.endswith("_memory.md"):
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.write(fd, data[:max(1, int(len(data) * fraction))])
            die("in the middle of the memory file's rewrite")
        return real_atomic(path, data)
    # The analysis log's appends (its journal), the memory file's rewrite (the callback's).
    _journal._append, _callback.atomic_write = _append, _atomic_write

elif kind == "dataset":  # arg: where in the build
    import numpy as np
    import metab_opt.problem.simulation as sim
    where = arg[0]
    if where == "simulate":
        real_integrate = sim.integrate

        def integrate(*a, **k):
            out = real_integrate(*a, **k)
            die("during the simulation (one trajectory integrated)")
        sim.integrate = integrate
    elif where == "savez":
        real_savez = np.savez

        def savez(file, *a, **k):
            buf = __import__("io").BytesIO()
            real_savez(buf, *a, **k)
            data = buf.getvalue()
            with open(file, "wb") as fh:
                fh.write(data[:len(data) // 3])
                fh.flush()
                os.fsync(fh.fileno())
            die("in the middle of arrays.npz")
        np.savez = savez
    else:  # before-rename, after-rename
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if os.path.basename(str(dst)).startswith("pde_m1_"):
                if where == "before-rename":
                    die("with the dataset written, before its rename")
                real_replace(src, dst, *a, **k)
                die("right after the dataset's rename")
            return real_replace(src, dst, *a, **k)
        os.replace = replace

from metab_opt.cli import main
raise SystemExit(main(["study", *sys.argv[1:]]))
'''


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "fault_driver.py"
    path.write_text(DRIVER)
    return path


def _study_args(root: Path, data_root: Path, n_trials: int, max_steps: int = 150) -> list[str]:
    return study_command(root, *BEAT, data_root=data_root, n_trials=n_trials,
                         max_steps=max_steps)[2:]  # without python and run_study.py


def _run_driver(driver: Path, fault: str, args: list[str],
                timeout: float = 240) -> tuple[int, str, str]:
    env = worker_env()
    env.update(METAB_FAULT=fault, METAB_ROOT=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(driver), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    return finish(proc, timeout)


def _killed(rc: int, out: str, err: str, what: str) -> float:
    assert rc == -signal.SIGKILL, f"expected a SIGKILL {what}; exit {rc}\n{out}\n{err[-3000:]}"
    assert f"FAULT: SIGKILL {what}" in out, out
    return time.monotonic()


def _resume(root: Path, data_root: Path, n_trials: int, killed_at: float) -> str:
    """The same command again, once the dead worker's heartbeat is stale (grace 2 s)."""
    time.sleep(max(0.0, killed_at + 2.5 - time.monotonic()))
    rc, out, err = finish(subprocess.Popen(
        study_command(root, *BEAT, data_root=data_root, n_trials=n_trials), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=worker_env()), 240)
    assert rc == 0 and "Traceback" not in err, f"resume exit {rc}\n{out}\n{err[-4000:]}"
    return out + err


def _trials(root: Path) -> list[Any]:
    import optuna

    from metab_opt.storage import default_storage_url, open_storage

    # Through open_storage, as a worker: it waits out a worker creating the tables.
    storage = open_storage(default_storage_url(root, STUDY))
    try:
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def _check_study(root: Path, *, complete: int, kills: int) -> list[Any]:
    """No trial lost or duplicated: ``complete`` complete trials, each killed trial failed with
    its reason and retried once with the same params, the views whole and in order."""
    from optuna.trial import TrialState

    trials = _trials(root)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == complete, [(t.number, t.state.name) for t in trials]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == kills, [(t.number, t.user_attrs.get("fail_reason")) for t in failed]
    # A killed trial and its retries (a retry may be killed too): Optuna's failed_trial names
    # the first of them. Each such group holds one complete trial, with the same params.
    groups: dict[int, list[Any]] = {}
    for t in trials:
        first = t.system_attrs.get("failed_trial")
        if first is not None:
            groups.setdefault(first, []).append(t)
    for dead in failed:
        assert "worker lost" in dead.user_attrs.get("fail_reason", ""), dead.user_attrs
        first = dead.system_attrs.get("failed_trial", dead.number)
        group = [by for by in trials if by.number == first] + groups.get(first, [])
        assert [t.state for t in group].count(TrialState.COMPLETE) == 1, group
        assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in group)
        for retry in group[1:]:
            assert retry.user_attrs.get("retry_of") == first
            if group[0].params:  # killed before its params were drawn: nothing to repeat
                assert retry.params == group[0].params
    check_tree(trials)
    parents = {t.user_attrs.get("parent_id") for t in trials}
    assert not parents & {t.number for t in failed}, "a failed trial became a parent"
    check_views(root / STUDY, STUDY, trials, ordered=True)
    for t in done:  # each complete trial's own outputs are whole
        json.loads((root / STUDY / "trials" / f"trial_{t.number:04d}" / "metrics.json")
                   .read_text())
    return trials


def _check_dataset(data_root: Path) -> Path:
    """The dataset cache holds one whole dataset whose checksum matches its manifest."""
    from metab_opt.problem import simulation as sim

    cfg = load_config(TINY)
    folder = sim.dataset_dir(cfg.simulation, data_root)
    assert sim._read(folder, cfg.simulation) is not None, f"{folder} is not a whole dataset"
    return folder


# ---------------------------------------------------------------------------------------------
# SIGKILL


def test_sigkill_during_training_then_resume(driver: Path, tmp_path: Path, tiny_data_root: Path,
                                            tiny_dataset: Any) -> None:
    rng = random.Random(SEED)
    nth, at_report = rng.randrange(2), rng.randrange(1, 19)  # trial 0 or 1, report 1..18
    root = tmp_path / "root"
    killed_at = _killed(*_run_driver(driver, f"training:{nth}:{at_report}",
                                     _study_args(root, tiny_data_root, 3)), "in training")
    assert len(_trials(root)) == nth + 1  # the killed trial is RUNNING in the storage
    out = _resume(root, tiny_data_root, 2, killed_at)
    assert f"(retry of {nth})" in out
    _check_study(root, complete=nth + 2, kills=1)
    _check_dataset(tiny_data_root)


@pytest.mark.slow  # ~40 s: `make test-all` or `pytest -m slow`
def test_sigkill_during_logbook_writes_then_resume(driver: Path, tmp_path: Path,
                                                   tiny_data_root: Path,
                                                   tiny_dataset: Any) -> None:
    """Three runs killed while the logbook writes, then a clean resume. Run 1 dies in the middle
    of an entry (a seeded random fraction of its bytes written); run 2 after an entry, before
    its index; run 3 in the middle of the memory file's rewrite. Runs 2 and 3 first repair what
    the previous run left (their first append is that repair)."""
    from optuna.trial import TrialState

    rng = random.Random(f"{SEED}-logbook")
    root = tmp_path / "root"
    folder = root / STUDY
    analysis = folder / f"{STUDY}_analysis.md"
    killed_at = 0.0
    for run, (where, nth) in enumerate((("torn", 1), ("before-index", 2), ("memory", 2))):
        fraction = rng.uniform(0.05, 0.95)
        if run:
            time.sleep(max(0.0, killed_at + 2.5 - time.monotonic()))
        killed_at = _killed(*_run_driver(driver, f"logbook:{nth}:{where}:{fraction:.3f}",
                                         _study_args(root, tiny_data_root, 2)), "")
        # The trial whose entry was being written had finished: it is safe in the storage.
        assert [t.state for t in _trials(root)] == [TrialState.COMPLETE] * (run + 1)
        index = json.loads((folder / f".{STUDY}_logbook_index.json").read_text())
        if where in ("torn", "before-index"):  # the log holds more than its index says
            assert analysis.stat().st_size > index["size"]
        else:  # a temporary memory file is left; the memory file itself is whole
            assert list(folder.glob(f".{STUDY}_memory.md.*.tmp"))
    _resume(root, tiny_data_root, 1, killed_at)
    _check_study(root, complete=4, kills=0)


@pytest.mark.slow  # ~40 s: `make test-all` or `pytest -m slow`
def test_sigkill_during_dataset_build_then_resume(driver: Path, tmp_path: Path) -> None:
    """Four runs on a fresh data root killed while building the dataset — in the simulation,
    in the middle of arrays.npz, before the folder's rename, just after it — then a resume:
    no partial dataset is ever visible, the whole one is kept, not rebuilt."""
    from metab_opt.problem import simulation as sim

    root, data_root = tmp_path / "root", tmp_path / "data"
    folder = sim.dataset_dir(load_config(TINY).simulation, data_root)
    killed_at = 0.0
    for where in ("simulate", "savez", "before-rename", "after-rename"):
        killed_at = _killed(*_run_driver(driver, f"dataset:{where}",
                                         _study_args(root, data_root, 1)), "")
        if where != "after-rename":
            assert not folder.exists(), f"{where}: a partial dataset is visible"
    assert _check_dataset(data_root) == folder  # whole before the process died
    before = (folder / "arrays.npz").read_bytes()
    _resume(root, data_root, 1, killed_at)
    _check_dataset(data_root)
    assert (folder / "arrays.npz").read_bytes() == before, "an intact cache was rebuilt"
    _check_study(root, complete=1, kills=0)


def _complete(root: Path) -> int:
    from optuna.trial import TrialState

    if not (root / STUDY / "study.db").exists():  # (reading would create it)
        return 0
    try:
        return len([t for t in _trials(root) if t.state == TrialState.COMPLETE])
    except KeyError:  # the study is not created yet
        return 0


@pytest.mark.slow  # ~40 s: `make test-all` or `pytest -m slow`
def test_sigkill_at_random_moments_then_resume(tmp_path: Path, tiny_data_root: Path,
                                              tiny_dataset: Any) -> None:
    """Two kills at seeded random moments (anywhere: sampling, training, evaluation, plots,
    storage, logbook), then a resume to the end."""
    from optuna.trial import TrialState

    rng = random.Random(f"{SEED}-anywhere")
    root = tmp_path / "root"
    killed_at = time.monotonic()
    for _ in range(2):
        n_before = _complete(root)
        proc = subprocess.Popen(study_command(root, *BEAT, data_root=tiny_data_root,
                                              n_trials=4), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                env=worker_env())

        def one_more(proc: subprocess.Popen = proc, n_before: int = n_before) -> bool:
            assert proc.poll() is None, proc.communicate()
            return _complete(root) > n_before

        try:
            # Once this run has finished a trial, its next one is under way: kill it somewhere.
            wait_for(one_more, 180, "a finished trial")
            time.sleep(rng.uniform(0.0, 6.0))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate()
        killed_at = time.monotonic()
        time.sleep(2.5)  # the heartbeat goes stale
    _resume(root, tiny_data_root, 1, killed_at)
    trials = _trials(root)
    lost = [t for t in trials if t.state == TrialState.FAIL]
    complete = len([t for t in trials if t.state == TrialState.COMPLETE])
    assert len(lost) <= 2  # each kill cost at most the trial it interrupted, which ran again
    _check_study(root, complete=complete, kills=len(lost))
    assert complete >= 3
    print(f"random kills: 2, trials interrupted: {len(lost)}, complete: {complete}")


# ---------------------------------------------------------------------------------------------
# Failing trainings (in-process)


def test_failing_trainings_fail_with_reason_and_are_never_parents(
        tmp_path: Path, tiny_config: Any, tiny_data_root: Path, tiny_dataset: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    from optuna.trial import TrialState

    import metab_opt.objective as objective_mod
    from metab_opt.runner import run_study

    # One block for the whole study, so that UCB (not a block boundary) picks the parents; no
    # survey, so that trial 1 is a learning-rate step of the base values (which the rates at
    # 10 below make diverge) rather than a survey draw.
    cfg = tiny_config({"search.n_iter_block": 12, "search.survey": 0})
    real = objective_mod.run_training

    def run_training(cfg: Any, *, out_dir: Path, **kw: Any) -> Any:
        number = int(Path(out_dir).name.split("_")[1])
        if number == 1:  # every learning rate at 10 (the config's maximum): a real divergence
            cfg = dataclasses.replace(cfg, training=dataclasses.replace(
                cfg.training, learning_rate_start=10.0, learning_rate_k=10.0,
                learning_rate_node=10.0, learning_rate_sub=10.0))
        if number == 2:
            raise RuntimeError("simulated crash in the objective\nwith a second line")
        res = real(cfg, out_dir=out_dir, **kw)
        if number == 3:
            res.metrics["rate_constants_R2"] = None  # the evaluation gave a non-finite R²
        return res

    monkeypatch.setattr(objective_mod, "run_training", run_training)
    root = tmp_path / "root"
    kw = dict(root=root, data_root=tiny_data_root, progress=False, max_steps=150)
    study = run_study(cfg, n_trials=6, **kw)
    # Params outside the search space (lr_k 10 > 1e-2), enqueued by hand: fails, study goes on.
    study.enqueue_trial({**cfg.base_params(), "lr_k": 10.0})
    study = run_study(cfg, n_trials=2, **kw)

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    assert len(trials) == 8
    reasons = {n: by_number[n].user_attrs.get("fail_reason") for n in (1, 2, 3, 6)}
    for n, reason in reasons.items():
        assert by_number[n].state == TrialState.FAIL, (n, by_number[n].state)
        assert isinstance(reason, str) and reason and "\n" not in reason, (n, reason)
    assert reasons[1].startswith("non-finite loss at step"), reasons[1]
    # what the diverged run cost (a comparison's steps axis counts it)
    assert 0 < by_number[1].user_attrs["steps"] <= 150
    assert reasons[2] == "RuntimeError: simulated crash in the objective", reasons[2]
    assert "rate_constants_R2" in reasons[3] and "finite" in reasons[3], reasons[3]
    assert "lr_k" in reasons[6] or "learning_rate_k" in reasons[6], reasons[6]
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    assert failed == {1, 2, 3, 6}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert {t.number for t in complete} == {0, 4, 5, 7}
    parents = {t.user_attrs.get("parent_id") for t in trials}
    assert not parents & failed, "a failed trial was chosen as a parent"
    # The UCB table may list failed nodes (they count in N) but never ranks one first.
    from metab_opt.sampler import ucb_scores
    from metab_opt.study import make_sampler

    rows = list(ucb_scores(optuna.load_study(study_name=STUDY, storage=study._storage,
                                             sampler=make_sampler("ucb", cfg, 0))))
    if rows:
        assert rows[0]["node"] not in failed
    entries = check_views(root / STUDY, STUDY, trials)
    for number, fields in entries:
        if number in failed:
            assert f"training failed ({reasons[number]})" in fields[7], fields[7]


# ---------------------------------------------------------------------------------------------
# Disk full, read-only folder (in-process)


class _Refusing:
    """The study folder on a full disk (ENOSPC) or a read-only mount (EROFS), in-process.

    Under ``folder``: a new file or folder cannot be made, a file cannot be opened for writing
    (read-only) or written to (disk full), a rename into it fails. Reads, and every path
    elsewhere (the storage, the dataset cache), work.
    """

    def __init__(self, folder: Path, code: int) -> None:
        self.folder = str(folder.resolve())
        self.code = code
        self.refused: list[str] = []
        self._fds: set[int] = set()

    def _under(self, path: Any) -> bool:
        if isinstance(path, int):  # a file descriptor
            return False
        full = os.path.realpath(os.fspath(path))
        return full == self.folder or full.startswith(self.folder + os.sep)

    def _refuse(self, path: Any) -> OSError:
        self.refused.append(str(path))
        return OSError(self.code, os.strerror(self.code), os.fspath(path))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import builtins

        real_open, real_os_open, real_write = builtins.open, os.open, os.write
        real_replace, real_rename, real_mkdir = os.replace, os.rename, os.mkdir
        full = self.code == errno.ENOSPC

        def open_(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
            if any(c in mode for c in "wax+") and self._under(file):
                raise self._refuse(file)
            return real_open(file, mode, *a, **k)

        def os_open(path: Any, flags: int, *a: Any, **k: Any) -> int:
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if not writing or not self._under(path):
                return real_os_open(path, flags, *a, **k)
            exists = os.path.exists(path)
            if exists and flags & os.O_CREAT and flags & os.O_EXCL:
                return real_os_open(path, flags, *a, **k)  # FileExistsError, as on any disk
            if full and exists and not flags & os.O_TRUNC:
                fd = real_os_open(path, flags, *a, **k)  # opens; writing to it fails
                self._fds.add(fd)
                return fd
            raise self._refuse(path)

        def write(fd: int, data: Any) -> int:
            if fd in self._fds and len(data):
                self.refused.append(f"fd {fd}")
                raise OSError(self.code, os.strerror(self.code))  # as the kernel: no file name
            return real_write(fd, data)

        def close(fd: int, _real: Any = os.close) -> None:
            self._fds.discard(fd)
            return _real(fd)

        def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            if self._under(dst):
                raise self._refuse(dst)
            return real_replace(src, dst, *a, **k)

        def rename(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            if self._under(dst):
                raise self._refuse(dst)
            return real_rename(src, dst, *a, **k)

        def mkdir(path: Any, *a: Any, **k: Any) -> None:
            if self._under(path) and not os.path.exists(path):  # an existing one: EEXIST
                raise self._refuse(path)
            return real_mkdir(path, *a, **k)

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "close", close)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
def test_unwritable_study_folder_keeps_results_and_repairs_views(
        tmp_path: Path, tiny_cfg: Any, tiny_data_root: Path, tiny_dataset: Any, code: int,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from optuna.trial import TrialState

    from metab_opt.runner import run_study

    root = tmp_path / "root"
    # The storage lives elsewhere (a database server, another disk): the study folder is not.
    storage = f"sqlite:///{tmp_path / 'db' / 'study.db'}"
    kw = dict(root=root, storage_url=storage, data_root=tiny_data_root, progress=False,
              max_steps=150)
    run_study(tiny_cfg, n_trials=1, **kw)  # a healthy start: the folder and its views exist
    folder = root / STUDY
    entries_before = (folder / f"{STUDY}_analysis.md").read_bytes()

    with monkeypatch.context() as patch:
        refusing = _Refusing(folder, code)
        refusing.install(patch)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            study = run_study(tiny_cfg, n_trials=2, **kw)
    assert refusing.refused, "nothing was refused: the test does not test"
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials[1:]:  # the results are in the storage
        assert t.value is not None and t.user_attrs.get("rate_constants_R2") == t.value
        assert t.user_attrs.get("steps") == 150
    assert (folder / f"{STUDY}_analysis.md").read_bytes() == entries_before
    # Each failure is one line naming the file and the error: per trial, its outputs and
    # artifacts (one line) and the logbook's views (one line); the syncs at start and end.
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    print("\n".join(lines))
    strerror = os.strerror(code)
    for line in lines:
        assert "\n" not in line and strerror in line and str(folder) in line, line
    assert sum(line.startswith("trial ") for line in lines) == 2, lines
    assert sum(line.startswith("logbook: ") for line in lines) == 4, lines
    assert len(lines) == 6, lines
    for t in trials[1:]:
        assert strerror in t.user_attrs.get("outputs_error", ""), t.user_attrs

    # The next start, on a writable folder, writes the missing views.
    study = run_study(tiny_cfg, n_trials=1, **kw)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    check_views(folder, STUDY, trials, ordered=True)
