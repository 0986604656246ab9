#!/usr/bin/env bash
# Stage 2 teacher: CLIP fine-tuned on one dataset for 20 epochs, image tower only (text tower locked).
#   recipes/paper/stage2_teacher.sh cifar10
# Writes $RUNS/teacher-DATASET/checkpoints/epoch_$TEACHER_EPOCHS.safetensors (what stage2.sh distils from).
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

DATASET="${1:?usage: stage2_teacher.sh DATASET (cifar10, cifar100, flowers102, oxford_pets, stl10, caltech101 or a folder)}"
shift
TAG="${TAG:-$(basename "$DATASET")}"
PREP="$DATA_DIR/$TAG"
: "${TEACHER_EPOCHS:=20}"
: "${TEACHER_LR:=1e-5}"    # not given by the paper: a usual CLIP fine-tuning rate
: "${TEACHER_WD:=0.1}"
: "${TEACHER_BATCH:=196}"
: "${TEACHER_WARMUP:=500}"

source "$HERE/prepare.sh"

NAME="teacher-$TAG"
RESUME=()
if [ -f "$RUNS/$NAME/out.log" ]; then RESUME=(--resume latest); fi
stage "teacher: $TEACHER_MODEL/$TEACHER_PRETRAINED fine-tuned on $TAG ($TEACHER_EPOCHS epochs, text locked)"
launch open_clip_spike.cli.paper finetune-teacher --model "$TEACHER_MODEL" --pretrained "$TEACHER_PRETRAINED" \
  --train-data "$PREP/train.csv" --dataset-type csv --csv-img-key filepath --csv-caption-key title \
  --name "$NAME" ${RESUME[@]+"${RESUME[@]}"} --epochs "$TEACHER_EPOCHS" --lr "$TEACHER_LR" --wd "$TEACHER_WD" \
  --batch-size "$TEACHER_BATCH" --warmup "$TEACHER_WARMUP" --precision "$PRECISION" --device "$DEVICE" \
  --workers "$WORKERS" --seed "$SEED" --save-frequency "$TEACHER_EPOCHS" --report-to "${REPORT_TO:-tensorboard}" "$@"
stage "teacher done: $RUNS/$NAME/checkpoints/epoch_$TEACHER_EPOCHS.safetensors"
