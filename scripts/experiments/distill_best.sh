#!/usr/bin/env bash
# Best-of-N distillation by SFT (measured: it lowers the oracle; see the README) and its two tables:
#   1. data      best-of-4 picks of the base generator on TRAINING prompts (shapes:train-eval's
#                design, seed 1000: 1,316 images, 5,264 samples at 10 DDIM steps), judge@shapes
#   2. train     `train sft`: the CCSR judge re-judges the picks, keeps exact counts/relations,
#                balances the categories, LoRA SFT (configs/distill_shapes.yaml + RECIPE overrides)
#   3. select    base vs LoRA on shapes:train-eval, seed 0 (training prompts, fresh seeds): what the
#                recipe was chosen on
#   4. report    base vs LoRA on shapes:eval (held-out prompts), reported, never chosen on
# Every step resumes its folder. Usage: bash scripts/experiments/distill_best.sh [OUT] [--set k=v ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/distill_best}"; shift || true
RD=.venv/bin/rewardiff
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
$RD generate --prompts shapes:train-eval --seed 1000 --steps 10 --best-of 4 --judge judge@shapes --batch-size 64 --out "$OUT/data"
$RD train sft --config configs/distill_shapes.yaml --data "$OUT/data" --out "$OUT/sft" "$@"
bash scripts/experiments/select_and_report.sh "$OUT" "$OUT/sft/lora/lora.safetensors"
