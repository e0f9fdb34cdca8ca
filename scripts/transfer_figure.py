"""docs/transfer.md's figures and table: several comparisons' studies side by side.

A comparison (`metab-opt compare`) draws the samplers of one storage; a prior's effect is read
across storages (ucb with the prior, ucb without, random, each run with its own `--name`). Each
`--group LABEL=URL|NAME|SAMPLER` is one line of the figure: the studies of comparison NAME run
by SAMPLER in the storage at URL (every repeat found there). `--extra LABEL=V,V,...` adds
replicate-confirmed values measured elsewhere (e.g. an earlier report's seeds) to a group's row
of the table (they have no curve).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from metab_opt.compare.plots import plot_best_vs_trials
from metab_opt.compare.results import open_comparison, read_repeat, studies_of, summarize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", action="append", required=True, metavar="LABEL=URL|NAME|SAMPLER")
    p.add_argument("--extra", action="append", default=[], metavar="LABEL=V,V")
    p.add_argument("--n-trials", type=int, default=24)
    p.add_argument("--title", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    extra = {k: [float(v) for v in vs.split(",")]
             for k, vs in (e.split("=", 1) for e in args.extra)}
    summaries = {}
    print("| study group | seeds | replicate-confirmed R² per seed | median | ≥ 0.9 | "
          "median best single trial |")
    print("|---|---|---|---|---|---|")
    for spec in args.group:
        label, rest = spec.split("=", 1)
        url, name, sampler = rest.split("|")
        storage = open_comparison(url)
        found = sorted((k, sid) for (s, k), sid in studies_of(storage, name).items()
                       if s == sampler)
        repeats = [read_repeat(storage, sid, f"{name}__{sampler}__r{k}", args.n_trials)
                   for k, sid in found]
        summaries[label] = summarize(sampler, repeats, len(repeats), args.n_trials)
        confirmed = [r.replicate_mean for r in repeats]
        seeds = [str(k) for k, _ in found]
        values = [v for v in confirmed if v is not None] + extra.get(label, [])
        more = f" (+{len(extra[label])} from an earlier run)" if label in extra else ""
        cells = ", ".join("–" if v is None else f"{v:.3f}" for v in confirmed)
        if label in extra:
            cells += "; earlier: " + ", ".join(f"{v:.3f}" for v in extra[label])
        median = f"{statistics.median(values):.3f}" if values else "–"
        hits = f"{sum(v >= 0.9 for v in values)} of {len(values)}" if values else "–"
        best = summaries[label].median_best_final
        print(f"| {label} | {', '.join(seeds)}{more} | {cells} | {median} | {hits} | "
              f"{'–' if best is None else f'{best:.3f}'} |")
    plot_best_vs_trials(Path(args.out), summaries, args.n_trials, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
