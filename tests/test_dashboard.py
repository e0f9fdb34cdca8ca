"""``metab-opt dashboard``: optuna-dashboard serves a finished study, its trials' user attrs,
their artifacts and the study note (the logbook's memory), on a loopback port only.

The study is made in-process with a synthetic objective (no training: seconds), one real
artifact upload per trial and the real :class:`metab_opt.logbook.Logbook` callback, which
writes the memory into the dashboard note.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

ROOT = Path(__file__).resolve().parents[1]
NAME = "demo"
HOST = "127.0.0.1"  # loopback only
START_TIMEOUT = 60.0


def _png(width: int = 2, height: int = 2) -> bytes:
    """A small valid PNG (grey pixels), without matplotlib."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                             0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished 2-trial study under ``<root>/demo/``, laid out as ``metab-opt study`` does."""
    from metab_opt.logbook import Logbook

    root = tmp_path_factory.mktemp("dash")
    folder = root / NAME
    (folder / "artifacts").mkdir(parents=True)
    store = FileSystemArtifactStore(str(folder / "artifacts"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=NAME, storage=f"sqlite:///{folder / 'study.db'}",
                                direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    images: dict[int, bytes] = {}

    def objective(trial: optuna.Trial) -> float:
        lr_k = trial.suggest_float("lr_k", 1e-4, 1e-2, log=True)
        r2 = 0.5 + 0.1 * trial.number
        for key, value in {"rate_constants_R2": r2, "status": "partial",
                           "diagnosis": "poor dynamics", "steps": 100,
                           "visual": f"synthetic, lr_k {lr_k:.2g}"}.items():
            trial.set_user_attr(key, value)
        image = _png(2 + trial.number, 2)
        path = tmp_path_factory.mktemp("plots") / f"rate_constants_{trial.number:04d}.png"
        path.write_bytes(image)
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
        images[trial.number] = image
        return r2

    logbook = Logbook(folder, NAME, draw_tree=False, ucb_scores=lambda study: [])
    study.optimize(objective, n_trials=2, callbacks=[logbook])
    memory = (folder / f"{NAME}_memory.md").read_text()
    return {"root": root, "images": images, "memory": memory}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _dashboard_cmd(name: str, root: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "metab_opt", "dashboard", name, "--root", str(root),
            "--host", HOST, "--port", str(port)]


def _get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def _get_json(url: str) -> Any:
    status, _, body = _get(url)
    assert status == 200, url
    return json.loads(body)


@pytest.fixture
def server(finished_study: dict[str, Any]) -> Iterator[str]:
    """``metab-opt dashboard demo --root ROOT --port P`` running; its base URL. Stopped after."""
    port = _free_port()
    proc = subprocess.Popen(_dashboard_cmd(NAME, finished_study["root"], port), cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the dashboard exited ({proc.returncode})\n{out}\n{err}")
            try:
                if _get(f"{base}/api/meta", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not answer on {base} in {START_TIMEOUT} s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_dashboard_serves_the_study_trials_artifacts_and_note(
        server: str, finished_study: dict[str, Any]) -> None:
    summaries = _get_json(f"{server}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == [NAME]
    study_id = summaries[0]["study_id"]

    detail = _get_json(f"{server}/api/studies/{study_id}")
    assert detail["name"] == NAME
    trials = detail["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    assert all(t["state"] == "Complete" for t in trials)
    for t in trials:
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        assert float(attrs["rate_constants_R2"]) == pytest.approx(0.5 + 0.1 * t["number"])
        assert attrs["status"] == "partial" and attrs["diagnosis"] == "poor dynamics"
        # The trial's artifact, served as uploaded.
        assert len(t["artifacts"]) == 1
        meta = t["artifacts"][0]
        assert meta["filename"] == f"rate_constants_{t['number']:04d}.png"
        status, ctype, body = _get(
            f"{server}/artifacts/{study_id}/{t['trial_id']}/{meta['artifact_id']}")
        assert status == 200 and ctype == "image/png"
        assert body == finished_study["images"][t["number"]]
    # The study note is the logbook's memory.
    note = detail["note"]["body"]
    assert note.strip() == finished_study["memory"].strip()
    assert note.startswith("#") and NAME in note.splitlines()[0]


def test_unknown_artifact_is_404(server: str) -> None:
    study_id = _get_json(f"{server}/api/studies")["study_summaries"][0]["study_id"]
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(f"{server}/artifacts/{study_id}/1/00000000-0000-0000-0000-000000000000")
    assert info.value.code == 404


def _run_cli(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, f"{res.stdout}\n{res.stderr}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_dashboard_without_a_study_database_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error(_run_cli(_dashboard_cmd("nothing", tmp_path, _free_port())))
    assert "no study database" in line and str(tmp_path / "nothing" / "study.db") in line
    assert not any(tmp_path.iterdir())  # nothing created


def test_dashboard_with_an_unknown_study_name_is_one_line(finished_study: dict[str, Any]
                                                          ) -> None:
    root = finished_study["root"]
    storage = f"sqlite:///{root / NAME / 'study.db'}"
    line = _one_line_error(_run_cli([*_dashboard_cmd("other", root, _free_port()),
                                     "--storage", storage]))
    assert "no study 'other'" in line and NAME in line


def test_dashboard_on_a_taken_port_is_one_line(finished_study: dict[str, Any]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = int(taken.getsockname()[1])
        line = _one_line_error(_run_cli(_dashboard_cmd(NAME, finished_study["root"], port)))
    assert f"{HOST}:{port}" in line
