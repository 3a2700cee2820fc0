#!/usr/bin/env bash
# The learning test of TexForce and ReFL (issue 13; DDPO's is ddpo_learning_test.sh, SFT's
# sft_learning_test.sh): four training prompts (one per category), the method trains on its own
# reward, then the LoRA and the base generate 64 fresh-seed images per prompt (seed 777, never
# used in training) and `eval compare` prints the paired change of the method's reward and of the
# oracle with 95% CIs. Resumable (every command resumes its folder).
#   texforce  PPO on a text-encoder LoRA, judge@shapes (DDPO's fixed recipe: high-noise half,
#             group mean / batch std, lr 3e-3), 20 epochs x 32 images
#   refl      ReFL + KL on a U-Net LoRA, clip@shapes (differentiable), 10-step chain, grad step among
#             the last 3, lr 1e-3, 80 steps x 8 images
# Usage: bash scripts/experiments/learning_tests.sh [OUT]   (~12 CPU-minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/learning_tests}"
RD=.venv/bin/rewardiff
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
.venv/bin/python scripts/experiments/four_prompts.py "$OUT/four.txt"
$RD generate --prompts "$OUT/four.txt" --num-images 64 --seed 777 --steps 10 --batch-size 64 --out "$OUT/eval_base"

$RD train ddpo --config configs/ddpo_shapes.yaml --target text_encoder --reward judge@shapes --set "prompts=$OUT/four.txt" \
    --set steps=10 --set sample_batch_size=16 --set sample_batches=2 --set samples_per_prompt=8 --set train_batch_size=8 \
    --set epochs=20 --set "train_window=[0,0.5]" --set lr=3e-3 --set advantages=group_batch_std --out "$OUT/texforce"
$RD train refl --config configs/refl_shapes.yaml --reward clip@shapes --set "prompts=$OUT/four.txt" --set steps=10 \
    --set last_k=3 --set lr=1e-3 --set batch_size=4 --set grad_accum=2 --set train_steps=80 --set threads=0 --out "$OUT/refl"

for name in texforce refl; do
  $RD generate --prompts "$OUT/four.txt" --num-images 64 --seed 777 --steps 10 --batch-size 64 \
      --lora "$OUT/$name/lora.safetensors" --out "$OUT/eval_$name"
  echo "== $name"
  $RD eval compare --base "$OUT/eval_base" --tuned "$OUT/eval_$name" --reward judge@shapes --reward clip@shapes \
      --out "$OUT/compare_$name"
done
