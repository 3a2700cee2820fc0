"""Train the shapes world's generator from scratch on rendered images (CPU).

Two stages: (1) the tiny AutoencoderKL, MSE+L1 reconstruction with a small KL; its latent std
sets `scaling_factor`, as SD's did; (2) the U-Net and text encoder together, v-prediction on
the zero-terminal-SNR schedule with min-SNR weighting, 10% empty prompts for classifier-free
guidance, EMA weights exported. `unet.init_from` skips stage 1 and continues stage 2 from an
exported generator (how the shipped one was trained longer without redoing its first run).

Every step draws its data and noise from RNGs seeded by (seed, step), so a run killed and
resumed from a checkpoint continues exactly as an uninterrupted one would.
The oracle is never used here.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rewardiff.diffusion.training_loss import denoising_loss
from rewardiff.io_utils import safetensors_intact, write_folder_atomically
from rewardiff.shapes.generator import GeneratorArch, build_pipeline, build_vae
from rewardiff.errors import RewardiffError
from rewardiff.shapes.prompts import check_category_weights, sample_train_prompt
from rewardiff.shapes.render import render
from rewardiff.train_log import TrainLog


@dataclass
class VaeStageConfig:
    steps: int = 2000  # optimiser steps
    batch_size: int = 32  # images per step
    lr: float = 1e-3  # cosine-decayed to 10% over the stage: sharp edges need a small final lr
    kl_weight: float = 1e-6  # as SD's autoencoder: latents stay close to a deterministic code


@dataclass
class UnetStageConfig:
    steps: int = 2400  # optimiser steps (extend and re-run to train longer; it resumes)
    batch_size: int = 64  # images per step
    lr: float = 5e-4  # AdamW, constant after warm-up so a run can be extended
    warmup_steps: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1  # share of empty prompts, for classifier-free guidance
    min_snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023); 0 disables
    checkpoint_every: int = 250  # steps
    lr_schedule: str = "constant"  # "constant" after warm-up (extendable) or "cosine" to 10% at `steps`
    # Continue training an exported generator (a pipeline folder, or "shapes" for the shipped one)
    # instead of starting from random weights: its VAE is reused (the latent space must not move).
    init_from: str = ""
    # Prompt mix: sampling weight of each category (empty = uniform), e.g. to spend the
    # continued training on the compositional categories a generator is weakest at.
    category_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainGeneratorConfig:
    out: str = "runs/shapes-generator"  # run directory (checkpoints, logs, final pipeline)
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    arch: GeneratorArch = field(default_factory=GeneratorArch)
    vae: VaeStageConfig = field(default_factory=VaeStageConfig)
    unet: UnetStageConfig = field(default_factory=UnetStageConfig)


def _step_rng(seed: int, stage: str, step: int) -> tuple[random.Random, torch.Generator]:
    key = f"{seed}:{stage}:{step}"
    py = random.Random(key)
    gen = torch.Generator().manual_seed(py.getrandbits(63))
    return py, gen


def rendered_batch(rng: random.Random, n: int, category_weights: dict[str, float] | None = None) -> tuple[list[str], torch.Tensor]:
    """n (prompt, image) pairs drawn from the training prompts; images in [-1, 1], (n, 3, 32, 32)."""
    prompts = [sample_train_prompt(rng, category_weights or None) for _ in range(n)]
    images = np.stack([render(p, rng.getrandbits(32)).image for p in prompts])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return prompts, x


def _save_state(directory: Path, tensors: dict[str, dict[str, torch.Tensor]], optim: dict, meta: dict) -> None:
    """Write a checkpoint folder atomically: a temp folder renamed over the old one."""

    def write(tmp: Path) -> None:
        for name, sd in tensors.items():
            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
        torch.save(optim, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(meta))

    write_folder_atomically(directory, write)


def _load_state(directory: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """Inverse of _save_state: load each module's weights and the optimiser; return state.json.

    optimizer.pt is our own checkpoint, read with the weights-only loader (never a user's file)."""
    for name, module in modules.items():
        module.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    return json.loads((directory / "state.json").read_text())


RESUME_FREE = ("out", "threads", "unet.steps", "unet.checkpoint_every")
"""Fields a resumed run may change (train longer, elsewhere, with more threads)."""


def _state_intact(directory: Path, modules: tuple[str, ...]) -> bool:
    """Whether a checkpoint folder reads back completely; a broken one is redone, not trusted."""
    if not (directory / "state.json").is_file():
        return False
    try:
        json.loads((directory / "state.json").read_text())
        torch.load(directory / "optimizer.pt", weights_only=True)
    except Exception:  # a truncated or foreign file, whatever the reader raises
        return False
    return all(safetensors_intact(directory / f"{m}.safetensors") for m in modules)


def train_vae(cfg: TrainGeneratorConfig, out: Path, logger: TrainLog, progress: bool = True):
    """Stage 1; returns the trained AutoencoderKL (or the finished one on disk)."""
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    final = out / "vae"
    if (final / "config.json").is_file() and safetensors_intact(final / "diffusion_pytorch_model.safetensors"):
        logger.keep_until("vae", cfg.vae.steps)
        return AutoencoderKL.from_pretrained(final)
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg.arch)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr)
    ckpt = out / "checkpoint-vae"
    start = 0
    if _state_intact(ckpt, ("vae",)):
        start = _load_state(ckpt, {"vae": vae}, opt)["step"]
    logger.keep_until("vae", start - 1)  # rows of steps the resumed run does again
    vae.train()
    bar = tqdm(range(start, cfg.vae.steps), initial=start, total=cfg.vae.steps, desc="vae", disable=not progress)
    for step in bar:
        rng, gen = _step_rng(cfg.seed, "vae", step)
        _, x = rendered_batch(rng, cfg.vae.batch_size)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        rec_loss = F.mse_loss(rec, x) + F.l1_loss(rec, x)
        loss = rec_loss + cfg.vae.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.vae.lr, step, cfg.vae.steps)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 20 == 0:
            logger.log("vae", step, loss=loss.item(), recon=rec_loss.item())
        if (step + 1) % 200 == 0 and step + 1 < cfg.vae.steps:
            _save_state(ckpt, {"vae": vae.state_dict()}, opt.state_dict(), {"step": step + 1})
    vae.eval()
    # scaling_factor: make scaled latents unit-variance on data, as SD did (0.18215).
    with torch.no_grad():
        _, x = rendered_batch(random.Random(f"{cfg.seed}:vae-scale"), 256)
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    write_folder_atomically(final, vae.save_pretrained)
    return vae


