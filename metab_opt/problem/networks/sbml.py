"""A real network's stoichiometry from SBML: a user's file, or a model bundled with cobra.

The file is read by cobra (``cobra.io.read_sbml_model``, libsbml underneath), after a check with
libsbml that names what is wrong with a file cobra would refuse with a generic message (not XML,
not SBML, a species a reaction names but the file does not declare, no reactions). The kinetics
are the package's own mass action on that stoichiometry, with rate constants drawn as PDE_M1
draws them (seeded, log10 k uniform in ``[log_k_min, log_k_max]``), and the homeostasis per
metabolite type: the same system as PDE_M1's (``simulation.py``), on a network nobody here wrote.

The choices a kinetic model of a COBRA model must make, each a key of ``simulation.network``
(:class:`metab_opt.config.NetworkConfig`), with its default and the reason:

* ``boundary: drop`` — exchange, demand and sink reactions (one metabolite, no partner) are
  removed; their metabolites stay, and the homeostasis ``-λ (c - c_base)`` is their exchange with
  the medium (SKiMpy drops them the same way and holds the metabolites; MASSpy turns them into
  fixed boundary concentrations). ``keep``: each becomes mass action like the rest, ``X -> ∅``
  at ``k c_X`` and, when reversible, ``∅ -> X`` at a constant ``k`` (its rate law has no
  substrate: learnable with ``aggr_type: mul`` only).
* ``biomass: drop`` — the biomass pseudo-reaction (the objective's reactions, and any id with
  "biomass") lumps 50-odd precursors into growth; it is no chemical reaction and has no mass-action
  rate. ``keep`` treats it as one (refused when it exceeds ``max_substrates``).
* ``maintenance: keep`` — ATP maintenance (``ATPM``, ``NGAM`` or a name with "maintenance") is a
  real hydrolysis, ``atp + h2o -> adp + h + pi``; ``drop`` removes it.
* ``reversible: split`` — a reversible reaction (lower bound < 0 < upper bound) becomes two
  directed ones with their own k, the forward ``ID`` and the reverse ``ID_rev`` (reactants and
  products swapped). ``forward``: the written direction only. A reaction that runs backward only
  (upper bound <= 0) is its reverse.
* ``rate_law_exclude: [h2o, h]`` — metabolites left out of every rate law (MASSpy's default:
  water and protons are solvent and buffer, not substrates whose concentration sets a rate).
  They keep their stoichiometry: a reaction still produces or consumes them; a reaction whose
  substrates are all excluded (water's transport) keeps them, else its rate would be a constant
  that its reverse's cancels (one identifiable difference for two k). A name matches a
  metabolite's id without its compartment suffix (``h`` matches ``h_c`` and ``h_e``) or whole.
* Non-integer coefficients are kept as they are: ``0.5 o2_c`` consumes half an O2 and enters
  the rate law as ``c_o2^0.5``.
* Compartments: ``o2_c`` and ``o2_e`` are two species, as the file has them.
* ``metabolite_types: compartment`` — one homeostasis type per compartment (sorted by id: for
  e_coli_core ``c`` is type 0 and ``e`` type 1); ``one``: a single type.
* ``max_substrates: 6`` — the most substrates one rate law may have; a reaction beyond it is
  refused in one line that names it (salmonella's lumped ``PEPTIDEsyn`` has 20).
* ``drop_reactions: []`` — reaction ids left out by hand (such a lumped reaction); an id the
  model does not have is refused.

Metabolites that no kept reaction touches are left out (nothing in the data would say anything
about them).
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from metab_opt.config import BUNDLED_MODELS, ConfigError, NetworkConfig, SimulationConfig
from metab_opt.problem.networks._base import Network

__all__ = ["bundled_model_path", "build", "check_file", "read_model"]

_MAINTENANCE_IDS = ("ATPM", "NGAM")
_WHERE = "simulation.network"


def bundled_model_path(name: str) -> Path:
    """The SBML file of a model that ships with cobra (``textbook`` is e_coli_core)."""
    if name not in BUNDLED_MODELS:
        raise ConfigError(f"{_WHERE}.model: unknown bundled model {name!r}; one of "
                          f"{', '.join(BUNDLED_MODELS)}")
    spec = importlib.util.find_spec("cobra")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{_WHERE}: source cobra needs the cobra package (pip install cobra)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.xml.gz"


def _looks_like_xml(path: Path) -> bool:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def check_file(path: Path) -> None:
    """Refuse, in one line, a file that cobra could not read as a reaction network.

    libsbml reads it first, so that the line names the problem: no such file, not XML, not SBML,
    a reaction that names an undeclared species, no reactions.
    """
    import libsbml

    if not path.is_file():
        raise ConfigError(f"{_WHERE}.path: {path}: no such file")
    if not _looks_like_xml(path):
        raise ConfigError(f"{_WHERE}.path: {path}: not an XML file (an SBML model is XML)")
    doc = libsbml.readSBMLFromFile(str(path))
    errors = [doc.getError(i) for i in range(doc.getNumErrors())]
    xml = [e for e in errors if e.getCategory() == libsbml.LIBSBML_CAT_XML
           and e.getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    if xml:
        raise ConfigError(f"{_WHERE}.path: {path}: not well-formed XML "
                          f"(line {xml[0].getLine()}: {xml[0].getShortMessage()})")
    model = doc.getModel()
    if model is None:
        raise ConfigError(f"{_WHERE}.path: {path}: not an SBML model (no <sbml><model> in it)")
    species = {model.getSpecies(i).getId() for i in range(model.getNumSpecies())}
    for j in range(model.getNumReactions()):
        r = model.getReaction(j)
        refs = [r.getReactant(i) for i in range(r.getNumReactants())] + \
               [r.getProduct(i) for i in range(r.getNumProducts())]
        for ref in refs:
            if ref.getSpecies() not in species:
                raise ConfigError(f"{_WHERE}.path: {path}: reaction {r.getId()!r} names species "
                                  f"{ref.getSpecies()!r}, which the file does not declare")
    if model.getNumReactions() == 0:
        raise ConfigError(f"{_WHERE}.path: {path}: the model has no reactions")


@contextmanager
def _quiet() -> Iterator[None]:
    """cobra logs every unusual annotation of a real model, and a model without an objective as
    an error ("unclear what should be optimized"): nothing here optimizes, so not the user's
    news. What is wrong with a file is raised, in one line, by :func:`check_file`."""
    logger = logging.getLogger("cobra")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_model(spec: NetworkConfig) -> Any:
    """The cobra ``Model`` a ``simulation.network`` section names."""
    path = bundled_model_path(spec.model or "") if spec.source == "cobra" \
        else Path(spec.path or "")
    check_file(path)
    from cobra.io import read_sbml_model

    with _quiet():
        try:
            return read_sbml_model(str(path))
        except Exception as exc:  # cobra's own refusal: keep its first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{_WHERE}.path: {path}: cobra cannot read it as a model "
                              f"({first})") from None


def _base_id(met: Any) -> str:
    suffix = f"_{met.compartment}"
    return met.id[: -len(suffix)] if met.compartment and met.id.endswith(suffix) else met.id


def _is_biomass(rxn: Any, objective: set[str]) -> bool:
    return rxn.id in objective or "biomass" in rxn.id.lower()


def _is_maintenance(rxn: Any) -> bool:
    return rxn.id in _MAINTENANCE_IDS or "maintenance" in (rxn.name or "").lower()


def _objective_ids(model: Any) -> set[str]:
    try:
        return {r.id for r in model.reactions if r.objective_coefficient != 0}
    except Exception:  # a model without a solver-backed objective
        return set()


def _directed(spec: NetworkConfig, model: Any) -> list[tuple[str, dict[Any, float]]]:
    """The directed reactions as (name, {metabolite: signed coefficient}), in the file's order."""
    objective = _objective_ids(model)
    unknown = [r for r in spec.drop_reactions if r not in model.reactions]
    if unknown:
        raise ConfigError(f"{_WHERE}.drop_reactions: the model has no reaction {unknown[0]!r}")
    dropped = set(spec.drop_reactions)
    out: list[tuple[str, dict[Any, float]]] = []
    for rxn in model.reactions:
        if rxn.id in dropped:
            continue
        if rxn.boundary and spec.boundary == "drop":
            continue
        if _is_biomass(rxn, objective) and spec.biomass == "drop":
            continue
        if _is_maintenance(rxn) and spec.maintenance == "drop":
            continue
        coefs = {m: float(c) for m, c in rxn.metabolites.items() if c != 0}
        if not coefs:
            continue
        forward = rxn.upper_bound > 0 or rxn.lower_bound >= 0  # a blocked (0, 0) one: as written
        backward = rxn.lower_bound < 0 and (spec.reversible == "split" or not forward)
        if forward:
            out.append((rxn.id, coefs))
        if backward:
            out.append((f"{rxn.id}_rev", {m: -c for m, c in coefs.items()}))
    return out


