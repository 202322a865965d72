#!/bin/bash
# Every stage of the default study's base run, one after the other, with job wall times as Snakemake benchmark files.
# usage: docs/bench/stages.sh OUTDIR [--set KEY=VALUE ...]   (from a folder with data/shapes and data/digits:
#   mae prepare-data --out data/shapes --kind shapes --img-size 32 --n-train 5000 --n-val 5000 --seed 0
#   mae prepare-data --out data/digits --kind digits --img-size 32 --seed 0)
set -e
R=$1; shift
export OMP_NUM_THREADS=1
mkdir -p $R/benchmarks
job() {  # job STAGE NAME cmd...
  local stage=$1 name=$2; shift 2
  mkdir -p $R/benchmarks/$stage
  local t0=$(date +%s.%N)
  "$@" > $R/log_${stage}_${name}.txt 2>&1 || { echo "FAILED $stage $name"; tail -5 $R/log_${stage}_${name}.txt; }
  local t1=$(date +%s.%N)
  printf "s\n%s\n" $(echo "$t1 - $t0" | bc) > $R/benchmarks/$stage/$name.tsv
}
D=data/shapes; RUNS=$R/runs; CK=$RUNS/base/pretrain/checkpoint.pt
job pretrain base mae pretrain --data $D --out $RUNS/base/pretrain --device cpu --set batch_size=128 --set base_lr=1.5e-3 --set warmup_epochs=1 --set weight_decay=0.05 --set model=mae_vit_micro_patch4 --set decoder_depth=2 --set decoder_width=128 --set target=norm_pixel --set epochs=${PT_EPOCHS:-2} "$@"
FT="--set epochs=1 --set batch_size=128 --set base_lr=1.0e-3 --set warmup_epochs=0.25 --set layer_decay=0.75 --set drop_path=0.1"
LIGHT="--set mixup=0.0 --set cutmix=0.0 --set auto_augment=null --set reprob=0.0 --set crop_scale=[0.35,1.0]"
job finetune base mae finetune --data $D --out $RUNS/base/finetune --init $CK --device cpu $FT $LIGHT "$@"
job finetune full mae finetune --data $D --out $RUNS/full/finetune --init $CK --device cpu $FT "$@"
job linprobe base mae linprobe --data $D --out $RUNS/base/linprobe --init $CK --device cpu --set epochs=10 --set batch_size=256 --set base_lr=0.1 --set warmup_epochs=1 --set cached_features=true --set optimizer=sgd --set global_pool=avg "$@"
job linprobe e2e mae linprobe --data $D --out $RUNS/e2e/linprobe --init $CK --device cpu --set epochs=1 --set batch_size=256 --set base_lr=0.1 --set warmup_epochs=0 --set optimizer=sgd --set global_pool=avg "$@"
job partial_ft base-1 mae partial-ft --data $D --out $RUNS/base/partial_ft-1 --init $CK --device cpu --blocks 1 $FT $LIGHT "$@"
job knn base mae knn --data $D --out $RUNS/base/knn --init $CK --device cpu --set k=20 --set temperature=0.07 --set global_pool=avg "$@"
job transfer_det base mae transfer-det --data $D --out $RUNS/base/transfer_det --init $CK --device cpu --set epochs=1 --set batch_size=16 --set train_images=600 --set eval_images=200 "$@"
job transfer_seg base mae transfer-seg --data $D --out $RUNS/base/transfer_seg --init $CK --device cpu --set epochs=2 --set batch_size=64 --set train_images=1000 --set eval_images=300 "$@"
job transfer_cls base-digits mae transfer-cls --data data/digits --out $RUNS/base/transfer_cls-digits --init $CK --device cpu --set epochs=2 --set batch_size=128 --set warmup_epochs=0.25 --set layer_decay=0.75 "$@"
mae bench stages $R --benchmarks $R/benchmarks
