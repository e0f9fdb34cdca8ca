"""``metab-opt best``: the study's incumbent as a complete, runnable config file.

The incumbent is the replicate group the sampler builds on and the memory file lists first
(:func:`metab_opt.logbook.replicate_groups`): trials with the same params except for the
training seed, ranked by their mean R² — not Optuna's single best trial, which a lucky training
seed can put on top. The file carries the params of the group and the training seed of one of
its complete runs (the first), so that ``metab-opt train --config FILE`` trains that run again
(bitwise the same R² on the CPU). Its header names the study, the group's runs with their R²,
their mean and spread, and the command.

Every value that is not a searched knob comes from the config the study was started with, which
the study keeps in its storage (``open_study`` stores it): the export needs no config file.
This module needs no torch.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metab_opt import ucbtree
from metab_opt._io import atomic_write
from metab_opt.config import Config, ConfigError, apply_params, config_from_dict
from metab_opt.config_dump import dump_config
from metab_opt.logbook import replicate_groups

__all__ = ["Incumbent", "export_best", "study_config", "study_incumbent", "trials_incumbent"]

_CONFIG_ATTR = "metab_opt:config"  # set by metab_opt.study.open_study


@dataclass(frozen=True)
class Incumbent:
    """A study's incumbent: its replicate group and the run whose seed an export carries."""

    study: str
    group: ucbtree.Group
    run: ucbtree.Node  # the group's first complete run (a pruned or failed one if none completed)
    config: Config  # the study's config with the run's params (training seed included)

    def describe(self) -> str:
        """``R² mean 0.912 ± 0.010 over 3 runs (trials 3, 7, 9)``."""
        g = self.group
        trials = ", ".join(str(n.number) for n in g.runs)
        if len(g.runs) == 1:
            return f"R² {g.mean_r2:.4f}, 1 run (trial {trials})"
        return (f"R² mean {g.mean_r2:.4f} ± {g.spread:.4f} over {len(g.runs)} runs "
                f"(trials {trials})")


def study_config(storage: Any, name: str) -> Config:
    """The config a study was started with, from its storage (ConfigError if it has none)."""
    study_id = storage.get_study_id_from_name(name)
    raw = storage.get_study_user_attrs(study_id).get(_CONFIG_ATTR)
    if not isinstance(raw, dict):
        raise ConfigError(f"study '{name}' keeps no config in its storage (was it started by "
                          f"`metab-opt study`?)")
    return config_from_dict(raw, path=f"<study {name}>", name=name)


def study_incumbent(storage: Any, name: str, cfg: Config | None = None) -> Incumbent | None:
    """The incumbent of study ``name`` in ``storage``; None while no run has a result."""
    cfg = cfg if cfg is not None else study_config(storage, name)
    trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
    return trials_incumbent(name, trials, cfg)


def trials_incumbent(name: str, trials: Sequence[Any], cfg: Config) -> Incumbent | None:
    """The incumbent of study ``name`` among its ``trials`` (``study.get_trials()``: a live
    study has no public way to its storage); None while no run has a result."""
    groups = replicate_groups(trials, config=cfg)
    if not groups:
        return None
    group = groups[0]
    from optuna.trial import TrialState

    complete = [n for n in group.runs if n.state == TrialState.COMPLETE]
    run = complete[0] if complete else group.node
    params = {k: v for k, v in run.params.items() if k in cfg.search.names}
    return Incumbent(study=name, group=group, run=run, config=apply_params(cfg, params))


def _run_line(node: ucbtree.Node, trial_attrs: dict[int, dict[str, Any]]) -> str:
    state = "failed" if node.failed else node.state.name.lower()
    r2 = "n/a" if node.failed or node.r2 is None else f"{node.r2:.6g}"
    steps = trial_attrs.get(node.number, {}).get("steps")
    at = f", {steps} steps" if isinstance(steps, int) else ""
    return f"  trial {node.number}: R² {r2} (seed {node.params.get('seed')}, {state}{at})"


def export_best(storage: Any, name: str, *, out: Path, storage_label: str,
                force: bool = False) -> tuple[Incumbent, str]:
    """Write the incumbent of study ``name`` to ``out``; the incumbent and the command that
    trains its run again. ConfigError (one line) when there is none, or when ``out`` exists and
    ``force`` is not set. Nothing is written on an error."""
    inc = study_incumbent(storage, name)
    if inc is None:
        raise ConfigError(f"study '{name}' has no finished trial with a result yet: nothing to "
                          f"export")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists (pass --force to overwrite it, or --out another file)")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent}: no such folder (create it, or --out another file)")
    study_id = storage.get_study_id_from_name(name)
    attrs = {t.number: t.user_attrs for t in storage.get_all_trials(study_id, deepcopy=False)}
    run_steps = attrs.get(inc.run.number, {}).get("steps")
    full = inc.config.training.n_steps(inc.config.simulation.n_frames)
    capped = isinstance(run_steps, int) and run_steps < full
    command = f"metab-opt train --config {out}" + (f" --max-steps {run_steps}" if capped else "")
    value = "n/a" if inc.run.r2 is None or not math.isfinite(inc.run.r2) else f"{inc.run.r2:.6g}"
    header = "\n".join([
        f"The incumbent of study '{name}' ({storage_label}), exported by `metab-opt best` on "
        f"{_dt.date.today().isoformat()}.",
        "Its replicate group (the same params, other training seeds), as the sampler and the",
        "memory file rank it (mean R² of the runs; a failed run counts 0, a pruned one its last",
        "report):",
        *(_run_line(n, attrs) for n in inc.group.runs),
        f"  {inc.describe()}",
        f"This file carries trial {inc.run.number}'s training seed; it reproduces that run's "
        f"R² {value} with:",
        f"  {command}",
        "Values that are not searched knobs are the study's config, as it was started.",
    ])
    atomic_write(out, dump_config(inc.config, header=header).encode())
    return inc, command
