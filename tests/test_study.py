"""The study runner end to end: ``scripts/run_study.py`` in subprocesses, as a person runs it.

Every study trains the tiny regime for a few hundred steps at most (``--max-steps``): the tests
check the plumbing (storage, resume, interrupts, workers, logs, artifacts), not the learning.
The subprocesses run with one torch thread: on a small shared machine, several threads per
process only fight over the cores.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import FrozenTrial, TrialState

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_study.py"
NAME = "tiny"  # configs/tiny.yaml's name: the default study name
TITLE = f"# {NAME} — analysis log"
MAX_STEPS = 150
# DESIGN.md's trial record (the metrics that every trial has besides R²).
RECORD = ("rate_constants_R2", "status", "diagnosis", "node_id", "parent_id", "block",
          "strategy", "mutation", "parent_rule", "training_seconds", "steps", "visual")
# The log form, line by line (DESIGN.md).
ENTRY_LINES = ("## Iter ", "Node: ", "Mode/Strategy: ", "Config: ", "Metrics: ", "Visual: ",
               "Mutation: ", "Parent rule: ", "Observation: ", "Next: ")
RUN_TIMEOUT = 240  # seconds for one subprocess study (a few tiny trials)

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------------------------------------
# Helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _cmd(root: Path, *extra: str, max_steps: int = MAX_STEPS) -> list[str]:
    return [sys.executable, str(SCRIPT), "--config", "configs/tiny.yaml", "--root", str(root),
            "--max-steps", str(max_steps), "--no-progress", *extra]


def _sigint_default() -> None:
    # A child of a non-interactive shell's background job starts with SIGINT ignored, and then
    # Python installs no KeyboardInterrupt handler: give it back the default, as a terminal has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cmd: Sequence[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(list(cmd), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)


def _finish(proc: subprocess.Popen[str], timeout: float = RUN_TIMEOUT
            ) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, proc.args))} ran over {timeout} s\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(cmd: Sequence[str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return _finish(_start(cmd), timeout)


def _ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return res


def _db(root: Path) -> Path:
    return root / NAME / "study.db"


def _study(root: Path) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=f"sqlite:///{_db(root)}")


def _trials(root: Path) -> list[FrozenTrial]:
    return _study(root).get_trials(deepcopy=True)


def _study_attrs(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    study = _study(root)
    return study.user_attrs, study._storage.get_study_system_attrs(study._study_id)


def _running(root: Path) -> list[int]:
    """Trial numbers RUNNING right now, read with plain sqlite3 (read-only: a poll must never
    create or migrate the schema that the study process is creating)."""
    if not _db(root).exists():
        return []
    try:
        con = sqlite3.connect(f"file:{_db(root)}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("SELECT number FROM trials WHERE state = 'RUNNING'").fetchall()
        finally:
            con.close()
    except sqlite3.Error:  # no tables yet
        return []
    return sorted(r[0] for r in rows)


def _has_heartbeat(root: Path) -> bool:
    try:
        con = sqlite3.connect(f"file:{_db(root)}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT count(*) FROM trial_heartbeats").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


def _wait_running(root: Path, proc: subprocess.Popen[str], *, heartbeat: bool = False,
                  timeout: float = 180) -> int:
    """Poll until a trial is RUNNING (and has sent a heartbeat); its number."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the study exited ({proc.returncode}) before a trial ran\n{out}\n{err}")
        running = _running(root)
        if running and (not heartbeat or _has_heartbeat(root)):
            return running[0]
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no trial RUNNING after {timeout} s")


def _analysis(root: Path) -> str:
    return (root / NAME / f"{NAME}_analysis.md").read_text()


def _entries(text: str) -> list[tuple[int, str]]:
    """The analysis log's entries, each checked to be whole and in the log form:
    ``[(iter number, entry text), ...]`` in file order."""
    lines = text.split("\n")
    assert lines[0] == TITLE, lines[0]
    assert text.endswith("\n"), "the log ends inside a line"
    body = "\n".join(lines[1:]).strip("\n")
    if not body:
        return []
    out = []
    for block in body.split("\n\n"):
        rows = block.split("\n")
        assert len(rows) == len(ENTRY_LINES), f"malformed entry:\n{block}"
        for row, prefix in zip(rows, ENTRY_LINES):
            assert row.startswith(prefix), f"expected {prefix!r} in:\n{block}"
        match = re.fullmatch(r"## Iter (\d+): \S.*", rows[0])
        assert match, rows[0]
        number = int(match.group(1))
        # Iter N and Node id=N name the same trial (a retried trial included).
        assert rows[1].startswith(f"Node: id={number}, parent="), block
        out.append((number, block))
    return out


