"""One training run end to end, and the Optuna objective built on it.

:func:`run_training` is what ``metab-opt train`` and every study trial run: dataset (cached) ->
``config.yaml`` (the complete config) -> train -> evaluate -> plots, ``analysis.log`` and
``metrics.json`` in the output folder.
:class:`Objective` wraps it for Optuna: trial params -> config -> run -> user attrs (DESIGN.md's
trial record) -> plots uploaded as trial artifacts -> ``rate_constants_R2``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metab_opt._io import atomic_write
from metab_opt.config import Config, apply_params
from metab_opt.config_dump import dump_config
from metab_opt.problem import network_plot, plots
from metab_opt.problem.simulation import Dataset, load_or_build

__all__ = ["HEADLINE", "Objective", "RunResult", "held_params", "run_training",
           "suggest_holding", "write_analysis_log", "write_run_config"]

logger = logging.getLogger(__name__)

# The first lines of analysis.log, in the instructions' order; the rest follow sorted.
HEADLINE = ("final_loss", "rate_constants_R2", "rate_constants_R2_shifted", "test_R2",
            "test_pearson")


@dataclass
class RunResult:
    metrics: dict[str, Any]
    out_dir: Path
    plot_paths: list[Path]
    seconds: float


def _json_safe(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_analysis_log(path: Path, metrics: dict[str, Any]) -> None:
    """``key: value`` lines: the headline metrics first, then the rest sorted by key."""
    keys = [k for k in HEADLINE if k in metrics] + sorted(k for k in metrics if k not in HEADLINE)
    lines = []
    for k in keys:
        v = metrics[k]
        lines.append(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    path.write_text("\n".join(lines) + "\n")


def write_run_config(path: Path, cfg: Config, *, max_steps: int | None = None) -> None:
    """The run's complete config, which ``metab-opt train --config`` reads back."""
    cap = f" --max-steps {max_steps}" if max_steps is not None else ""
    header = (f"The complete config of one run ({cfg.name}); to train it again:\n"
              f"  metab-opt train --config {path}{cap}")
    atomic_write(path, dump_config(cfg, header=header).encode())


def _write_plots(out: Path, step: int, metrics: dict[str, Any], arrays: dict[str, np.ndarray],
                 ds: Dataset, history_steps: np.ndarray,
                 history: dict[str, np.ndarray]) -> list[Path]:
    tmp = out / "tmp_training"
    powers = sorted(int(k.rsplit("_", 1)[1]) for k in arrays if k.startswith("sub_curve_"))
    curves = {s: arrays[f"sub_curve_{s}"] for s in powers}
    scales = {s: metrics.get(f"MLP_sub_scale_s{s}", float("nan")) for s in powers}
    paths = [
        plots.plot_mlp_sub(tmp / "function" / "substrate_func" / f"MLP_sub_{step:07d}.png",
                           arrays["c_grid"], curves, scales=scales),
        plots.plot_mlp_node(tmp / "function" / "rate_func" / f"MLP_node_{step:07d}.png",
                            arrays["c_node"], arrays["node_out"], ds.metabolite_type,
                            ds.network.lambdas, ds.network.baselines),
        plots.plot_rate_constants(tmp / "rate" / f"rate_constants_{step:07d}.png",
                                  arrays["log_k_true"], arrays["log_k_learned"], metrics),
        plots.plot_loss(tmp / "loss.png", history_steps, {k: list(v) for k, v in history.items()}),
        plots.plot_kinograph(out / "results" / "kinograph.png", arrays["x_test"],
                             arrays["x_rollout"]),
        plots.plot_rollout_traces(out / "results" / "rollout_traces.png", arrays["x_test"],
                                  arrays["x_rollout"], ds.metabolite_type, metrics),
        plots.plot_embeddings(tmp / "embedding" / f"embedding_{step:07d}.png",
                              arrays["embedding"], ds.metabolite_type, metrics),
        # Every network, a real model's (named) and PDE_M1's: ~0.5 s for rank50's 356 nodes.
        # Over network_plot.MAX_NODES nodes (iJO1366) it is a summary, not a graph.
        network_plot.plot_network(out / "results" / "network.png", ds.S, ds.substrate_power,
                                  arrays["log_k_true"], arrays["log_k_learned"],
                                  metabolite_names=ds.network.metabolite_names,
                                  reaction_names=ds.network.reaction_names,
                                  metabolite_type=ds.metabolite_type),
    ]
    return paths


