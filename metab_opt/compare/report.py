"""The comparison's report: ``report.md``, ``best_so_far.png`` and ``best_vs_steps.png``, from
the storage alone (:func:`build_report`), so that it can be rebuilt, and tested on synthetic
studies, without training."""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metab_opt._io import atomic_write
from metab_opt.compare.plots import plot_best_vs_steps, plot_best_vs_trials
from metab_opt.compare.results import (
    ATTR,
    EARLY,
    MAX_STEPS_ATTR,
    THRESHOLDS,
    RepeatResult,
    RetrainRun,
    SamplerSummary,
    open_comparison,
    read_repeat,
    studies_of,
    study_name,
    summarize,
)
from metab_opt.config import TrainingConfig

__all__ = ["CompareReport", "build_report", "f3", "minutes"]


# ---------------------------------------------------------------------------------------------
# Formatting


def f3(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _num(x: float) -> str:
    return f"{x:g}"


def _best_cell(median: float | None, per_repeat: list[float | None], wanted: int) -> str:
    defined = [v for v in per_repeat if v is not None]
    if median is None:
        return "n/a"
    cell = f3(median)
    if len(defined) > 1:
        cell += f" ({f3(min(defined))}–{f3(max(defined))})"
    if len(defined) < wanted:
        cell += f" [{len(defined)} of {wanted} repeats]"
    return cell


def _trials_to_cell(s: SamplerSummary, threshold: float) -> str:
    hits = s.trials_to.get(threshold, [])
    wanted = s.n_repeats_wanted
    reached = [h for h in hits if h is not None]
    listing = ", ".join(str(h) if h is not None else "–" for h in hits)
    median = s.median_trials_to(threshold)
    if median is not None:
        return f"{_num(median)} ({listing})" if wanted > 1 else _num(median)
    if not reached:
        return f"not reached (0/{wanted})"
    return f"not reached ({len(reached)}/{wanted} did: {listing})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _sampler_notes(samplers: Sequence[str], space: _Space, n_iter_block: int | None) -> list[str]:
    cats = ", ".join(f"`{c}`" for c in space.categorical) or "none"
    n_numeric = space.n_numeric
    lines = []
    for s in samplers:
        if s == "ucb":
            block = f" of {n_iter_block} trials" if n_iter_block else ""
            lines.append(f"- **ucb** — `UCBMutationSampler` (this package): a PUCT tree of "
                         f"one-knob mutations on the knobs' grids, rooted at the config's base "
                         f"values, restarted from the incumbent every block{block}. Uses every "
                         f"knob as declared, categoricals included.")
        elif s == "tpe":
            lines.append("- **tpe** — Optuna `TPESampler` (defaults of Optuna 5.0: multivariate "
                         "for a single objective, the first 10 trials drawn at random). "
                         "Categoricals are modelled natively.")
        elif s == "random":
            lines.append("- **random** — Optuna `RandomSampler`: every knob drawn independently "
                         "from its distribution (log-uniform for log knobs whose range "
                         "starts above 0).")
        elif s == "cmaes":
            pop = (f"; its population is 4 + floor(3 ln {n_numeric}) = "
                   f"{4 + math.floor(3 * math.log(n_numeric))} trials per generation"
                   if n_numeric and n_numeric > 1 else "")
            lines.append(f"- **cmaes** — Optuna `CmaEsSampler`. **Cannot use the search space as "
                         f"declared:** CMA-ES handles only numeric knobs; Optuna 5.0 drops "
                         f"categorical distributions from its relative search space, so the "
                         f"categorical knob(s) ({cats}) are drawn by an independent "
                         f"`RandomSampler` on every trial, never learned. The first trial is "
                         f"random (`n_startup_trials=1`){pop}.")
        elif s == "gp":
            lines.append(f"- **gp** — Optuna `GPSampler`. Handles the categorical knob(s) "
                         f"({cats}) its own way: the first 10 trials are drawn at random "
                         f"(`n_startup_trials=10`); after that the Gaussian process models every "
                         f"knob, a categorical one with a 0/1 (Hamming) distance in its kernel, "
                         f"and the acquisition function is maximised over a categorical by "
                         f"trying each choice (exhaustive search), not by a random fallback.")
    optuna_kinds = [k for k in samplers if k != "ucb"]
    if space.held and optuna_kinds:
        held = ", ".join(f"`{k}` = {v}" for k, v in space.held.items())
        lines.append(f"- Optuna's samplers here ({', '.join(optuna_kinds)}) do not search the "
                     f"training seed: it is held at the config's value ({held}), as a user "
                     f"trains a setting. The UCB sampler changes it only to replicate a "
                     f"setting (its replicate rule).")
    if space.linear_from_zero and optuna_kinds:
        zero = ", ".join(f"`{k}`" for k in space.linear_from_zero)
        lines.append(f"- Knobs whose range starts at 0 ({zero}) are log knobs with 0 as \"off\" "
                     f"for the UCB sampler (a log grid from `min_positive`, plus 0); Optuna's "
                     f"log scale excludes 0, so their Optuna distribution is linear on "
                     f"[0, high] and Optuna's samplers here ({', '.join(optuna_kinds)}) "
                     f"draw them on that linear scale (e.g. uniform for random: mostly large "
                     f"values, rarely small or 0).")
    return lines


@dataclass
class _Space:
    """What the trials' distributions say about the search space."""

    categorical: list[str] = field(default_factory=list)
    n_numeric: int | None = None
    linear_from_zero: list[str] = field(default_factory=list)  # float knobs [0, high], not log
    held: dict[str, Any] = field(default_factory=dict)  # knobs an Optuna sampler did not search


def _space_info(storage: Any, ids: Iterable[int]) -> _Space:
    """From each study's first trial with params: the knobs' kinds (the searched ones) and the
    knobs held at one value (single-valued distributions: the seed of Optuna's samplers)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space: _Space | None = None
    held: dict[str, Any] = {}
    for sid in ids:
        t = next((t for t in storage.get_all_trials(sid, deepcopy=False) if t.distributions),
                 None)
        if t is None:
            continue
        d = {k: v for k, v in t.distributions.items() if not v.single()}
        held.update({k: t.params.get(k) for k, v in t.distributions.items() if v.single()})
        if space is None:
            space = _Space(
                categorical=[k for k, v in d.items() if isinstance(v, CategoricalDistribution)],
                n_numeric=sum(not isinstance(v, CategoricalDistribution) for v in d.values()),
                linear_from_zero=[k for k, v in d.items() if isinstance(v, FloatDistribution)
                                  and v.low == 0 and not v.log])
    space = space or _Space()
    space.held = held
    return space


def _caps_of(storage: Any, ids: Iterable[int]) -> list[int | None]:
    """The ``--max-steps`` caps the studies' trials ran under (None: no cap), in order seen."""
    seen: list[int | None] = []
    for sid in ids:
        for cap in storage.get_study_user_attrs(sid).get(MAX_STEPS_ATTR, []) or []:
            value = cap if isinstance(cap, int) else None
            if value not in seen:
                seen.append(value)
    return seen


def _config_info(storage: Any, ids: Iterable[int]) -> tuple[str | None, int | None, int | None]:
    """(config path, base steps per trial, n_iter_block) from the first study that stored them."""
    for sid in ids:
        attrs = storage.get_study_user_attrs(sid)
        body = attrs.get(f"{ATTR}config")
        path = attrs.get(f"{ATTR}config_path")
        if not isinstance(body, Mapping):
            continue
        steps = None
        with contextlib.suppress(Exception):
            steps = TrainingConfig(**body["training"]).n_steps(int(body["simulation"]["n_frames"]))
        block = body.get("search", {}).get("n_iter_block")
        return path, steps, block if isinstance(block, int) else None
    return None, None, None


def _prior_of(storage: Any, ids: Iterable[int]) -> tuple[str, ...]:
    """The config's ``search.prior`` (the earlier studies the samplers learned from)."""
    for sid in ids:
        body = storage.get_study_user_attrs(sid).get(f"{ATTR}config")
        if isinstance(body, Mapping):
            prior = body.get("search", {}).get("prior", ())
            return tuple(prior) if isinstance(prior, list) else (prior,) if prior else ()
    return ()


def _pruner_of(storage: Any, ids: Iterable[int]) -> str | None:
    """The config's ``search.pruner`` (what every study of the comparison ran with)."""
    for sid in ids:
        body = storage.get_study_user_attrs(sid).get(f"{ATTR}config")
        if isinstance(body, Mapping):
            search = body.get("search")
            pruner = search.get("pruner", "none") if isinstance(search, Mapping) else None
            return str(pruner) if pruner is not None else None
    return None


def _commands_of(storage: Any, ids: Iterable[int]) -> list[str]:
    seen: list[str] = []
    for sid in ids:
        for cmd in storage.get_study_user_attrs(sid).get(f"{ATTR}compare_commands", []) or []:
            if isinstance(cmd, str) and cmd not in seen:
                seen.append(cmd)
    return seen


def _random_values(summary: SamplerSummary) -> list[float]:
    """The R² of every sampled (not enqueued) trial with an R², over all repeats."""
    return [v for r in summary.repeats for v in r.sampled_values if v is not None]


def _quartiles(values: Sequence[float]) -> tuple[float, float, float, float, float]:
    import numpy as np

    q = np.quantile(np.asarray(values, dtype=float), [0.0, 0.25, 0.5, 0.75, 1.0])
    return tuple(float(v) for v in q)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class CompareReport:
    """What :func:`build_report` wrote, with the numbers behind the table."""

    path: Path
    png: Path
    summaries: dict[str, SamplerSummary]
    random_spread: tuple[float, float, float, float, float] | None
    text: str
    steps_png: Path | None = None  # best R² against the cumulative training steps


@dataclass(frozen=True)
class _Facts:
    """What the report states besides the per-sampler numbers."""

    name: str
    repeats: int
    n_trials: int
    commands: Sequence[str]
    config_path: str | None
    base_steps: int | None
    block: int | None
    space: _Space
    spread: tuple[float, ...] | None
    caps: Sequence[int | None]  # the --max-steps the trials ran under (None: no cap)
    pruner: str | None = None  # the config's search.pruner
    prior: tuple[str, ...] = ()  # the config's search.prior (compare --prior adds to it)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def build_report(storage: Any, name: str, samplers: Sequence[str], repeats: int, n_trials: int,
                 *, command: str, out_dir: str | Path) -> CompareReport:
    """Write ``report.md``, ``best_so_far.png`` and ``best_vs_steps.png`` in ``out_dir`` from
    the storage alone.

    ``storage`` is an Optuna storage or a storage URL. Studies are found by name
    (``<name>__<sampler>__r<k>``); a missing study or an unfinished one is reported as such.
    Failed trials count as a missing R² (they still count as trials). A finished study's
    retrained incumbent is read from its user attrs (:mod:`metab_opt.compare.retrain`).
    """
    storage = open_comparison(storage)
    out = Path(out_dir)
    found = studies_of(storage, name)
    ids = [found[k] for k in sorted(found, key=lambda k: (k[1], k[0]))]
    summaries: dict[str, SamplerSummary] = {}
    for sampler in samplers:
        reps = [read_repeat(storage, found[(sampler, k)], study_name(name, sampler, k),
                             n_trials)
                for k in range(repeats) if (sampler, k) in found]
        summaries[sampler] = summarize(sampler, reps, repeats, n_trials)

    config_path, base_steps, block = _config_info(storage, ids)
    # The commands that ran trials, as recorded in the studies; ``command`` stands in when
    # none is (studies made by other means).
    commands = _commands_of(storage, ids) or ([command] if command else [])
    spread = None
    if "random" in summaries:
        vals = _random_values(summaries["random"])
        spread = _quartiles(vals) if vals else None
    facts = _Facts(name=name, repeats=repeats, n_trials=n_trials, commands=commands,
                   config_path=config_path, base_steps=base_steps, block=block,
                   space=_space_info(storage, ids), spread=spread, caps=_caps_of(storage, ids),
                   pruner=_pruner_of(storage, ids), prior=_prior_of(storage, ids))

    png = out / "best_so_far.png"
    steps_png = out / "best_vs_steps.png"
    config_name = Path(config_path).stem if config_path else "unknown"
    title = f"{name}: {config_name}, {n_trials} trials per study"
    plot_best_vs_trials(png, summaries, n_trials, title)
    cap = facts.caps[0] if len(facts.caps) == 1 else None
    plot_best_vs_steps(steps_png, summaries, title + (f", at most {cap:,} steps each"
                                                      if cap else ""),
                       budget=n_trials * cap if cap else None)
    text = _report_text(summaries, facts)
    path = out / "report.md"
    _atomic_write(path, text.encode())
    return CompareReport(path=path, png=png, summaries=summaries, random_spread=spread,
                         text=text, steps_png=steps_png)


