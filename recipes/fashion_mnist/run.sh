#!/usr/bin/env bash
# The offline SpikeCLIP demo on Fashion-MNIST: teacher, alignment pre-training, dual-loss fine-tuning,
# zero-shot, energy, local Hub round trip. Rerun the same command to resume an interrupted run.
#   recipes/fashion_mnist/run.sh                      # the default run (OUT=out/demo)
#   recipes/fashion_mnist/run.sh --quick              # one-minute smoke run
#   recipes/fashion_mnist/run.sh --teacher ViT-B-16 --teacher-pretrained openai   # with a network or HF cache
set -euo pipefail
OUT=${OUT:-out/demo}
exec spikeclip demo --out "$OUT" "$@"
