#!/usr/bin/env bash
# The same suite on a CUDA GPU, with spikingjelly's own CUDA/Triton neuron kernels (impl 'spikingjelly', which is
# what impl='auto' picks on CUDA). Peak memory is torch.cuda.max_memory_allocated. Writes bench-results/gpu/.
# Pass --impls spikingjelly fused to also time the fused kernel compiled for the GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv || true
"$PY" -m open_clip_spike.cli.bench --device cuda --out bench-results/gpu --batch-size 32 --threads 16 "$@"
"$PY" -m open_clip_spike.cli.bench_cache --device cuda --precision amp --out bench-results/gpu-cache --threads 16