def build(cfg: SimulationConfig) -> Network:
    """The :class:`Network` of ``cfg.network`` (an SBML file or a bundled model), seeded k."""
    spec = cfg.network
    assert spec is not None and spec.source in ("sbml", "cobra")
    model = read_model(spec)
    reactions = _directed(spec, model)
    if not reactions:
        raise ConfigError(f"{_WHERE}: no reaction is left once boundary/biomass/maintenance "
                          f"reactions are dropped (boundary: {spec.boundary}, biomass: "
                          f"{spec.biomass}); nothing to learn")
    exclude = set(spec.rate_law_exclude)
    used: dict[str, Any] = {}
    for _, coefs in reactions:
        for met in coefs:
            used.setdefault(met.id, met)
    mets = [m for m in model.metabolites if m.id in used]  # the file's order
    row = {m.id: i for i, m in enumerate(mets)}
    S = np.zeros((len(mets), len(reactions)), dtype=np.float64)
    power = np.zeros_like(S)
    for j, (name, coefs) in enumerate(reactions):
        subs = {met: -c for met, c in coefs.items() if c < 0}
        kept = {met: p for met, p in subs.items()
                if met.id not in exclude and _base_id(met) not in exclude}
        # A reaction of excluded metabolites only (water's transport h2o_e -> h2o_c) keeps them:
        # a constant rate would make it and its reverse one unidentifiable difference.
        kept = kept or subs
        for met, c in coefs.items():
            S[row[met.id], j] = c
        for met, p in kept.items():
            power[row[met.id], j] = p
        n_sub = len(kept)
        if n_sub > spec.max_substrates:
            raise ConfigError(f"{_WHERE}: reaction {name!r} has {n_sub} substrates in its rate "
                              f"law, over max_substrates {spec.max_substrates}; raise it, add "
                              f"metabolites to rate_law_exclude, or leave it out "
                              f"(drop_reactions: [{name.removesuffix('_rev')}])")
    compartments = sorted({m.compartment or "" for m in mets})
    if spec.metabolite_types == "compartment":
        types = np.array([compartments.index(m.compartment or "") for m in mets], dtype=np.int64)
        type_names = compartments
    else:
        types = np.zeros(len(mets), dtype=np.int64)
        type_names = ["all"]
    for key in ("homeostatic_lambda_per_type", "homeostatic_baseline_per_type"):
        if len(getattr(cfg, key)) != len(type_names):
            raise ConfigError(f"simulation.{key}: needs {len(type_names)} values, one per "
                              f"metabolite type ({spec.metabolite_types}: "
                              f"{', '.join(type_names)}), got {len(getattr(cfg, key))}")
    rng = np.random.default_rng(cfg.seed)
    log_k = rng.uniform(cfg.log_k_min, cfg.log_k_max, size=len(reactions))
    return Network(S=S, substrate_power=power, log_k=log_k, metabolite_type=types,
                   lambdas=np.asarray(cfg.homeostatic_lambda_per_type, dtype=np.float64),
                   baselines=np.asarray(cfg.homeostatic_baseline_per_type, dtype=np.float64),
                   metabolite_names=tuple(m.id for m in mets),
                   reaction_names=tuple(name for name, _ in reactions))
