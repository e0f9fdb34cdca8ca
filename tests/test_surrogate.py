"""The surrogate replay (metab_opt/compare/surrogate.py) on a synthetic landscape."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metab_opt.compare import surrogate as sg
from metab_opt.config import load_config
from metab_opt.ucbtree import _survey

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(ROOT / "configs" / "rank50_proxy.yaml")


def truth(p: dict[str, Any]) -> float:
    """Best at lr_sub 2e-3 and with through-origin on; nothing else counts."""
    return 0.95 - 0.4 * math.log10(p["lr_sub"] / 2e-3) ** 2 - (0.0 if p["sub_through_origin"]
                                                                else 0.3)


def points(n: int, seed: int) -> list[sg.Point]:
    rng = np.random.default_rng(seed)
    base = CFG.base_params()
    knobs = [k for k in CFG.search.knobs if k.name != "seed"]
    out = []
    for _ in range(n):
        p = dict(base)
        p.update(_survey.random_draw(knobs, base, rng))
        out.append((f"s{seed}", p, truth(p)))
    return out


@pytest.fixture(scope="module")
def model() -> sg.Surrogate:
    return sg.fit_surrogate(CFG, points(60, 0), sweeps=1)


def test_the_surrogate_ranks_unseen_params_as_the_truth_does(model: sg.Surrogate) -> None:
    held = points(30, 1)
    predicted = np.array([model.mean(p) for _, p, _ in held])
    true = np.array([v for _, _, v in held])
    ranks = [np.argsort(np.argsort(a)) for a in (predicted, true)]
    assert np.corrcoef(*ranks)[0, 1] > 0.8
    # The relevant knobs get the shortest length scales.
    relevance = model.relevance()
    assert relevance["lr_sub"] >= max(v for k, v in relevance.items()
                                      if k not in ("lr_sub", "sub_through_origin"))


def test_a_run_is_a_function_of_its_params_seed_and_world(model: sg.Surrogate) -> None:
    _, p, _ = points(1, 2)[0]
    assert model.run(p, 7) == model.run(p, 7)
    assert model.run(p, 7) != model.run(p, 8)
    assert model.run(p, 7, world=1) != model.run(p, 7)
    # Seed to seed, runs scatter around the mean in z = -log(1 - R2).
    z = [-math.log(1 - model.run(p, s)) for s in range(400)]
    assert abs(np.median(z) - (-math.log(1 - model.mean(p)))) < 0.1


def test_a_replay_reports_the_incumbents_confirmed_value(model: sg.Surrogate) -> None:
    for name in ("ucb", "random"):
        runs = sg.replay(CFG, model, sg.SAMPLERS[name], range(2), n_trials=10)
        assert len(runs) == 2
        for r in runs:
            assert r.confirmed <= 1.0 and r.true <= 1.0 and r.best_run <= 1.0
        # Deterministic in the sampler seed.
        again = sg.replay(CFG, model, sg.SAMPLERS[name], range(2), n_trials=10)
        assert again == runs


def test_a_csv_of_trials_reads_back(tmp_path: Path) -> None:
    pts = points(5, 3)
    path = tmp_path / "t.csv"
    names = [k.name for k in CFG.search.knobs]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*names, "rate_constants_R2"])
        for _, p, v in pts:
            w.writerow([p[n] for n in names] + [v])
    back = sg.read_csv(path, CFG)
    assert [v for _, _, v in back] == pytest.approx([v for _, _, v in pts])
    for (_, a, _), (_, b, _) in zip(back, pts, strict=True):
        for n in names:
            assert a[n] == pytest.approx(b[n]) if not isinstance(b[n], bool) else a[n] is b[n]


def test_the_script_refuses_bad_input_in_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("surrogate_replay",
                                                  ROOT / "scripts" / "surrogate_replay.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = str(ROOT / "configs" / "rank50_proxy.yaml")
    for argv, needle in (([], "20 or more"),
                         (["--samplers", "ucb,grid"], "unknown grid"),
                         (["--csv", str(tmp_path / "missing.csv")], "reading the trials"),
                         (["--config", str(tmp_path / "none.yaml")], "error")):
        assert script.main(["--config", config, *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.strip().count("\n") == 0, err


def test_refit_on_the_same_points_predicts_the_same(model: sg.Surrogate) -> None:
    again = sg.refit(model, points(60, 0))
    probe = [p for _, p, _ in points(10, 4)]
    np.testing.assert_allclose([again.mean(p) for p in probe], [model.mean(p) for p in probe],
                               rtol=1e-9, atol=1e-9)
    fewer = sg.refit(model, points(60, 0)[:30])
    assert [fewer.mean(p) for p in probe] != [model.mean(p) for p in probe]
