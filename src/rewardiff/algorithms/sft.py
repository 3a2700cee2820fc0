"""LoRA fine-tuning of a Stable-Diffusion-shaped pipeline on (prompt, image) pairs (CCSR step 4),
or on (prompt, chosen, rejected) pairs with the Diffusion-DPO loss (a config switch).

SFT, the standard diffusion loss (as diffusers' train_text_to_image_lora.py):

    z0 = VAE(image) * scaling_factor;  t ~ U{0..T-1};  eps ~ N(0, I);  z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps
    loss = || f(z_t, t, c) - target ||^2,   target = eps (epsilon), v = sqrt(a_t) eps - sqrt(1 - a_t) z0
                                                       (v_prediction, `scheduler.get_velocity`)

read from `scheduler.config.prediction_type` (the shapes generator is v-prediction), optionally
weighted per example by min-SNR-gamma (`snr_gamma`, diffusers' `--snr_gamma`).
Diffusion-DPO (Wallace et al. 2023, eq. 14; as their train.py): one t and one noise per pair,

    e_w = ||f(z_t^w) - target_w||^2,  e_l likewise, r_w / r_l the same errors of the reference
    loss = -log sigmoid(-beta / 2 * ((e_w - r_w) - (e_l - r_l)))

The reference is the pipeline with its LoRA adapters disabled (the base model): the U-Net's, and
with `train_text_encoder` the text encoder's too (the reference re-encodes the prompts with the
frozen text encoder, so text-encoder drift is penalised like U-Net drift). Training is
resumable: data and noise of step k come from RNGs seeded by (seed, k), and a checkpoint (LoRA
weights, optimiser, step) is written atomically every `checkpoint_every` steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewardiff.algorithms.lora_checkpoint import load_lora_state, read_lora_meta, save_lora_state
from rewardiff.diffusion.conditioning import Conditioning, as_conditioning, encode_text, text_encoders
from rewardiff.diffusion.training_loss import denoising_loss, diffusion_target, draw_noise, timestep_bounds
from rewardiff.errors import RewardiffError
from rewardiff.models.lora import UNET_LORA_SCOPES, adapters_disabled
from rewardiff.runtime import Runtime, check_precision, enable_gradient_checkpointing

CHECKPOINT = "checkpoint"
LORA_FILE = "lora.safetensors"


@dataclass
class SFTConfig:
    loss: str = "sft"  # sft (diffusion loss on the selected images) | dpo (Diffusion-DPO on best-vs-worst pairs)
    rank: int = 8  # LoRA rank
    alpha: float = 8.0  # LoRA alpha (scale = alpha / rank)
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.0
    steps: int = 300  # optimiser steps per round
    batch_size: int = 16  # examples (SFT) or pairs (DPO) per step
    train_text_encoder: bool = False  # also put a LoRA on the text encoder
    unet_lora: str = "attention"  # U-Net LoRA scope: attention (every block) | cross_attention (attn2, reads the prompt) | none (text encoder only)
    cond_dropout: float = 0.1  # share of prompts replaced by "" (keeps the unconditional branch, as in pre-training)
    snr_gamma: float = 0.0  # min-SNR-gamma loss weighting of the SFT loss (the shapes generator was pre-trained with 5); 0 = uniform
    guided_loss: float = 0.0  # SFT only, > 1: train the guided prediction at this CFG scale (the sampler's) instead of the conditional one, so picks sampled with guidance are the trained model's own distribution (no guidance compounding); 0 = off
    guided_loss_rescale: float = 0.0  # the sampler's guidance_rescale for guided_loss (shapes: 0.7)
    dpo_beta: float = 2000.0  # Diffusion-DPO beta (Wallace et al. use 5000 on SD 1.5's latents)
    dpo_sft_weight: float = 0.0  # + this x SFT loss on the chosen images (0 = pure DPO)
    timesteps: list[float] = field(default_factory=lambda: [0.0, 1.0])  # train on this fraction of the schedule; [0.6, 1.0] = the noisiest 40%, where layout forms (not the fine detail of the model's own artefacts)
    grad_clip: float = 1.0  # max global grad norm
    gradient_accumulation: int = 1  # micro-batches of batch_size per optimiser step
    mixed_precision: str = "no"  # forward passes in no | bf16 | fp16 (autocast; LoRA master weights fp32; fp16 adds a grad scaler)
    gradient_checkpointing: bool = False  # recompute U-Net / text-encoder activations in backward (memory for time)
    allow_tf32: bool = False  # TF32 matmuls and convolutions on CUDA
    checkpoint_every: int = 100  # steps between resumable checkpoints
    lora_format: str = "diffusers"  # key names of the written lora.safetensors: diffusers | kohya (A1111, ComfyUI)
    seed: int = 0


@dataclass
class TrainExample:
    prompt: str
    image: np.ndarray  # uint8 (H, W, 3)
    rejected: np.ndarray | None = None  # DPO only: the worse image of the same prompt


def diffusion_dpo_loss(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO loss from per-example squared errors (B,) of the model and the reference on
    the chosen (w) and rejected (l) images; returns (mean loss, metrics)."""
    model_diff = model_w - model_l
    ref_diff = ref_w - ref_l
    inside = -0.5 * beta * (model_diff - ref_diff)
    loss = -F.logsigmoid(inside).mean()
    d = inside.detach()
    return loss, {"implicit_acc": float((d > 0).float().mean()), "model_diff": float(model_diff.detach().mean()), "ref_diff": float(ref_diff.detach().mean())}


