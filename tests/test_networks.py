"""Network sources (metab_opt.problem.networks): a real model's stoichiometry from SBML, its
choices, and the one-line refusals; PDE_M1's datasets unchanged by the new keys."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from metab_opt.cli import main
from metab_opt.config import ConfigError, config_from_dict, load_config, simulation_hash
from metab_opt.problem.networks import build_network
from metab_opt.problem.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]
cobra = pytest.importorskip("cobra")


def _raw(network: dict[str, Any] | None, **sim: Any) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "configs" / "ecoli_core.yaml").read_text())
    if network is not None:
        raw["simulation"]["network"] = network
    raw["simulation"].update(sim)
    return raw


def _cfg(network: dict[str, Any] | None = None, **sim: Any) -> Any:
    return config_from_dict(_raw(network, **sim), path="ecoli_core.yaml")


@pytest.fixture(scope="module")
def core() -> Any:
    return build_network(_cfg().simulation)


def test_e_coli_core_with_the_default_choices(core: Any) -> None:
    # 95 reactions: 20 exchange (dropped), 1 biomass (dropped), 74 internal of which 39 are
    # reversible and split in two: 113 directed reactions over the 72 metabolites.
    assert (core.n_metabolites, core.n_reactions) == (72, 113)
    names = core.reaction_names
    assert "PGI" in names and "PGI_rev" in names and "PFK" in names and "PFK_rev" not in names
    assert not any(n.startswith("EX_") or "biomass" in n.lower() for n in names)
    assert "ATPM" in names  # maintenance kept by default
    assert core.S.dtype == np.float64
    # Reverse = forward with reactants and products swapped, its own k.
    f, r = names.index("PGI"), names.index("PGI_rev")
    np.testing.assert_array_equal(core.S[:, r], -core.S[:, f])
    assert core.log_k[f] != core.log_k[r]
    # Types by compartment, sorted: c -> 0, e -> 1.
    met = core.metabolite_names
    assert core.metabolite_type[met.index("glc__D_e")] == 1
    assert core.metabolite_type[met.index("g6p_c")] == 0


def test_fractional_coefficients_and_the_rate_law_exclusions(core: Any) -> None:
    # CYTBD: 2 h_c + 0.5 o2_c + q8h2_c -> h2o_c + 2 h_e + q8_c
    j = core.reaction_names.index("CYTBD")
    row = {m: i for i, m in enumerate(core.metabolite_names)}
    assert core.S[row["o2_c"], j] == -0.5
    assert core.substrate_power[row["o2_c"], j] == 0.5
    assert core.S[row["h_c"], j] == -2.0  # stoichiometry kept ...
    assert core.substrate_power[row["h_c"], j] == 0.0  # ... but out of the rate law
    # Water's transport has only excluded substrates: it keeps them (else a constant rate).
    w = core.reaction_names.index("H2Ot")
    assert core.substrate_power[:, w].sum() > 0


def test_each_choice_is_a_key() -> None:
    forward = build_network(_cfg({"source": "cobra", "model": "textbook",
                                  "reversible": "forward"}).simulation)
    assert forward.n_reactions == 74
    keep = build_network(_cfg({"source": "cobra", "model": "textbook",
                               "boundary": "keep"}).simulation)
    assert keep.n_reactions > 113 and "EX_glc__D_e" in keep.reaction_names
    # A reverse exchange (the medium feeding glucose) has no substrate: a constant rate.
    j = keep.reaction_names.index("EX_glc__D_e_rev")
    assert keep.substrate_power[:, j].sum() == 0 and keep.S[:, j].sum() == 1.0
    no_atpm = build_network(_cfg({"source": "cobra", "model": "textbook",
                                  "maintenance": "drop"}).simulation)
    assert "ATPM" not in no_atpm.reaction_names
    one = _cfg({"source": "cobra", "model": "textbook", "metabolite_types": "one"},
               homeostatic_lambda_per_type=[0.001], homeostatic_baseline_per_type=[4.0])
    assert set(build_network(one.simulation).metabolite_type) == {0}
    no_exclusion = build_network(_cfg({"source": "cobra", "model": "textbook",
                                       "rate_law_exclude": []}).simulation)
    j = no_exclusion.reaction_names.index("CYTBD")
    assert no_exclusion.substrate_power[no_exclusion.metabolite_names.index("h_c"), j] == 2.0


def test_a_biomass_reaction_kept_is_refused_over_the_substrate_limit() -> None:
    cfg = _cfg({"source": "cobra", "model": "textbook", "biomass": "keep"})
    with pytest.raises(ConfigError, match="Biomass_Ecoli_core.*over max_substrates 6.*"
                                          r"drop_reactions: \[Biomass_Ecoli_core\]"):
        build_network(cfg.simulation)


def test_reactions_dropped_by_hand() -> None:
    cfg = _cfg({"source": "cobra", "model": "textbook", "drop_reactions": ["PGI", "ATPM"]})
    names = build_network(cfg.simulation).reaction_names
    assert "PGI" not in names and "PGI_rev" not in names and "ATPM" not in names
    assert len(names) == 113 - 3
    bad = _cfg({"source": "cobra", "model": "textbook", "drop_reactions": ["NOPE"]})
    with pytest.raises(ConfigError, match="drop_reactions: the model has no reaction 'NOPE'"):
        build_network(bad.simulation)


def test_the_dataset_identifies_every_k() -> None:
    ds = simulate(_cfg(n_frames=480, n_trajectories=8, n_test_frames=50).simulation)
    m = ds.manifest
    assert m["finite"] and m["oracle_R2"] > 0.99 and m["unidentified_reactions"] == []
    assert m["reaction_names"][0] == ds.network.reaction_names[0]
    assert m["nnz_S"] == int(np.count_nonzero(ds.S))
    # One long trajectory of the closed network settles: far fewer active directions.
    one = simulate(_cfg(n_frames=480, n_trajectories=1, n_test_frames=50).simulation)
    assert one.manifest["activity_rank"] < m["activity_rank"]


def test_trajectories_start_apart_and_the_first_is_the_one_trajectory_dataset() -> None:
    many = simulate(_cfg(n_frames=240, n_trajectories=4, n_test_frames=20).simulation)
    one = simulate(_cfg(n_frames=60, n_trajectories=1, n_test_frames=20).simulation)
    np.testing.assert_array_equal(many.x[:60], one.x)  # the same computation: bitwise
    assert not np.allclose(many.x[60], many.x[0])


def test_pde_m1_datasets_keep_their_cache_keys() -> None:
    # The new keys (network, n_trajectories) are left out of the hash at their defaults.
    expected = {"rank50": "051b803b2bcb5585", "rank70": "d447621ae97ffe28",
                "rank20": "c594eb9b685fbf6e"}
    for name, key in expected.items():
        assert load_config(ROOT / "configs" / f"{name}.yaml").simulation_hash() == key
    raw = yaml.safe_load((ROOT / "configs" / "rank50.yaml").read_text())
    explicit = copy.deepcopy(raw)
    explicit["simulation"].update(network={"source": "pde_m1"}, n_trajectories=1)
    # Naming PDE_M1's source is the same section as leaving it out: the same dataset.
    assert config_from_dict(explicit).simulation_hash() == expected["rank50"]
    assert simulation_hash(config_from_dict(raw).simulation) == expected["rank50"]


def _tiny_model(path: Path) -> Path:
    model = cobra.Model("tiny")
    a, b, c = (cobra.Metabolite(f"{m}_c", compartment="c") for m in "abc")
    r1 = cobra.Reaction("R1", lower_bound=-1000, upper_bound=1000)
    r1.add_metabolites({a: -1, b: 1})
    r2 = cobra.Reaction("R2", lower_bound=0, upper_bound=1000)
    r2.add_metabolites({a: -1, b: -1, c: 2})
    model.add_reactions([r1, r2])
    cobra.io.write_sbml_model(model, str(path))
    return path


def test_a_users_sbml_file_loads(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "tiny.xml")
    cfg = _cfg({"source": "sbml", "path": str(path)}, homeostatic_lambda_per_type=[0.001],
               homeostatic_baseline_per_type=[4.0])
    net = build_network(cfg.simulation)
    assert net.reaction_names == ("R1", "R1_rev", "R2")
    assert net.metabolite_names == ("a_c", "b_c", "c_c")
    # The file's content is the cache key: an edited file is another dataset.
    before = cfg.simulation_hash()
    path.write_text(path.read_text() + "<!-- edited -->\n")
    assert cfg.simulation_hash() != before


@pytest.mark.parametrize(("text", "problem"), [
    ("just some text", "not an XML file"),
    ("<?xml version='1.0'?><root><a></root>", "not well-formed XML"),
    ("<?xml version='1.0'?><root><a/></root>", "not an SBML model"),
    ("""<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version1/core" level="3" version="1"><model id="m">