def _iters(root: Path) -> list[int]:
    return [n for n, _ in _entries(_analysis(root))]


def _params_key(trial: FrozenTrial) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in trial.params.items()))


def _frozen_view(trial: FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state, "values": trial.values,
            "params": trial.params, "user_attrs": trial.user_attrs,
            "start": trial.datetime_start, "complete": trial.datetime_complete,
            "intermediate": trial.intermediate_values}


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ---------------------------------------------------------------------------------------------
# A 3-trial study, then resumed with 2 more (one study folder shared by the tests below)


@pytest.fixture(scope="module")
def study3(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-trial tiny study, and a snapshot of it taken before anything else touches it."""
    root = tmp_path_factory.mktemp("study3")
    res = _run(_cmd(root, "--n-trials", "3"))
    snap: dict[str, Any] = {"root": root, "res": res}
    if res.returncode == 0:
        study = _study(root)
        trials = study.get_trials(deepcopy=True)
        snap.update(
            trials=trials,
            metric_names=study.metric_names,
            artifacts={t.number: get_all_artifact_meta(t, storage=study._storage)
                       for t in trials},
            analysis=_analysis(root),
            memory=(root / NAME / f"{NAME}_memory.md").read_text(),
            files=_listing(root / NAME),
        )
    return snap


@pytest.fixture(scope="module")
def study5(study3: dict[str, Any]) -> dict[str, Any]:
    """The same study resumed by the same command with ``--n-trials 2``."""
    _ok(study3["res"])
    root = study3["root"]
    res = _run(_cmd(root, "--n-trials", "2"))
    return {"root": root, "res": res}


def test_three_trial_study_end_to_end(study3: dict[str, Any]) -> None:
    root = study3["root"]
    res = _ok(study3["res"])
    trials = study3["trials"]
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert study3["metric_names"] == ["rate_constants_R2"]
    assert len({_params_key(t) for t in trials}) == 3  # three different configs
    for t in trials:
        missing = [k for k in RECORD if k not in t.user_attrs]
        assert not missing, f"trial {t.number} lacks {missing}"
        a = t.user_attrs
        assert a["rate_constants_R2"] == pytest.approx(t.value)
        assert a["node_id"] == t.number
        assert a["status"] in ("converged", "partial", "failed")
        assert 0 < a["steps"] <= MAX_STEPS
        assert a["training_seconds"] > 0
        assert a["block"] == 1
        assert isinstance(a["visual"], str) and a["visual"]
    assert trials[0].user_attrs["strategy"] == "root"
    assert [t.user_attrs["parent_id"] for t in trials[1:]] == [0, 0]  # the survey, from the root
    # One progress line per trial, then the summary.
    for n in range(3):
        assert f"[{n + 1}/3] trial {n} complete" in res.stdout
    # The summary names the incumbent (a replicate group), as the memory file does.
    assert "incumbent: R² " in res.stdout and f"metab-opt best {NAME}" in res.stdout

    # The views.
    entries = _entries(study3["analysis"])
    assert [n for n, _ in entries] == [0, 1, 2]
    memory = study3["memory"].splitlines()
    assert 0 < len(memory) < 300
    folder = root / NAME
    assert (folder / "ucb_scores.txt").read_text().startswith("# UCB scores")
    assert (folder / "exploration_tree.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Artifacts: every trial's final plots, in the study's FileSystemArtifactStore.
    store = folder / "artifacts"
    for t in trials:
        metas = study3["artifacts"][t.number]
        assert metas, f"trial {t.number} has no artifacts"
        for meta in metas:
            assert (store / meta.artifact_id).is_file()
            assert meta.filename.endswith(".png") and meta.mimetype == "image/png"
        names = {m.filename.split("_")[0] for m in metas}
        assert {"MLP", "rate", "loss.png", "kinograph.png"} <= names, names


def test_resume_continues_the_study(study3: dict[str, Any], study5: dict[str, Any]) -> None:
    root = study5["root"]
    res = _ok(study5["res"])
    trials = _trials(root)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # Finished trials are never re-run or changed.
    assert [_frozen_view(t) for t in trials[:3]] == [_frozen_view(t) for t in study3["trials"]]
    assert len({_params_key(t) for t in trials}) == 5
    assert "[1/2] trial 3 complete" in res.stdout and "[2/2] trial 4 complete" in res.stdout
    # The log goes on: append-only, every trial once, in order.
    text = _analysis(root)
    assert text.startswith(study3["analysis"])
    assert [n for n, _ in _entries(text)] == [0, 1, 2, 3, 4]
    assert len((root / NAME / f"{NAME}_memory.md").read_text().splitlines()) < 300
    # The first trials' artifacts are still there; the new trials have theirs.
    study = _study(root)
    for t in trials:
        metas = get_all_artifact_meta(t, storage=study._storage)
        assert metas and all((root / NAME / "artifacts" / m.artifact_id).is_file()
                             for m in metas)


# A changed config, and what the refusal must name.
CHANGES = {
    "base config": (("--set", "training.coeff_MLP_node_L1=0.5"),
                    "another model and training (training.coeff_MLP_node_L1: 1.0 -> 0.5)"),
    "simulation": (("--set", "simulation.seed=8"),
                   "another simulation (simulation.seed: 7 -> 8)"),
    "sampler": (("--sampler", "random"), "another sampler (sampler: ucb -> random)"),
}


def test_resume_with_another_config_is_refused(study3: dict[str, Any]) -> None:
    _ok(study3["res"])
    root = study3["root"]
    before_trials = [_frozen_view(t) for t in _trials(root)]
    before_attrs = _study_attrs(root)
    before_files = _listing(root)
    # The three refusals run side by side: each one's cost is starting the runner.
    procs = {what: _start(_cmd(root, "--n-trials", "1", *args))
             for what, (args, _) in CHANGES.items()}
    for what, proc in procs.items():
        res = _finish(proc, timeout=120)
        assert res.returncode == 2, f"{what}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, f"{what}: {res.stderr}"
        assert f"study '{NAME}' was started with {CHANGES[what][1]}" in lines[0], lines[0]
    # Nothing new: no trial, no attr, no file.
    assert [_frozen_view(t) for t in _trials(root)] == before_trials
    assert _study_attrs(root) == before_attrs
    assert _listing(root) == before_files


# ---------------------------------------------------------------------------------------------
# Interrupts


def test_sigkill_then_resume_fails_and_retries_the_trial(tmp_path: Path) -> None:
    heartbeat = ("--heartbeat-interval", "1", "--grace-period", "2")
    # Long enough that the trial is still running 0.5 s after it is first seen, on a busy
    # machine too (3000 steps once finished first, in a full suite beside other work).
    proc = _start(_cmd(tmp_path, "--n-trials", "2", *heartbeat, max_steps=8000))
    try:
        killed = _wait_running(tmp_path, proc, heartbeat=True)
        time.sleep(0.5)
    finally:
        proc.kill()  # SIGKILL: no cleanup at all
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert _running(tmp_path) == [killed]  # left behind
    time.sleep(3.5)  # > the grace period: its heartbeat is stale now

    _ok(_run(_cmd(tmp_path, "--n-trials", "1", *heartbeat)))
    trials = _trials(tmp_path)
    by_number = {t.number: t for t in trials}
    dead = by_number[killed]
    assert dead.state == TrialState.FAIL
    assert "worker lost" in dead.user_attrs.get("fail_reason", ""), dead.user_attrs
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1, [(t.number, t.system_attrs) for t in trials]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == dead.params  # the same configuration, tried again
    assert retry.system_attrs.get("retry_history") == [killed]
    assert retry.user_attrs["retry_of"] == killed
    assert retry.user_attrs["node_id"] == retry.number
    assert "fail_reason" not in retry.user_attrs  # the dead run's results are not inherited
    assert all(t.state != TrialState.RUNNING for t in trials)
    # The logs: every finished trial exactly once, in trial order, each entry whole.
    entries = _entries(_analysis(tmp_path))
    assert [n for n, _ in entries] == sorted(t.number for t in trials)
    text = dict(entries)
    assert "worker lost" in text[killed]
    assert f"retry of trial {killed}" in text[retry.number]


def test_ctrl_c_fails_the_running_trial_and_flushes_the_log(tmp_path: Path) -> None:
    proc = _start(_cmd(tmp_path, "--n-trials", "2", max_steps=8000))  # long: see above
    try:
        number = _wait_running(tmp_path, proc)
        time.sleep(1.0)  # inside the training
        proc.send_signal(signal.SIGINT)
        res = _finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert res.returncode == 130, f"{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    assert "interrupted" in res.stderr
    trials = _trials(tmp_path)
    assert [t.number for t in trials] == [number]  # no trial after the interrupt
    trial = trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "interrupted"
    entries = _entries(_analysis(tmp_path))
    assert [n for n, _ in entries] == [number]
    assert "interrupted" in entries[0][1]


# ---------------------------------------------------------------------------------------------
# run_study's own control flow, in-process with a stand-in objective (no training: seconds)


class _FakeObjective:
    """Objective's interface without the training: R² from the trial number."""

    def __init__(self, cfg: Any, **_: Any) -> None:
        self.cfg = cfg

    def dataset(self) -> None:
        return None

    def __call__(self, trial: optuna.Trial) -> float:
        from metab_opt.sampler import suggest_params

        suggest_params(trial, self.cfg.search)
        r2 = 0.5 + 0.01 * trial.number
        trial.set_user_attr("rate_constants_R2", r2)
        trial.set_user_attr("status", "partial")
        return r2


@pytest.fixture
def fake_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    import metab_opt.objective

    monkeypatch.setattr(metab_opt.objective, "Objective", _FakeObjective)


def _sampler_failing_at(monkeypatch: pytest.MonkeyPatch, number: int,
                        exc: BaseException) -> None:
    """The study's sampler raises ``exc`` while it decides trial ``number`` (after Optuna has
    created the trial RUNNING)."""
    import metab_opt.runner as runner

    make = runner.make_sampler

    def make_failing(kind: str, cfg: Any, seed: int | None, **options: Any) -> Any:
        sampler = make(kind, cfg, seed, **options)
        decide = sampler.before_trial

        def before_trial(study: Any, trial: Any) -> None:
            if trial.number == number:
                raise exc
            decide(study, trial)

        sampler.before_trial = before_trial
        return sampler

    monkeypatch.setattr(runner, "make_sampler", make_failing)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [(KeyboardInterrupt(), "interrupted"),
     (RuntimeError("sampler bug"), "aborted: RuntimeError: sampler bug")],
    ids=["ctrl-c", "error"],
)
def test_no_trial_left_running_when_the_sampler_fails(
        tmp_path: Path, tiny_cfg: Any, fake_objective: None, monkeypatch: pytest.MonkeyPatch,
        exc: BaseException, reason: str) -> None:
    from metab_opt.runner import run_study

    _sampler_failing_at(monkeypatch, 1, exc)
    with pytest.raises(type(exc)):
        run_study(tiny_cfg, root=tmp_path, n_trials=3, progress=False)
    trials = _trials(tmp_path)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["fail_reason"] == reason
    assert _iters(tmp_path) == [0, 1]  # the log is synced on the way out


