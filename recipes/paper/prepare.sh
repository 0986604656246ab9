# Sourced with DATASET, PREP set: stage 2 data (train.csv, val/ from TRAIN, class names, templates), once.
if [ ! -f "$PREP/split.json" ]; then
  stage "prepare $DATASET -> $PREP (validation = ${VAL_FRACTION:-0.1} of TRAIN, seed $SEED)"
  PREP_ARGS=()
  if [ -n "${CLASSNAMES:-}" ]; then PREP_ARGS+=(--classnames "$CLASSNAMES"); fi
  if [ -n "${TEMPLATES:-}" ]; then PREP_ARGS+=(--templates "$TEMPLATES"); fi
  if [ "${DOWNLOAD:-0}" = 1 ]; then PREP_ARGS+=(--download); fi
  run "$PYTHON" -m open_clip_spike.cli.paper prepare --dataset "$DATASET" --output "$PREP" --data-root "$DATA_ROOT" \
    --val-fraction "${VAL_FRACTION:-0.1}" --seed "$SEED" ${PREP_ARGS[@]+"${PREP_ARGS[@]}"}
fi
