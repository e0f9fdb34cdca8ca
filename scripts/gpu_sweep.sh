#!/bin/bash
# A second device call: only the CPU sweep (scripts/sweep_rank50.sh) on the box's 16 cores.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 -c "
from metab_opt.config import load_config
from metab_opt.problem.simulation import load_or_build
load_or_build(load_config('configs/rank50.yaml').simulation, 'studies/data')"
bash scripts/sweep_rank50.sh "$OUT" "${1:-278}" "${2:-seedpath}"
cat "$OUT/sweep.tsv"
