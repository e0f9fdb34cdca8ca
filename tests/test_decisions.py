"""The sampler decides as it did when ``tests/data/decisions.json`` was written.

Every rule of the UCB sampler fires in these seeded studies (``tests/_decisions.py``); a change
that is meant to keep the rules (a restructure, a speed-up) must leave each trial's strategy,
parent and params as they were. A rule changed on purpose rewrites the golden file.
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
    fired = {d["strategy"] for runs in golden.values() for d in runs}
    assert fired == set(STRATEGIES)