def run_training(cfg: Config, *, out_dir: str | Path, data_root: str | Path | None = None,
                 device: str = "auto", progress: bool = False,
                 on_report: Callable[[Any], None] | None = None,
                 dataset: Dataset | None = None, max_steps: int | None = None,
                 plots: bool = True,
                 on_write_error: Callable[[OSError], None] | None = None,
                 cuda_graph: bool = True) -> RunResult:
    """Train once with ``cfg`` and write the run's outputs under ``out_dir``.

    A diverged run raises :class:`metab_opt.problem.training.TrainingDiverged`; the caller decides
    what a failed run is. A disk error while writing the outputs (full, read-only) is raised,
    or, with ``on_write_error``, passed to it and the result returned without those files.
    """
    from metab_opt.problem.evaluation import evaluate
    from metab_opt.problem.training import cpu_threads, train

    t0 = time.perf_counter()
    ds = dataset if dataset is not None else load_or_build(cfg.simulation, data_root)[0]
    result = train(ds, cfg, device=device, on_report=on_report, progress=progress,
                   max_steps=max_steps, cuda_graph=cuda_graph)
    with cpu_threads(1 if result.device == "cpu" else None):  # the trainer's thread policy
        metrics, arrays = evaluate(result.model, ds, cfg)
    metrics.update({"training_seconds": round(result.seconds, 3), "steps": result.steps,
                    "steps_per_s": round(result.steps / max(result.seconds, 1e-9), 1),
                    "device": result.device,
                    "oracle_R2": ds.manifest.get("oracle_R2")})
    metrics = {k: _json_safe(v) for k, v in metrics.items()}
    out = Path(out_dir)
    paths: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out / "config.yaml", cfg, max_steps=max_steps)
        paths = [] if not plots else _write_plots(out, result.steps, metrics, arrays, ds,
                                                  result.history_steps, result.history)
        write_analysis_log(out / "analysis.log", metrics)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        # A full disk costs the run's files, not its result (a study keeps it in its storage).
        if on_write_error is None:
            raise
        on_write_error(exc)
    return RunResult(metrics=metrics, out_dir=out, plot_paths=paths,
                     seconds=time.perf_counter() - t0)


def held_params(cfg: Config, sampler_kind: str) -> dict[str, Any]:
    """The knobs a sampler does not search, with the value each is held at.

    The UCB sampler searches every knob (its replicate rule alone changes the training seed).
    Optuna's samplers (every other kind) do not search the training seed (the config's
    ``search.roles`` seed knob): it is held at the config's value. A global sampler that
    searched a seed would model noise, and GPSampler enumerates a discrete knob's values
    (``[0, 2**31)``: a 17 GB array).
    """
    from metab_opt.trial_record import seed_knob

    if sampler_kind == "ucb":
        return {}
    seed = seed_knob(cfg)
    return {} if seed is None else {seed: cfg.base_params()[seed]}


def held_distribution(knob: Any, value: Any) -> Any:
    """The single-valued Optuna distribution a held knob is suggested with (its kind and scale,
    the one value): what :func:`suggest_holding` suggests, and what a prior's trials copied into
    a study carry (:func:`metab_opt.prior.optuna_trials`)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dist = knob.distribution()
    if isinstance(dist, CategoricalDistribution):
        return CategoricalDistribution([value])
    if isinstance(dist, FloatDistribution):
        return FloatDistribution(float(value), float(value), log=dist.log)
    return IntDistribution(int(value), int(value), log=dist.log)


def suggest_holding(trial: Any, cfg: Config, held: Mapping[str, Any]) -> dict[str, Any]:
    """Suggest every knob, in the declared order; the params by name.

    A knob in ``held`` is suggested with a single-valued distribution at its held value (Optuna
    takes such a value as given and every one of its samplers leaves it out of its model), so
    the trial's params still name it; every other knob is the sampler's
    (:func:`metab_opt.sampler.suggest_params`).
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from metab_opt.sampler import suggest_params
    from metab_opt.ucbtree import suggest_knobs

    if not held:
        return suggest_params(trial, cfg.search)
    params: dict[str, Any] = {}
    for knob in cfg.search.knobs:
        if knob.name not in held:
            params.update(suggest_knobs(trial, [knob]))
            continue
        dist = held_distribution(knob, held[knob.name])
        if isinstance(dist, CategoricalDistribution):
            params[knob.name] = trial.suggest_categorical(knob.name, list(dist.choices))
        elif isinstance(dist, FloatDistribution):
            params[knob.name] = trial.suggest_float(knob.name, dist.low, dist.high, log=dist.log)
        else:
            params[knob.name] = trial.suggest_int(knob.name, dist.low, dist.high, log=dist.log)
    return params


