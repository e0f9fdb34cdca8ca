"""``metab-opt compare``: the UCB sampler against Optuna's samplers on the same objective.

Each sampler runs ``repeats`` times (sampler seeds 0 .. repeats-1) as its own study,
``<name>__<sampler>__r<k>``, in ONE storage (default ``sqlite:///<root>/<name>/compare.db``); each
study's logbook and trial outputs lie under ``<root>/<name>/<study>/``. The studies run
interleaved (repeat 0 of every sampler, then repeat 1, ...) so that a comparison stopped early
still compares like with like. Re-running the same command resumes: the finished trials of every
study are counted and only the missing ones run.

The report (``report.md``, ``best_so_far.png``) is built from the storage alone
(:func:`build_report`), so it can be rebuilt, and tested on synthetic studies, without training.

The package: :mod:`.results` (names, the trials that count, summaries), :mod:`.report` (the
report and its plot), :mod:`.run` (running the studies). The command line is
:mod:`metab_opt.cli`'s.

Fair start: every study's first trial is the config's base values — the UCB sampler's tree
starts there by design, and for Optuna's samplers the base values are enqueued as trial 0 — so
all samplers spend their remaining trials from the same known point.
"""

from __future__ import annotations

from metab_opt.compare.report import CompareReport, build_report
from metab_opt.compare.results import THRESHOLDS, RepeatResult, SamplerSummary, study_name
from metab_opt.compare.run import check_sampler_packages, parse_samplers, run_compare

__all__ = [
    "THRESHOLDS",
    "CompareReport",
    "RepeatResult",
    "SamplerSummary",
    "build_report",
    "check_sampler_packages",
    "parse_samplers",
    "run_compare",
    "study_name",
]
