"""``metab-opt replicate``: one config, several training seeds, the spread."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from metab_opt.cli import main
from metab_opt.config import Config
from metab_opt.replicate import COLUMNS, replicate, summarize

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
SHORT = ["--set", "training.data_augmentation_loop=25"]  # 375 steps on tiny


def test_summarize_by_hand() -> None:
    rows = [{"rate_constants_R2": 0.9, "rate_constants_R2_shifted": 0.95, "test_pearson": 0.5,
             "training_seconds": 10.0},
            {"rate_constants_R2": 0.8, "rate_constants_R2_shifted": 0.97, "test_pearson": 0.7,
             "training_seconds": 12.0}]
    s = summarize(rows)
    assert s["rate_constants_R2"]["mean"] == pytest.approx(0.85)
    assert s["rate_constants_R2"]["sd"] == pytest.approx(statistics.stdev([0.9, 0.8]))
    assert (s["rate_constants_R2"]["min"], s["rate_constants_R2"]["max"]) == (0.8, 0.9)
    assert s["test_pearson"]["n"] == 2
    assert summarize(rows[:1])["rate_constants_R2"]["sd"] == 0.0


def test_summarize_skips_missing_and_non_finite() -> None:
    rows = [{"rate_constants_R2": float("nan")}, {"rate_constants_R2": 0.5}]
    s = summarize(rows)
    assert s["rate_constants_R2"]["n"] == 1 and "test_pearson" not in s


def test_replicate_runs_each_seed(tiny_config, tiny_dataset, tiny_data_root: Path,
                                  tmp_path: Path) -> None:
    cfg: Config = tiny_config({"training.data_augmentation_loop": 25})
    seen: list[int] = []
    result = replicate(cfg, seeds=[3, 4], out=tmp_path, data_root=tiny_data_root, device="cpu",
                       on_run=lambda row: seen.append(row["seed"]))
    assert seen == [3, 4]
    runs = result["runs"]
    assert [r["seed"] for r in runs] == [3, 4]
    assert all(set(COLUMNS) <= set(r) for r in runs)
    assert runs[0]["rate_constants_R2"] != runs[1]["rate_constants_R2"]  # the seed matters
    for seed in (3, 4):
        metrics = json.loads((tmp_path / f"seed_{seed}" / "metrics.json").read_text())
        assert metrics["rate_constants_R2"] == runs[[3, 4].index(seed)]["rate_constants_R2"]
    saved = json.loads((tmp_path / "replicates.json").read_text())
    assert saved["summary"]["rate_constants_R2"]["mean"] == pytest.approx(
        statistics.fmean(r["rate_constants_R2"] for r in runs))
    table = (tmp_path / "replicates.md").read_text()
    assert table.startswith("# Replicates of tiny") and "| 3 |" in table and "| 4 |" in table


def test_replicate_needs_a_seed(tiny_cfg: Config, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seeds: expected at least one"):
        replicate(tiny_cfg, seeds=[], out=tmp_path)


def test_cli_replicate(tmp_path: Path, tiny_data_root: Path, tiny_dataset,
                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["replicate", "--config", str(TINY), *SHORT, "--seeds", "1", "2", "--out",
               str(tmp_path / "rep"), "--data-root", str(tiny_data_root), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "seed 1: R2 " in out and "seed 2: R2 " in out
    line = next(x for x in out.splitlines() if x.startswith("rate_constants_R2: mean"))
    assert math.isfinite(float(line.split()[2]))
    assert (tmp_path / "rep" / "replicates.json").is_file()


@pytest.mark.parametrize("seeds", [["1", "1"], ["-1"]])
def test_cli_replicate_bad_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 seeds: list[str]) -> None:
    rc = main(["replicate", "--config", str(TINY), "--seeds", *seeds, "--out",
               str(tmp_path / "rep")])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "--seeds: expected distinct integers" in captured.err
    assert not (tmp_path / "rep").exists()


def test_a_finished_run_classified_failed_enters_the_mean(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A run that finished with R² < 0.1 (the metrics' class "failed") is a result: printed and
    counted in the mean, not dropped like a diverged run."""
    import metab_opt.objective as objective
    from metab_opt.objective import RunResult
    from metab_opt.problem.training import TrainingDiverged

    def fake(cfg, *, out_dir, **_kw):  # seed 1 finishes badly, seed 2 diverges
        if cfg.training.seed == 2:
            raise TrainingDiverged(7, "loss")
        metrics = {k: 0.0 for k in COLUMNS}
        metrics.update(status="failed", rate_constants_R2=-0.4, steps=10)
        return RunResult(metrics=metrics, out_dir=Path(out_dir), plot_paths=[], seconds=0.0)

    monkeypatch.setattr(objective, "run_training", fake)
    monkeypatch.setattr("metab_opt.problem.simulation.load_or_build", lambda *a, **k: (None, 0))
    rc = main(["replicate", "--config", str(TINY), "--seeds", "1", "2", "--out",
               str(tmp_path / "rep"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1, out  # a diverged run: no result for seed 2
    saved = json.loads((tmp_path / "rep" / "replicates.json").read_text())
    assert [r["status"] for r in saved["runs"]] == ["failed", "diverged"]
    assert saved["summary"]["rate_constants_R2"] == {"mean": -0.4, "sd": 0.0, "min": -0.4,
                                                     "max": -0.4, "n": 1}
    assert "seed 1: R2 -0.4000" in out and "seed 2: diverged (" in out