class Objective:
    """The study's objective: a trial's params -> one training run -> ``rate_constants_R2``.

    Every metric goes to the trial's user attrs before it finishes; the final plots go to the
    artifact store; intermediate R² goes to ``trial.report`` (and the pruner may stop the run).
    A diverged run becomes a failed trial with its reason in ``fail_reason`` and the steps it
    ran in ``steps``. ``held``: knobs suggested at a fixed value, not searched
    (:func:`held_params`, :func:`suggest_holding`).
    """

    def __init__(self, cfg: Config, *, root: str | Path, data_root: str | Path | None = None,
                 device: str = "auto", artifact_store: Any = None, progress: bool = False,
                 max_steps: int | None = None, plots: bool = True,
                 held: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.held = dict(held or {})  # knobs not searched: their values (held_params)
        self.root = Path(root)
        self.data_root = data_root
        self.device = device
        self.artifact_store = artifact_store
        self.progress = progress
        self.max_steps = max_steps
        self.plots = plots
        self._dataset: Dataset | None = None

    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = load_or_build(self.cfg.simulation, self.data_root)[0]
        return self._dataset

    @staticmethod
    def _fail(trial: Any, reason: str) -> None:
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("diagnosis", "failed")
        trial.set_user_attr("fail_reason", reason)

    def __call__(self, trial: Any) -> float:
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            # Wherever Ctrl-C lands (sampling, training, evaluation, upload), the trial that
            # Optuna now fails says why.
            if trial.user_attrs.get("fail_reason") != "interrupted":
                try:
                    self._fail(trial, "interrupted")
                except Exception:  # a storage error must not turn Ctrl-C into a failed trial
                    pass
            raise
        except Exception as exc:
            # Whatever failed outside the training (params outside the search space, the
            # sampler's suggestions), the failed trial says why in one line.
            from optuna import TrialPruned

            if not isinstance(exc, TrialPruned) and not trial.user_attrs.get("fail_reason"):
                with contextlib.suppress(Exception):  # never mask the error itself
                    self._fail(trial, f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise

    @staticmethod
    def _mark_retry(trial: Any) -> None:
        """A trial re-queued after its worker died carries the dead trial's sampler attrs
        (RetryHeartbeatStaleTrialCallback copies them): renumber it as its own node."""
        from metab_opt._optuna_internals import retried_trial, trial_system_attrs

        original = retried_trial(trial_system_attrs(trial))
        if original is None:
            return
        trial.set_user_attr("retry_of", original)
        if "node_id" in trial.user_attrs and trial.user_attrs["node_id"] != trial.number:
            trial.set_user_attr("node_id", trial.number)
            rule = trial.user_attrs.get("parent_rule")
            if isinstance(rule, str) and not rule.startswith("retry of"):
                trial.set_user_attr("parent_rule", f"retry of trial {original}, whose worker "
                                                   f"died (same params); {rule}")

    def _run(self, trial: Any) -> float:
        import optuna

        from metab_opt.problem.training import TrainingDiverged
        from metab_opt.pruning import PLANNED_STEPS

        self._mark_retry(trial)
        params = suggest_holding(trial, self.cfg, self.held)
        cfg = apply_params(self.cfg, params)
        out = self.root / "trials" / f"trial_{trial.number:04d}"

        planned: list[int] = []

        def report(rep: Any) -> None:
            if not planned:  # the safe pruner compares trials at equal fractions of training
                planned.append(rep.n_steps)
                trial.set_user_attr(PLANNED_STEPS, rep.n_steps)
            trial.report(rep.r2 if math.isfinite(rep.r2) else -1e9, rep.step)
            if trial.should_prune():
                trial.set_user_attr("steps", rep.step)
                trial.set_user_attr("rate_constants_R2", _json_safe(rep.r2))
                trial.set_user_attr("fail_reason", f"pruned at step {rep.step}")
                raise optuna.TrialPruned(f"pruned at step {rep.step} (R2 {rep.r2:.3f})")

        write_errors: list[OSError] = []
        try:
            res = run_training(cfg, out_dir=out, device=self.device, progress=self.progress,
                               on_report=report, dataset=self.dataset(),
                               max_steps=self.max_steps, plots=self.plots,
                               on_write_error=write_errors.append)
        except TrainingDiverged as exc:
            self._fail(trial, str(exc))
            trial.set_user_attr("steps", int(exc.step))  # what it cost (a comparison counts it)
            raise
        # Any other error (pruning aside) fails this trial only, with its reason set by
        # __call__; the study goes on.
        for key, value in res.metrics.items():
            trial.set_user_attr(key, value)
        if self.artifact_store is not None and not write_errors:
            from optuna.artifacts import upload_artifact

            try:
                for path in res.plot_paths:
                    upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                    study_or_trial=trial)
            except OSError as exc:  # a full disk or a read-only folder: the result stays
                write_errors.append(exc)
        if write_errors:
            exc = write_errors[0]
            message = (f"cannot write {exc.filename or out} ({exc.strerror or exc}); the result "
                       f"is in the storage, the trial's plots and files are missing")
            trial.set_user_attr("outputs_error", message)
            logger.warning("trial %d: %s", trial.number, message)
        value = res.metrics["rate_constants_R2"]
        if value is None:  # a nan or inf R² (stored as None): Optuna fails the trial
            self._fail(trial, "rate_constants_R2 is not finite (nan or inf after training)")
            return float("nan")
        return float(value)