def dpo_errors(pipe, z_w: torch.Tensor, z_l: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text: Conditioning | torch.Tensor,
               prompts: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example squared errors (2B,) of the policy and of the reference on cat([chosen, rejected]),
    with one t and one noise per pair (Wallace et al.'s train.py).

    `text` is the policy's prompt conditioning (B rows; SDXL: with pooled embeds and time ids).
    The reference is the base model: U-Net adapters disabled and, when `prompts` is given (the
    text encoders are trained), the prompts re-encoded with the text encoders' adapters disabled;
    reusing `text` there would let the text-encoder LoRA drift unpenalised."""
    scheduler = pipe.scheduler
    text = as_conditioning(text)
    both, noise2, t2 = torch.cat([z_w, z_l]), torch.cat([noise, noise]), torch.cat([t, t])
    noisy = scheduler.add_noise(both, noise2, t2)
    target = diffusion_target(scheduler, both, noise2, t2).float()

    def errors(cond: Conditioning) -> torch.Tensor:
        pred = pipe.unet(noisy, t2, **Conditioning.cat([cond, cond]).unet_kwargs()).sample.float()
        return ((pred - target) ** 2).mean(dim=(1, 2, 3))

    err = errors(text)
    encoders = text_encoders(pipe) if prompts is not None else []
    with torch.no_grad(), adapters_disabled(pipe.unet, *encoders):
        ref = errors(_encode(pipe, prompts, _size(text, z_w, pipe)).to(text.embeds.device) if prompts is not None else text)
    return err, ref


def _images_to_latents(pipe, images: list[np.ndarray], batch: int = 64) -> torch.Tensor:
    vae = pipe.vae
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(np.stack(images[s : s + batch])).permute(0, 3, 1, 2).float().to(vae.device, vae.dtype) / 127.5 - 1.0
            out.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out).float()


def _encode(pipe, prompts: list[str], size: tuple[int, int] | None = None) -> Conditioning:
    """The prompts' conditioning under the current (LoRA) text encoders; `size` (H, W) of the
    training images sets SDXL's time ids."""
    return encode_text(pipe, list(prompts), size)


def _size(text: Conditioning, latents: torch.Tensor, pipe) -> tuple[int, int]:
    """Image size (H, W): from SDXL's time ids when present, else from the latents."""
    if text.time_ids is not None:
        return int(text.time_ids[0, 4]), int(text.time_ids[0, 5])
    return tuple(int(v) * pipe.vae_scale_factor for v in latents.shape[-2:])


def _trainable(module) -> list[torch.nn.Parameter]:
    params = []
    for name, p in module.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            params.append(p)
    return params


def _save_checkpoint(out: Path, modules: dict, optimizer, step: int) -> None:
    save_lora_state(out / CHECKPOINT, modules, optimizer, {"step": step})


def _load_checkpoint(out: Path, modules: dict, optimizer) -> int:
    """Steps already done (0 without a checkpoint); restores the LoRA tensors and the optimiser."""
    if read_lora_meta(out / CHECKPOINT) is None:
        return 0
    meta, _ = load_lora_state(out / CHECKPOINT, modules, optimizer)
    return int(meta["step"])


def prepare_lora(pipe, cfg: SFTConfig, init_lora: str | Path | None = None) -> dict:
    """Put trainable LoRA adapters named 'default' on the U-Net (and text encoders: SDXL has
    two): fresh, or loaded from a previous round's file (round k+1 continues round k's model)."""
    from rewardiff.models.lora import add_lora, unet_lora_targets

    modules = {}
    if init_lora is not None:
        path = Path(init_lora)
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="default")
        modules["unet"] = pipe.unet
    elif cfg.unet_lora != "none":
        add_lora(pipe.unet, rank=cfg.rank, alpha=cfg.alpha, targets=unet_lora_targets(cfg.unet_lora))
        modules["unet"] = pipe.unet
    if cfg.train_text_encoder:
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, name, None)
            if encoder is None:
                continue
            if not any("lora_" in n for n, _ in encoder.named_parameters()):
                add_lora(encoder, rank=cfg.rank, alpha=cfg.alpha)
            modules[name] = encoder
    return modules


