"""Priors: earlier studies as the UCB sampler's input (``--prior``, ``search.prior``).

A prior names one or more earlier studies whose finished trials the sampler learns from
(:mod:`metab_opt.ucbtree._prior`: each source on its own rank scale, weighted by how well it
orders the new study's own trials). A spec ``P`` is, in the order it is tried:

1. ``NAME@URL``: study NAME in the storage at URL (any URL ``--storage`` takes);
2. a prior file (``metab-opt prior export`` writes one): JSON, portable, one or more studies;
3. a bundled prior's name: ``configs/priors/P.json`` (``rank50_family`` ships);
4. a study in the same storage: the study's ``--storage``, else ``<root>/P/study.db``.

Anything else, a file that is not a prior, a prior whose knobs share nothing with the study,
an unreachable storage: :class:`ConfigError`, one line, before anything is written.

The file (``format: metab_opt prior``, ``version: 1``) holds per study its name, direction,
the regime it came from (a line for people, and the config's ``simulation`` section), where it
was exported from (the storage URL, its password redacted), and its finished trials: number,
state (COMPLETE, PRUNED, FAIL), params, value (a pruned trial: its last report; a failed one:
null) and intermediate reports (``[step, value]``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metab_opt.config import Config, ConfigError
from metab_opt.ucbtree import PriorSource, SourceTrial

__all__ = ["BUNDLED", "FORMAT", "TAKES_PRIOR", "add_prior_trials", "check_prior", "export_prior",
           "load_prior_file", "optuna_trials", "regime_line", "resolve", "resolve_all",
           "show_prior", "sources_of_study", "with_prior", "write_prior"]

FORMAT = "metab_opt prior"
VERSION = 1
BUNDLED = Path(__file__).resolve().parents[1] / "configs" / "priors"
_STATES = ("COMPLETE", "PRUNED", "FAIL")


def regime_line(config: Mapping[str, Any] | None) -> str:
    """``256 reactions, network seed 42, log10 k in [-2.0, -1.0]`` from a stored config."""
    sim = (config or {}).get("simulation") if isinstance(config, Mapping) else None
    if not isinstance(sim, Mapping):
        return "regime unknown"
    return (f"{sim.get('n_reactions', '?')} reactions, network seed {sim.get('seed', '?')}, "
            f"log10 k in [{sim.get('log_k_min', '?')}, {sim.get('log_k_max', '?')}]")


def _trial_record(trial: Any) -> dict[str, Any] | None:
    from optuna.trial import TrialState

    state = trial.state
    if state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        return None
    steps = sorted(trial.intermediate_values.items())
    if state == TrialState.COMPLETE:
        value = trial.value
    elif state == TrialState.PRUNED:
        value = steps[-1][1] if steps else None
    else:
        value = None
    if value is not None and not math.isfinite(value):
        value = None
    return {"number": trial.number, "state": state.name, "params": dict(trial.params),
            "value": value,
            "intermediate": [[int(s), float(v)] for s, v in steps if math.isfinite(v)]}


def _study_record(name: str, storage: Any, url: str) -> dict[str, Any]:
    import optuna

    from metab_opt.storage import redact

    study = optuna.load_study(study_name=name, storage=storage)
    if len(study.directions) != 1:
        raise ConfigError(f"--prior {name}: the study has {len(study.directions)} objectives; "
                          f"a prior needs one")
    config = study.user_attrs.get("metab_opt:config")
    trials = [r for r in (_trial_record(t) for t in study.get_trials(deepcopy=False))
              if r is not None]
    return {"name": name, "direction": study.direction.name.lower(),
            "regime": regime_line(config),
            "simulation": (config or {}).get("simulation") if isinstance(config, dict) else None,
            "exported_from": redact(url), "trials": trials}


def _open(name: str, *, root: str | Path, storage_url: str | None) -> tuple[Any, str]:
    from metab_opt.storage import default_storage_url, open_existing

    url = storage_url or default_storage_url(root, name)
    storage, _ = open_existing(name, root=root, storage_url=storage_url)
    return storage, url


def export_prior(names: Sequence[str], *, root: str | Path = "studies",
                 storage_url: str | None = None) -> dict[str, Any]:
    """The prior file's content for the studies ``names`` (each ``NAME`` in ``storage_url`` or
    its own default storage, or ``NAME@URL``)."""
    studies = []
    for spec in names:
        name, url = _split(spec, storage_url)
        storage, full = _open(name, root=root, storage_url=url)
        record = _study_record(name, storage, full)
        if not any(t["state"] != "FAIL" for t in record["trials"]):
            raise ConfigError(f"prior export: study '{name}' has no finished trial")
        studies.append(record)
    return {"format": FORMAT, "version": VERSION, "studies": studies}


def write_prior(content: Mapping[str, Any], out: str | Path) -> Path:
    """Write a prior file atomically (a temporary file renamed): never half a file."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError(f"--prior {path}: not a usable prior file ({why}); write one with "
                       f"`metab-opt prior export NAME --out FILE`")


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _source(path: Path, i: int, study: Any) -> PriorSource:
    if not isinstance(study, dict):
        raise _bad(path, f"studies[{i}] is not a mapping")
    name = study.get("name")
    trials = study.get("trials")
    direction = study.get("direction", "maximize")
    if not isinstance(name, str) or not name:
        raise _bad(path, f"studies[{i}].name is missing")
    if direction not in ("maximize", "minimize"):
        raise _bad(path, f"studies[{i}].direction is {direction!r}, not maximize or minimize")
    if not isinstance(trials, list):
        raise _bad(path, f"studies[{i}].trials is not a list")
    out = []
    for j, t in enumerate(trials):
        where = f"studies[{i}].trials[{j}]"
        if (not isinstance(t, dict) or not isinstance(t.get("params"), dict)
                or t.get("state", "COMPLETE") not in _STATES
                or not _number_or_none(t.get("value"))):
            raise _bad(path, f"{where} needs params (a mapping), a state of "
                             f"{', '.join(_STATES)} and a value (a number or null)")
        steps = t.get("intermediate", [])
        if not isinstance(steps, list) or not all(
                isinstance(s, list) and len(s) == 2 and all(_number_or_none(x) for x in s)
                and None not in s for s in steps):
            raise _bad(path, f"{where}.intermediate is not a list of [step, value]")
        value = t.get("value")
        out.append(SourceTrial(params=t["params"], value=None if value is None else float(value),
                               state=t.get("state", "COMPLETE"),
                               intermediate=tuple((int(s), float(v)) for s, v in steps)))
    if not any(t.state != "FAIL" and t.value is not None for t in out):
        raise _bad(path, f"study '{name}' has no finished trial with a value")
    return PriorSource(name=name, trials=tuple(out), direction=direction,
                       regime=str(study.get("regime", "")))


