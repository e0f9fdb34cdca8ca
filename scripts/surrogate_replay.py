#!/usr/bin/env python
"""Replay whole sampler studies on a surrogate of finished trials (metab_opt/compare/surrogate.py).

    python scripts/surrogate_replay.py --config configs/rank50_proxy.yaml \
        --storage sqlite:///studies/compare_rank50_proxy/compare.db \
        --csv ../shared/notes/rank50-proxy-trials.csv --samplers ucb,random,tpe --replays 100

Prints the surrogate's fit (leave-one-study-out rank correlation), then per sampler the median
replicate-confirmed R² over the replays. A screen for sampler designs, not a result: confirm
with `metab-opt compare` on the real objective.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import optuna

from metab_opt.compare import surrogate as sg
from metab_opt.config import ConfigError, load_config


def _rank(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_rank(a), _rank(b))[0, 1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/rank50_proxy.yaml")
    ap.add_argument("--storage", action="append", default=[],
                    help="an Optuna storage URL whose complete trials feed the surrogate "
                         "(repeatable)")
    ap.add_argument("--csv", action="append", default=[], type=Path,
                    help="a CSV of trials: a column per knob and rate_constants_R2 (repeatable)")
    ap.add_argument("--samplers", default="ucb,random,tpe")
    ap.add_argument("--replays", type=int, default=100)
    ap.add_argument("--n-trials", type=int, default=24)
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        cfg = load_config(Path(args.config))
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    samplers = [s for s in args.samplers.split(",") if s]
    unknown = [s for s in samplers if s not in sg.SAMPLERS]
    if unknown:
        print(f"error: --samplers: unknown {', '.join(unknown)}; choose from "
              f"{', '.join(sg.SAMPLERS)}", file=sys.stderr)
        return 2
    points: list[sg.Point] = []
    try:
        for url in args.storage:
            points += sg.read_storage(url, cfg)
        for path in args.csv:
            points += sg.read_csv(path, cfg)
    except (OSError, KeyError, ValueError) as e:
        print(f"error: reading the trials: {e}", file=sys.stderr)
        return 2
    if len(points) < 20:
        print(f"error: {len(points)} complete trials: a surrogate needs 20 or more (add "
              f"--storage or --csv)", file=sys.stderr)
        return 2
    t0 = time.time()
    model = sg.fit_surrogate(cfg, points)
    print(f"surrogate of {len(points)} trials fitted in {time.time() - t0:.0f} s; noise "
          f"{model.noise}; relevance (inverse squared length) "
          + ", ".join(f"{k} {v:g}" for k, v in model.relevance().items() if v > 0))
    sources = sorted({s for s, _, _ in points})
    rhos = []
    for source in sources:
        held = [p for p in points if p[0] == source]
        rest = [p for p in points if p[0] != source]
        if len(held) < 10 or len(rest) < 20:
            continue
        m = sg.refit(model, rest)
        predicted = np.array([m.mean(p) for _, p, _ in held])
        rhos.append(_spearman(predicted, np.array([v for _, _, v in held])))
    if rhos:
        print(f"leave-one-study-out rank correlation over {len(rhos)} studies: median "
              f"{np.median(rhos):.2f} (min {min(rhos):.2f})")
    print(f"{'sampler':8s} {'median':>7s} {'mean':>7s} {'q25':>7s} {'>=0.9':>6s} {'>=0.95':>6s}"
          f"  (replicate-confirmed R2 over {args.replays} replays of {args.n_trials} trials)")
    for name in samplers:
        t0 = time.time()
        runs = sg.replay(cfg, model, sg.SAMPLERS[name], range(args.replays),
                         n_trials=args.n_trials)
        c = np.array([r.confirmed for r in runs])
        print(f"{name:8s} {np.median(c):7.3f} {c.mean():7.3f} {np.quantile(c, 0.25):7.3f} "
              f"{(c >= 0.9).mean():6.2f} {(c >= 0.95).mean():6.2f}  ({time.time() - t0:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
