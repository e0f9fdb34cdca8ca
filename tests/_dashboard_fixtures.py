"""A small finished study and ``metab-opt dashboard`` serving it, shared by test_dashboard.py
(the HTTP API) and test_browser.py (the rendered pages).

tests/conftest.py loads this module as a plugin (``pytest_plugins``): its fixtures are there
for every test module, and its helpers are imported from it; a session-scoped fixture costs
nothing until a test asks for it.

The study is made in-process with a synthetic objective (no training: seconds), one real
artifact upload per trial and the real :class:`metab_opt.logbook.Logbook` callback with the
study's artifact store, as ``metab-opt study`` runs it: it writes the memory into the study
note, each entry into its trial's note and the exploration tree and the analysis log as study
artifacts.
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

ROOT = Path(__file__).resolve().parents[1]
NAME = "demo"
HOST = "127.0.0.1"  # loopback only
START_TIMEOUT = 60.0
PARENT_RULE = "UCB top node"  # the fixture's trials' parent rule (trial 0: "block root")


def png(width: int = 2, height: int = 2) -> bytes:
    """A small valid PNG (grey pixels), without matplotlib."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                             0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished 2-trial study under ``<root>/demo/``, laid out as ``metab-opt study`` does.

    Session-scoped: the tests only read it. Trial 1 is trial 0's child, so the tree has an edge
    and trial 1's Observation a ΔR².
    """
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
        # The training seed, by its conventional name (the study keeps no config): searched,
        # but never ranked by the importance panel (test_dashboard.py).
        trial.suggest_int("seed", 0, 1000)
        r2 = 0.5 + 0.1 * trial.number
        root_trial = trial.number == 0
        for key, value in {"rate_constants_R2": r2, "status": "partial",
                           "diagnosis": "poor dynamics", "steps": 100,
                           "visual": f"synthetic, lr_k {lr_k:.2g}",
                           "node_id": trial.number, "parent_id": -1 if root_trial else 0,
                           "block": 1, "strategy": "exploit",
                           "mutation": "root" if root_trial else "lr_k x2",
                           "parent_rule": "block root" if root_trial else PARENT_RULE,
                           }.items():
            trial.set_user_attr(key, value)
        image = png(2 + trial.number, 2)
        path = tmp_path_factory.mktemp("plots") / f"rate_constants_{trial.number:04d}.png"
        path.write_bytes(image)
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
        images[trial.number] = image
        return r2

    logbook = Logbook(folder, NAME, ucb_scores=lambda study: [], artifact_store=store)
    study.optimize(objective, n_trials=2, callbacks=[logbook])
    return {"root": root, "folder": folder, "images": images,
            "memory": (folder / f"{NAME}_memory.md").read_text(encoding="utf-8"),
            "analysis": (folder / f"{NAME}_analysis.md").read_bytes(),
            "tree": (folder / "exploration_tree.png").read_bytes()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def dashboard_cmd(name: str, root: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "metab_opt", "dashboard", name, "--root", str(root),
            "--host", HOST, "--port", str(port)]


def get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, url
    return json.loads(body)


@contextmanager
def serve(root: Path, name: str = NAME) -> Iterator[str]:
    """``metab-opt dashboard NAME --root ROOT --port P`` running; its base URL. Stopped after."""
    port = free_port()
    proc = subprocess.Popen(dashboard_cmd(name, root, port), cwd=ROOT,
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
                if get(f"{base}/api/meta", timeout=2)[0] == 200:
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


@pytest.fixture
def server(finished_study: dict[str, Any]) -> Iterator[str]:
    """The dashboard serving ``finished_study``; its base URL."""
    with serve(finished_study["root"]) as base:
        yield base