def test_normal_exit_leaves_no_trial_running(tmp_path: Path, tiny_cfg: Any,
                                             fake_objective: None) -> None:
    from metab_opt.runner import run_study

    study = run_study(tiny_cfg, root=tmp_path, n_trials=3, progress=False)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert _iters(tmp_path) == [0, 1, 2]
    study = run_study(tiny_cfg, root=tmp_path, n_trials=1, progress=False)  # resumed
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert _iters(tmp_path) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Workers and samplers


@pytest.mark.parametrize("message", [
    "UNIQUE constraint failed: alembic_version.version_num",  # both stamped the version
    "table studies already exists",
], ids=["version-stamp", "create-table"])
def test_a_worker_losing_the_race_to_create_a_sqlite_storage_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    """Workers started together on a new SQLite file race to create Optuna's tables and stamp
    its schema version; the loser got "cannot connect (UNIQUE constraint failed: ...)" and
    exit 2 (seen in about 1 of 16 openings by 4 processes at once). It must retry instead."""
    import sqlalchemy.exc

    from metab_opt.storage import open_storage

    real = optuna.storages.RDBStorage
    calls = []

    def lose_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            kind = (sqlalchemy.exc.IntegrityError if "UNIQUE" in message
                    else sqlalchemy.exc.OperationalError)
            raise kind("INSERT ...", {}, sqlite3.IntegrityError(message))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", lose_once)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(calls) == 2
    assert storage.get_all_studies() == []


