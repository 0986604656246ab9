#!/usr/bin/env bash
# The full CPU suite: 3 models x T in (1, 2, 4, 8) x (fused, spikingjelly) LIF, next to the identity-neuron ANN,
# batch 32, 2 threads. Run it on an IDLE machine (the report flags a run under load); it takes a while on 2 cores.
# Writes bench-results/cpu/bench.md and bench.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
uptime || true
"$PY" -m open_clip_spike.bench --out bench-results/cpu --threads 2 --batch-size 32 "$@"
# Teacher-feature cache: stage-1 epoch time with the cache / without, demo and paper teacher -> bench-results/cache/
"$PY" -m open_clip_spike.bench_cache --out bench-results/cache --threads 2