def cosine_lr(base_lr: float, step: int, total: int, floor: float = 0.1) -> float:
    """Cosine decay from base_lr to floor*base_lr; a function of the step alone (resume-safe)."""
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total))))


def warmup_lr(base_lr: float, warmup: int, step: int) -> float:
    """Linear warm-up then constant: a function of the step alone, so resuming needs no state."""
    return base_lr * min(1.0, (step + 1) / max(1, warmup))


def unet_stage_lr(stage: UnetStageConfig, step: int) -> float:
    """The U-Net stage's learning rate at `step` (warm-up, then constant or cosine); resume-safe."""
    if stage.lr_schedule == "constant":
        return warmup_lr(stage.lr, stage.warmup_steps, step)
    if stage.lr_schedule == "cosine":
        return min(warmup_lr(stage.lr, stage.warmup_steps, step), cosine_lr(stage.lr, step, stage.steps))
    raise RewardiffError(f"unet.lr_schedule must be 'constant' or 'cosine', got {stage.lr_schedule!r}")


def _load_init_pipeline(cfg: TrainGeneratorConfig, unet, text_encoder, init):
    """Copy the exported generator `init`'s U-Net and text-encoder weights in; return its VAE."""
    for name, module, source in (("unet", unet, init.unet), ("text_encoder", text_encoder, init.text_encoder)):
        try:
            module.load_state_dict(source.state_dict())
        except RuntimeError as e:
            raise RewardiffError(f"unet.init_from={cfg.unet.init_from!r}: its {name} does not match `arch` ({str(e).splitlines()[0][:200]})") from None
    return init.vae


def train_generator(cfg: TrainGeneratorConfig, progress: bool = True) -> Path:
    """Run both stages (resuming whatever is done) and export the pipeline to OUT/pipeline."""

    from rewardiff.run_folder import claim_run_folder, settings_of

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_category_weights(cfg.unet.category_weights, "unet.category_weights")
    unet_stage_lr(cfg.unet, 0)  # refuse an unknown schedule before any work
    with claim_run_folder(cfg.out, "shapes train-generator", settings_of(cfg, RESUME_FREE), config=cfg) as folder:
        return _train_in(folder, cfg, progress)


