"""The problem side: the networks, the simulator, the GNN, its trainer and its metrics (torch).

Layers (DESIGN.md): this folder imports the config and nothing of the runner above it; the
sampler (:mod:`metab_opt.ucbtree`) knows nothing of it. Where things are:

* :mod:`.networks` — where a reaction network comes from: PDE_M1's generator
  (:mod:`.networks.pde_m1`), a real model's stoichiometry read from SBML
  (:mod:`.networks.sbml`). A new source goes beside them.
* :mod:`.simulation` — the dynamics on a network, the dataset and its cache, the oracle.
* :mod:`.model` — the GNN (math and shapes); :mod:`._fused` — its hand-written gradient;
  :mod:`._sparse` — the graph's products over S's nonzeros, for genome-scale networks.
* :mod:`.losses`, :mod:`.training` — the loss terms and the trainer; :mod:`.bench` its benchmark.
* :mod:`.metrics`, :mod:`.joint`, :mod:`.evaluation` — what a trained model is scored on.
* :mod:`.plots` — a run's figures; :mod:`.network_plot` — the network, coloured by the error
  of each reaction's learned k.
"""