def load_prior_file(path: str | Path) -> list[PriorSource]:
    """The sources of a prior file; ConfigError (one line) for anything that is not one."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--prior {path}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise _bad(path, f"no 'format: {FORMAT}'")
    if content.get("version") != VERSION:
        raise _bad(path, f"version {content.get('version')!r}; this metab_opt reads {VERSION}")
    studies = content.get("studies")
    if not isinstance(studies, list) or not studies:
        raise _bad(path, "no studies")
    return [_source(path, i, s) for i, s in enumerate(studies)]


def sources_of_study(name: str, *, root: str | Path = "studies",
                     storage_url: str | None = None) -> list[PriorSource]:
    """A study in a storage, read now, as a prior source."""
    storage, url = _open(name, root=root, storage_url=storage_url)
    return [_source(Path(name), 0, _study_record(name, storage, url))]


def _split(spec: str, storage_url: str | None) -> tuple[str, str | None]:
    """``NAME@URL`` -> (NAME, URL); ``NAME`` -> (NAME, storage_url)."""
    if "@" in spec and "://" in spec.split("@", 1)[1]:
        name, url = spec.split("@", 1)
        return name, url
    return spec, storage_url


def resolve(spec: str, *, root: str | Path = "studies",
            storage_url: str | None = None) -> list[PriorSource]:
    """The sources a ``--prior`` spec names (the module docstring's order)."""
    from metab_opt.storage import StorageError, default_storage_url, missing_storage, redact

    name, url = _split(spec, None)
    if url is not None:
        try:
            return sources_of_study(name, root=root, storage_url=url)
        except ConfigError as exc:  # an unreachable server, no such study there
            raise ConfigError(f"--prior {name}@{redact(url or '')}: "
                              f"{str(exc).removeprefix('metab-opt: error: ')}") from None
    path = Path(spec)
    if path.is_file():
        return load_prior_file(path)
    bundled = BUNDLED / f"{spec}.json"
    if "/" not in spec and bundled.is_file():
        return load_prior_file(bundled)
    url = storage_url or default_storage_url(root, spec)
    if missing_storage(url) is not None:
        known = sorted(p.stem for p in BUNDLED.glob("*.json"))
        raise ConfigError(f"--prior {spec}: no prior file, bundled prior or study of that name "
                          f"(bundled: {', '.join(known) or 'none'}; a study in another storage "
                          f"is NAME@URL)")
    try:
        return sources_of_study(spec, root=root, storage_url=storage_url)
    except StorageError:
        raise
    except ConfigError as exc:
        raise ConfigError(f"--prior {spec}: {exc}") from None


def resolve_all(specs: Sequence[str], *, root: str | Path = "studies",
                storage_url: str | None = None) -> list[PriorSource]:
    """Every source of every spec, in order; a study named twice counts once."""
    out: list[PriorSource] = []
    seen: set[str] = set()
    for spec in specs:
        for source in resolve(spec, root=root, storage_url=storage_url):
            if source.name not in seen:
                seen.add(source.name)
                out.append(source)
    return out


def show_prior(sources: Sequence[PriorSource]) -> str:
    """A prior's summary for people: per study its regime, its trials by state, its best values
    and what its best quarter says about each knob."""
    lines = []
    for s in sources:
        states = {st: sum(1 for t in s.trials if t.state == st) for st in _STATES}
        values = sorted((s.sign * t.value for t in s.trials
                         if t.value is not None and t.state != "FAIL"), reverse=True)
        best = ", ".join(f"{s.sign * v:.4g}" for v in values[:3])
        lines.append(f"study {s.name} ({s.direction}): {s.regime or 'regime unknown'}")
        lines.append(f"  {len(s.trials)} trials: " + ", ".join(
            f"{n} {st.lower()}" for st, n in states.items() if n) + f"; best {best}")
        reported = sum(1 for t in s.trials if t.intermediate)
        lines.append(f"  intermediate reports: {reported} of {len(s.trials)} trials")
        good = [t for t in s.trials if t.value is not None and t.state != "FAIL"]
        good.sort(key=lambda t: -s.sign * float(t.value))  # type: ignore[arg-type]
        top = good[:max(1, math.ceil(0.25 * len(good)))]
        for name in sorted({k for t in s.trials for k in t.params}):
            lines.append(f"  {name}: best quarter {_values(t.params.get(name) for t in top)}; "
                         f"all {_values(t.params.get(name) for t in s.trials)}")
    return "\n".join(lines)


def _values(values: Any) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        vals = sorted(float(v) for v in vals)
        return f"{vals[0]:.4g}–{vals[-1]:.4g} (median {vals[len(vals) // 2]:.4g})"
    counts: dict[str, int] = {}
    for v in vals:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return ", ".join(f"{k} ×{n}" for k, n in counts.items())


def with_prior(cfg: Config, specs: Sequence[str]) -> Config:
    """``cfg`` with ``specs`` added to its ``search.prior`` (each once, in order), in the typed
    section and in the stored form alike."""
    if not specs:
        return cfg
    prior = tuple(dict.fromkeys((*cfg.search.prior, *(s.strip() for s in specs))))
    raw = json.loads(json.dumps(dict(cfg.raw), default=str))
    raw.setdefault("search", {})["prior"] = list(prior)
    return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, prior=prior), raw=raw)


