#!/bin/bash
# One device call on a lent GPU machine: the CUDA tests, the bench (CUDA graph and eager), and
# two trainings on the GPU. Run from the repository root there; results land in $OUT.
# Needs the wheels in .whl (optuna and its needs are absent from that image; see README).
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
MO="python3 -m metab_opt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torch_geometric, optuna; print('torch', torch.__version__, 'pyg', torch_geometric.__version__, 'optuna', optuna.__version__, 'cuda', torch.cuda.is_available())"
echo "== tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | grep -v Warning | tail -12
echo "== bench rank50: cuda graph, cuda eager"
timeout 60 $MO bench --config configs/rank50.yaml --device cuda --steps 2000 2>&1 | tail -2 | tee $OUT/bench_cuda_graph.json
timeout 60 $MO bench --config configs/rank50.yaml --device cuda --steps 1000 --no-cuda-graph 2>&1 | tail -2 | tee $OUT/bench_cuda_eager.json
echo "== trainings on cuda"
for c in tiny rank50_best; do
  timeout 90 $MO train --config configs/$c.yaml --device cuda --out /tmp/t_$c > /tmp/t_$c.log 2>&1
  echo "$c: $(grep -E '^(rate_constants_R2|rate_constants_R2_shifted|test_pearson|training_seconds|steps_per_s|device):' /tmp/t_$c/analysis.log | tr '\n' ' ')"
  tail -c 200 /tmp/t_$c.log | tr '\r' '\n' | tail -2
done