<listOfCompartments><compartment id="c" constant="true"/></listOfCompartments>
<listOfSpecies><species id="A" compartment="c" hasOnlySubstanceUnits="false"
 boundaryCondition="false" constant="false"/></listOfSpecies>
<listOfReactions><reaction id="R1" reversible="false"><listOfReactants>
<speciesReference species="A" stoichiometry="1" constant="true"/></listOfReactants>
<listOfProducts><speciesReference species="B" stoichiometry="1" constant="true"/>
</listOfProducts></reaction></listOfReactions></model></sbml>""",
     "reaction 'R1' names species 'B', which the file does not declare"),
    ("""<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version1/core" level="3" version="1"><model id="m">
<listOfCompartments><compartment id="c" constant="true"/></listOfCompartments>
</model></sbml>""", "the model has no reactions"),
])
def test_a_bad_file_is_refused_in_one_line_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text(text)
    raw = _raw({"source": "sbml", "path": str(bad)})
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    rc = main(["study", "--config", str(cfg_path), "--root", str(out), "--n-trials", "1",
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and problem in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize(("network", "sim", "message"), [
    ({"source": "cobra", "model": "e_coli"}, {}, "expected one of textbook, iJO1366, salmonella"),
    ({"source": "sbml", "path": "/nonexistent/model.xml"}, {}, "no such file"),
    ({"source": "sbml"}, {}, "network.path: missing"),
    ({"source": "cobra"}, {}, "network.model: missing"),
    ({"source": "cobra", "model": "textbook", "boundry": "keep"}, {}, "did you mean 'boundary'"),
    ({"source": "cobra", "model": "textbook"}, {"n_reactions": 256}, "set by the network"),
    ({"source": "cobra", "model": "textbook"}, {"n_trajectories": 7}, "split evenly"),
])
def test_bad_network_keys_are_one_line_errors(network: dict[str, Any], sim: dict[str, Any],
                                              message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _cfg(network, **sim)


def test_the_homeostasis_lists_must_match_the_compartments() -> None:
    cfg = _cfg(homeostatic_lambda_per_type=[0.001], homeostatic_baseline_per_type=[4.0])
    with pytest.raises(ConfigError, match=r"needs 2 values, one per metabolite type "
                                          r"\(compartment: c, e\)"):
        build_network(cfg.simulation)


def test_pde_m1_needs_its_generator_keys() -> None:
    raw = yaml.safe_load((ROOT / "configs" / "rank50.yaml").read_text())
    del raw["simulation"]["n_reactions"]
    with pytest.raises(ConfigError, match="n_reactions: missing required key"):
        config_from_dict(raw)


def test_settings_carry_over_from_pde_m1_to_a_real_model() -> None:
    from metab_opt.start_from import start_from

    best = load_config(ROOT / "configs" / "rank50_best.yaml")
    cfg = start_from(load_config(ROOT / "configs" / "ecoli_core.yaml"),
                     ROOT / "configs" / "rank50_best.yaml")
    assert cfg.base_params() == best.base_params()
    assert cfg.simulation.network is not None  # the regime stays the real model's


def test_the_model_keeps_fractional_powers_and_its_two_paths_agree(core: Any) -> None:
    import torch

    from metab_opt.problem.model import MetabolismGNN, build_graph

    cfg = _cfg()
    model = MetabolismGNN(build_graph(core.S, core.substrate_power), cfg.graph_model,
                          log_k_center=-1.5, seed=0)
    assert 0.5 in model.pair_pow.tolist()  # 0.5 o2_c is its own (metabolite, |s|) pair
    c = torch.rand(4, core.n_metabolites, generator=torch.Generator().manual_seed(0)) * 5 + 0.5
    with torch.no_grad():
        dense = model.forward_parts(c).dcdt  # the trainer's products
        edges = model.forward_parts(c, reference=True).dcdt  # torch_geometric's scatter
    torch.testing.assert_close(dense, edges, rtol=1e-4, atol=1e-6)


def test_the_simulators_sparse_product_agrees_with_the_dense_one(
        core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from metab_opt.problem import simulation as sim

    c0 = np.random.default_rng(0).uniform(1.0, 9.0, core.n_metabolites)
    dense = sim.integrate(core, c0, 40, 0.1, 4)
    monkeypatch.setattr(sim, "DENSE_S_MAX_ENTRIES", 0)  # e_coli_core through the nonzeros
    sparse = sim.integrate(core, c0, 40, 0.1, 4)
    np.testing.assert_allclose(sparse[0], dense[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sparse[1], dense[1], rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "types", "drop"), [("iJO1366", 3, []),
                                                     ("salmonella", 3, ["PEPTIDEsyn"])])
def test_the_genome_scale_models_load(name: str, types: int, drop: list[str]) -> None:
    raw = yaml.safe_load((ROOT / "configs" / "ijo1366.yaml").read_text())
    raw["simulation"]["network"]["model"] = name
    if drop:  # salmonella's lumped peptide synthesis: 20 substrates, refused by name first
        with pytest.raises(ConfigError, match="'PEPTIDEsyn' has 20 substrates"):
            build_network(config_from_dict(raw, path=f"{name}.yaml").simulation)
        raw["simulation"]["network"]["drop_reactions"] = drop
    net = build_network(config_from_dict(raw, path=f"{name}.yaml").simulation)
    assert net.n_metabolites > 1500 and net.n_reactions > 2500
    assert len(set(net.metabolite_type.tolist())) == types  # c, e, p
    assert (net.substrate_power > 0).sum(axis=0).max() <= 6
    assert np.isfinite(net.S).all() and (np.abs(net.S).sum(axis=0) > 0).all()


def test_the_power_form_shares_one_curve_across_powers(core: Any) -> None:
    import dataclasses

    import torch

    from metab_opt.problem._fused import fused_supported
    from metab_opt.problem.model import MetabolismGNN, build_graph

    cfg = _cfg()
    gm = dataclasses.replace(cfg.graph_model, sub_form="power", sub_through_origin=True)
    model = MetabolismGNN(build_graph(core.S, core.substrate_power), gm, log_k_center=-1.5,
                          seed=0)
    assert not fused_supported(model)  # the power form trains through autograd
    c = torch.linspace(0.5, 9.0, 20)
    with torch.no_grad():
        g = model.substrate_function(c, torch.ones_like(c))
        for s in (0.5, 2.0):
            torch.testing.assert_close(model.substrate_function(c, torch.full_like(c, s)),
                                       g.abs() ** s, rtol=1e-5, atol=1e-7)
        x = torch.rand(3, core.n_metabolites, generator=torch.Generator().manual_seed(1)) * 5
        parts = model.forward_parts(x)
        torch.testing.assert_close(parts.dcdt, model.forward_parts(x, reference=True).dcdt,
                                   rtol=1e-4, atol=1e-6)
        # the grid rows: g on the grid, raised to each power of the network
        grid = model.sub_grid
        for row, s in zip(parts.grid_sub, model.powers):
            want = model.substrate_function(grid, torch.full_like(grid, s))
            torch.testing.assert_close(row, want, rtol=1e-5, atol=1e-7)


def test_the_power_form_trains(tmp_path: Path) -> None:
    from metab_opt.problem.training import train

    cfg = config_from_dict(_raw(None, n_frames=96, n_trajectories=4, n_test_frames=20),
                           path="ecoli_core.yaml", overrides={"graph_model.sub_form": "power"})
    res = train(simulate(cfg.simulation), cfg, device="cpu", max_steps=30)
    assert res.steps > 0 and np.isfinite(res.model.log_k.detach().numpy()).all()
