"""``metab-opt dashboard``: optuna-dashboard serves a finished study, its trials' user attrs,
their artifacts and notes (each trial's logbook entry), the study note (the logbook's memory,
then links to the study artifacts) and the study artifacts (the exploration tree and the
analysis log), on a loopback port only.

The study and the server are tests/_dashboard_fixtures.py's (shared with test_browser.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import urllib.error
from pathlib import Path
from typing import Any

import pytest
from _dashboard_fixtures import (  # the fixtures finished_study and server: via conftest.py
    HOST,
    NAME,
    PARENT_RULE,
    ROOT,
    dashboard_cmd,
    free_port,
    get,
    get_json,
)


def test_dashboard_serves_the_study_trials_artifacts_and_note(
        server: str, finished_study: dict[str, Any]) -> None:
    summaries = get_json(f"{server}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == [NAME]
    study_id = summaries[0]["study_id"]

    detail = get_json(f"{server}/api/studies/{study_id}")
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
        status, ctype, body = get(
            f"{server}/artifacts/{study_id}/{t['trial_id']}/{meta['artifact_id']}")
        assert status == 200 and ctype == "image/png"
        assert body == finished_study["images"][t["number"]]
    # The study note is the logbook's memory, then (after a rule) the footer that shows the
    # study artifacts: the memory is still the note's body, unchanged and first; the footer is
    # what makes the note page show the tree (test_the_tree_and_the_log_are_study_artifacts).
    note = detail["note"]["body"]
    memory = finished_study["memory"].strip()
    assert note.startswith(memory)
    assert note[len(memory):].lstrip("\n").startswith("---\n")
    assert note.startswith("#") and NAME in note.splitlines()[0]


def _study(server: str) -> tuple[int, dict[str, Any]]:
    study_id = get_json(f"{server}/api/studies")["study_summaries"][0]["study_id"]
    return study_id, get_json(f"{server}/api/studies/{study_id}")


def test_the_tree_and_the_log_are_study_artifacts(server: str,
                                                  finished_study: dict[str, Any]) -> None:
    study_id, detail = _study(server)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for meta in detail["artifacts"]:
        by_name.setdefault(meta["filename"], []).append(meta)
    assert sorted(by_name) == [f"{NAME}_analysis.md", "exploration_tree.png"]
    # Each logbook update (one per trial) changed both files: only the latest version is kept.
    assert [len(v) for v in by_name.values()] == [1, 1]
    (tree,), (log,) = by_name["exploration_tree.png"], by_name[f"{NAME}_analysis.md"]

    status, ctype, body = get(f"{server}/artifacts/{study_id}/{tree['artifact_id']}")
    assert status == 200 and ctype == "image/png" and body == finished_study["tree"]
    status, ctype, body = get(f"{server}/artifacts/{study_id}/{log['artifact_id']}")
    assert status == 200 and ctype.startswith("text/markdown") and "charset=utf-8" in ctype
    assert body == finished_study["analysis"]  # both entries: the last version
    assert body.decode().count("\n## Iter ") == 2
    # The older versions are gone from the store too: the two trial plots and these two.
    assert len(list((finished_study["folder"] / "artifacts").iterdir())) == 4

    # The study note shows the current tree inline and links the current log.
    note = detail["note"]["body"]
    assert f"![exploration_tree.png](/artifacts/{study_id}/{tree['artifact_id']})" in note
    assert f"[{NAME}_analysis.md](/artifacts/{study_id}/{log['artifact_id']})" in note


def _entries(log: str) -> dict[int, dict[str, str]]:
    """The analysis log's entries: trial number -> {"Observation": ..., ...}."""
    entries: dict[int, dict[str, str]] = {}
    for chunk in log.split("\n## Iter ")[1:]:
        head, *lines = chunk.strip().splitlines()
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        entries[int(head.split(":", 1)[0])] = fields
    return entries


