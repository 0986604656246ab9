#!/usr/bin/env bash
# The full CPU suite on an IDLE machine (the report flags a run under load): spikingformer_clip, the SpikeCLIP
# text tower and SpikeCLIP-Spikingformer-4-384 at T = 1 2 4 8 with the fused LIF, next to the identity-neuron ANN
# at batch B and at batch T x B, batch 32, 2 threads, median of 5 interleaved calls; FLOPs and GFLOP/s against the
# sgemm peak measured in the run, a profile of one step per model, the fused neuron's cold/warm compile cost.
# Then the fair overhead of spikingformer_clip at T=4 with 15 rounds (a shared machine's steps vary by 10-30%, so a
# 5% question needs the rounds): the outsider's check (recipes/bench/outside_check.py: separate models, its own
# clock) with AdamW and SGD, and the bench's own protocol on the same three variants; their round-by-round medians
# should agree within the intervals they print. About 1.5 hours on the 2-core machine.
# Add `--impls fused spikingjelly` for the spikingjelly comparison (about 20 minutes more).
# Writes bench-results/cpu/{bench.md,bench.json,outside_check_sgd.json,outside_check_adamw.json,fair-T4/}.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench-results/cpu}
mkdir -p "$OUT"
cat /proc/loadavg || true
"$PY" -m open_clip_spike.cli.bench --out "$OUT" --threads 2 --batch-size 32 \
    --models spikingformer_clip text SpikeCLIP-Spikingformer-4-384 --T 1 2 4 8 --impls fused --repeats 5 "$@"
# The bench's own protocol on the outsider's three variants (ANN(B), ANN(T x B), SNN), 15 rounds
"$PY" -m open_clip_spike.cli.bench --out "$OUT/fair-T4" --threads 2 --batch-size 32 \
    --models spikingformer_clip --T 4 --impls fused --repeats 15 --no-memory --no-compile-cost
for opt in adamw sgd; do
    "$PY" recipes/bench/outside_check.py --model spikingformer_clip --T 4 --batch-size 32 --threads 2 \
        --optimizer "$opt" --rounds 15 --json "$OUT/outside_check_$opt.json"
done
# Teacher-feature cache: stage-1 epoch time with the cache / without, demo and paper teacher -> bench-results/cache/
"$PY" -m open_clip_spike.cli.bench_cache --out bench-results/cache --threads 2
cat /proc/loadavg || true
