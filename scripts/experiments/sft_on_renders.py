"""Ceiling test for CCSR's fine-tuning step: the loop's LoRA SFT trained on ground-truth renders of
training prompts (100% correct images, better than any judge can select), to tell whether the
judges or the fine-tuning limit self-rewarding. A diagnostic, not a method: evaluate the LoRA
with `rewardiff generate --lora OUT/lora/lora.safetensors` + `rewardiff eval oracle`.
`--full` instead continues the generator's own pre-training (all U-Net and text-encoder weights,
fresh renders every step, min-SNR, EMA) and writes OUT/pipeline (`rewardiff generate --model
OUT/pipeline`): whether the generator itself can still learn held-out compositions.

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


def continue_pretraining(a: argparse.Namespace) -> None:
    """The base recipe's loss on fresh renders every step (seeded by the step), all weights."""
    from pathlib import Path

    from diffusers.training_utils import EMAModel

    from rewardiff.algorithms.sft import _encode, _images_to_latents
    from rewardiff.diffusion.training_loss import denoising_loss

    pipe, _ = load_pipeline("shapes")
    modules = [pipe.unet, pipe.text_encoder]
    params = [q for m in modules for q in m.parameters()]
    for q in params:
        q.requires_grad_(True)
    for m in modules:
        m.train()
    ema = EMAModel(params, decay=0.995)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    for step in range(a.steps):
        rng = random.Random(10_000 + step)
        gen = torch.Generator().manual_seed(10_000 + step)
        prompts = [sample_train_prompt(rng) for _ in range(a.batch_size)]
        z0 = _images_to_latents(pipe, [render(prompt, rng.randrange(1 << 30)).image for prompt in prompts])
        text = _encode(pipe, ["" if rng.random() < 0.1 else prompt for prompt in prompts])
        loss = denoising_loss(pipe.unet, pipe.scheduler, z0, text, gen, a.snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    ema.copy_to(params)
    pipe.save_pretrained(str(Path(a.out) / "pipeline"))
    print(Path(a.out) / "pipeline")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--examples", type=int, default=192, help="renders of training prompts (uniform over categories)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--snr-gamma", type=float, default=0.0)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full", action="store_true", help="continue pre-training all weights instead of a LoRA")
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.full:
        continue_pretraining(a)
        return
    rng = random.Random(0)
    prompts = [sample_train_prompt(rng) for _ in range(a.examples)]
    examples = [TrainExample(prompt, render(prompt, 1000 + i).image) for i, prompt in enumerate(prompts)]
    pipe, _ = load_pipeline("shapes")
    cfg = SFTConfig(lr=a.lr, steps=a.steps, batch_size=a.batch_size, snr_gamma=a.snr_gamma, rank=a.rank, alpha=float(a.rank))
    print(train_lora(pipe, examples, cfg, a.out))


if __name__ == "__main__":
    main()