def test_each_trial_note_is_its_logbook_entry(server: str,
                                              finished_study: dict[str, Any]) -> None:
    entries = _entries(finished_study["analysis"].decode())
    assert sorted(entries) == [0, 1]
    # The fixture's trial 1 is trial 0's child: its entry is not a copy of trial 0's.
    assert entries[1]["Parent rule"] == PARENT_RULE
    assert entries[1]["Observation"].startswith("ΔR² +0.100 vs parent 0 (0.500 -> 0.600)")
    assert entries[0]["Observation"].startswith("block root")

    _, detail = _study(server)
    for t in detail["trials"]:
        note = t["note"]["body"]
        assert note.startswith(f"## Iter {t['number']}: partial\n"), note
        # One markdown list item per line of the entry: "- **Observation:** ..."
        shown = {re.sub(r"^- \*\*([^*]+):\*\* ", r"\1: ", line) for line in note.splitlines()}
        entry = entries[t["number"]]
        for key in ("Parent rule", "Observation", "Node", "Metrics"):
            assert f"{key}: {entry[key]}" in shown, (key, note)
        other = entries[1 - t["number"]]
        assert f"Observation: {other['Observation']}" not in shown


def test_the_importance_panel_leaves_the_training_seed_out(server: str) -> None:
    study_id, detail = _study(server)
    for t in detail["trials"]:
        assert {p["name"] for p in t["params"]} == {"lr_k", "seed"}  # the seed was searched
    got = get_json(f"{server}/api/studies/{study_id}/param_importances")["param_importances"]
    assert [[p["name"] for p in objective] for objective in got] == [["lr_k"]]
    assert got[0][0]["distribution"] == "FloatDistribution"


def _wsgi_get(app: Any, path: str) -> tuple[str, Any]:
    """``GET path`` on a WSGI app in-process: (status line, the JSON body)."""
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    answer: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                       ) -> None:
        answer["status"] = status

    body = b"".join(app(environ, start_response))
    return answer["status"], json.loads(body)


