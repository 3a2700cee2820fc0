"""What the three judges share: rendered training data, the seeded resumable training loop, and
writing a model folder the way a hub repository holds it.

Judges learn from *rendered* images only (the renderer's exact ground truth), never from the
oracle or from generated images. Every step draws its data from RNGs seeded by (seed, judge,
step), and the loop's learning rate is a function of the step alone, so a run killed and resumed
from its checkpoint continues exactly as an uninterrupted one would (the generator trainer's
recipe, rewardiff.shapes.train_generator, whose logger / checkpoint writer / RNG we reuse).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rewardiff.shapes.prompts import PromptSpec, parse_prompt, sample_train_prompt
from rewardiff.shapes.render import ObjectTruth, render
from rewardiff.shapes.train_generator import _load_state, _save_state, _step_rng
from rewardiff.io_utils import write_folder_atomically
from rewardiff.train_log import TrainLog

MODEL_DIR = "model"
"""Inside a judge's run folder: the final transformers folder (what gets shipped)."""
CHECKPOINT_DIR = "checkpoint"



@dataclass
class TinyTransformerArch:
    """Sizes of a judge's tiny ViT (32x32 images) and text transformer (shapes tokenizer)."""

    patch_size: int = 4  # pixels; 32 / 4 = 8 x 8 patches
    vision_width: int = 64
    vision_layers: int = 4
    text_width: int = 64
    text_layers: int = 2
    heads: int = 4
    mlp_ratio: int = 2  # MLP width = mlp_ratio x width


def clip_style_configs(arch: TinyTransformerArch, tokenizer) -> tuple[dict, dict]:
    """(text_config, vision_config) kwargs shared by the CLIP and OWLv2 judges (same towers)."""
    from rewardiff.shapes.palette import IMAGE_SIZE

    text = dict(
        vocab_size=len(tokenizer), hidden_size=arch.text_width, intermediate_size=arch.mlp_ratio * arch.text_width,
        num_hidden_layers=arch.text_layers, num_attention_heads=arch.heads, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=arch.vision_width, intermediate_size=arch.mlp_ratio * arch.vision_width, num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.heads, image_size=IMAGE_SIZE, patch_size=arch.patch_size,
    )
    return text, vision


@dataclass
class LoopConfig:
    """The optimisation settings every judge has."""

    steps: int = 2000  # optimiser steps
    batch_size: int = 64  # rendered images per step
    lr: float = 1e-3  # AdamW peak learning rate
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 10% at `steps`
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global gradient norm
    noise_std: float = 0.03  # max std of the Gaussian pixel noise added to inputs (robustness to generated images); 0 disables
    checkpoint_every: int = 200  # steps
    log_every: int = 20  # steps


def loop_lr(cfg: LoopConfig, step: int) -> float:
    """Warm-up then cosine to 10%: a function of the step alone, so resuming needs no state."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class RenderedBatch:
    prompts: list[str]  # canonical prompt texts, one per image
    specs: list[PromptSpec]
    images: torch.Tensor  # (B, 3, 32, 32) float in [0, 1]
    objects: list[tuple[ObjectTruth, ...]]  # ground-truth boxes per image


def rendered_batch(rng: random.Random, n: int) -> RenderedBatch:
    """n rendered (image, prompt, boxes) triples drawn from the *training* prompts."""
    prompts = [sample_train_prompt(rng) for _ in range(n)]
    renders = [render(p, rng.getrandbits(32)) for p in prompts]
    images = torch.from_numpy(np.stack([r.image for r in renders])).permute(0, 3, 1, 2).float() / 255.0
    return RenderedBatch(prompts, [parse_prompt(p) for p in prompts], images, [r.objects for r in renders])


def augment(images: torch.Tensor, gen: torch.Generator, noise_std: float) -> torch.Tensor:
    """Per-image Gaussian pixel noise with std uniform in [0, noise_std], clamped to [0, 1]:
    generated images are never as clean as rendered ones."""
    if noise_std <= 0:
        return images
    std = torch.rand(images.shape[0], 1, 1, 1, generator=gen) * noise_std
    return (images + std * torch.randn(images.shape, generator=gen)).clamp(0.0, 1.0)


LossFn = Callable[[random.Random, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
"""(python RNG, torch generator) of one step -> (loss, scalars to log)."""


def train_loop(name: str, model: torch.nn.Module, loss_fn: LossFn, cfg: LoopConfig, seed: int, out: Path, progress: bool = True) -> torch.nn.Module:
    """Optimise `model` with AdamW for cfg.steps, resuming from OUT/checkpoint when present.

    Checkpoints (model.safetensors + optimizer.pt + state.json) are written atomically every
    `checkpoint_every` steps and at the end; the loss log goes to OUT/train_log.jsonl and
    OUT/tensorboard. Dropout and any other global torch randomness are re-seeded every step.
    """
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    logger = TrainLog(out)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out / CHECKPOINT_DIR
    start = 0
    if (ckpt / "state.json").is_file():
        start = _load_state(ckpt, {"model": model}, opt)["step"]
    model.train()
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=name, disable=not progress)
    for step in bar:
        rng, gen = _step_rng(seed, name, step)
        torch.manual_seed(rng.getrandbits(63))
        loss, scalars = loss_fn(rng, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        lr = loop_lr(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.log_every == 0 or step + 1 == cfg.steps:
            logger.log(name, step, loss=loss.item(), lr=lr, steps_per_s=(step + 1 - start) / (time.time() - t0), **scalars)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            _save_state(ckpt, {"model": _untie(state)}, opt.state_dict(), {"step": step + 1})
    model.eval()
    return model


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings); store copies."""
    return {k: v.clone().contiguous() for k, v in state.items()}


def save_folder(dest: Path, parts: list) -> Path:
    """save_pretrained each part (model, tokenizer, processor) into dest, atomically."""

    def write(tmp: Path) -> None:
        for part in parts:
            part.save_pretrained(tmp)

    write_folder_atomically(dest, write)
    return dest