# How each sampler takes a prior: the UCB sampler's own (metab_opt.ucbtree._prior); tpe and gp
# with the prior's trials added to their study (what Optuna's maintainers recommend: they learn
# from the trials in the study); cmaes as WS-CMA-ES (CmaEsSampler(source_trials=...)); random
# takes none. Only `compare` gives Optuna's samplers theirs.
TAKES_PRIOR = {"ucb": "its own prior", "tpe": "the prior's trials added to its study",
               "gp": "the prior's trials added to its study",
               "cmaes": "WS-CMA-ES: the prior's trials as source_trials", "random": "none"}


def check_prior(cfg: Config, *, root: str | Path = "studies", storage_url: str | None = None,
                samplers: Sequence[str] = ("ucb",)) -> list[PriorSource]:
    """The sources of ``cfg.search.prior``, refused in one line (ConfigError) when one cannot
    be read or shares no knob with the study."""
    from metab_opt.sampler import UCBMutationSampler

    if list(samplers) == ["random"]:
        raise ConfigError("--prior: the random sampler takes none (ucb, tpe, gp and cmaes do)")
    sources = resolve_all(cfg.search.prior, root=root, storage_url=storage_url)
    try:
        UCBMutationSampler.from_config(cfg, seed=0, prior=sources)
    except ValueError as exc:
        raise ConfigError(f"--prior: {exc}") from None
    return sources


