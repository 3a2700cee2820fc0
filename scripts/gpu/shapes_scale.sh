#!/usr/bin/env bash
# Paper-scale budgets on the shapes world, on one GPU (ddpo-pytorch's 100 epochs x 256 images;
# CCSR best-of-N over the whole protocol set), printing the evaluation protocol's tables.
# Needs a CUDA GPU; refuses to run without one. Usage: bash scripts/gpu/shapes_scale.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/gpu_scale}"
PY="${PYTHON:-.venv/bin/python}"
RD="${PY%python}rewardiff"
export HF_HUB_OFFLINE=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA GPU here; this script is for a GPU machine')"
mkdir -p "$OUT"
# 1. the protocol's base set and best-of-8 (AI feedback at inference, the line to beat)
"$RD" generate --prompts shapes:eval --steps 10 --batch-size 512 --device cuda --set dtype=float32 --out "$OUT/base"
"$RD" generate --prompts shapes:eval --steps 10 --batch-size 512 --device cuda --set dtype=float32 --best-of 8 --out "$OUT/best8"
"$RD" eval compare --base "$OUT/base" --tuned "$OUT/best8" --reward judge@shapes --device cuda
# 2. DDPO on the judge, 100 epochs x 256 images over all training prompts (ddpo-pytorch's budget)
"$RD" train ddpo --config configs/ddpo_shapes.yaml --reward judge@shapes --device cuda \
  --set sample_batch_size=128 --set sample_batches=2 --set samples_per_prompt=8 --set train_batch_size=64 \
  --set epochs=100 --set save_every=10 --set advantages=group_batch_std --out "$OUT/ddpo"
"$RD" generate --prompts shapes:eval --steps 10 --batch-size 512 --device cuda --set dtype=float32 \
  --lora "$OUT/ddpo/lora.safetensors" --out "$OUT/ddpo_eval"
"$RD" eval compare --base "$OUT/base" --tuned "$OUT/ddpo_eval" --reward judge@shapes --device cuda