def train_lora(pipe, examples: list[TrainExample], cfg: SFTConfig, out: str | Path, init_lora: str | Path | None = None, progress: bool = True,
               runtime: Runtime | None = None) -> Path:
    """Train (resuming from OUT/checkpoint) and write OUT/lora/lora.safetensors (diffusers format).

    `runtime` (default: one process on the pipeline's device, cfg's precision): under
    `accelerate launch` each process trains on its shard of every batch, gradients averaged."""
    from tqdm.auto import tqdm

    from rewardiff.io_utils import write_folder_atomically
    from rewardiff.models.lora import save_pipeline_lora
    from rewardiff.models.lora_formats import check_lora_format
    from rewardiff.train_log import TrainLog

    if cfg.loss not in ("sft", "dpo"):
        raise RewardiffError(f"train.loss must be 'sft' or 'dpo', got {cfg.loss!r}")
    check_lora_format(cfg.lora_format)
    if not examples:
        raise RewardiffError("nothing to train on: the judge kept no candidate (lower the judge thresholds or write more prompts)")
    if cfg.loss == "dpo" and any(e.rejected is None for e in examples):
        raise RewardiffError("DPO needs a rejected image for every example (best-vs-worst pairs)")
    if cfg.gradient_accumulation < 1:
        raise RewardiffError(f"train.gradient_accumulation must be >= 1, got {cfg.gradient_accumulation}")
    check_precision(cfg.mixed_precision, str(pipe.unet.device))
    timestep_bounds(pipe.scheduler, cfg.timesteps)  # a bad range fails before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "lora" / LORA_FILE
    if final.is_file():
        return final

    runtime = runtime or Runtime(str(pipe.unet.device), cfg.mixed_precision, cfg.allow_tf32)
    torch.manual_seed(cfg.seed)  # the LoRA's random init (A matrices) must not depend on earlier work in the process
    modules = prepare_lora(pipe, cfg, init_lora)
    params = [p for m in modules.values() for p in _trainable(m)]
    for p in params:
        p.data = p.data.float()  # LoRA master weights in float32 on a half-precision pipeline
    for m in modules.values():
        m.train()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(list(modules.values()))
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = _load_checkpoint(out, modules, optimizer)

    latents_w = _images_to_latents(pipe, [e.image for e in examples])
    latents_l = _images_to_latents(pipe, [e.rejected for e in examples]) if cfg.loss == "dpo" else None
    prompts = [e.prompt for e in examples]
    size = tuple(int(v) for v in examples[0].image.shape[:2])  # SDXL's time ids: uncropped images of this size
    cached_text = None
    if not cfg.train_text_encoder:
        with torch.no_grad():
            unique = ["", *dict.fromkeys(prompts)]
            encoded = _encode(pipe, unique, size)
            cached_text = {p: encoded[i:i + 1] for i, p in enumerate(unique)}
    log = TrainLog(out) if runtime.is_main else None
    if log is not None:
        log.keep_until(cfg.loss, start)  # rows after the checkpoint are logged again by this run
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train ({cfg.loss})", unit="step", disable=not (progress and runtime.is_main))
    for step in range(start, cfg.steps):
        losses, metrics = [], {}
        for micro in range(cfg.gradient_accumulation):
            with runtime.autocast():
                loss, metrics = _micro_step(pipe, cfg, step, micro, runtime, examples, prompts, latents_w, latents_l, cached_text, size)
            runtime.backward(loss / cfg.gradient_accumulation)
            losses.append(float(loss.detach()))
        grad_norm = runtime.step(params, optimizer, cfg.grad_clip, reduce="mean")
        names = sorted(metrics)  # DPO's are of this process's shard: averaged like the loss
        mean_loss, *values = [v / runtime.num_processes for v in runtime.sum([sum(losses) / len(losses), *(metrics[k] for k in names)])]
        metrics = dict(zip(names, values))
        if log is not None:
            log.log(cfg.loss, step + 1, loss=mean_loss, grad_norm=grad_norm, **metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            if runtime.is_main:
                _save_checkpoint(out, modules, optimizer, step + 1)
            runtime.wait()
    bar.close()
    if log is not None:
        log.close()
    for m in modules.values():
        m.eval()
    if runtime.is_main:
        write_folder_atomically(out / "lora", lambda tmp: save_pipeline_lora(tmp / LORA_FILE, pipe, modules, cfg.lora_format))
    runtime.wait()
    return final


def _micro_step(pipe, cfg: SFTConfig, step: int, micro: int, runtime: Runtime, examples: list[TrainExample], prompts: list[str],
                latents_w: torch.Tensor, latents_l: torch.Tensor | None, cached_text: dict | None,
                size: tuple[int, int]) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, metrics) of micro-batch `micro` of optimiser step `step` on this process's shard.

    Everything random is drawn for the global batch, as one process draws it, and then sharded:
    the examples and prompt dropout from an RNG seeded by (seed, step, micro), the noise and
    timesteps from a generator of the same key. So every process count trains on the same
    samples (and one process on those of before the runtime existed)."""
    key = cfg.seed * 1_000_003 + step
    rng = random.Random(key if micro == 0 else f"{key}:{micro}")
    noise_key = key if micro == 0 else int(np.random.SeedSequence([key, micro, 0]).generate_state(1)[0])
    gen = torch.Generator().manual_seed(noise_key)
    idx = [rng.randrange(len(examples)) for _ in range(min(cfg.batch_size, len(examples)))]
    batch_prompts = ["" if rng.random() < cfg.cond_dropout else prompts[i] for i in idx]
    noise, t = draw_noise(pipe.scheduler, (len(idx), *latents_w.shape[1:]), gen, cfg.timesteps)
    part = runtime.shard(len(idx), "examples per batch")
    idx, batch_prompts, noise, t = idx[part], batch_prompts[part], noise[part], t[part]
    device = pipe.unet.device
    if cached_text is not None:
        text = Conditioning.cat([cached_text[p] for p in batch_prompts]).to(device)
    else:
        text = _encode(pipe, batch_prompts, size)
    z0 = latents_w[idx].to(device)
    if cfg.loss == "sft":
        uncond = None
        if cfg.guided_loss > 1.0:
            n = len(batch_prompts)
            uncond = Conditioning.cat([cached_text[""]] * n).to(device) if cached_text is not None else _encode(pipe, [""] * n, size)
        return denoising_loss(pipe.unet, pipe.scheduler, z0, text, snr_gamma=cfg.snr_gamma, noise=(noise, t), uncond=uncond,
                              guidance=cfg.guided_loss, guidance_rescale=cfg.guided_loss_rescale), {}
    zl = latents_l[idx].to(device)
    err, ref = dpo_errors(pipe, z0, zl, noise.to(device), t.to(device), text, batch_prompts if cfg.train_text_encoder else None)
    b = len(idx)
    loss, metrics = diffusion_dpo_loss(err[:b], err[b:], ref[:b], ref[b:], cfg.dpo_beta)
    if cfg.dpo_sft_weight:
        loss = loss + cfg.dpo_sft_weight * err[:b].mean()
    return loss, metrics


def validate_sft_config(cfg: SFTConfig, where: str = "train") -> None:
    """Refuse, before any work, settings that cannot train (each error names the field)."""
    from rewardiff.generation import is_finite_number

    if cfg.loss not in ("sft", "dpo"):
        raise RewardiffError(f"{where}.loss must be 'sft' or 'dpo', got {cfg.loss!r}")
    for name in ("rank", "steps", "batch_size", "checkpoint_every"):
        value = getattr(cfg, name)
        if not (isinstance(value, int) and value >= 1):
            raise RewardiffError(f"{where}.{name} must be a whole number >= 1, got {value!r}")
    for name in ("lr", "alpha", "grad_clip", "dpo_beta"):
        value = getattr(cfg, name)
        if not (is_finite_number(value) and value > 0):
            raise RewardiffError(f"{where}.{name} must be a finite number > 0, got {value!r}")
    for name in ("weight_decay", "snr_gamma", "dpo_sft_weight", "guided_loss"):
        value = getattr(cfg, name)
        if not (is_finite_number(value) and value >= 0):
            raise RewardiffError(f"{where}.{name} must be a finite number >= 0, got {value!r}")
    if not (is_finite_number(cfg.guided_loss_rescale) and 0 <= cfg.guided_loss_rescale <= 1):
        raise RewardiffError(f"{where}.guided_loss_rescale must be in [0, 1], got {cfg.guided_loss_rescale!r}")
    if cfg.guided_loss > 1.0 and cfg.loss != "sft":
        raise RewardiffError(f"{where}.guided_loss applies to loss 'sft' only, got loss {cfg.loss!r}")
    if not (is_finite_number(cfg.cond_dropout) and 0 <= cfg.cond_dropout < 1):
        raise RewardiffError(f"{where}.cond_dropout must be in [0, 1), got {cfg.cond_dropout!r}")
    if cfg.unet_lora not in UNET_LORA_SCOPES:
        raise RewardiffError(f"{where}.unet_lora must be one of {', '.join(UNET_LORA_SCOPES)}, got {cfg.unet_lora!r}")
    if cfg.unet_lora == "none" and not cfg.train_text_encoder:
        raise RewardiffError(f"{where}.unet_lora is 'none' and {where}.train_text_encoder is false: nothing would be trained")