def _budget(summaries: Mapping[str, SamplerSummary], facts: _Facts) -> str:
    """The per-trial step budget (every sampler's), and the steps as run."""
    base = facts.base_steps
    asks = f"the config's base values ask for {base:,}" if base else "base steps unknown"
    caps = list(facts.caps)
    if len(caps) == 1 and caps[0] is not None:
        text = (f"at most {caps[0]:,} training steps per trial, the same for every sampler "
                f"(`--max-steps {caps[0]}`; {asks}); a trial whose settings ask for fewer runs "
                f"fewer, a pruned trial stops early")
    elif caps == [None]:
        text = (f"no step cap (`--max-steps` not given): each trial runs the steps its "
                f"settings ask for ({asks})")
    elif caps:
        shown = ", ".join("none" if c is None else f"{c:,}" for c in caps)
        text = f"mixed: the trials ran under different step caps ({shown}); {asks}"
    else:
        text = (f"{base:,} steps per trial at the config's base values" if base
                else "base steps unknown")
    all_steps = [st for s in summaries.values() for r in s.repeats for st in r.steps]
    totals = [sum(r.trial_steps) for s in summaries.values() for r in s.repeats
              if r.n >= facts.n_trials and r.trial_steps]
    if all_steps:
        text += (f"; as run (the search may change the duration): median "
                 f"{statistics.median(all_steps):,g} per trial, "
                 f"{min(all_steps):,}–{max(all_steps):,}")
    if totals:
        text += f"; a finished study's trials: median {statistics.median(totals):,g} steps"
    if facts.pruner is not None:
        text += (f"; pruner `{facts.pruner}` (the config's `search.pruner`) for every sampler"
                 if facts.pruner != "none" else "; no pruner (the config's `search.pruner`)")
    return text


