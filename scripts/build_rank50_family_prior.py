"""Build configs/priors/rank50_family.json: the prior `--prior rank50_family` names.

Its trials are this project's own rank50_proxy runs (network seed 42, log10 k in [-2, -1]): the
192 finished trials of shared/notes/rank50-proxy-trials.csv (8 studies of 24 trials: ucb seeds
0-2, random seeds 0-2, tpe seeds 0-1; every trial capped at 10,008 training steps). They are
read into one Optuna study (one regime, one budget: one rank scale) in a temporary SQLite
storage, and written with `metab-opt prior export`, the path a user's own studies take. The
CSV has no intermediate reports, so the prior has none.

    python scripts/build_rank50_family_prior.py ../shared/notes/rank50-proxy-trials.csv
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import optuna

from metab_opt.cli import main
from metab_opt.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "rank50_proxy.yaml"
OUT = ROOT / "configs" / "priors" / "rank50_family.json"


def _value(text: str, knob: optuna.distributions.BaseDistribution) -> object:
    if isinstance(knob, optuna.distributions.CategoricalDistribution):
        return {"True": True, "False": False}.get(text, text)
    if isinstance(knob, optuna.distributions.IntDistribution):
        return int(float(text))
    return float(text)


def build(csv_path: Path) -> int:
    cfg = load_config(CONFIG)
    dists = {k.name: k.distribution() for k in cfg.search.knobs}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/prior.db"
        study = optuna.create_study(study_name="rank50_proxy", storage=url,
                                    direction="maximize")
        study.set_user_attr("metab_opt:config", cfg.to_dict())
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                params = {n: _value(row[n], d) for n, d in dists.items() if n in row}
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions={n: dists[n] for n in params},
                    value=float(row["rate_constants_R2"]),
                    user_attrs={"source": f"{row['sampler']} seed {row['sampler_seed']} "
                                          f"({row['run_by']}) trial {row['trial']}"}))
        return main(["prior", "export", "rank50_proxy", "--storage", url, "--out", str(OUT),
                     "--force"])


if __name__ == "__main__":
    raise SystemExit(build(Path(sys.argv[1])))
