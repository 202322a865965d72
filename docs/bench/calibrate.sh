#!/bin/bash
# Calibration of the built-in data (docs/calibration.md): for one difficulty of `shapes`, how far each learner
# gets — logistic regression on pixels, a supervised small CNN, the random-init ViT probe and fine-tune, the MAE
# probe and fine-tune, and the from-scratch ViT given MAE's whole budget (pretraining + fine-tuning epochs).
# usage: docs/bench/calibrate.sh OUTDIR DIFFICULTY      (DIFFICULTY: a named difficulty of `mae prepare-data
#   --difficulty`: clean, easy or hard; sizes by environment: IMG_SIZE N_TRAIN N_VAL PT_EPOCHS FT_EPOCHS CNN_EPOCHS
#   PROBE_EPOCHS; the results go to OUTDIR/DIFFICULTY, or OUTDIR/DIFFICULTY-IMG_SIZE when IMG_SIZE is not 32)
# Writes OUTDIR/DIFFICULTY/*/metrics.json, baselines.json and calibration.json (one record per learner); then
#   python docs/bench/calibration_table.py OUTDIR...    prints the table and draws docs/img/calibration.png.
set -euo pipefail
DIFF=$2; IMG=${IMG_SIZE:-32}
R=$1/$DIFF; [ "$IMG" = 32 ] || R=$R-$IMG
N_TRAIN=${N_TRAIN:-10000} N_VAL=${N_VAL:-2000} PT=${PT_EPOCHS:-20} FT=${FT_EPOCHS:-5} CNN=${CNN_EPOCHS:-10}
PROBE=${PROBE_EPOCHS:-20}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
case $DIFF in
  clean|easy|hard) ;;
  *) echo "error: DIFFICULTY must be clean, easy or hard, got '$DIFF'" >&2; exit 2 ;;
esac
mkdir -p "$R"
D=$R/data; CK=$R/pretrain/checkpoint.pt
M="--device cpu --set model=mae_vit_micro_patch4"
[ -f "$D/meta.json" ] || mae prepare-data --out "$D" --kind shapes --img-size "$IMG" --n-train "$N_TRAIN" --n-val "$N_VAL" --seed 0 --difficulty "$DIFF"
[ -f "$R/baselines.json" ] || python -m mae.data.baselines --data "$D" --cnn-epochs "$CNN" --out "$R/baselines.json" > /dev/null
mae pretrain --data "$D" --out "$R/pretrain" $M --set epochs="$PT" --set batch_size=128 --set base_lr=1.5e-3 \
  --set warmup_epochs=1 --set weight_decay=0.05 --set target=norm_pixel > "$R/pretrain.log" 2>&1
PROBE_SET="--set epochs=$PROBE --set batch_size=256 --set base_lr=0.1 --set warmup_epochs=1 --set cached_features=true --set optimizer=sgd --set global_pool=avg"
LIGHT="--set batch_size=128 --set base_lr=1e-3 --set warmup_epochs=0.5 --set drop_path=0.1 --set mixup=0 --set cutmix=0 --set auto_augment=null --set reprob=0 --set crop_scale=[0.35,1.0]"
mae linprobe --data "$D" --out "$R/mae_probe" --init "$CK" $M $PROBE_SET > "$R/mae_probe.log" 2>&1
mae linprobe --data "$D" --out "$R/random_probe" --scratch $M $PROBE_SET > "$R/random_probe.log" 2>&1
mae finetune --data "$D" --out "$R/mae_finetune" --init "$CK" $M $LIGHT --set epochs="$FT" --set layer_decay=0.75 > "$R/mae_finetune.log" 2>&1
mae finetune --data "$D" --out "$R/scratch_finetune" --scratch $M $LIGHT --set epochs="$FT" --set layer_decay=1.0 > "$R/scratch_finetune.log" 2>&1
mae finetune --data "$D" --out "$R/scratch_matched" --scratch $M $LIGHT --set epochs=$((PT + FT)) --set layer_decay=1.0 \
  --set weight_decay=0.3 --set betas=[0.9,0.95] > "$R/scratch_matched.log" 2>&1
python - "$R" "$DIFF" "$N_TRAIN" "$PT" "$FT" "$CNN" "$IMG" <<'EOF'
import json, sys
from pathlib import Path
r, diff, n, pt, ft, cnn, img = Path(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:])
base = json.loads((r / "baselines.json").read_text())
rows = [dict(learner="logistic regression on pixels", top1=base["linear_pixels_top1"], images=n, wall_s=base["linear_wall_s"]),
        dict(learner=f"small CNN ({cnn} epochs)", top1=base["cnn_top1"], images=n * cnn, wall_s=base["cnn_wall_s"])]
pre = json.loads((r / "pretrain" / "metrics.json").read_text())
for name, learner, images in (("random_probe", "random-init ViT, linear probe", 0),
                              ("mae_probe", f"MAE ({pt} ep) linear probe", n * pt),
                              ("scratch_finetune", f"ViT from scratch ({ft} ep)", n * ft),
                              ("scratch_matched", f"ViT from scratch ({pt + ft} ep, compute-matched)", n * (pt + ft)),
                              ("mae_finetune", f"MAE ({pt} ep) + fine-tune ({ft} ep)", n * (pt + ft))):
    m = json.loads((r / name / "metrics.json").read_text())
    extra = pre["wall_s"] if name.startswith("mae") else 0.0
    rows.append(dict(learner=learner, top1=m["top1"], images=images, wall_s=m["wall_s"] + extra))
out = dict(difficulty=diff, img_size=img, n_train=n, chance=base["chance"], pretrain_epochs=pt, finetune_epochs=ft,
           pretrain_loss=pre.get("train_loss"), rows=rows)
(r / "calibration.json").write_text(json.dumps(out, indent=1))
print(json.dumps(out, indent=1))
EOF
