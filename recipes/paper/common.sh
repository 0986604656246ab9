# Sourced by the paper recipes: defaults (every one overridable by an environment variable) and the launcher.
# Single process:  NPROC=1 (default when no GPU); one node, N GPUs: NPROC=N; several nodes: NNODES, NODE_RANK,
# MASTER_ADDR, MASTER_PORT (slurm.sbatch sets them). DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

: "${PYTHON:=python}"
: "${DRY_RUN:=0}"
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')
fi
: "${NNODES:=1}"
: "${NODE_RANK:=0}"
: "${MASTER_ADDR:=127.0.0.1}"
: "${MASTER_PORT:=29500}"
: "${DEVICE:=cuda}"               # open_clip_train's --device (cpu for the tests)
: "${PRECISION:=amp}"             # the paper trains with AMP
: "${WORKERS:=8}"
: "${SEED:=0}"
: "${RUNS:=runs/paper}"           # open_clip_train's --logs: one folder per run
: "${DATA_DIR:=data/paper}"       # prepared stage 2 data, stage 1 CSV
: "${DATA_ROOT:=$HOME/.cache/spikeclip/data}"   # torchvision datasets (CIFAR, STL-10, ...)
: "${RESULTS:=recipes/paper/results}"           # result JSON files and tables
: "${STUDENT:=SpikeCLIP-Spikingformer-4-384}"
: "${TEACHER_MODEL:=ViT-B-16}"
: "${TEACHER_PRETRAINED:=openai}"
WORLD=$((NPROC * NNODES))
# SyncBN under DDP, as the paper; CPU (gloo) runs cannot use it.
if [ -z "${SYNC_BN:-}" ]; then
  if [ "$WORLD" -gt 1 ] && [ "$DEVICE" != cpu ]; then SYNC_BN=1; else SYNC_BN=0; fi
fi
BN_SYNC_FLAG=()
if [ "$SYNC_BN" = 1 ]; then BN_SYNC_FLAG=(--use-bn-sync); fi
export SPIKECLIP_LOGS="$RUNS"   # torchrun's parser takes --logs for its own --logs-specs

run() {  # run a plain command (or print it)
  if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}

launch() {  # launch MODULE ARGS...: one process, torchrun on one node, or torchrun across NNODES nodes
  local cmd
  if [ "$NNODES" = 1 ] && [ "$NPROC" = 1 ]; then
    cmd=("$PYTHON" -m "$@")
  elif [ "$NNODES" = 1 ]; then
    cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m "$@")
  else
    cmd=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC"
         --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "${RDZV_ID:-spikeclip}" -m "$@")
  fi
  run "${cmd[@]}"
}

stage() { echo "== $* ($(date -u +%H:%M:%S))"; }
