"""Distributed workers on a real PostgreSQL server (issue 7).

The ``postgres_url`` fixture starts a private PostgreSQL server for the session: ``initdb`` in a
temporary folder, ``pg_ctl start`` on a free loopback port, ``createdb``; it stops the server
(``pg_ctl stop -m fast``) and removes the folder afterwards. As root it runs the server as the
``postgres`` system user (the server refuses to run as root). It needs the server binaries
(Debian: ``apt-get install postgresql``; ``.ci/run`` installs them) and the driver
(``pip install -e .[postgres]``). Without them the tests are skipped, except in CI (``CI`` set),
where a missing server or driver is a failure.

The tests: 3 worker processes of one tiny study (9 trials); then one worker killed with SIGKILL
mid-trial while two others run: the heartbeat fails its trial, a retry runs the same params,
nothing is lost; the dashboard serves the study from the same URL. Runtime: about 2 minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _study_checks import (
    ROOT,
    check_tree,
    check_views,
    finish,
    params_key,
    study_command,
    wait_for,
    worker_env,
)

from metab_opt.cli import main

STUDY = "tiny"  # the config's name: the study name the workers use
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    """Skip, or fail in CI: CI must run these tests."""
    if IN_CI:
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


def _pg_bindir() -> Path | None:
    """The folder of initdb, pg_ctl and postgres: $METAB_OPT_PG_BINDIR, PATH, pg_config, or
    Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    candidates: list[Path] = []
    if os.environ.get("METAB_OPT_PG_BINDIR"):
        candidates.append(Path(os.environ["METAB_OPT_PG_BINDIR"]))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)  # type: ignore[arg-type]
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server on loopback, with an empty database; its URL."""
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("no PostgreSQL server binaries (initdb, pg_ctl, postgres); install them "
                     "with `apt-get install postgresql` (.ci/run does)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("the PostgreSQL driver is missing: pip install -e '.[postgres]'")
    run_as: list[str] = []
    user = None
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' system user to run the "
                         "server (Debian's postgresql package creates it)")
        if shutil.which("runuser") is None:
            _unavailable("running as root and runuser (util-linux) is missing")
        run_as = ["runuser", "-u", "postgres", "--"]

    base = tempfile.mkdtemp(prefix="metab_opt_pg_", dir=os.environ.get("METAB_OPT_PG_BASE"))
    folder = Path(base)
    data, log = folder / "data", folder / "server.log"
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    os.chmod(folder, 0o700)

    def pg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*run_as, str(bindir / args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=timeout, cwd=folder)

    started = False
    try:
        res = pg("initdb", "-D", str(data), "--auth=trust", "--username=postgres",
                 "--encoding=UTF8", "--no-locale", "--no-sync")
        assert res.returncode == 0, f"initdb failed:\n{res.stdout}\n{res.stderr}"
        for _ in range(3):  # a free port may be taken between the probe and the start
            port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                    f"-c unix_socket_directories={folder} -c fsync=off "
                    f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            res = pg("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts,
                     "start")
            if res.returncode == 0:
                started = True
                break
        if not started:
            tail = log.read_text()[-3000:] if log.exists() else ""
            pytest.fail(f"pg_ctl start failed:\n{res.stdout}\n{res.stderr}\n{tail}")
        createdb = bindir / "createdb"
        res = subprocess.run([str(createdb) if createdb.is_file() else "createdb", "-h",
                              "127.0.0.1", "-p", str(port), "-U", "postgres", "metab_opt"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"createdb failed: {res.stderr}"
        yield f"postgresql://postgres@127.0.0.1:{port}/metab_opt"
    finally:
        if started:
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop", timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The driver: an optional extra, named when it is missing (no server needed)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, (captured.out, captured.err)
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err


def test_missing_driver_names_the_extra(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    # A driver that is not installed (pg8000 is in no extra; hidden in case it is there) ...
    monkeypatch.setitem(sys.modules, "pg8000", None)
    err = _one_line_error(capsys, ["study", "--config", str(ROOT / "configs" / "tiny.yaml"),
                                   "--root", str(root), "--storage",
                                   "postgresql+pg8000://me:secret@127.0.0.1:1/db"])
    assert "driver is missing (pg8000)" in err and ".[postgres]" in err, err
    assert "secret" not in err  # the password is never printed
    # ... and the default driver, hidden as if `pip install .[postgres]` had not been run.
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    err = _one_line_error(capsys, ["study", "--config", str(ROOT / "configs" / "tiny.yaml"),
                                   "--root", str(root), "--storage",
                                   "postgresql://me@127.0.0.1:1/db"])
    assert "driver is missing (psycopg2)" in err and "pip install .[postgres]" in err, err
    assert not root.exists()


# ---------------------------------------------------------------------------------------------
# Workers on the server


def _load(url: str) -> Any:
    import optuna

    from metab_opt.storage import open_storage

    # Through open_storage, as the workers: a bare postgresql:// URL means psycopg (3) to
    # SQLAlchemy 2.1, and the extra installs psycopg2.
    return optuna.load_study(study_name=STUDY, storage=open_storage(url))


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=worker_env())


def _assert_clean(rc: int, out: str, err: str) -> None:
    assert rc == 0, f"worker exit {rc}:\n{out[-2000:]}\n{err[-4000:]}"
    assert "Traceback" not in err, err[-4000:]


@pytest.mark.postgres
def test_three_workers_then_a_kill(postgres_url: str, tmp_path: Path,
                                   tiny_data_root: Path, tiny_dataset: Any) -> None:
    """3 workers x 3 trials; then a worker SIGKILLed mid-trial while 2 others carry on."""
    from optuna.trial import TrialState

    root = tmp_path / "root"
    folder = root / STUDY
    t0 = time.monotonic()

    # -- 3 workers, 3 trials each ------------------------------------------------------------
    cmd = study_command(root, storage=postgres_url, data_root=tiny_data_root, n_trials=3)
    workers = [_start(cmd) for _ in range(3)]
    for w in workers:
        _assert_clean(*finish(w, timeout=240))
    study = _load(postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 9
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert len({params_key(t) for t in trials}) == 9, "two workers ran the same parameters"
    check_tree(trials)
    entries = check_views(folder, STUDY, trials, ordered=False)
    assert len(entries) == 9
    phase1 = time.monotonic() - t0

    # -- a worker killed outright mid-trial while two others run -----------------------------
    # The victim trains for up to 4000 steps, the others for 150: a running trial that has
    # reported a step past 150 is the victim's.
    beat = ["--heartbeat-interval", "1", "--grace-period", "2"]
    victim = _start(study_command(root, *beat, storage=postgres_url, data_root=tiny_data_root,
                                  max_steps=4000, n_trials=1))
    others = [_start(study_command(root, *beat, storage=postgres_url, data_root=tiny_data_root,
                                   n_trials=2)) for _ in range(2)]
    try:
        def victim_training() -> Any:
            assert victim.poll() is None, finish(victim, 5)
            for t in _load(postgres_url).get_trials(deepcopy=False,
                                                     states=(TrialState.RUNNING,)):
                if max(t.intermediate_values, default=0) > 150:
                    return t
            return None

        victim_trial = wait_for(victim_training, 180, "the victim's trial to train")
        running = len(_load(postgres_url).get_trials(deepcopy=False,
                                                      states=(TrialState.RUNNING,)))
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
        for w in others:
            _assert_clean(*finish(w, timeout=240))
    finally:
        for p in (victim, *others):
            if p.poll() is None:
                p.kill()
                p.wait()

    def retries() -> list[Any]:
        return [t for t in _load(postgres_url).get_trials(deepcopy=False)
                if t.system_attrs.get("failed_trial") == victim_trial.number]

    if not any(t.state == TrialState.COMPLETE for t in retries()):
        # The others started their trials before the heartbeat went stale: the next start
        # fails the trial and runs its retry.
        _assert_clean(*finish(_start(study_command(root, *beat, storage=postgres_url,
                                                   data_root=tiny_data_root, n_trials=1)),
                              timeout=240))
    study = _load(postgres_url)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    killed = by_number[victim_trial.number]
    assert killed.state == TrialState.FAIL
    assert "worker lost" in killed.user_attrs.get("fail_reason", ""), killed.user_attrs
    (retry,) = retries()
    assert retry.state == TrialState.COMPLETE
    assert retry.params == killed.params, "the retry did not run the killed trial's params"
    assert retry.user_attrs.get("retry_of") == killed.number
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 9 + 4  # phase 1, and both others' 2 trials
    assert len({params_key(t) for t in complete}) == len(complete)
    assert all(t.number != killed.number for t in complete)
    check_tree(complete)
    check_views(folder, STUDY, trials, ordered=False)
    phase2 = time.monotonic() - t0 - phase1

    # -- the study name, on the server, taken by another config: one line, nothing changes ---
    rc, out, err = finish(_start(study_command(root, "--set", "simulation.seed=8",
                                               storage=postgres_url, data_root=tiny_data_root,
                                               n_trials=1)), timeout=120)
    assert rc == 2 and out == "" and err.count("\n") == 1, (rc, out, err)
    assert "was started with another simulation (simulation.seed: 7 -> 8)" in err, err
    assert len(_load(postgres_url).get_trials(deepcopy=False)) == len(trials)
    print(f"postgres: phase 1 (3 workers x 3 trials) {phase1:.0f} s; phase 2 (kill + 2 workers) "
          f"{phase2:.0f} s; {len(trials)} trials, {len(complete)} complete; trials running "
          f"at the kill: {running}")


@pytest.mark.postgres
def test_dashboard_on_the_same_url(postgres_url: str, tmp_path: Path) -> None:
    """``metab-opt dashboard <name> --storage <url>`` serves a study stored on the server."""
    import optuna

    from metab_opt.storage import open_storage

    optuna.create_study(study_name="dash", storage=open_storage(postgres_url),
                        direction="maximize",
                        load_if_exists=True).add_trial(
        optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "metab_opt", "dashboard", "dash", "--storage",
                             postgres_url, "--root", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=worker_env())
    try:
        def studies() -> Any:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as resp:
                    return json.loads(resp.read())
            except OSError:
                return None

        body = wait_for(studies, 90, "the dashboard to answer", poll=0.5)
        # optuna-dashboard names the list "study_summaries" (a TODO there renames it "studies").
        names = {s["study_name"] for s in body.get("study_summaries", body.get("studies", []))}
        assert "dash" in names, body
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
