"""``metab-opt dashboard``: a study's storage served by optuna-dashboard, with its artifacts.

What the dashboard shows beyond Optuna's own pages (the tree, the analysis log, each trial's
logbook entry) the logbook publishes into the storage (:mod:`metab_opt.dashboard_views`); this
module serves, with one change to optuna-dashboard's own pages: the hyperparameter importance
panel leaves out the training seed.

Why and how: optuna-dashboard (checked with 0.21) ranks every param of the complete trials,
and the training seed, which only replicates change, took a share (0.11 of 1, third, on a
rank50 study) that a person reads as a setting's importance; it is noise. The dashboard has no
option for the params it ranks, and the panel's numbers come from one API view,
``GET /api/studies/<id>/param_importances``, computed from the storage's trials. Hiding the
seed from those trials (a storage view) would also hide it from the trials table and every
plot, so :func:`dashboard_app` replaces that one view instead (a Bottle route added again
replaces the first). The replacement computes what optuna-dashboard computes (Optuna's
PED-ANOVA evaluator, the target ``-value`` for a maximized objective, equal shares when the
evaluator returns nothing, the same JSON) over the params other than the study's training
seed (:func:`metab_opt.trial_record.seed_knob` of the config the study keeps); PED-ANOVA
scores each param on its own, so the others keep their order and ratios, normalized without
the seed. Every other view is optuna-dashboard's. Errors are one line (:class:`ConfigError`).
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metab_opt.config import ConfigError

if TYPE_CHECKING:
    from bottle import Bottle
    from optuna.distributions import BaseDistribution
    from optuna.storages import BaseStorage

logger = logging.getLogger(__name__)

__all__ = ["IMPORTANCE_ROUTE", "check_port", "dashboard_app", "importances_without_seed",
           "serve"]

# optuna-dashboard's API view behind the hyperparameter importance panel (0.17 to 0.21).
IMPORTANCE_ROUTE = "/api/studies/<study_id:int>/param_importances"
# What optuna-dashboard filters: Optuna warns whenever a target is passed to PED-ANOVA, even
# one (like the ``-value`` here) already turned to "lower is better".
_PED_ANOVA_TARGET_WARNING = ("PedAnovaImportanceEvaluator computes the importances of params to "
                             "achieve low `target` values.*")


def _seed_param(storage: BaseStorage, study_name: str) -> str | None:
    """The study's training seed knob: its config's role (the config the study keeps), else a
    knob named ``seed`` (:func:`metab_opt.trial_record.seed_knob` without a config)."""
    from metab_opt.best import study_config
    from metab_opt.trial_record import seed_knob

    try:
        cfg = study_config(storage, study_name)
    except ConfigError:  # not started by `metab-opt study`, or a config this version refuses
        cfg = None
    return seed_knob(cfg)


def importances_without_seed(storage: BaseStorage, study_id: int) -> list[list[dict[str, Any]]]:
    """Per objective, the params' importances as optuna-dashboard's panel reads them (``name``,
    ``importance``, ``distribution``, most important first), computed as optuna-dashboard
    computes them but without the study's training seed (module docstring). ValueError where
    Optuna refuses, as in optuna-dashboard's view."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
    from optuna.study import StudyDirection
    from optuna.trial import FrozenTrial, TrialState

    from metab_opt.trial_record import own_trials

    name = storage.get_study_name_from_id(study_id)
    study = optuna.load_study(study_name=name, storage=storage,
                              sampler=optuna.samplers.RandomSampler())  # no sampler is run
    complete = own_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if len(complete) <= 1:  # optuna-dashboard's threshold: nothing to rank yet
        return [[] for _ in study.directions]
    seed = _seed_param(storage, name)
    distributions: dict[str, BaseDistribution] = {}  # every param of the complete trials
    for t in complete:
        for param, dist in t.distributions.items():
            distributions.setdefault(param, dist)
    params = [p for p in distributions if p != seed]
    out = []
    for i, direction in enumerate(study.directions):
        sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0

        def target(t: FrozenTrial, i: int = i, sign: float = sign) -> float:
            assert t.values is not None
            return sign * t.values[i]

        importance: dict[str, float] = {}
        if params:  # Optuna answers params=[] with nothing
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_PED_ANOVA_TARGET_WARNING)
                importance = get_param_importances(study, params=params, target=target,
                                                   evaluator=PedAnovaImportanceEvaluator())
        if not importance and params:  # optuna-dashboard's fallback: equal shares
            importance = dict.fromkeys(params, 1.0 / len(params))
        out.append([{"name": p, "importance": v,
                     "distribution": type(distributions[p]).__name__}
                    for p, v in importance.items()])
    return out


def dashboard_app(storage: BaseStorage, *, artifact_store: Any = None) -> Bottle:
    """optuna-dashboard's WSGI app for ``storage`` (an Optuna storage object, the one the app
    serves and this view reads), its importance view replaced by one without the training
    seed (module docstring)."""
    import optuna_dashboard
    from bottle import response
    from optuna.trial import TrialState

    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    # As optuna-dashboard does: computed again only when the number of complete trials changed.
    cache: dict[int, tuple[int, list[list[dict[str, Any]]]]] = {}
    guard = threading.Lock()

    def param_importances(study_id: int) -> dict[str, Any]:
        try:
            n_done = len(storage.get_all_trials(study_id, deepcopy=False,
                                                states=(TrialState.COMPLETE,)))
        except KeyError:
            response.status = 404
            return {"reason": f"study_id={study_id} is not found"}
        with guard:
            cached = cache.get(study_id)
            if cached is not None and cached[0] == n_done:
                return {"param_importances": cached[1]}
            try:
                result = importances_without_seed(storage, study_id)
            except ValueError as exc:  # optuna-dashboard's answer to what Optuna refuses
                logger.warning("Failed to calculate parameter importances: %s", exc)
                response.status = 400
                return {"reason": "Failed to calculate parameter importances."}
            except Exception:  # a JSON answer, as optuna-dashboard's views give, not a page
                logger.exception("parameter importances of study %s", study_id)
                response.status = 500
                return {"reason": "internal server error"}
            cache[study_id] = (n_done, result)
        return {"param_importances": result}

    app.get(IMPORTANCE_ROUTE)(param_importances)
    return app


def check_port(host: str, port: int) -> None:
    """ConfigError, one line, when ``host:port`` cannot be served (taken, not this machine's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind(address)
    except (OSError, OverflowError) as exc:  # OverflowError: a port above 65535
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot serve on {host}:{port} ({reason})") from None


def serve(storage: Any, *, host: str, port: int, artifacts: Path | None = None) -> None:
    """Serve ``storage`` until Ctrl-C (which returns normally). ``artifacts``: the study's
    artifact folder, served when it exists."""
    from optuna.artifacts import FileSystemArtifactStore

    store = (FileSystemArtifactStore(str(artifacts))
             if artifacts is not None and artifacts.exists() else None)
    check_port(host, port)  # before the server prints its banner
    print(f"optuna-dashboard on http://{host}:{port} (Ctrl-C to stop)", flush=True)
    try:
        # What optuna_dashboard.run_server does (Bottle's default wsgiref server), with the app
        # whose importance panel leaves the training seed out.
        dashboard_app(storage, artifact_store=store).run(host=host, port=port)
    except KeyboardInterrupt:
        return
    except OSError as exc:  # the port is taken, the host is not ours
        raise ConfigError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