def _retrain_seeds(summaries: Mapping[str, SamplerSummary]) -> list[int]:
    seeds: list[int] = []
    for s in summaries.values():
        for r in s.repeats:
            for seed in r.retrain.seeds if r.retrain is not None else ():
                if seed not in seeds:
                    seeds.append(seed)
    return seeds


def _report_text(summaries: Mapping[str, SamplerSummary], facts: _Facts) -> str:
    repeats, n_trials = facts.repeats, facts.n_trials
    lines = [f"# Sampler comparison `{facts.name}`", ""]
    lines += ["Produced by:", ""]
    lines += [f"```\n{c}\n```" for c in facts.commands] or ["(command not recorded)"]
    config_name = Path(facts.config_path).stem if facts.config_path else "unknown"
    lines += ["", f"- config: `{config_name}` ({facts.config_path or 'not recorded'})",
              f"- per-trial step budget: {_budget(summaries, facts)}",
              f"- {_plural(len(summaries), 'sampler')} x {_plural(repeats, 'repeat')} "
              f"(sampler seeds 0..{repeats - 1})"
              f" x {n_trials} trials, the same dataset and objective (rate_constants_R2, "
              f"maximised)"]
    baselines = [r for k, s in summaries.items() if k != "ucb" for r in s.repeats]
    if baselines and all(r.enqueued[:1] == [True] for r in baselines):
        lines.append("- fair start: the first trial of every study is the config's base values "
                     "(the UCB tree's root; enqueued as trial 0 for Optuna's samplers)")
    elif baselines and "ucb" in summaries:
        lines.append("- start: the UCB sampler's first trial is the config's base values; "
                     "Optuna's samplers were not given it (they start from their own draws)")
    seeds = _retrain_seeds(summaries)
    lines.append("- what a user gets: when a study has its trials, its final incumbent (the "
                 "replicate group with the best mean R², as `metab-opt best` exports it) is "
                 "trained again with new training seeds"
                 + (f" ({', '.join(map(str, seeds))})" if seeds else "")
                 + " at the same step cap; its **replicate-confirmed R²** is the mean over the "
                 "incumbent's runs in the study and those retrains (a failed run counts 0)")
    lines += ["", "![best so far](best_so_far.png)", "",
              "![best against cumulative training steps](best_vs_steps.png)", "",
              "## Results", ""]
    lines += _table(summaries, facts)
    lines += ["", "Best R²: median over repeats (min–max in brackets). Replicate-confirmed: the "
              "same over repeats of each study's replicate-confirmed R² (n/a until its retrains "
              "are done). Trials to a threshold: "
              "median over repeats of the first trial whose R² reached it (each repeat's value "
              "in brackets, – = not reached); \"not reached\" when any repeat never reached it. "
              "Wall time: the sum of the trials' durations. Steps per trial: the median "
              "training steps (the search may lengthen training); steps per study: the median "
              "over finished repeats of the training steps of all their trials. A failed trial "
              "has no R² but counts as a trial."]
    lines += _ranking(summaries, n_trials)
    lines += _retrain_section(summaries)
    lines += ["", "## Does the objective separate good settings from bad?", ""]
    if facts.spread is not None:
        vals = _random_values(summaries["random"])
        lo, q1, med, q3, hi = facts.spread
        lines.append(f"rate_constants_R2 over the {_plural(len(vals), 'random-sampler trial')} "
                     f"with an R² "
                     f"(settings drawn at random from the whole search space; the enqueued "
                     f"start left out): min {lo:.3g}, "
                     f"Q1 {q1:.3g}, median {med:.3g}, Q3 {q3:.3g}, max {hi:.3g}; "
                     f"{sum(v < 0 for v in vals)} below 0, "
                     f"{sum(v >= THRESHOLDS[0] for v in vals)} at or above {THRESHOLDS[0]}.")
    elif "random" in summaries:
        lines.append("The random sampler has no trial with an R² yet.")
    else:
        lines.append("The random sampler is not part of this comparison.")
    lines += ["", "## Samplers", ""]
    lines += _sampler_notes(list(summaries), facts.space, facts.block)
    if facts.prior:
        from metab_opt.prior import TAKES_PRIOR

        lines.append(f"- **Prior** ({', '.join(facts.prior)}), as each sampler takes one: "
                     + "; ".join(f"{s}: {TAKES_PRIOR.get(s, 'none')}" for s in summaries)
                     + ". A prior's trials copied into a study are none of its trials: not "
                       "counted, not in its best R² or its incumbent.")
    lines += ["", "## Studies", "",
              "| study | trials | failed | best R² | at trial | training steps "
              "| replicate-confirmed R² | wall time |",
              "|---|---|---|---|---|---|---|---|"]
    for s in summaries.values():
        for r in s.repeats:
            best = r.best_within(r.n) if r.n else None
            at = r.values.index(best) + 1 if best is not None else None
            steps = f"{sum(r.trial_steps):,}" if r.trial_steps else "n/a"
            lines.append(f"| {r.study} | {r.n}/{n_trials} | {r.failed} | {f3(best)} | "
                         f"{at if at is not None else '–'} | {steps} | "
                         f"{f3(r.replicate_mean)} | {minutes(sum(r.seconds))} |")
    return "\n".join(lines) + "\n"


