"""The sampler decides as it did when ``tests/data/decisions.json`` was written.

Every rule of the UCB sampler fires in these seeded studies (``tests/_decisions.py``); a change
that is meant to keep the rules (a restructure, a speed-up) must leave each trial's strategy,
parent and params as they were. A rule changed on purpose rewrites the golden file. The
studies run each config as shipped (with its survey) and with ``search.survey: 0``; the latter
are the decisions of every study before the survey was added (issue 15), bit for bit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _decisions  # noqa: E402


def test_the_seeded_decisions_are_those_of_the_golden_file() -> None:
    golden = json.loads(_decisions.GOLDEN.read_text())
    now = json.loads(json.dumps(_decisions.record()))
    assert sorted(now) == sorted(golden)
    for key in golden:
        for was, is_ in zip(golden[key], now[key], strict=True):
            assert is_ == was, (key, was["number"])


def test_every_strategy_fires_in_the_golden_studies() -> None:
    from metab_opt.sampler import STRATEGIES

    golden = json.loads(_decisions.GOLDEN.read_text())
    shipped = {d["strategy"] for key, runs in golden.items() if ":survey0:" not in key
               for d in runs}
    assert shipped == set(STRATEGIES)
    # Without the survey, every other rule still fires.
    off = {d["strategy"] for key, runs in golden.items() if ":survey0:" in key for d in runs}
    assert off == set(STRATEGIES) - {"survey"}


def test_the_golden_studies_with_and_without_the_survey() -> None:
    from metab_opt.config import load_config

    golden = json.loads(_decisions.GOLDEN.read_text())
    for name in _decisions.CONFIGS:
        n = load_config(_decisions.ROOT / "configs" / name).search.survey
        assert n > 0, name  # the shipped configs survey block 1
        for seed in _decisions.SEEDS:
            runs = golden[f"{name}:seed{seed}"]
            assert [d["strategy"] for d in runs[: n + 1]] == ["root"] + ["survey"] * n
            assert all(d["parent"] == 0 for d in runs[1: n + 1])
            # search.survey: 0 decides as before the survey existed (checked against the
            # golden file of then when the survey was added): no survey, the initial spread.
            off = golden[f"{name}:survey0:seed{seed}"]
            assert [d["strategy"] for d in off[:2]] == ["root", "initial-spread"]
