"""Bad input to ``metab-opt study`` (issue 7): one clear line, exit code 2, no traceback, nothing
written.

Every case runs the real command line in a fresh process (``python -m metab_opt``), so whatever
reaches stderr (a log line, a warning, a traceback) is seen. A fuzz test then feeds 200 seeded
random mutations of configs/rank50.yaml to the loader: each loads or fails with one line; a
sample of the failures goes through ``train`` and ``simulate`` to show the exit code 2 and that
nothing is written. (Complements test_study.py's bad-input cases, test_cli.py's ``simulate``
and ``--set`` cases and test_config.py's loader cases: no case is repeated.)
"""

from __future__ import annotations

import copy
import os
import random
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from metab_opt import config as config_mod
from metab_opt.cli import main
from metab_opt.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
RANK50 = ROOT / "configs" / "rank50.yaml"
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _cli(tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    """``metab-opt <argv>`` in a fresh process, run from an empty folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, "-m", "metab_opt", *argv], capture_output=True,
                         text=True, cwd=cwd, env=env, timeout=120)
    return res.returncode, res.stdout, res.stderr


def _assert_one_line(rc: int, out: str, err: str, *needles: str) -> None:
    assert rc == 2, f"exit {rc}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    assert out == "", out
    assert err.startswith("metab-opt"), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _tiny_with(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    edit(raw)
    return _write(tmp_path, "edited.yaml", yaml.safe_dump(raw, sort_keys=False))


def _typo_key(raw: dict[str, Any]) -> None:
    raw["training"]["learnign_rate_k"] = raw["training"].pop("learning_rate_k")


def _typo_section(raw: dict[str, Any]) -> None:
    raw["grpah_model"] = raw.pop("graph_model")


# (id, argv after "study", needles in the line); {tiny} {root} {tmp} {port} are filled in.
STUDY_CASES: list[tuple[str, list[str], list[str]]] = [
    # unknown or misspelled options, with a suggestion
    ("misspelled-storage", ["--storgae", "sqlite:///x.db"], ["did you mean --storage?"]),
    ("misspelled-heartbeat", ["--heartbeat-intervall", "1"],
     ["did you mean --heartbeat-interval?"]),
    ("unknown-option", ["--threads", "3"], ["unrecognized arguments: --threads 3"]),
    ("workers-word", ["--workers", "many"], ["--workers", "'many'"]),
    ("stray-argument", ["now"], ["unrecognized arguments: now"]),
    # --n-trials and other numbers
    ("n-trials-negative-eq", ["--n-trials=-5"], ["--n-trials", "'-5'"]),
    ("n-trials-float", ["--n-trials", "2.5"], ["--n-trials", "'2.5'"]),
    ("n-trials-word", ["--n-trials", "ten"], ["--n-trials", "'ten'"]),
    ("timeout-negative", ["--timeout", "-5"], ["--timeout", "positive number"]),
    ("seed-word", ["--seed", "x"], ["--seed", "invalid int value"]),
    ("heartbeat-0", ["--heartbeat-interval", "0"], ["--heartbeat-interval"]),
    ("max-steps-negative", ["--max-steps", "-1"], ["--max-steps"]),
    ("n-jobs-0", ["--n-jobs", "0"], ["--n-jobs"]),
    # config keys and values through --set
    ("set-misspelled-section", ["--set", "trainnig.learning_rate_k=0.01"],
     ["unknown section 'trainnig'", "did you mean 'training'"]),
    ("set-deep-path", ["--set", "training.learning_rate_k.x=1"], ["expected section.key=value"]),
    ("set-empty-value", ["--set", "training.batch_size="], ["training.batch_size"]),
    ("set-wrong-type-bool", ["--set", "graph_model.sub_through_origin=maybe"],
     ["graph_model.sub_through_origin"]),
    ("set-out-of-range", ["--set", "training.learning_rate_k=50"],
     ["training.learning_rate_k: 50.0 is outside the allowed range"]),
    ("set-outside-knob", ["--set", "training.learning_rate_k=0.5"],
     ["outside the range of search knob 'lr_k'"]),
    ("set-n-trials-0", ["--set", "search.n_trials=0"], ["search.n_trials"]),
    ("frozen-key", ["--set", "training.freeze_stoichiometry=false"],
     ["training.freeze_stoichiometry is frozen at True"]),
    ("frozen-key-S", ["--set", "training.coeff_S_L1=0.1"], ["training.coeff_S_L1 is frozen"]),
    # the config file
    ("missing-config", ["--config", "{tmp}/nope.yaml"], ["nope.yaml: no such config file"]),
    ("config-is-folder", ["--config", "{tmp}"], ["cannot read the config file"]),
    ("config-binary", ["--config", "{binary}"], ["not a text file"]),
    ("config-bad-yaml", ["--config", "{badyaml}"], ["unreadable YAML at line"]),
    ("config-typo-key", ["--config", "{typokey}"],
     ["training.learnign_rate_k: unknown key", "did you mean 'learning_rate_k'"]),
    ("config-typo-section", ["--config", "{typosection}"],
     ["grpah_model: unknown section", "did you mean 'graph_model'"]),
    # storage URLs
    ("storage-no-scheme", ["--storage", "{tmp}/study.db"], ["unknown scheme"]),
    ("storage-typo-scheme", ["--storage", "postgressql://me@127.0.0.1/db"],
     ["unknown scheme 'postgressql'"]),
    ("storage-unreachable-says-which", ["--storage", "postgresql://me:secret@127.0.0.1:{port}/db"],
     ["cannot connect", '"127.0.0.1", port {port}', "me:***@"]),
]


@pytest.mark.parametrize("argv,needles", [c[1:] for c in STUDY_CASES],
                         ids=[c[0] for c in STUDY_CASES])
def test_study_bad_input(tmp_path: Path, argv: list[str], needles: list[str]) -> None:
    if any("{port}" in a for a in argv):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            if IN_CI:
                raise
            pytest.skip("needs the PostgreSQL driver (pip install -e '.[postgres]')")
    (tmp_path / "k").mkdir()
    (tmp_path / "s").mkdir()
    fill = {
        "tiny": str(TINY), "tmp": str(tmp_path), "port": str(_free_port()),
        "binary": str(_write(tmp_path, "binary.yaml", bytes(range(256)) * 4)),
        "badyaml": str(_write(tmp_path, "bad.yaml", TINY.read_text().replace(
            "  n_frames: 600", "  n_frames: [600"))),
        "typokey": str(_tiny_with(tmp_path / "k", _typo_key)),
        "typosection": str(_tiny_with(tmp_path / "s", _typo_section)),
    }
    argv = [a.format(**fill) for a in argv]
    needles = [n.format(**fill) for n in needles]
    if "--config" not in argv:
        argv = ["--config", str(TINY), *argv]
    root = tmp_path / "root"
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = _cli(tmp_path, "study", *argv, "--root", str(root), "--no-progress")
    _assert_one_line(rc, out, err, *needles)
    assert "secret" not in err
    assert not root.exists(), "bad input wrote under --root"
    assert not any((tmp_path / "cwd").iterdir()), "bad input wrote into the working folder"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cwd") == \
        [n for n in before if n != "cwd"]


def test_dashboard_bad_input(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rc, out, err = _cli(tmp_path, "dashboard", "x", "--root", str(root), "--storage", "mongo://h")
    _assert_one_line(rc, out, err, "unknown scheme 'mongo'")
    rc, out, err = _cli(tmp_path, "dashboard", "x", "--root", str(root), "--port", "0")
    _assert_one_line(rc, out, err, "--port")
    assert not root.exists()


# ---------------------------------------------------------------------------------------------
# Fuzz: 200 seeded mutations of rank50.yaml


_SECTIONS = ("simulation", "graph_model", "training")
_SPECS = {"simulation": config_mod._SIMULATION_SPECS, "graph_model": config_mod._GRAPH_MODEL_SPECS,
          "training": config_mod._TRAINING_SPECS}


def _typo(rng: random.Random, word: str) -> str:
    """One edit: swap two neighbours, drop, double or replace a letter."""
    while True:
        i = rng.randrange(len(word))
        kind = rng.choice(("swap", "drop", "double", "replace"))
        if kind == "swap" and i + 1 < len(word):
            out = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif kind == "drop" and len(word) > 3:
            out = word[:i] + word[i + 1:]
        elif kind == "double":
            out = word[:i] + word[i] + word[i:]
        else:
            out = word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz_") + word[i + 1:]
        if out != word:
            return out


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a nested mapping (leaves and inner keys)."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    return out


def _get_parent(raw: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    node = raw
    for key in path[:-1]:
        node = node[key]
    return node


def _mutate(kind: str, rng: random.Random, base: dict[str, Any],
            text: str) -> tuple[str | bytes, str]:
    """A mutated config and what the loader must do: 'error', 'suggest:<key>' (an error that
    suggests <key>) or 'either'."""
    raw = copy.deepcopy(base)
    paths = _paths(raw)
    leaves = [p for p in paths if not isinstance(_get_parent(raw, p)[p[-1]], dict)]
    if kind == "delete":
        path = rng.choice(paths)
        del _get_parent(raw, path)[path[-1]]
        expect = "either"
        if len(path) == 1:
            expect = "error"  # a whole section
        elif len(path) == 2 and path[0] in _SPECS and _SPECS[path[0]][path[1]].required:
            expect = "error"
    elif kind == "typo-key":
        # Keys the loader knows (section, key, search setting, knob field); a knob's own name
        # is free text.
        known = [p for p in paths if len(p) == 1 or p[0] != "search" or len(p) != 3]
        path = rng.choice(known)
        parent = _get_parent(raw, path)
        new = _typo(rng, str(path[-1]))
        while new in parent:
            new = _typo(rng, str(path[-1]))
        parent[new] = parent.pop(path[-1])
        expect = f"suggest:{path[-1]}"
    elif kind == "type":
        path = rng.choice(leaves)
        parent = _get_parent(raw, path)
        old = parent[path[-1]]
        choices: list[Any] = ["abc", [1, "x"], {"a": 1}, None, True, 3.5, -7, "1e-3 m", ""]
        new = rng.choice([c for c in choices if type(c) is not type(old)])
        parent[path[-1]] = new
        expect = "either"  # an int where a float goes, a bool knob choice... may be fine
        if (len(path) == 2 and path[0] in _SPECS and isinstance(new, (str, list, dict))
                and _SPECS[path[0]][path[1]].kind in ("int", "float", "bool")):
            expect = "error"
    elif kind == "range":
        section = rng.choice(_SECTIONS)
        key = rng.choice([k for k, s in _SPECS[section].items()
                          if s.kind in ("int", "float") and k in raw[section]])
        big = rng.choice((10**12, -10**12)) if _SPECS[section][key].kind == "int" else \
            rng.choice((1e12, -1e12, float("inf"), float("-inf"), float("nan")))
        raw[section][key] = big
        expect = "error"
    elif kind == "frozen":
        key = rng.choice(list(config_mod.FROZEN_TRAINING_KEYS))
        value = config_mod.FROZEN_TRAINING_KEYS[key]
        raw["training"][key] = (not value) if isinstance(value, bool) else rng.choice((0.5, 1.0))
        expect = "error"
    elif kind == "garbage":
        path = rng.choice(paths)
        garbage: Any = {"a": [{"b": {"c": [1, 2, {"d": None}]}}]}
        for _ in range(rng.randrange(1, 6)):
            garbage = rng.choice(([garbage], {"x": garbage}, [garbage, 1]))
        _get_parent(raw, path)[path[-1]] = garbage
        expect = "either" if path[:2] == ("search", "knobs") and len(path) == 2 else "error"
        if len(path) >= 3 and path[1] == "knobs" and path[-1] == "choices":
            expect = "either"  # a categorical choice may be anything
    elif kind == "text":
        op = rng.choice(("truncate", "bracket", "tab", "colon", "delete-char", "binary",
                         "indent", "empty"))
        i = rng.randrange(len(text))
        if op == "truncate":
            return text[:i], "either"
        if op == "bracket":
            return text[:i] + "[" + text[i:], "either"
        if op == "tab":
            line_start = text.rfind("\n", 0, i) + 1
            return text[:line_start] + "\t" + text[line_start:], "either"
        if op == "colon":
            return text[:i] + ": :" + text[i:], "either"
        if op == "delete-char":
            return text[:i] + text[i + 1:], "either"
        if op == "binary":
            return text.encode()[:i] + bytes(rng.randrange(256) for _ in range(16)), "either"
        if op == "indent":
            line_start = text.rfind("\n", 0, i) + 1
            return text[:line_start] + "   " + text[line_start:], "either"
        return "", "error"
    else:
        raise AssertionError(kind)
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), expect


KINDS = ("delete", "typo-key", "type", "range", "frozen", "garbage", "text")


def _mutants(tmp_path: Path, n: int = 200, seed: int = 7) -> list[tuple[Path, str, str]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    text = RANK50.read_text()
    base = yaml.safe_load(text)
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        data, expect = _mutate(kind, rng, base, text)
        out.append((_write(tmp_path, f"mutant_{i:03d}_{kind}.yaml", data), kind, expect))
    return out


def test_fuzz_200_mutations_load_or_fail_in_one_line(tmp_path: Path) -> None:
    outcomes: Counter[str] = Counter()
    for path, kind, expect in _mutants(tmp_path):
        try:
            load_config(path)
        except ConfigError as exc:
            msg = str(exc)
            assert msg and "\n" not in msg, f"{path.name}: not one line: {msg!r}"
            assert msg.startswith(str(path)), f"{path.name}: the line does not name the file"
            assert len(msg) < 400, f"{path.name}: a {len(msg)}-character line: {msg[:400]}"
            if expect.startswith("suggest:"):
                assert f"did you mean '{expect.split(':', 1)[1]}'" in msg, f"{path.name}: {msg}"
            outcomes[f"{kind}: error"] += 1
        except Exception as exc:  # anything else is a bug in the loader
            raise AssertionError(f"{path.name} ({kind}): {type(exc).__name__}: {exc}\n"
                                 f"{path.read_bytes()[:3000]!r}") from exc
        else:
            assert expect == "either", f"{path.name} ({kind}) loaded; expected {expect}"
            outcomes[f"{kind}: loads"] += 1
    assert sum(outcomes.values()) == 200
    assert sum(v for k, v in outcomes.items() if k.endswith("error")) >= 150, outcomes
    print(dict(sorted(outcomes.items())))


def test_fuzz_mutations_through_the_cli(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """10 failing mutants through ``train --max-steps 1`` and 3 through ``simulate``: exit 2, one
    line, nothing written (in-process; 2 more in a fresh process)."""
    failing: dict[str, list[Path]] = {}
    for path, kind, _ in _mutants(tmp_path / "mutants"):
        try:
            load_config(path)
        except ConfigError:
            failing.setdefault(kind, []).append(path)
    picked = [paths[i] for i in range(2) for paths in failing.values() if len(paths) > i][:10]
    assert len(picked) == 10
    out, data = tmp_path / "o", tmp_path / "d"
    for path in picked:
        rc = main(["train", "--config", str(path), "--max-steps", "1", "--out", str(out),
                   "--data-root", str(data), "--device", "cpu"])
        captured = capsys.readouterr()
        assert rc == 2, (path.name, captured)
        assert captured.out == "" and captured.err.count("\n") == 1, (path.name, captured)
        assert str(path) in captured.err
    not_frozen = [p for kind, paths in failing.items() if kind != "frozen" for p in paths]
    for path in not_frozen[:3]:
        rc = main(["simulate", "--config", str(path), "--data-root", str(data)])
        captured = capsys.readouterr()
        assert rc == 2 and captured.err.count("\n") == 1, (path.name, captured)
    for path in picked[:2]:
        rc, o, err = _cli(tmp_path, "train", "--config", str(path), "--max-steps", "1",
                          "--out", str(out), "--data-root", str(data))
        _assert_one_line(rc, o, err, str(path))
    assert not out.exists() and not data.exists()