def _train_in(folder, cfg: TrainGeneratorConfig, progress: bool) -> Path:
    """train_generator's work, in the claimed run folder."""
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    out = folder.path
    init = None
    if cfg.unet.init_from:
        from rewardiff.models.pipeline import load_pipeline

        init, _ = load_pipeline(cfg.unet.init_from)  # a missing or foreign init fails before the folder is written
    folder.commit()
    logger = TrainLog(out)
    if cfg.unet.init_from:
        torch.manual_seed(cfg.seed + 1)
        pipe = build_pipeline(cfg.arch, out / "tokenizer_src")
        vae = _load_init_pipeline(cfg, pipe.unet, pipe.text_encoder, init)
        pipe.vae = vae
        if not (out / "vae" / "config.json").is_file():
            write_folder_atomically(out / "vae", vae.save_pretrained)  # export_pipeline reads the run's VAE from here
    else:
        vae = train_vae(cfg, out, logger, progress)
        torch.manual_seed(cfg.seed + 1)
        pipe = build_pipeline(cfg.arch, out / "tokenizer_src", vae=vae)
    vae.requires_grad_(False)
    unet, text_encoder, tokenizer, scheduler = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    unet.requires_grad_(True)
    text_encoder.requires_grad_(True)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet.lr, weight_decay=cfg.unet.weight_decay)
    ema = EMAModel(params, decay=cfg.unet.ema_decay, use_ema_warmup=True, power=0.75)

    ckpt = out / "checkpoint"
    start = 0
    if _state_intact(ckpt, ("unet", "text_encoder", "ema")):
        unet.load_state_dict(load_file(str(ckpt / "unet.safetensors")))
        text_encoder.load_state_dict(load_file(str(ckpt / "text_encoder.safetensors")), strict=False)
        ema_sd = load_file(str(ckpt / "ema.safetensors"))
        state = json.loads((ckpt / "state.json").read_text())
        ema.shadow_params = [ema_sd[f"p{i}"] for i in range(len(params))]
        ema.optimization_step = state["ema_optimization_step"]
        ema.cur_decay_value = state.get("ema_decay_value")
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        start = state["step"]
    logger.keep_until("unet", start - 1)  # rows of steps the resumed run does again

    token_cache: dict[str, torch.Tensor] = {}

    def tokenize(prompts: list[str]) -> torch.Tensor:
        for p in set(prompts) - set(token_cache):
            token_cache[p] = tokenizer(p, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids[0]
        return torch.stack([token_cache[p] for p in prompts])

    def checkpoint(step: int) -> None:
        _save_state(
            ckpt,
            {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "ema": {f"p{i}": p for i, p in enumerate(ema.shadow_params)}},
            opt.state_dict(),
            {"step": step, "ema_optimization_step": ema.optimization_step, "ema_decay_value": ema.cur_decay_value},
        )

    unet.train()
    text_encoder.train()
    sf = vae.config.scaling_factor
    bar = tqdm(range(start, cfg.unet.steps), initial=start, total=cfg.unet.steps, desc="unet", disable=not progress)
    t0 = time.time()
    for step in bar:
        rng, gen = _step_rng(cfg.seed, "unet", step)
        prompts, x = rendered_batch(rng, cfg.unet.batch_size, cfg.unet.category_weights)
        prompts = ["" if rng.random() < cfg.unet.cfg_dropout else p for p in prompts]
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            latents = (post.mean + post.std * torch.randn(post.mean.shape, generator=gen)) * sf
        loss = denoising_loss(unet, scheduler, latents, text_encoder(tokenize(prompts))[0], gen, cfg.unet.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = unet_stage_lr(cfg.unet, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        ema.step(params)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 20 == 0:
            logger.log("unet", step, loss=loss.item(), lr=lr, images_per_s=(step + 1 - start) * len(prompts) / (time.time() - t0))
        if (step + 1) % cfg.unet.checkpoint_every == 0 or step + 1 == cfg.unet.steps:
            checkpoint(step + 1)

    export_pipeline(out, out / "pipeline")
    return out / "pipeline"


def export_pipeline(run_dir: Path, dest: Path) -> Path:
    """Write the EMA weights of a run's latest checkpoint as a diffusers pipeline folder."""
    from rewardiff.config import load_config

    run_dir = Path(run_dir)
    cfg = load_config(TrainGeneratorConfig, run_dir / "config.yaml")
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(run_dir / "vae")
    pipe = build_pipeline(cfg.arch, run_dir / "tokenizer_src", vae=vae)
    ckpt = run_dir / "checkpoint"
    ema_sd = load_file(str(ckpt / "ema.safetensors"))
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(ema_sd[f"p{i}"])
    from rewardiff.models.pipeline import WORLD_MARKER

    def write(tmp: Path) -> None:
        pipe.save_pretrained(tmp)
        (tmp / WORLD_MARKER).write_text(json.dumps({"world": "shapes", "image_size": 32}) + "\n")

    write_folder_atomically(dest, write)
    return dest
