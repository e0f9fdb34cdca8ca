"""Priors as an input: export, show, the ways to name one, the bundled one, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from test_bad_input import _cli  # a fresh `metab-opt` process, run from an empty folder

from metab_opt.cli import main
from metab_opt.config import ConfigError, load_config
from metab_opt.prior import (
    BUNDLED,
    check_prior,
    load_prior_file,
    resolve,
    resolve_all,
    with_prior,
    write_prior,
)
from metab_opt.study import _fingerprint

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def _earlier_study(root: Path, name: str = "earlier", n: int = 8) -> str:
    """A finished study of tiny.yaml's knobs in ``root/name/study.db``: n trials, one pruned
    (with reports) and one failed."""
    cfg = load_config(TINY)
    dists = {k.name: k.distribution() for k in cfg.search.knobs}
    base = cfg.base_params()
    url = f"sqlite:///{root / name / 'study.db'}"
    (root / name).mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_user_attr("metab_opt:config", json.loads(json.dumps(cfg.to_dict(), default=str)))
    for i in range(n):
        params = dict(base, lr_sub=base["lr_sub"] / (1 + i % 3))
        state = (optuna.trial.TrialState.PRUNED if i == 1 else optuna.trial.TrialState.FAIL
                 if i == 2 else optuna.trial.TrialState.COMPLETE)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, state=state,
            value=0.1 * i if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values={100: 0.01 * i, 200: 0.02 * i}))
    return url


def test_export_show_and_load_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    _earlier_study(tmp_path)
    out = tmp_path / "p.json"
    assert main(["prior", "export", "earlier", "--root", str(tmp_path), "--out", str(out)]) == 0
    content = json.loads(out.read_text())
    study = content["studies"][0]
    assert content["format"] == "metab_opt prior" and study["name"] == "earlier"
    assert "network seed" in study["regime"] and study["simulation"]["seed"] is not None
    states = [t["state"] for t in study["trials"]]
    assert states.count("PRUNED") == 1 and states.count("FAIL") == 1 and len(states) == 8
    pruned = next(t for t in study["trials"] if t["state"] == "PRUNED")
    assert pruned["value"] == pytest.approx(0.02)  # its last report
    assert pruned["intermediate"] == [[100, 0.01], [200, 0.02]]
    (source,) = load_prior_file(out)
    assert len(source.trials) == 8 and source.trials[0].params["lr_sub"] > 0
    # The file, the study in its storage and NAME@URL name the same trials.
    by_name = resolve("earlier", root=tmp_path)
    by_url = resolve(f"earlier@sqlite:///{tmp_path / 'earlier' / 'study.db'}", root="/nowhere")
    assert by_name[0].trials == source.trials == by_url[0].trials
    capsys.readouterr()
    assert main(["prior", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "study earlier (maximize)" in shown and "6 complete, 1 pruned, 1 fail" in shown
    assert "intermediate reports: 8 of 8 trials" in shown


def test_export_refuses_to_overwrite(tmp_path: Path) -> None:
    _earlier_study(tmp_path)
    out = tmp_path / "p.json"
    out.write_text("keep me")
    rc = main(["prior", "export", "earlier", "--root", str(tmp_path), "--out", str(out)])
    assert rc == 2 and out.read_text() == "keep me"


def test_the_bundled_prior_is_the_rank50_family() -> None:
    sources = resolve("rank50_family")
    assert (BUNDLED / "rank50_family.json").is_file()
    assert [s.name for s in sources] == ["rank50_proxy"]
    assert len(sources[0].trials) == 192
    assert sources[0].regime == "256 reactions, network seed 42, log10 k in [-2.0, -1.0]"
    best = max(t.value for t in sources[0].trials if t.value is not None)
    assert 0.99 < best < 1.0
    # It shares knobs with every shipped study config (tiny's are a subset).
    for name in ("rank50_proxy.yaml", "rank50.yaml", "tiny.yaml", "rank20.yaml"):
        cfg = with_prior(load_config(ROOT / "configs" / name), ["rank50_family"])
        assert check_prior(cfg)[0].name == "rank50_proxy"


def test_search_prior_in_the_config_and_the_fingerprint(tmp_path: Path) -> None:
    raw = TINY.read_text().replace("search:\n", "search:\n  prior: rank50_family\n", 1)
    path = tmp_path / "tiny_prior.yaml"
    path.write_text(raw)
    cfg = load_config(path)
    assert cfg.search.prior == ("rank50_family",)
    both = with_prior(cfg, ["rank50_family", "other"])
    assert both.search.prior == ("rank50_family", "other")
    assert both.to_dict()["search"]["prior"] == ["rank50_family", "other"]
    plain = load_config(TINY)
    assert "prior" not in _fingerprint(plain, "ucb")  # older studies resume as they were
    assert _fingerprint(cfg, "ucb")["prior"] == "rank50_family"
    assert _fingerprint(plain, "ucb") == {k: v for k, v in _fingerprint(cfg, "ucb").items()
                                          if k != "prior"}
    with pytest.raises(ConfigError, match="search.prior: expected a prior"):
        load_config(TINY, overrides=["search.prior=[3]"])


def test_a_study_named_twice_counts_once(tmp_path: Path) -> None:
    _earlier_study(tmp_path)
    sources = resolve_all(["earlier", "earlier"], root=tmp_path)
    assert len(sources) == 1


def test_write_prior_leaves_no_half_file(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "p.json"
    write_prior({"format": "metab_opt prior", "version": 1, "studies": []}, out)
    assert json.loads(out.read_text())["studies"] == []
    assert not list(out.parent.glob("*.tmp"))


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("prior", "needle"), [
    ("no_such_study", "--prior no_such_study: no prior file, bundled prior or study"),
    ("CORRUPT", "not a usable prior file (not JSON"),
    ("NOT_A_PRIOR", "not a usable prior file (no 'format: metab_opt prior')"),
    ("BAD_TRIAL", "studies[0].trials[0] needs params"),
    ("ALIEN", "prior 'alien' shares no knob with the study"),
    ("x@postgresql://u:secret@127.0.0.1:1/db", "--prior x@postgresql://u:***@127.0.0.1:1/db"),
])
def test_bad_priors_are_one_line_exit_2_nothing_written(tmp_path: Path, prior: str,
                                                         needle: str) -> None:
    files = {
        "CORRUPT": _write(tmp_path, "corrupt.json", '{"format": "metab_opt prior", "vers'),
        "NOT_A_PRIOR": _write(tmp_path, "other.json", '{"hello": 1}'),
        "BAD_TRIAL": _write(tmp_path, "bad.json", json.dumps(
            {"format": "metab_opt prior", "version": 1,
             "studies": [{"name": "b", "trials": [{"params": 3, "value": 1}]}]})),
        "ALIEN": _write(tmp_path, "alien.json", json.dumps(
            {"format": "metab_opt prior", "version": 1,
             "studies": [{"name": "alien", "trials": [{"params": {"width": 3}, "value": 1}]}]})),
    }
    rc, out, err = _cli(tmp_path, "study", "--config", str(TINY), "--prior",
                        files.get(prior, prior), "--n-trials", "1")
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and out == ""
    assert needle in err, err
    assert "secret" not in err
    assert not (tmp_path / "cwd" / "studies").exists()


def test_random_alone_takes_no_prior(tmp_path: Path) -> None:
    rc, _, err = _cli(tmp_path, "study", "--config", str(TINY), "--prior", "rank50_family",
                      "--sampler", "random")
    assert rc == 2 and "the random sampler takes none" in err
    assert not (tmp_path / "cwd" / "studies").exists()


def test_optuna_samplers_get_the_prior_trials_marked_and_uncounted(tmp_path: Path) -> None:
    """tpe: the prior's trials in its study, marked, before its own; no count or view reads
    them. cmaes: the same trials as WS-CMA-ES's source_trials."""
    from metab_opt.compare.results import counted
    from metab_opt.objective import held_params
    from metab_opt.prior import add_prior_trials, optuna_trials
    from metab_opt.study import make_sampler
    from metab_opt.trial_record import PRIOR_SOURCE_ATTR, own_trials

    cfg = load_config(TINY)
    sources = resolve("rank50_family")
    trials = optuna_trials(sources, cfg, held_params(cfg, "tpe"))
    assert len(trials) == 192 and all(t.system_attrs[PRIOR_SOURCE_ATTR] == "rank50_proxy"
                                      for t in trials)
    seed = cfg.search.roles.seed if cfg.search.roles else "seed"
    assert {t.params[seed] for t in trials} == {cfg.base_params()[seed]}  # held, not searched
    assert set(trials[0].params) == set(cfg.search.names)
    study = optuna.create_study(direction="maximize",
                                sampler=make_sampler("tpe", cfg, 0, prior=sources))
    study.enqueue_trial(cfg.base_params())
    add_prior_trials(study, sources, cfg, "tpe")
    add_prior_trials(study, sources, cfg, "tpe")  # resumed: once
    assert len(study.trials) == 193
    assert own_trials(study.trials) == [study.trials[0]] and counted(study.trials) == []
    cmaes = make_sampler("cmaes", cfg, 0, prior=sources)
    assert len(cmaes._source_trials) == 192
    # WS-CMA-ES takes a source trial only if its params are exactly its search space: a study
    # suggested as the objective suggests (the seed held) samples from them without failing.
    from metab_opt.objective import suggest_holding

    ws = optuna.create_study(direction="maximize", sampler=cmaes)
    held = held_params(cfg, "cmaes")
    ws.optimize(lambda t: float(len(suggest_holding(t, cfg, held))), n_trials=3)
    assert [t.state.name for t in ws.trials] == ["COMPLETE"] * 3
    done = optuna.create_study(direction="maximize")
    done.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    with pytest.raises(ConfigError, match="started without --prior"):
        add_prior_trials(done, sources, cfg, "tpe")


