"""Create or resume a study: the samplers, the pruners, and the config fingerprint.

The pruner is the config's ``search.pruner`` unless ``metab-opt study --pruner`` says otherwise:
``none``, Optuna's ``median``, or ``safe``, the tree-safe pruner of :mod:`metab_opt.pruning`.

A study remembers the config it was started with (study user attrs ``metab_opt:fingerprint``,
``metab_opt:config_path``, ``metab_opt:config``); it is resumed only with a config that matches
it on the data, the search space, the model and training, and the sampler
(:class:`StudyMismatch` otherwise, before anything heavy is imported or written). Running the
trials is :mod:`metab_opt.runner`'s; opening the storage :mod:`metab_opt.storage`'s.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from metab_opt.config import PRUNERS, Config, ConfigError
from metab_opt.storage import default_storage_url, missing_storage, open_storage

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "StudyMismatch",
    "check_resumable",
    "make_pruner",
    "make_sampler",
    "open_study",
]

SAMPLERS = ("ucb", "tpe", "random", "cmaes", "gp")
_ATTR = "metab_opt:"  # namespace of the study's own attrs


class StudyMismatch(ConfigError):
    """An existing study was started with another config; it cannot be resumed with this one."""


# ---------------------------------------------------------------------------------------------
# Samplers


def make_sampler(kind: str, cfg: Config, seed: int | None, prior: Any = None,
                 max_steps: int | None = None) -> Any:
    """The UCB sampler or one of Optuna's samplers over the same search space; ``prior``:
    the UCB sampler's prior sources (:func:`metab_opt.prior.resolve_all`); ``max_steps``: the
    trials' step cap (the UCB sampler's duration rule does not lengthen a run it cuts)."""
    import optuna

    if kind == "ucb":
        from metab_opt.sampler import UCBMutationSampler

        return UCBMutationSampler.from_config(cfg, seed=seed, prior=prior, max_steps=max_steps)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        # CMA-ES handles the numeric knobs; categoricals fall back to independent sampling.
        # With a prior: WS-CMA-ES (Nomura et al. 2021), its mean and covariance warm-started
        # from the prior's best trials (metab_opt.prior.optuna_trials).
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                            source_trials=_source_trials(cfg, prior, kind))
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {kind!r}")


def _source_trials(cfg: Config, prior: Any, kind: str) -> list[Any] | None:
    if not prior:
        return None
    from metab_opt.objective import held_params
    from metab_opt.prior import optuna_trials

    return optuna_trials(prior, cfg, held_params(cfg, kind), numeric_only=True)


def make_pruner(kind: str, cfg: Config | None = None) -> Any:
    """The pruner named ``kind`` (one of :data:`PRUNERS`); ``cfg`` tells the safe pruner which
    knob is the training seed (a replicate of a top trial is never pruned)."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if kind == "safe":
        from metab_opt.pruning import SafePruner
        from metab_opt.trial_record import seed_knob

        return SafePruner(seed_param=seed_knob(cfg))
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {kind!r}")


# ---------------------------------------------------------------------------------------------
# Create or resume


# Model and training keys added after studies were started, left out of the fingerprint at
# these values (the training they leave as it was): older studies resume.
_FINGERPRINT_OMIT_AT: dict[str, dict[str, Any]] = {
    "graph_model": {"node_c_scale": 1.0, "sub_norm_powers": "one", "sub_form": "mlp"},
    "training": {"learning_rate_embedding": 0.0, "time_step": 1, "homeostasis_phase": 0.0,
                 "homeostasis_lr_factor": 1.0},
}


