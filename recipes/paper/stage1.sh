#!/usr/bin/env bash
# Stage 1, alignment pre-training (AlignmentLoss: 1 - cos to the teacher, image and text features).
#   DATA=imagenet IMAGENET_TRAIN=/data/imagenet/train [IMAGENET_VAL=/data/imagenet/val] recipes/paper/stage1.sh
#   DATA=csv TRAIN_DATA=/data/cc3m.csv recipes/paper/stage1.sh
#   DATA=webdataset TRAIN_DATA='/data/cc3m/{00000..00331}.tar' TRAIN_NUM_SAMPLES=2800000 recipes/paper/stage1.sh
# Extra arguments go to `spikeclip train` (open_clip_train's options). Paper defaults below; override by env.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

: "${DATA:=imagenet}"
: "${NAME:=stage1-$DATA}"
: "${EPOCHS:=50}"
: "${LR:=5e-3}"
: "${WD:=0}"
: "${BATCH:=196}"        # per GPU
: "${WARMUP:=0}"
: "${BETA1:=0.9}"        # Adam's defaults (open_clip_train's are 0.9/0.98/1e-6 for CLIP)
: "${BETA2:=0.999}"
: "${EPS:=1e-8}"
: "${SAVE_FREQ:=1}"
: "${TEXT_WEIGHT:=1}"
: "${IMAGE_WEIGHT:=1}"

case "$DATA" in
  imagenet)
    : "${IMAGENET_TRAIN:?set IMAGENET_TRAIN to the ImageNet train folder (one folder per synset)}"
    : "${CLASSNAMES:=imagenet}"
    : "${TEMPLATES:=imagenet}"
    CSV="$DATA_DIR/stage1_imagenet.csv"
    if [ ! -f "$CSV" ]; then
      stage "captions: $IMAGENET_TRAIN x $TEMPLATES templates -> $CSV"
      run "$PYTHON" -m open_clip_spike.cli.paper imagenet-csv --train-dir "$IMAGENET_TRAIN" --output "$CSV" \
        --classnames "$CLASSNAMES" --templates "$TEMPLATES" --seed "$SEED"
    fi
    DATA_ARGS=(--train-data "$CSV" --dataset-type csv --csv-img-key filepath --csv-caption-key title)
    ZS_ARGS=()
    if [ -n "${IMAGENET_VAL:-}" ]; then
      ZS_ARGS=(--imagenet-val "$IMAGENET_VAL" --zeroshot-frequency "${ZS_FREQ:-5}"
               --spike-classnames "$CLASSNAMES" --spike-templates "$TEMPLATES")
    fi
    ;;
  csv)
    : "${TRAIN_DATA:?set TRAIN_DATA to a tab-separated CSV with filepath and title columns}"
    DATA_ARGS=(--train-data "$TRAIN_DATA" --dataset-type csv --csv-img-key "${CSV_IMG_KEY:-filepath}"
               --csv-caption-key "${CSV_CAPTION_KEY:-title}")
    ZS_ARGS=()
    ;;
  webdataset)
    : "${TRAIN_DATA:?set TRAIN_DATA to webdataset shards, e.g. /data/shards/{00000..00999}.tar}"
    : "${TRAIN_NUM_SAMPLES:?set TRAIN_NUM_SAMPLES (images per epoch) for webdataset shards}"
    DATA_ARGS=(--train-data "$TRAIN_DATA" --dataset-type webdataset --train-num-samples "$TRAIN_NUM_SAMPLES")
    ZS_ARGS=()
    ;;
  *) echo "stage1.sh: DATA must be imagenet, csv or webdataset, got '$DATA'" >&2; exit 2 ;;
esac

RESUME=()
if [ -f "$RUNS/$NAME/out.log" ]; then RESUME=(--resume latest); fi   # an interrupted run continues

stage "stage 1: $STUDENT <- $TEACHER_MODEL/$TEACHER_PRETRAINED, $EPOCHS epochs, world size $WORLD"
launch open_clip_spike.train --spike-loss align --spike-image-weight "$IMAGE_WEIGHT" --spike-text-weight "$TEXT_WEIGHT" \
  --model "$STUDENT" --distill-model "$TEACHER_MODEL" --distill-pretrained "$TEACHER_PRETRAINED" \
  "${DATA_ARGS[@]}" ${ZS_ARGS[@]+"${ZS_ARGS[@]}"} --name "$NAME" ${RESUME[@]+"${RESUME[@]}"} \
  --epochs "$EPOCHS" --lr "$LR" --wd "$WD" --batch-size "$BATCH" --warmup "$WARMUP" --lr-scheduler cosine \
  --beta1 "$BETA1" --beta2 "$BETA2" --eps "$EPS" --precision "$PRECISION" --device "$DEVICE" \
  --workers "$WORKERS" --seed "$SEED" --save-frequency "$SAVE_FREQ" --report-to "${REPORT_TO:-tensorboard}" \
  ${BN_SYNC_FLAG[@]+"${BN_SYNC_FLAG[@]}"} "$@"
stage "stage 1 done: $RUNS/$NAME/checkpoints/epoch_$EPOCHS.safetensors"
