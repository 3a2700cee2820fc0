"""Ceiling test for CCSR's fine-tuning step: the loop's LoRA SFT trained on ground-truth renders of
training prompts (100% correct images, better than any judge can select), to tell whether the
judges or the fine-tuning limit self-rewarding. A diagnostic, not a method: evaluate the LoRA
with `rewardiff generate --lora OUT/lora/lora.safetensors` + `rewardiff eval oracle`.
Continuing the generator's own pre-training instead (all weights, fresh renders every step) is
`rewardiff shapes train-generator --set unet.init_from=shapes ...` (see docs/self_reward.md).

    .venv/bin/python scripts/experiments/sft_on_renders.py --out runs/ceiling/192 --examples 192 --lr 2e-4 --steps 250
"""

from __future__ import annotations

import argparse
import random

import torch

from rewardiff.algorithms.sft import SFTConfig, TrainExample, train_lora
from rewardiff.models.pipeline import load_pipeline
from rewardiff.shapes.prompts import sample_train_prompt
from rewardiff.shapes.render import render


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--examples", type=int, default=192, help="renders of training prompts (uniform over categories)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--snr-gamma", type=float, default=0.0)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rng = random.Random(0)
    prompts = [sample_train_prompt(rng) for _ in range(a.examples)]
    examples = [TrainExample(prompt, render(prompt, 1000 + i).image) for i, prompt in enumerate(prompts)]
    pipe, _ = load_pipeline("shapes")
    cfg = SFTConfig(lr=a.lr, steps=a.steps, batch_size=a.batch_size, snr_gamma=a.snr_gamma, rank=a.rank, alpha=float(a.rank))
    print(train_lora(pipe, examples, cfg, a.out))


if __name__ == "__main__":
    main()
