#!/usr/bin/env bash
# The full CPU suite on an IDLE machine (the report flags a run under load): spikingformer_clip, the SpikeCLIP
# text tower and SpikeCLIP-Spikingformer-4-384 at T = 1 2 4 8 with the fused LIF, next to the identity-neuron ANN
# at batch B and at batch T x B, batch 32, 2 threads, median of 5 interleaved calls; FLOPs and GFLOP/s against the
# sgemm peak measured in the run, a profile of one step per model, the fused neuron's cold/warm compile cost.
# Then the outsider's check (recipes/bench/outside_check.py: separate models, its own clock) at T=4 with SGD and
# AdamW, whose overheads the bench's should match within their spread. About an hour on the 2-core machine.
# Add `--impls fused spikingjelly` for the spikingjelly comparison (about 20 minutes more).
# Writes bench-results/cpu/{bench.md,bench.json,outside_check_sgd.json,outside_check_adamw.json}.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench-results/cpu}
mkdir -p "$OUT"
cat /proc/loadavg || true
"$PY" -m open_clip_spike.cli.bench --out "$OUT" --threads 2 --batch-size 32 \
    --models spikingformer_clip text SpikeCLIP-Spikingformer-4-384 --T 1 2 4 8 --impls fused --repeats 5 "$@"
for opt in sgd adamw; do
    "$PY" recipes/bench/outside_check.py --model spikingformer_clip --T 4 --batch-size 32 --threads 2 \
        --optimizer "$opt" --rounds 5 --json "$OUT/outside_check_$opt.json"
done
# The bench's own protocol on the outsider's three variants, with SGD, for the same comparison
"$PY" -m open_clip_spike.cli.bench --out "$OUT/outside-protocol-sgd" --threads 2 --batch-size 32 \
    --models spikingformer_clip --T 4 --impls fused --optimizer sgd --repeats 5 \
    --no-memory --no-profile --no-compile-cost
# Teacher-feature cache: stage-1 epoch time with the cache / without, demo and paper teacher -> bench-results/cache/
"$PY" -m open_clip_spike.cli.bench_cache --out bench-results/cache --threads 2
cat /proc/loadavg || true