def _fingerprint(cfg: Config, sampler: str) -> dict[str, str]:
    """What must match for a study to be resumed: the data, the search space, the model."""
    body = cfg.to_dict()
    kept = {section: {k: v for k, v in body[section].items()
                      if k not in _FINGERPRINT_OMIT_AT[section]
                      or v != _FINGERPRINT_OMIT_AT[section][k]}
            for section in ("graph_model", "training")}
    model_training = json.dumps(kept, sort_keys=True, default=str)
    fp = {
        "simulation": cfg.simulation_hash(),
        "search space": cfg.search_space_hash(),
        "model and training": hashlib.sha256(model_training.encode()).hexdigest()[:16],
        "sampler": sampler,
    }
    # A prior changes the decisions: a study is resumed with the same one (absent without a
    # prior, so that older studies resume).
    if cfg.search.prior and sampler != "random":  # random takes none
        fp["prior"] = ", ".join(cfg.search.prior)
    return fp


def open_study(cfg: Config, *, name: str, storage: Any, sampler: Any, sampler_kind: str,
               pruner: Any = None) -> Any:
    """Create the study, or load it after checking it was started with the same config."""
    import optuna

    fp = _fingerprint(cfg, sampler_kind)
    existing = {s.study_name for s in optuna.study.get_all_study_summaries(storage)}
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    if name in existing and _check_fingerprint(study.user_attrs, cfg, name, fp):
        return study
    study.set_user_attr(f"{_ATTR}fingerprint", fp)
    study.set_user_attr(f"{_ATTR}config_path", cfg.path)
    study.set_user_attr(f"{_ATTR}config", cfg.to_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["rate_constants_R2"])
    return study


def _check_fingerprint(user_attrs: dict[str, Any], cfg: Config, name: str,
                       fp: dict[str, str]) -> bool:
    """True when the study was started with this config; StudyMismatch when with another;
    False when it has no fingerprint (created by something else, or before one was stored)."""
    stored = user_attrs.get(f"{_ATTR}fingerprint")
    if stored is None:
        return False
    differs = [k for k in fp if stored.get(k) != fp[k]]
    if differs:
        raise StudyMismatch(
            f"study '{name}' was started with another {' and '.join(differs)} "
            f"({_describe_changes(user_attrs, cfg, fp, stored, differs)}); resume it with "
            f"that config ({user_attrs.get(_ATTR + 'config_path', '?')} as it was) or choose "
            f"another --study-name")
    return True


def check_resumable(cfg: Config, *, name: str | None = None, root: str | Path = "studies",
                    storage_url: str | None = None, sampler_kind: str = "ucb") -> None:
    """Refuse, before anything heavy is imported or anything is written, to resume a study that
    was started with another config (:class:`StudyMismatch`); a bad storage URL raises
    :class:`StorageError`. A storage that does not exist yet is left alone (not created)."""
    import optuna

    name = name or cfg.name
    url = storage_url or default_storage_url(root, name)
    if missing_storage(url) is not None:
        return
    storage = open_storage(url)
    if name not in {s.study_name for s in optuna.study.get_all_study_summaries(storage)}:
        return
    user_attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    _check_fingerprint(user_attrs, cfg, name, _fingerprint(cfg, sampler_kind))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _describe_changes(user_attrs: dict[str, Any], cfg: Config, fp: dict[str, str],
                      stored: dict[str, str], differs: list[str], limit: int = 3) -> str:
    """``simulation.seed: 7 -> 8, ...``: the config keys that differ from the stored config."""
    parts = []
    if "sampler" in differs:
        parts.append(f"sampler: {stored.get('sampler')} -> {fp['sampler']}")
    before = user_attrs.get(f"{_ATTR}config")
    if isinstance(before, dict):
        old = _flatten(before)
        # The stored config went through JSON: compare the current one in the same form.
        new = _flatten(json.loads(json.dumps(cfg.to_dict(), default=str)))
        sections = {"simulation": ("simulation",), "search space": ("search.knobs",),
                    "model and training": ("graph_model", "training")}
        where = tuple(f"{p}." for k in differs for p in sections.get(k, ()))
        keys = sorted(k for k in set(old) | set(new) if k.startswith(where))
        missing = object()
        for key in keys:
            a, b = old.get(key, missing), new.get(key, missing)
            if a != b:
                parts.append(f"{key}: {'unset' if a is missing else a} -> "
                             f"{'unset' if b is missing else b}")
    if not parts:
        return "the stored config differs in a way not listed"
    more = f", and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more
