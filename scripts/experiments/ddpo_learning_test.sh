#!/usr/bin/env bash
# The DDPO learning test on four training prompts (one per category): each recipe trains 20 epochs
# x 32 images (8 per prompt, 10 DDIM steps) on judge@shapes, then the LoRA and the base generate
# 64 fresh-seed images per prompt (seed 777, never used in training) and `eval compare` prints
# the paired judge and oracle changes with 95% CIs. Resumable (every command resumes its folder).
# Usage: bash scripts/experiments/ddpo_learning_test.sh [OUT]   (~6 CPU-minutes per recipe)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/ddpo_learning_test}"
RD=.venv/bin/rewardiff
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
.venv/bin/python scripts/experiments/four_prompts.py "$OUT/four.txt"
common=(--config configs/ddpo_shapes.yaml --target unet --reward judge@shapes --set "prompts=$OUT/four.txt" --set steps=10
        --set sample_batch_size=16 --set sample_batches=2 --set samples_per_prompt=8 --set train_batch_size=8 --set epochs=20)
declare -A recipes=(
  [all_steps_lr3e-4]="--set train_window=[0,1] --set lr=3e-4 --set advantages=group"
  [window]="--set train_window=[0,0.5] --set lr=3e-4 --set advantages=group"
  [window_lr1e-2]="--set train_window=[0,0.5] --set lr=1e-2 --set advantages=group"
  [window_lr3e-3_gbs]="--set train_window=[0,0.5] --set lr=3e-3 --set advantages=group_batch_std"
)
$RD generate --prompts "$OUT/four.txt" --num-images 64 --seed 777 --steps 10 --batch-size 64 --out "$OUT/eval_base"
for name in "${!recipes[@]}"; do
  # shellcheck disable=SC2086
  $RD train ddpo "${common[@]}" ${recipes[$name]} --out "$OUT/$name"
  $RD generate --prompts "$OUT/four.txt" --num-images 64 --seed 777 --steps 10 --batch-size 64 \
      --lora "$OUT/$name/lora.safetensors" --out "$OUT/eval_$name"
  echo "== $name"
  $RD eval compare --base "$OUT/eval_base" --tuned "$OUT/eval_$name" --reward judge@shapes
done