def _seed_led_study(seed_param: str, config: dict[str, Any] | None = None
                    ) -> tuple[Any, int]:
    """A study (in memory) whose value follows the training seed's knob ``seed_param`` far
    more than its settings; its storage and study id. ``config``: the study's stored config."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=NAME, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    if config is not None:
        study.set_user_attr("metab_opt:config", config)  # as metab_opt.study.open_study does
    study.optimize(lambda t: t.suggest_int(seed_param, 0, 100)
                   + 5 * t.suggest_float("lr_k", 0.0, 1.0) + t.suggest_float("lr_sub", 0.0, 1.0),
                   n_trials=30)
    return storage, study._study_id


def _names(answer: dict[str, Any]) -> list[str]:
    (objective,) = answer["param_importances"]
    return [p["name"] for p in objective]


def test_dashboard_app_ranks_the_settings_as_optuna_dashboard_does_without_the_seed() -> None:
    import optuna_dashboard

    from metab_opt.dashboard import dashboard_app

    storage, study_id = _seed_led_study("seed")
    path = f"/api/studies/{study_id}/param_importances"
    status, theirs = _wsgi_get(optuna_dashboard.wsgi(storage), path)
    assert status == "200 OK" and _names(theirs)[0] == "seed"  # what the issue saw
    status, ours = _wsgi_get(dashboard_app(storage), path)
    assert status == "200 OK" and sorted(_names(ours)) == ["lr_k", "lr_sub"]
    # Each setting scored as optuna-dashboard scores it, normalized without the seed.
    mine = {p["name"]: p["importance"] for p in ours["param_importances"][0]}
    base = {p["name"]: p["importance"] for p in theirs["param_importances"][0]}
    assert sum(mine.values()) == pytest.approx(1.0)
    assert mine["lr_k"] / mine["lr_sub"] == pytest.approx(base["lr_k"] / base["lr_sub"])
    # The served app's other views are optuna-dashboard's.
    status, studies = _wsgi_get(dashboard_app(storage), "/api/studies")
    assert status == "200 OK" and studies["study_summaries"][0]["study_name"] == NAME
    status, missing = _wsgi_get(dashboard_app(storage), "/api/studies/999/param_importances")
    assert status.startswith("404") and "not found" in missing["reason"]


def test_dashboard_app_reads_the_seed_knob_from_the_studys_config() -> None:
    from metab_opt.config import load_config
    from metab_opt.dashboard import dashboard_app

    config = load_config(ROOT / "configs" / "tiny.yaml").to_dict()
    config["search"]["knobs"]["train_seed"] = config["search"]["knobs"].pop("seed")
    config["search"]["roles"]["seed"] = "train_seed"
    storage, study_id = _seed_led_study("train_seed", config)
    status, answer = _wsgi_get(dashboard_app(storage),
                               f"/api/studies/{study_id}/param_importances")
    assert status == "200 OK" and sorted(_names(answer)) == ["lr_k", "lr_sub"]


def test_unknown_artifact_is_404(server: str) -> None:
    study_id = get_json(f"{server}/api/studies")["study_summaries"][0]["study_id"]
    with pytest.raises(urllib.error.HTTPError) as info:
        get(f"{server}/artifacts/{study_id}/1/00000000-0000-0000-0000-000000000000")
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
    line = _one_line_error(_run_cli(dashboard_cmd("nothing", tmp_path, free_port())))
    assert "no study database" in line and str(tmp_path / "nothing" / "study.db") in line
    assert not any(tmp_path.iterdir())  # nothing created


def test_dashboard_with_an_unknown_study_name_is_one_line(finished_study: dict[str, Any]
                                                          ) -> None:
    root = finished_study["root"]
    storage = f"sqlite:///{root / NAME / 'study.db'}"
    line = _one_line_error(_run_cli([*dashboard_cmd("other", root, free_port()),
                                     "--storage", storage]))
    assert "no study 'other'" in line and NAME in line


def test_dashboard_on_a_taken_port_is_one_line(finished_study: dict[str, Any]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = int(taken.getsockname()[1])
        line = _one_line_error(_run_cli(dashboard_cmd(NAME, finished_study["root"], port)))
    assert f"{HOST}:{port}" in line


class _BrokenStore:
    """An artifact store that refuses everything (a full or unmounted disk)."""

    def open_reader(self, artifact_id: str) -> Any:
        raise OSError(28, "No space left on device")

    def write(self, artifact_id: str, content_body: Any) -> None:
        raise OSError(28, "No space left on device")

    def remove(self, artifact_id: str) -> None:
        raise OSError(28, "No space left on device")


def test_dashboard_views_failing_warn_once_and_never_stop_the_study(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import optuna
    import optuna_dashboard

    from metab_opt.dashboard_views import study_artifacts
    from metab_opt.logbook import Logbook

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("storage refused")

    monkeypatch.setattr(optuna_dashboard, "get_note", refuse)  # the trial notes' first call
    book = Logbook(tmp_path, NAME, ucb_scores=lambda study: [], draw_tree=False,
                   artifact_store=_BrokenStore())
    study = optuna.create_study(study_name=NAME, direction="maximize")
    with caplog.at_level(logging.WARNING, logger="metab_opt.logbook"):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3, callbacks=[book])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert book.analysis_path.read_text(encoding="utf-8").count("\n## Iter ") == 3
    messages = [r.getMessage() for r in caplog.records
                if r.name == "metab_opt.logbook" and "dashboard" in r.getMessage()]
    assert len(messages) == 2, messages  # one per kind, not one per trial
    assert sum(f"{NAME}_analysis.md not published" in m for m in messages) == 1, messages
    assert sum("trial 0's dashboard note not saved (RuntimeError" in m for m in messages) == 1
    # The failed uploads listed nothing, and the study note is still the memory alone.
    assert study_artifacts(study) == []
    assert optuna_dashboard._note.get_note(study) == book.memory_path.read_text(encoding="utf-8")
