#!/usr/bin/env bash
# The paper's tower comparisons on the offline demo data, one command, one table (out/ablation/ablation.md):
# every image tower (Spikingformer, Spikformer, Spike-driven Transformer, QKFormer, SEW-ResNet) with the spiking
# MLP text tower, and Spikingformer with the spiking-transformer text tower, each evaluated at T = 1, 2, 4, 8.
#   recipes/ablation/run.sh                                   # default grid, a teacher trained by the first pair
#   recipes/ablation/run.sh --grid full                       # every image tower x every text tower
#   recipes/ablation/run.sh --teacher-pretrained out/demo/teacher.safetensors   # reuse the demo's teacher
# Rerun the same command to resume an interrupted ablation.
set -euo pipefail
OUT=${OUT:-out/ablation}
exec spikeclip ablate --out "$OUT" "$@"
