"""What a user of a finished study gets: its final incumbent, trained again with new seeds.

After a comparison's study has its ``n_trials`` trials, its incumbent (the replicate group ranked
first by mean R²: :func:`metab_opt.best.trials_incumbent`, the one definition the sampler, the
memory file and ``metab-opt best`` use; for Optuna's samplers the same function's top group) is
trained again with new training seeds (default 101 and 202) at the comparison's step cap, in
process, exactly as ``metab-opt train --config <incumbent> --set training.seed=S --max-steps N``
would. Each retrain is stored in the study's user attr
:data:`~metab_opt.compare.results.RETRAIN_ATTR` as soon as it ends, so a resumed comparison
trains only what is missing and the report reads the results from the storage alone.

The replicate-confirmed R² of the study is the mean over the incumbent's in-study runs and its
retrains (:attr:`~metab_opt.compare.results.Retrain.replicate_mean`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from metab_opt.best import trials_incumbent
from metab_opt.compare.results import RETRAIN_ATTR, Retrain, RetrainRun, counted, read_retrain
from metab_opt.config import Config, config_from_dict
from metab_opt.trial_record import seed_knob

__all__ = ["DEFAULT_RETRAIN_SEEDS", "SEED_KEY", "describe_result", "fresh_seeds", "plan_retrain",
           "retrain_config", "retrain_incumbent"]

DEFAULT_RETRAIN_SEEDS = (101, 202)
SEED_KEY = "training.seed"  # the trainer's seed: what `--set training.seed=S` sets


def fresh_seeds(wanted: Iterable[int], used: Iterable[Any]) -> tuple[int, ...]:
    """``wanted`` with every seed the incumbent already ran (or an earlier one of ``wanted``)
    replaced by the next integer up that is free: a retrain is always a new training seed."""
    taken = {u for u in used if isinstance(u, int)}
    out: list[int] = []
    for seed in wanted:
        s = int(seed)
        while s in taken:
            s += 1
        taken.add(s)
        out.append(s)
    return tuple(out)


def retrain_config(config: Config, seed: int) -> Config:
    """``config`` with the training seed ``seed``: ``--set training.seed=S`` on its file."""
    return config_from_dict(config.raw, path=config.path, name=config.name,
                            overrides={SEED_KEY: int(seed)})


def plan_retrain(cfg: Config, study_name: str, trials: Sequence[Any], *, n_trials: int,
                 seeds: Sequence[int], max_steps: int | None,
                 stored: Retrain | None) -> tuple[Retrain, Config] | None:
    """The retrain record to complete for a study, and its incumbent's config; None while the
    study has fewer than ``n_trials`` counted trials or no incumbent (every trial failed).

    The stored record is kept (with the retrains it has) when it was made for the same
    incumbent (its in-study trials), trial count and step cap; otherwise a new one replaces it.
    """
    done = counted(trials)
    if len(done) < n_trials:
        return None
    inc = trials_incumbent(study_name, done[:n_trials], cfg)
    if inc is None:
        return None
    seed_name = seed_knob(cfg)
    by_number = {t.number: t for t in done}
    in_study = tuple(
        RetrainRun(seed=_seed_of(n.params.get(seed_name)) if seed_name else None,
                   r2=None if n.failed else n.value, trial=n.number, status=n.state.name.lower(),
                   steps=_int_attr(by_number[n.number].user_attrs.get("steps")))
        for n in inc.group.runs)
    wanted = fresh_seeds(seeds, (r.seed for r in in_study))
    params = {k: v for k, v in inc.run.params.items() if k in cfg.search.names and k != seed_name}
    record = Retrain(n_trials=n_trials, max_steps=max_steps, seeds=wanted, params=params,
                     in_study=in_study)
    if (stored is not None and stored.trials == record.trials and stored.max_steps == max_steps
            and stored.n_trials == n_trials):
        kept = tuple(r for r in stored.runs if r.seed in wanted)
        record = Retrain(n_trials=n_trials, max_steps=max_steps, seeds=wanted, params=params,
                         in_study=in_study, runs=kept)
    return record, inc.config


def _seed_of(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _int_attr(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _train_once(config: Config, seed: int, *, out_dir: Path, data_root: str | Path | None,
                device: str, max_steps: int | None, dataset: Any) -> RetrainRun:
    """One retrain; a diverged run (or one with no finite R²) is a failed run, not an error."""
    from metab_opt.objective import run_training
    from metab_opt.problem.training import TrainingDiverged

    t0 = time.perf_counter()
    try:
        res = run_training(retrain_config(config, seed), out_dir=out_dir, data_root=data_root,
                           device=device, dataset=dataset, max_steps=max_steps, plots=True)
    except TrainingDiverged as exc:
        return RetrainRun(seed=seed, r2=None, status="failed", steps=int(exc.step),
                          seconds=round(time.perf_counter() - t0, 1), reason=str(exc))
    m = res.metrics
    r2 = m.get("rate_constants_R2")
    failed = not isinstance(r2, (int, float))
    return RetrainRun(seed=seed, r2=None if failed else float(r2),
                      status="failed" if failed else str(m.get("status", "")),
                      steps=_int_attr(m.get("steps")),
                      seconds=round(time.perf_counter() - t0, 1),
                      reason="rate_constants_R2 is not finite" if failed else "")


def retrain_incumbent(cfg: Config, storage: Any, study_name: str, *, n_trials: int,
                      seeds: Sequence[int], max_steps: int | None, out_dir: str | Path,
                      data_root: str | Path | None = None, device: str = "auto",
                      say: Callable[[str], None] = print) -> Retrain | None:
    """Train the study's final incumbent again with each seed it lacks, storing each result as
    it ends; returns the record (None: the study is unfinished or has no incumbent).

    A record already complete for the same incumbent trains nothing. Each retrain's outputs
    (``config.yaml``, ``metrics.json``, plots) go to ``<out_dir>/seed_<S>/``.
    """
    study_id = storage.get_study_id_from_name(study_name)
    stored = read_retrain(storage.get_study_user_attrs(study_id), n_trials)
    planned = plan_retrain(cfg, study_name, storage.get_all_trials(study_id, deepcopy=False),
                           n_trials=n_trials, seeds=seeds, max_steps=max_steps, stored=stored)
    if planned is None:
        return None
    record, config = planned
    if record.to_attr() != (stored.to_attr() if stored is not None else None):
        storage.set_study_user_attr(study_id, RETRAIN_ATTR, record.to_attr())
    if not record.missing:
        return record
    say(f"incumbent {_describe(record)}: training it again with seed"
        f"{'s' if len(record.missing) > 1 else ''} {', '.join(map(str, record.missing))}"
        f"{f' (at most {max_steps:,} steps)' if max_steps else ''}")
    from metab_opt.problem.simulation import load_or_build

    dataset = load_or_build(config.simulation, data_root)[0]
    for seed in record.missing:
        run = _train_once(config, seed, out_dir=Path(out_dir) / f"seed_{seed}",
                          data_root=data_root, device=device, max_steps=max_steps,
                          dataset=dataset)
        record = record.with_run(run)
        storage.set_study_user_attr(study_id, RETRAIN_ATTR, record.to_attr())
        r2 = "n/a (failed)" if run.r2 is None else f"{run.r2:.3f}"
        say(f"  seed {seed}: R2 {r2}, {run.steps or 0:,} steps in {run.seconds or 0:.1f} s")
    return record


def _describe(record: Retrain) -> str:
    """``trials 3, 9 (R2 0.812, 0.799)``."""
    trials = ", ".join(str(r.trial) for r in record.in_study)
    values = ", ".join("n/a" if r.r2 is None else f"{r.r2:.3f}" for r in record.in_study)
    word = "trial" if len(record.in_study) == 1 else "trials"
    return f"{word} {trials} (R2 {values})"


def describe_result(record: Retrain) -> str:
    """``replicate-confirmed R2 0.803 (mean of 2 in-study runs and 2 retrains)``."""
    mean = record.replicate_mean
    if mean is None:
        return f"retrains pending ({', '.join(map(str, record.missing))})"
    return (f"replicate-confirmed R2 {mean:.3f} (mean of {len(record.in_study)} in-study "
            f"run{'s' if len(record.in_study) != 1 else ''} and {len(record.runs)} retrains)")

