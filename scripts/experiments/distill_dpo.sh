#!/usr/bin/env bash
# Diffusion-DPO on best-of-4 (pick, worst) pairs, with its two tables:
#   1. data      best-of-4 picks of the base generator with each pick's worst candidate, on TRAINING
#                prompts (shapes:train-eval's design, seed 1000: 1,316 pairs, 5,264 samples, 10 steps)
#   2. train     `train sft` with configs/distill_dpo_shapes.yaml (+ RECIPE overrides): the CCSR judge
#                re-judges picks and worsts, keeps pairs whose pick passes and wins by min_pair_gap
#   3. select    base vs LoRA on shapes:train-eval, seed 0 (training prompts, fresh seeds): what the
#                recipe was chosen on
#   4. report    base vs LoRA on shapes:eval (held-out prompts), reported, never chosen on
# Every step resumes its folder (~30 CPU-min in all on 2 cores).
# Usage: bash scripts/experiments/distill_dpo.sh [OUT] [--set k=v ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/distill_dpo}"; shift || true
RD=.venv/bin/rewardiff
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
$RD generate --prompts shapes:train-eval --seed 1000 --steps 10 --best-of 4 --keep-worst --judge judge@shapes --batch-size 64 --out "$OUT/pairs"
$RD train sft --config configs/distill_dpo_shapes.yaml --data "$OUT/pairs" --out "$OUT/dpo" "$@"
bash scripts/experiments/select_and_report.sh "$OUT" "$OUT/dpo/lora/lora.safetensors"
