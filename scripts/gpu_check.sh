#!/bin/bash
# One device call: the CUDA path checked and measured, then a CPU ablation sweep on the box's
# cores (issue 8). Run from the repository root on the lent machine; results land in $OUT.
# Needs the wheels in .whl (optuna and its needs, absent from that image).
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
MO="python3 -m metab_opt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torch_geometric, optuna; print('torch', torch.__version__, 'pyg', torch_geometric.__version__, 'optuna', optuna.__version__, 'cuda', torch.cuda.is_available())"
python3 -c "
from metab_opt.config import load_config
from metab_opt.simulation import load_or_build
for c in ('configs/rank50.yaml', 'configs/tiny.yaml'):
    load_or_build(load_config(c).simulation, 'studies/data')"

echo "== tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15

echo "== bench cuda / cpu (1 thread), rank50"
timeout 120 $MO bench --config configs/rank50.yaml --device cuda --steps 3000 2>&1 | tail -3 | tee $OUT/bench_cuda.json
timeout 90 $MO bench --config configs/rank50.yaml --device cpu --steps 1000 2>&1 | tail -3 | tee $OUT/bench_cpu.json

echo "== sweep (CPU, one thread each) + cuda runs"
bash scripts/sweep_rank50.sh "$OUT" &
SWEEP=$!
timeout 120 $MO train --config configs/tiny.yaml --device cuda --out /tmp/tiny_cuda > /tmp/tiny_cuda.log 2>&1
grep -E "^(rate_constants_R2|rate_constants_R2_shifted|training_seconds|steps_per_s|device):" /tmp/tiny_cuda/analysis.log | tr '\n' ' '; echo
L="--set graph_model.c_scale=31.622776601683793 --set graph_model.sub_through_origin=true --set training.coeff_k_floor=1 --set training.coeff_MLP_sub_norm=1 --set training.coeff_k_center=0 --set training.learning_rate_sub=5e-3"
timeout 300 $MO train --config configs/rank50.yaml --device cuda --out /tmp/L_cuda_full $L > /tmp/L_cuda_full.log 2>&1
echo "leads recipe, 144k steps, cuda:"; grep -E "^(rate_constants_R2|rate_constants_R2_shifted|test_pearson|n_outliers|training_seconds|steps_per_s):" /tmp/L_cuda_full/analysis.log | tr '\n' ' '; echo
tail -c 300 /tmp/L_cuda_full.log; echo
wait $SWEEP
cat "$OUT/sweep.tsv"