def _table(summaries: Mapping[str, SamplerSummary], facts: _Facts) -> list[str]:
    repeats, n_trials = facts.repeats, facts.n_trials
    early = EARLY < n_trials
    head = ["sampler", "repeats"]
    if early:
        head.append(f"median best R² after {EARLY}")
    head.append(f"median best R² after {n_trials}")
    head.append("replicate-confirmed R²")
    head += [f"trials to R² ≥ {_num(t)}" for t in THRESHOLDS]
    head += ["failed trials", "wall time (sum)", "per trial", "steps per trial",
             "steps per study"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sampler, s in summaries.items():
        done = f"{s.complete_repeats}/{repeats}"
        if len(s.repeats) < repeats:
            done += f" ({repeats - len(s.repeats)} not started)"
        row = [sampler, done]
        if early:
            row.append(_best_cell(s.median_best_early,
                                  [r.best_within(EARLY) for r in s.repeats], repeats))
        row.append(_best_cell(s.median_best_final,
                              [r.best_within(n_trials) for r in s.repeats], repeats))
        row.append(_best_cell(s.median_replicate, [r.replicate_mean for r in s.repeats],
                              repeats))
        row += [_trials_to_cell(s, t) for t in THRESHOLDS]
        row.append(f"{s.failed} of {s.total_trials}")
        mean = s.mean_trial_seconds
        row += [minutes(s.wall_seconds), f"{mean:.1f} s" if mean is not None else "n/a"]
        steps = [st for r in s.repeats for st in r.steps]
        row.append(f"{statistics.median(steps):,g}" if steps else "n/a")
        totals = [sum(r.trial_steps) for r in s.repeats if r.n >= n_trials and r.trial_steps]
        row.append(f"{statistics.median(totals):,g}" if totals else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _runs_cell(runs: Sequence[RetrainRun], *, label: str) -> str:
    if not runs:
        return "–"
    return ", ".join(f"{label} {r.trial if label == 'trial' else r.seed}: "
                     f"{'failed' if r.r2 is None else f3(r.r2)}" for r in runs)


def _retrain_section(summaries: Mapping[str, SamplerSummary]) -> list[str]:
    """Each finished study's incumbent: its runs in the study, its retrains, their mean."""
    rows: list[RepeatResult] = [r for s in summaries.values() for r in s.repeats]
    lines = ["", "## What a user gets: each study's final incumbent, trained again", ""]
    if not any(r.retrain is not None for r in rows):
        lines.append("No study has finished its trials and retrained its incumbent yet.")
        return lines
    lines += ["| study | incumbent's runs in the study | retrains | replicate-confirmed R² |",
              "|---|---|---|---|"]
    for r in rows:
        rec = r.retrain
        if rec is None:
            continue
        pending = f" (pending: seed {', '.join(map(str, rec.missing))})" if rec.missing else ""
        lines.append(f"| {r.study} | {_runs_cell(rec.in_study, label='trial')} | "
                     f"{_runs_cell(rec.runs, label='seed')}{pending} | "
                     f"{f3(rec.replicate_mean)} |")
    lines += ["", "Each retrain is `metab-opt train --config <the incumbent> --set "
              "training.seed=S --max-steps <cap>`, run in process; its config and metrics are "
              "under `<study>/retrains/seed_<S>/`. `metab-opt best <study> --storage <the "
              "comparison's storage>` writes a study's incumbent as a config."]
    return lines


def _ranking(summaries: Mapping[str, SamplerSummary], n_trials: int) -> list[str]:
    confirmed = sorted(((s.median_replicate, k) for k, s in summaries.items()
                        if s.median_replicate is not None), reverse=True)
    single = sorted(((s.median_best_final, k) for k, s in summaries.items()
                     if s.median_best_final is not None), reverse=True)
    if len(confirmed) >= 2:
        order = " > ".join(f"{k} {f3(v)}" for v, k in confirmed)
        pending = [k for k, s in summaries.items() if s.median_replicate is None]
        more = f" (not confirmed yet: {', '.join(pending)})" if pending else ""
        lines = ["", f"Ranking by median replicate-confirmed R² (each study's final incumbent: "
                     f"the mean over its runs in the study and its retrains; median over "
                     f"repeats): {order}{more}."]
        lines += _verdict(summaries, confirmed, "median_replicate")
        if len(single) >= 2:
            lines.append(f"By the best single trial (median best R² after {n_trials} trials, "
                         f"not replicate-confirmed): "
                         f"{' > '.join(f'{k} {f3(v)}' for v, k in single)}.")
        return lines
    if len(single) < 2:
        return []
    order = " > ".join(f"{k} {f3(v)}" for v, k in single)
    lines = ["", f"Ranking by median best R² after {n_trials} trials: {order} (single trials: "
                 f"no replicate-confirmed result for two samplers yet)."]
    return lines + _verdict(summaries, single, "median_best_final")


def _verdict(summaries: Mapping[str, SamplerSummary], ranked: Sequence[tuple[float, str]],
             attr: str) -> list[str]:
    ucb = getattr(summaries["ucb"], attr) if "ucb" in summaries else None
    others = [(v, k) for v, k in ranked if k != "ucb"]
    if ucb is None or not others:
        return []
    v, k = others[0]
    verdict = "ahead of" if ucb > v else "tied with" if ucb == v else "behind"
    return [f"UCB is {verdict} the best baseline ({k}) by {ucb - v:+.3f}."]
