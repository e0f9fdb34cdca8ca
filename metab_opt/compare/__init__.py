"""``metab-opt compare``: the UCB sampler against Optuna's samplers on the same objective.

Each sampler runs ``repeats`` times (sampler seeds 0 .. repeats-1) as its own study,
``<name>__<sampler>__r<k>``, in ONE storage (default ``sqlite:///<root>/<name>/compare.db``); each
study's logbook and trial outputs lie under ``<root>/<name>/<study>/``. The studies run
interleaved (repeat 0 of every sampler, then repeat 1, ...) so that a comparison stopped early
still compares like with like. Re-running the same command resumes: the finished trials of every
study are counted and only the missing ones run.

Every sampler gets the same per-trial step budget (``max_steps``, ``--max-steps``: every trial
and retrain is capped at it; the report states it). When a study has its ``n_trials`` trials, its
final incumbent (the replicate group :func:`metab_opt.best.trials_incumbent` ranks first) is
trained again with new training seeds (default 101, 202) at the same cap, in process, as
``metab-opt train --set training.seed=S`` would: what a user of the study gets. The results are
stored in the study (user attr ``metab_opt:compare_retrain``), so a resumed comparison trains
nothing twice. A study's **replicate-confirmed R²** is the mean over the incumbent's runs in the
study and its retrains; the report ranks the samplers by its median over repeats.

Optuna's samplers (every one but ucb) do not search the training seed: it is held at the
config's value (:func:`metab_opt.objective.held_params`), as in ``metab-opt study``.

The report (``report.md``, ``best_so_far.png``: best R² against the trial count,
``best_vs_steps.png``: against the cumulative training steps, a pruned trial counting the steps
it ran) is built from the storage alone (:func:`build_report`), so it can be rebuilt, and tested
on synthetic studies, without training.

The package: :mod:`.results` (names, the trials that count, the retrain record, summaries),
:mod:`.report` (the report), :mod:`.plots` (its figures), :mod:`.retrain` (the incumbent trained
again), :mod:`.run` (running the studies). The command line is :mod:`metab_opt.cli`'s.

Fair start: every study's first trial is the config's base values — the UCB sampler's tree
starts there by design, and for Optuna's samplers the base values are enqueued as trial 0 — so
all samplers spend their remaining trials from the same known point.
"""

from __future__ import annotations

from metab_opt.compare.report import CompareReport, build_report
from metab_opt.compare.results import (
    THRESHOLDS,
    RepeatResult,
    Retrain,
    RetrainRun,
    SamplerSummary,
    study_name,
)
from metab_opt.compare.retrain import DEFAULT_RETRAIN_SEEDS, retrain_incumbent
from metab_opt.compare.run import check_sampler_packages, parse_samplers, parse_seeds, run_compare

__all__ = [
    "DEFAULT_RETRAIN_SEEDS",
    "THRESHOLDS",
    "CompareReport",
    "RepeatResult",
    "Retrain",
    "RetrainRun",
    "SamplerSummary",
    "build_report",
    "check_sampler_packages",
    "parse_samplers",
    "parse_seeds",
    "retrain_incumbent",
    "run_compare",
    "study_name",
]
