#!/usr/bin/env bash
# "Replace label" and "expand label" zero-shot evaluations on the test splits of STL-10 and CIFAR-10.
#   MODEL_CKPT=runs/paper/stage2-stl10/checkpoints/best.safetensors recipes/paper/label_eval.sh stl10
#   MODEL_CKPT=... recipes/paper/label_eval.sh cifar10
# REPLACE="horse=zebra ship=boat" and DISTRACTORS=apple,bicycle,... change the label sets.
# Results: $RESULTS/relabel-DATASET-{replace,expand}.json and $RESULTS/relabel.md.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

DATASET="${1:?usage: label_eval.sh DATASET (stl10 or cifar10)}"
shift
TAG="${TAG:-$(basename "$DATASET")}"
: "${MODEL:=$STUDENT}"
: "${MODEL_CKPT:?set MODEL_CKPT to the checkpoint to evaluate (e.g. the stage 2 best.safetensors)}"
: "${REPLACE:=horse=zebra ship=boat}"
EVAL_DEVICE="$DEVICE"; if [ "$DEVICE" = cuda ]; then EVAL_DEVICE=cuda:0; fi
COMMON=(--model "$MODEL" --pretrained "$MODEL_CKPT" --dataset "$DATASET" --data-root "$DATA_ROOT"
        --templates "${TEMPLATES:-simple}" --device "$EVAL_DEVICE" --batch-size "${EVAL_BATCH:-256}")
if [ -n "${CLASSNAMES:-}" ]; then COMMON+=(--classnames "$CLASSNAMES"); fi
REPL=()
for r in $REPLACE; do REPL+=(--replace "$r"); done
DIST=()
if [ -n "${DISTRACTORS:-}" ]; then DIST=(--distractors "$DISTRACTORS"); fi

stage "replace label on $TAG: $REPLACE"
run "$PYTHON" -m open_clip_spike.cli.paper relabel --mode replace "${COMMON[@]}" "${REPL[@]}" \
  --output "$RESULTS/relabel-$TAG-replace.json" "$@"
stage "expand label on $TAG: + 10 CIFAR-100 classes"
run "$PYTHON" -m open_clip_spike.cli.paper relabel --mode expand "${COMMON[@]}" ${DIST[@]+"${DIST[@]}"} \
  --output "$RESULTS/relabel-$TAG-expand.json" "$@"
run "$PYTHON" -m open_clip_spike.cli.paper table --output "$RESULTS/relabel.md" "$RESULTS"/relabel-*.json
