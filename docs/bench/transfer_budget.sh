#!/bin/bash
# Do detection and segmentation converge, and in how many epochs? (docs/calibration.md, "Transfer budgets")
# usage: docs/bench/transfer_budget.sh OUTDIR CHECKPOINT DATA
#   CHECKPOINT: an MAE pretraining checkpoint (e.g. a default-study base run's pretrain/checkpoint.pt); DATA: the
#   prepared data the study transfers on (the default study's `shapes`). Sizes by environment: SEG_EPOCHS (20),
#   DET_EPOCHS (10), EVAL_EVERY (2), and the study's image counts TRAIN_SEG/EVAL_SEG (1000/300), TRAIN_DET/EVAL_DET
#   (600/200), MODEL (mae_vit_micro_patch4), RUNS ("base scratch"; RUNS=base and RUNS=scratch run side by side),
#   TRANSFERS ("seg det"; TRANSFERS=seg runs segmentation alone).
#   Writes OUTDIR/runs/{base,scratch}/transfer_{seg,det}/ (the val metric every EVAL_EVERY epochs); then
#   python docs/bench/learning_curves.py OUTDIR      prints the curves (first, last, best, last-quarter gain).
set -euo pipefail
OUT=$1 CK=$2 D=$3
SEG=${SEG_EPOCHS:-20} DET=${DET_EPOCHS:-10} EVERY=${EVAL_EVERY:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f "$CK" ] || { echo "error: CHECKPOINT not found: $CK" >&2; exit 2; }
[ -f "$D/meta.json" ] || { echo "error: DATA is not a prepared dataset (no meta.json): $D" >&2; exit 2; }
MODEL=${MODEL:-mae_vit_micro_patch4}  # the random init's architecture: the checkpoint's
for run in ${RUNS:-base scratch}; do
  if [ "$run" = base ]; then INIT=(--init "$CK"); else INIT=(--scratch --set "model=$MODEL"); fi
  R=$OUT/runs/$run; mkdir -p "$R"
  for t in ${TRANSFERS:-seg det}; do
    case $t in
      seg) SIZES=(--set epochs="$SEG" --set train_images="${TRAIN_SEG:-1000}" --set eval_images="${EVAL_SEG:-300}") ;;
      det) SIZES=(--set epochs="$DET" --set train_images="${TRAIN_DET:-600}" --set eval_images="${EVAL_DET:-200}") ;;
      *) echo "error: TRANSFERS: unknown transfer '$t' (valid: seg det)" >&2; exit 2 ;;
    esac
    mae "transfer-$t" --data "$D" --out "$R/transfer_$t" "${INIT[@]}" --device cpu "${SIZES[@]}" \
      --set eval_every="$EVERY" > "$R/transfer_$t.log" 2>&1
  done
done