def optuna_trials(sources: Sequence[PriorSource], cfg: Config,
                  held: Mapping[str, Any], *, numeric_only: bool = False) -> list[Any]:
    """The sources' finished trials as Optuna trials of this study's search space, for Optuna's
    samplers: COMPLETE with their own values (a pruned one its last report; failed ones left
    out), every knob present (one a source lacks at the config's value, a value outside a
    knob's range at the nearest end, a categorical value the knob does not have: the trial is
    left out), the ``held`` knobs (the training seed) at their held value, marked with
    :data:`metab_opt.trial_record.PRIOR_SOURCE_ATTR` so that no view counts them.

    ``numeric_only``: only the knobs CMA-ES models (numeric, not held): WS-CMA-ES uses a source
    trial only if its params are exactly its search space."""
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.trial import create_trial

    from metab_opt.objective import held_distribution
    from metab_opt.trial_record import PRIOR_SOURCE_ATTR

    base = cfg.base_params()
    dists = {k.name: (held_distribution(k, held[k.name]) if k.name in held
                      else k.distribution()) for k in cfg.search.knobs}
    if numeric_only:
        dists = {n: d for n, d in dists.items()
                 if n not in held and not isinstance(d, CategoricalDistribution)}
    out = []
    for source in sources:
        for t in source.trials:
            if t.value is None or t.state == "FAIL" or not math.isfinite(t.value):
                continue
            params: dict[str, Any] = {}
            for name, dist in dists.items():
                value = held.get(name, t.params.get(name, base[name]))
                if isinstance(dist, CategoricalDistribution):
                    if value not in dist.choices:
                        break
                else:
                    value = min(max(value, dist.low), dist.high)
                    value = int(round(value)) if isinstance(dist, IntDistribution) else value
                params[name] = value
            else:
                out.append(create_trial(params=params, distributions=dists, value=t.value,
                                        system_attrs={PRIOR_SOURCE_ATTR: source.name}))
    return out


def add_prior_trials(study: Any, sources: Sequence[PriorSource], cfg: Config, kind: str) -> None:
    """The prior's trials added to a tpe or gp study, once, before its own: the way Optuna's
    maintainers recommend to warm-start them (:func:`optuna_trials`; marked, so that no count,
    view or incumbent reads them). ConfigError for a study that has trials of its own but not
    the prior's (it was started without it)."""
    from optuna.trial import TrialState

    from metab_opt.objective import held_params
    from metab_opt.trial_record import PRIOR_SOURCE_ATTR

    trials = study.get_trials(deepcopy=False)
    if any(PRIOR_SOURCE_ATTR in t.system_attrs for t in trials):
        return  # a resumed study has them
    if any(t.state != TrialState.WAITING for t in trials):  # an enqueued start is no result
        raise ConfigError(f"study '{study.study_name}' has trials of its own but not the "
                          f"prior's: it was started without --prior (choose another name)")
    study.add_trials(optuna_trials(sources, cfg, held_params(cfg, kind)))
