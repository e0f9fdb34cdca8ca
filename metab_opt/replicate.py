"""``metab-opt replicate``: one config trained with several training seeds, and the spread.

A result on rank50 moves by several hundredths of R² with the training seed alone, so a setting
is only as good as its replicate mean. Each seed's run is an ordinary training run (metrics,
``analysis.log`` and plots under ``<out>/seed_<n>/``); the summary goes to
``<out>/replicates.json`` and ``<out>/replicates.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metab_opt._io import atomic_write
from metab_opt.config import Config

__all__ = ["COLUMNS", "DIVERGED", "replicate", "summarize"]

# Per-run columns of the summary, in table order.
COLUMNS = ("rate_constants_R2", "rate_constants_R2_shifted", "test_pearson", "n_outliers",
           "training_seconds", "steps")
_SPREAD = ("rate_constants_R2", "rate_constants_R2_shifted", "test_pearson", "training_seconds")


# A replicate row whose training diverged (no metrics); any other row is a finished run.
DIVERGED = "diverged"


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation (0 for one run), min and max of the spread columns."""
    out: dict[str, dict[str, float]] = {}
    for key in _SPREAD:
        values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))
                  and math.isfinite(float(r[key]))]
        if not values:
            continue
        out[key] = {"mean": statistics.fmean(values),
                    "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values), "n": len(values)}
    return out


def _markdown(cfg: Config, rows: Sequence[dict[str, Any]],
              summary: dict[str, dict[str, float]]) -> str:
    lines = [f"# Replicates of {cfg.name}", "",
             "| seed | " + " | ".join(COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r.get(k), float) else str(r.get(k, "-"))
                 for k in COLUMNS]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    lines.append("")
    for key, s in summary.items():
        lines.append(f"- {key}: mean {s['mean']:.4f}, sd {s['sd']:.4f}, "
                     f"range {s['min']:.4f} .. {s['max']:.4f} (n = {s['n']:.0f})")
    return "\n".join(lines) + "\n"


def replicate(cfg: Config, *, seeds: Sequence[int], out: str | Path,
              data_root: str | Path | None = None, device: str = "auto",
              progress: bool = False,
              on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``cfg`` once per training seed; return (and write) the runs and their spread.

    A diverged run is kept as a row with ``status: diverged`` and its reason; it has no metrics
    and does not enter the means. A run that finished enters them whatever its R², the metrics'
    class "failed" (R² < 0.1) included: that is a result, and leaving it out would flatter the
    mean.
    """
    from metab_opt.objective import run_training
    from metab_opt.problem.simulation import load_or_build
    from metab_opt.problem.training import TrainingDiverged

    if not seeds:
        raise ValueError("seeds: expected at least one training seed, got none")
    out = Path(out)
    ds, _ = load_or_build(cfg.simulation, data_root)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        run_cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training,
                                                                        seed=int(seed)))
        t0 = time.perf_counter()
        try:
            res = run_training(run_cfg, out_dir=out / f"seed_{seed}", dataset=ds, device=device,
                               progress=progress)
        except TrainingDiverged as exc:
            row: dict[str, Any] = {"seed": int(seed), "status": DIVERGED, "reason": str(exc)}
        else:
            row = {"seed": int(seed), "status": res.metrics["status"],
                   **{k: res.metrics[k] for k in COLUMNS}}
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        if on_run is not None:
            on_run(row)
    summary = summarize([r for r in rows if r["status"] != DIVERGED])
    result = {"config": cfg.name, "seeds": [int(s) for s in seeds], "runs": rows,
              "summary": summary}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "replicates.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write(out / "replicates.md", _markdown(cfg, rows, summary).encode())
    return result
