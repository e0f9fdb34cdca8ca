#!/bin/bash
# Issue 8's ablation on rank50: each line is one training (1 CPU thread), all in parallel.
# Usage: scripts/sweep_rank50.sh OUTDIR [STEPS_DAL] [ablation|seedpath]; writes OUTDIR/sweep.tsv.
#   ablation: the leads recipe, one part removed at a time; seedpath: the seed's values with
#   the structural options added one or a few at a time.
OUTD=${1:-/tmp/sweep}; DAL=${2:-278}; SET=${3:-ablation}   # DAL 278 -> 20,016 steps at batch 8
mkdir -p "$OUTD/runs"
MO="${MO:-python3 -m metab_opt}"
# The leads recipe (notes/recovery-leads.md) as overrides of rank50.yaml.
L="graph_model.c_scale=31.622776601683793 graph_model.sub_through_origin=true training.coeff_k_floor=1 training.coeff_MLP_sub_norm=1 training.coeff_k_center=0 training.learning_rate_sub=5e-3"
O="graph_model.sub_through_origin=true"
C3="graph_model.c_scale=3.1622776601683795"; C10="graph_model.c_scale=10"; C31="graph_model.c_scale=31.622776601683793"
N01="training.coeff_MLP_sub_norm=0.1"; N1="training.coeff_MLP_sub_norm=1"
declare -A RUNS
if [ "$SET" = seedpath ]; then RUNS=(
  [S_c3]="$C3" [S_c10]="$C10" [S_c31]="$C31" [S_n01]="$N01" [S_n1]="$N1"
  [S_o_n1_c31]="$O $N1 $C31" [S_n1_c31]="$N1 $C31" [S_o_n01]="$O $N01"
  [S_o_c3]="$O $C3" [S_o_c10]="$O $C10" [S_o_n1_c10]="$O $N1 $C10"
  [S_o_n01_c31]="$O $N01 $C31" [S_o_n1_c31_lrsub2e-3]="$O $N1 $C31 training.learning_rate_sub=2e-3"
  [S_floor1]="training.coeff_k_floor=1"
)
else RUNS=(
  [L]="$L"
  [L_no_origin]="$L graph_model.sub_through_origin=false"
  [L_no_norm]="$L training.coeff_MLP_sub_norm=0"
  [L_no_floor]="$L training.coeff_k_floor=0"
  [L_cscale1]="$L graph_model.c_scale=1"
  [L_lrsub5e-4]="$L training.learning_rate_sub=5e-4"
  [L_kcenter5]="$L training.coeff_k_center=5"
  [seed_origin]="$O"
  [seed_origin_norm]="$O training.coeff_MLP_sub_norm=1"
  [seed_origin_cscale]="$O graph_model.c_scale=31.622776601683793"
  [seed_origin_floor]="$O training.coeff_k_floor=1"
  [seed_origin_lrsub]="$O training.learning_rate_sub=4e-3"
  [L_seed1]="$L training.seed=1"
  [L_seed2]="$L training.seed=2"
); fi
for name in "${!RUNS[@]}"; do
  sets=""; for kv in ${RUNS[$name]}; do sets="$sets --set $kv"; done
  ( timeout 400 $MO train --config configs/rank50.yaml --device cpu --out "$OUTD/runs/$name" \
      $sets --set training.data_augmentation_loop=$DAL > "$OUTD/runs/$name.log" 2>&1 ) &
done
wait
printf "run\tR2\tshifted\ttest_pearson\toutliers\tsteps\tseconds\n" > "$OUTD/sweep.tsv"
for name in $(printf "%s\n" "${!RUNS[@]}" | sort); do
  f="$OUTD/runs/$name/metrics.json"
  if [ -f "$f" ]; then
    python3 -c "import json,sys; m=json.load(open('$f')); print('\t'.join(['$name']+[str(round(m[k],4)) if isinstance(m[k],float) else str(m[k]) for k in ('rate_constants_R2','rate_constants_R2_shifted','test_pearson','n_outliers','steps','training_seconds')]))" >> "$OUTD/sweep.tsv"
  else
    echo -e "$name\tFAILED $(tail -c 200 $OUTD/runs/$name.log | tr '\n\t' '  ')" >> "$OUTD/sweep.tsv"
  fi
done