def test_a_study_with_a_prior_reports_it_in_its_memory() -> None:
    """The memory's prior section comes from the sampler: each source and its weight."""
    from metab_opt.logbook import render_memory
    from metab_opt.sampler import UCBMutationSampler

    cfg = load_config(TINY)
    sampler = UCBMutationSampler.from_config(cfg, seed=0, prior=resolve("rank50_family"))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    lines = sampler.prior_report(study)
    assert lines is not None and "weight 0.50" in lines[0] and "even start" in lines[0]
    memory = render_memory([], study_name="s", prior=lines)
    assert "## Prior: what earlier studies say" in memory
    assert "- rank50_proxy (256 reactions, network seed 42" in memory
    assert "## Prior" not in render_memory([], study_name="s")


def test_a_tpe_study_with_a_prior_logs_and_counts_its_own_trials_only(tmp_path: Path) -> None:
    """`study --sampler tpe --prior`: the prior's 192 trials sit in the study (TPE learns
    from them), and the analysis log, the memory and the summary know only the study's own."""
    root = tmp_path / "studies"
    rc = main(["study", "--config", str(TINY), "--sampler", "tpe", "--prior", "rank50_family",
               "--n-trials", "1", "--max-steps", "30", "--root", str(root), "--no-progress",
               "--no-plots"])
    assert rc == 0
    storage = f"sqlite:///{root / 'tiny' / 'study.db'}"
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert len(trials) == 193
    log = (root / "tiny" / "tiny_analysis.md").read_text()
    assert log.count("## Iter ") == 1
    memory = (root / "tiny" / "tiny_memory.md").read_text()
    assert "1 finished" in memory
