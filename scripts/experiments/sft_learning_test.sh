#!/usr/bin/env bash
# The best-of-N distillation (`train sft`) learning test on four training prompts (one per category,
# the DDPO learning test's): best-of-4 picks of the base (32 per prompt, seed 1000, 512 samples),
# re-judged and balanced, LoRA SFT for 200 steps x 32; then base and LoRA generate 64 fresh-seed images
# per prompt (seed 777, never trained on) and `eval compare` prints the paired judge and oracle changes.
# Resumable. Usage: bash scripts/experiments/sft_learning_test.sh [OUT]   (~4 CPU-minutes per recipe)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/sft_learning_test}"
RD=.venv/bin/rewardiff
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
.venv/bin/python scripts/experiments/four_prompts.py "$OUT/four.txt"
declare -A recipes=(
  [all_t_lr1e-4]="--set train.lr=1e-4 --set train.timesteps=[0,1] --set train.cond_dropout=0.1"
  [layout_lr1e-4]="--set train.lr=1e-4 --set train.timesteps=[0.5,1.0] --set train.cond_dropout=0.0"
  [all_t_lr1e-3]="--set train.lr=1e-3 --set train.timesteps=[0,1] --set train.cond_dropout=0.1"
  [layout_lr1e-3]="--set train.lr=1e-3 --set train.timesteps=[0.5,1.0] --set train.cond_dropout=0.0"
)
$RD generate --prompts "$OUT/four.txt" --num-images 32 --seed 1000 --steps 10 --best-of 4 --judge judge@shapes --batch-size 64 --out "$OUT/data"
$RD generate --prompts "$OUT/four.txt" --num-images 64 --seed 777 --steps 10 --batch-size 64 --out "$OUT/eval_base"
for name in "${!recipes[@]}"; do
  # shellcheck disable=SC2086
  $RD train sft --config configs/distill_shapes.yaml --data "$OUT/data" --set train.steps=200 ${recipes[$name]} --out "$OUT/$name"
  $RD generate --prompts "$OUT/four.txt" --num-images 64 --seed 777 --steps 10 --batch-size 64 \
      --lora "$OUT/$name/lora/lora.safetensors" --out "$OUT/eval_$name"
  echo "== $name"
  $RD eval compare --base "$OUT/eval_base" --tuned "$OUT/eval_$name" --reward judge@shapes --out "$OUT/compare_$name"
done
