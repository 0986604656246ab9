#!/usr/bin/env bash
# Stage 2, dual-loss fine-tuning on one dataset (DualLoss: CE + KL to the fine-tuned teacher, text tower frozen),
# model selection on the validation split carved from TRAIN, then one evaluation on the test split.
#   STAGE1=runs/paper/stage1-imagenet/checkpoints/epoch_50.safetensors recipes/paper/stage2.sh cifar10
# Needs stage2_teacher.sh DATASET first (or TEACHER_CKPT=<file>, or TEACHER_CKPT=pretrained to distil from
# $TEACHER_MODEL/$TEACHER_PRETRAINED as is). Result: $RESULTS/stage2-DATASET.json and $RESULTS/stage2.md.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

DATASET="${1:?usage: stage2.sh DATASET (cifar10, cifar100, flowers102, oxford_pets, stl10, caltech101 or a folder)}"
shift
TAG="${TAG:-$(basename "$DATASET")}"
PREP="$DATA_DIR/$TAG"
: "${STAGE1:?set STAGE1 to the stage 1 checkpoint (.safetensors)}"
: "${EPOCHS:=200}"
: "${LR:=5e-4}"
: "${WD:=0}"
: "${BATCH:=196}"
: "${WARMUP:=0}"
: "${BETA1:=0.9}"
: "${BETA2:=0.999}"
: "${EPS:=1e-8}"
: "${KL_WEIGHT:=1}"
: "${KL_TEMPERATURE:=1}"
: "${SAVE_FREQ:=10}"      # checkpoints (and validation) every SAVE_FREQ epochs: the candidates of model selection
: "${TEACHER_EPOCHS:=20}"
: "${TEACHER_CKPT:=$RUNS/teacher-$TAG/checkpoints/epoch_$TEACHER_EPOCHS.safetensors}"

if [ "$TEACHER_CKPT" = pretrained ]; then
  TEACHER_CKPT="$TEACHER_PRETRAINED"
elif [ "$DRY_RUN" != 1 ] && [ ! -f "$TEACHER_CKPT" ]; then
  echo "stage2.sh: teacher checkpoint $TEACHER_CKPT not found: run recipes/paper/stage2_teacher.sh $DATASET first" \
       "(or set TEACHER_CKPT=pretrained to use $TEACHER_MODEL/$TEACHER_PRETRAINED without fine-tuning)" >&2
  exit 2
fi

source "$HERE/prepare.sh"

NAME="stage2-$TAG"
RESUME=()
if [ -f "$RUNS/$NAME/out.log" ]; then RESUME=(--resume latest); fi
stage "stage 2 on $TAG: $EPOCHS epochs, validation every $SAVE_FREQ"
launch open_clip_spike.train --spike-loss dual --kl-weight "$KL_WEIGHT" --kl-temperature "$KL_TEMPERATURE" \
  --model "$STUDENT" --pretrained "$STAGE1" --distill-model "$TEACHER_MODEL" --distill-pretrained "$TEACHER_CKPT" \
  --spike-classnames "$PREP/classnames.txt" --spike-templates "$PREP/templates.txt" \
  --train-data "$PREP/train.csv" --dataset-type csv --csv-img-key filepath --csv-caption-key title \
  --imagenet-val "$PREP/val" --zeroshot-frequency "$SAVE_FREQ" --save-frequency "$SAVE_FREQ" \
  --name "$NAME" ${RESUME[@]+"${RESUME[@]}"} --epochs "$EPOCHS" --lr "$LR" --wd "$WD" --batch-size "$BATCH" \
  --warmup "$WARMUP" --lr-scheduler cosine --beta1 "$BETA1" --beta2 "$BETA2" --eps "$EPS" \
  --precision "$PRECISION" --device "$DEVICE" --workers "$WORKERS" --seed "$SEED" \
  --report-to "${REPORT_TO:-tensorboard}" ${BN_SYNC_FLAG[@]+"${BN_SYNC_FLAG[@]}"} "$@"

stage "model selection on $PREP/val"
run "$PYTHON" -m open_clip_spike.cli.paper select --run-dir "$RUNS/$NAME"
stage "test split of $DATASET, once, with the selected epoch"
EVAL_DEVICE="$DEVICE"; if [ "$DEVICE" = cuda ]; then EVAL_DEVICE=cuda:0; fi
run "$PYTHON" -m open_clip_spike.cli.zeroshot --model "$STUDENT" --pretrained "$RUNS/$NAME/checkpoints/best.safetensors" \
  --dataset "$DATASET" --data-root "$DATA_ROOT" --classnames "$PREP/classnames.txt" --templates "$PREP/templates.txt" \
  --device "$EVAL_DEVICE" --batch-size "${EVAL_BATCH:-256}" --no-progress --output "$RESULTS/stage2-$TAG.json"
run "$PYTHON" -m open_clip_spike.cli.paper table --output "$RESULTS/stage2.md" "$RESULTS"/stage2-*.json
