"""PDE_M1's network generator: autocatalytic 3-cycles and random mass-action reactions.

Seeded by ``simulation.seed``: the same section gives the same network, bit for bit (the cached
datasets' checksums, rank50 0717fd11..., rest on it). Integer coefficients: a random reaction's
substrates have |s| in {1, 2} and its products share the consumed mass, so every column of S
sums to 0; no two reactions share a substrate set.
"""

from __future__ import annotations

import math

import numpy as np

from metab_opt.config import ConfigError, SimulationConfig
from metab_opt.problem.networks._base import Network

__all__ = ["build"]


def _cycle_reactions(rng: np.random.Generator, n_met: int, length: int, n_wanted: int,
                     used: set[tuple[tuple[int, int], ...]]) -> list[tuple[dict[int, int],
                                                                             dict[int, int]]]:
    """Autocatalytic cycles m1..mL: reaction ``m_i + m_{i+1} -> 2 m_{i+1}``.

    Both metabolites are substrates with |s| = 1; the net stoichiometry is -1 for the food
    ``m_i`` and +1 for the catalyst ``m_{i+1}``. A cycle is redrawn when one of its substrate
    pairs already exists, so that no two reactions share a substrate set.
    """
    out: list[tuple[dict[int, int], dict[int, int]]] = []
    attempts = 0
    while len(out) < n_wanted:
        attempts += 1
        if attempts > 100_000:
            raise ConfigError(f"simulation: cannot place {n_wanted} autocatalytic reactions "
                              f"with unique substrate sets among {n_met} metabolites (placed "
                              f"{len(out)}); lower simulation.cycle_fraction or n_reactions")
        members = rng.choice(n_met, size=length, replace=False)
        cycle: list[tuple[dict[int, int], dict[int, int]]] = []
        keys = []
        for pos in range(length):
            food, cat = int(members[pos]), int(members[(pos + 1) % length])
            if length == 2 and pos == 1:
                break  # a 2-cycle's second reaction would reuse the same substrate pair
            keys.append(tuple(sorted(((food, 1), (cat, 1)))))
            cycle.append(({food: 1, cat: 1}, {food: -1, cat: 1}))
        if len(set(keys)) != len(keys) or any(k in used for k in keys):
            continue
        take = min(len(cycle), n_wanted - len(out))
        for key, reaction in zip(keys[:take], cycle[:take]):
            used.add(key)
            out.append(reaction)
    return out


def _random_reactions(rng: np.random.Generator, n_met: int, max_per: int, n_wanted: int,
                      used: set[tuple[tuple[int, int], ...]]) -> list[tuple[dict[int, int],
                                                                              dict[int, int]]]:
    """Random reactions: 1..max_per substrates with |s| in {1, 2}; products share the mass.

    The consumed mass (Σ|s|) is split over 1..max_per product metabolites that are not
    substrates, so every column of S sums to 0.
    """
    out: list[tuple[dict[int, int], dict[int, int]]] = []
    attempts = 0
    while len(out) < n_wanted:
        attempts += 1
        if attempts > 100_000:
            raise ConfigError(f"simulation: cannot place {n_wanted} random reactions with "
                              f"unique substrate sets among {n_met} metabolites (placed "
                              f"{len(out)}); lower simulation.n_reactions or raise "
                              f"max_metabolites_per_reaction")
        n_sub = int(rng.integers(1, max_per + 1))
        subs = rng.choice(n_met, size=n_sub, replace=False)
        powers = rng.integers(1, 3, size=n_sub)
        key = tuple(sorted((int(m), int(p)) for m, p in zip(subs, powers)))
        if key in used:
            continue
        mass = int(powers.sum())
        others = np.setdiff1d(np.arange(n_met), subs)
        n_prod = int(rng.integers(1, min(max_per, mass, len(others)) + 1)) if len(others) else 0
        if n_prod == 0:
            continue
        prods = rng.choice(others, size=n_prod, replace=False)
        # Split `mass` into n_prod positive integers.
        cuts = np.sort(rng.choice(np.arange(1, mass), size=n_prod - 1, replace=False)) \
            if n_prod > 1 else np.array([], dtype=int)
        shares = np.diff(np.concatenate(([0], cuts, [mass])))
        sub = {int(m): int(p) for m, p in zip(subs, powers)}
        net = {int(m): -int(p) for m, p in zip(subs, powers)}
        for m, share in zip(prods, shares):
            net[int(m)] = net.get(int(m), 0) + int(share)
        used.add(key)
        out.append((sub, net))
    return out


def _check_capacity(cfg: SimulationConfig, n_cycle: int) -> None:
    """Fail at once, in one line, when the unique substrate sets cannot all exist.

    A cycle reaction's substrate set is a pair with |s| = 1; a random reaction's is 1 to
    max_metabolites_per_reaction metabolites (leaving at least one to be a product), each with
    |s| in {1, 2}. Without this check the builder would redraw 100 000 times, then fail.
    """
    n_met = cfg.n_metabolites
    pairs = math.comb(n_met, 2)
    if n_cycle > pairs:
        raise ConfigError(f"simulation: {n_cycle} autocatalytic reactions need as many distinct "
                          f"substrate pairs, but {n_met} metabolites have {pairs}; lower "
                          f"simulation.cycle_fraction or n_reactions")
    max_sub = min(cfg.max_metabolites_per_reaction, n_met - 1)
    sets = sum(math.comb(n_met, k) * 2**k for k in range(1, max_sub + 1))
    n_random = cfg.n_reactions - n_cycle
    if n_random > sets - n_cycle:
        raise ConfigError(f"simulation: {n_random} random reactions need distinct substrate "
                          f"sets, but {n_met} metabolites with up to {max_sub} substrates have "
                          f"{max(sets - n_cycle, 0)} left; lower simulation.n_reactions")


def build(cfg: SimulationConfig) -> Network:
    """The stoichiometry, the rate constants and the metabolite types of a regime (seeded)."""
    rng = np.random.default_rng(cfg.seed)
    n_met, n_reac = cfg.n_metabolites, cfg.n_reactions
    used: set[tuple[tuple[int, int], ...]] = set()
    n_cycle = int(round(cfg.cycle_fraction * n_reac))
    _check_capacity(cfg, n_cycle)
    reactions = _cycle_reactions(rng, n_met, cfg.cycle_length, n_cycle, used)
    reactions += _random_reactions(rng, n_met, cfg.max_metabolites_per_reaction,
                                   n_reac - len(reactions), used)
    S = np.zeros((n_met, n_reac), dtype=np.int64)
    power = np.zeros((n_met, n_reac), dtype=np.int64)
    for j, (sub, net) in enumerate(reactions):
        for m, p in sub.items():
            power[m, j] = p
        for m, s in net.items():
            S[m, j] = s
    log_k = rng.uniform(cfg.log_k_min, cfg.log_k_max, size=n_reac)
    types = np.zeros(n_met, dtype=np.int64)
    # Types in contiguous blocks: the first 1/n_types of the metabolites are type 0, and so on.
    types[:] = (np.arange(n_met) * cfg.n_metabolite_types) // n_met
    return Network(S=S, substrate_power=power, log_k=log_k, metabolite_type=types,
                   lambdas=np.asarray(cfg.homeostatic_lambda_per_type, dtype=np.float64),
                   baselines=np.asarray(cfg.homeostatic_baseline_per_type, dtype=np.float64))
