#!/usr/bin/env bash
# The selection and report tables of a distilled LoRA (used by distill_best.sh and distill_dpo.sh):
#   select  base vs LoRA on shapes:train-eval, seed 0 (training prompts, fresh seeds): choose recipes here
#   report  base vs LoRA on shapes:eval (held-out prompts): report, never choose on it
# Usage: bash scripts/experiments/select_and_report.sh OUT LORA   (every step resumes its folder)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="$1"; LORA="$2"
RD=.venv/bin/rewardiff
export HF_HUB_OFFLINE=1
for split in train-eval eval; do
  $RD generate --prompts "shapes:$split" --seed 0 --steps 10 --batch-size 64 --out "$OUT/base_$split"
  $RD generate --prompts "shapes:$split" --seed 0 --steps 10 --batch-size 64 --lora "$LORA" --out "$OUT/lora_$split"
  echo "== shapes:$split"
  $RD eval compare --base "$OUT/base_$split" --tuned "$OUT/lora_$split" --reward judge@shapes --reward clip@shapes \
      --out "$OUT/compare_$split"
done
echo "LoRA: $LORA"
