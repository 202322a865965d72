#!/bin/bash
# Re-check an evaluation recipe on one pretraining checkpoint (docs/calibration.md, "Recipe on the shallow model").
# usage: docs/bench/recipe.sh OUTDIR CHECKPOINT DATA VARIANT...
#   VARIANT: STAGE:NAME[:KEY=VALUE[,KEY=VALUE...]], STAGE `finetune`, `linprobe` or `scratch`; each variant runs
#   the stage with the default study's recipe (its section of config/config.yaml) and the given overrides, e.g.
#     finetune:lr6e-3:base_lr=6e-3  finetune:ep8:epochs=8  linprobe:e50:epochs=50  scratch:ep21:epochs=21
#   `scratch` is the study's from-scratch baseline: `mae finetune --scratch` (CHECKPOINT unused: `-` for a list of scratch variants) with the
#   `scratch_finetune` section over the `finetune` one.
#   MODEL (mae_vit_shallow_patch4) names the checkpoint's architecture. Writes OUTDIR/STAGE-NAME/ (metrics.json,
#   log.jsonl: the val metric after every epoch) and prints one line per variant: name, top-1 %, training s.
#   Run two lists side by side on 2 cores (OMP_NUM_THREADS=1 by default); finished variants are skipped.
set -euo pipefail
OUT=$1 CK=$2 D=$3; shift 3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f "$D/meta.json" ] || { echo "error: DATA is not a prepared dataset (no meta.json): $D" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
for variant in "$@"; do  # every variant is checked before the first one runs
  case ${variant%%:*} in finetune|linprobe) [ -f "$CK" ] || { echo "error: CHECKPOINT not found: $CK" >&2; exit 2; };; esac
done
mkdir -p "$OUT"
for variant in "$@"; do
  IFS=: read -r stage name sets <<< "$variant"
  case $stage in finetune|linprobe) init=(--init "$CK") cmd=$stage;; scratch) init=(--scratch) cmd=finetune;;
    *) echo "error: bad VARIANT '$variant' (STAGE: finetune, linprobe or scratch)" >&2; exit 2;; esac
  [ -n "$name" ] || { echo "error: bad VARIANT '$variant' (no NAME)" >&2; exit 2; }
  run=$OUT/$stage-$name
  if [ ! -f "$run/metrics.json" ]; then
    python -c "import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); s = sys.argv[2]
yaml.safe_dump({**c['finetune'], **c['scratch_finetune']} if s == 'scratch' else c[s], sys.stdout)" \
      "$ROOT/config/config.yaml" "$stage" > "$OUT/$stage-$name.yaml"
    args=()
    IFS=, read -ra kvs <<< "${sets:-}"
    for kv in "${kvs[@]}"; do args+=(--set "$kv"); done
    mae "$cmd" --data "$D" --out "$run" "${init[@]}" --device cpu --config "$OUT/$stage-$name.yaml" \
      --set "model=${MODEL:-mae_vit_shallow_patch4}" "${args[@]}" > "$run.log" 2>&1
  fi
  python -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], m['top1'], round(m['wall_s']))" \
    "$run/metrics.json" "$stage-$name"
done