@pytest.mark.slow  # ~1.5 min on a busy 2-core machine; the sampler's and the logbook's own
# tests cover two processes on one storage in the default run
def test_two_workers_share_one_storage(tmp_path: Path) -> None:
    procs = [_start(_cmd(tmp_path, "--n-trials", "2")) for _ in range(2)]
    results = [_finish(p) for p in procs]
    for res in results:
        _ok(res)
    trials = _trials(tmp_path)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert len({_params_key(t) for t in trials}) == 4  # the workers never ran the same config
    assert sorted(t.user_attrs["node_id"] for t in trials) == [0, 1, 2, 3]
    # One whole entry per trial (no lines of two entries interleaved), each exactly once.
    assert sorted(_iters(tmp_path)) == [0, 1, 2, 3]
    memory = (tmp_path / NAME / f"{NAME}_memory.md").read_text().splitlines()
    assert 0 < len(memory) < 300


@pytest.mark.slow  # ~1 min on a busy 2-core machine
def test_baseline_samplers_run_the_same_objective(tmp_path: Path) -> None:
    samplers = ("random", "tpe")
    # Side by side, each in its own study folder.
    procs = {s: _start(_cmd(tmp_path / s, "--n-trials", "2", "--sampler", s)) for s in samplers}
    for sampler, proc in procs.items():
        res = _ok(_finish(proc))
        root = tmp_path / sampler
        trials = _trials(root)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, sampler
        assert len({_params_key(t) for t in trials}) == 2
        for t in trials:
            assert t.user_attrs["rate_constants_R2"] == pytest.approx(t.value)
            assert "node_id" not in t.user_attrs  # no tree: the logbook copes without it
        assert "parent -" in res.stdout
        assert _iters(root) == [0, 1]
        folder = root / NAME
        assert (folder / "ucb_scores.txt").is_file()
        assert len((folder / f"{NAME}_memory.md").read_text().splitlines()) < 300
        assert _study(root).user_attrs["metab_opt:fingerprint"]["sampler"] == sampler


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--n-trials", "0"), "positive integer"),
        (("--n-trials", "-1"), "positive integer"),
        (("--sampler", "nope"), "nope"),
        (("--storage", "foo://x"), "unknown scheme 'foo'"),
        (("--storage", "postgresql://u@127.0.0.1:1/db"), "postgresql://u@127.0.0.1:1/db"),
        (("--n-trial", "3"), "did you mean --n-trials"),  # a prefix: no abbreviations
        (("--n-trails", "3"), "did you mean --n-trials"),
        (("--set", "training.bogus=1"), "bogus"),
        (("--timeout", "nan"), "positive number"),
        (("--device", "tpu"), "tpu"),
    ],
    ids=["n-trials-0", "n-trials-negative", "sampler", "storage-scheme", "storage-unreachable",
         "abbreviated-option", "misspelled-option", "unknown-key", "timeout-nan", "device"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...],
                                          says: str) -> None:
    root = tmp_path / "root"
    res = _run(_cmd(root, *args), timeout=120)
    assert res.returncode == 2, f"{res.stdout}\n{res.stderr}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert says in lines[0], lines[0]
    if args[0] == "--storage" and args[1].startswith("postgresql"):
        # Unreachable or no driver installed: either way the line says which.
        assert "cannot connect" in lines[0] or "driver is missing" in lines[0], lines[0]
    assert not root.exists() or not any(root.iterdir()), _listing(root)


def test_help_lists_the_options() -> None:
    res = _run([sys.executable, str(SCRIPT), "--help"], timeout=60)
    assert res.returncode == 0, res.stderr
    for option in ("--config", "--study-name", "--root", "--storage", "--n-trials", "--timeout",
                   "--sampler", "--pruner", "--n-jobs", "--device", "--seed"):
        assert option in res.stdout, option
