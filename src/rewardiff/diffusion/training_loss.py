"""The denoising loss's target and its min-SNR weight, shared by every trainer of a U-Net
(the shapes generator's pre-training, LoRA SFT and Diffusion-DPO), so fine-tuning weighs
timesteps the way the model was trained to."""

from __future__ import annotations

import torch

from rewardiff.diffusion.conditioning import Conditioning, as_conditioning
from rewardiff.diffusion.sampling import guided_model_output
from rewardiff.errors import RewardiffError


def _prediction_type(scheduler) -> str:
    """The scheduler's prediction type, refused unless training supports it."""
    kind = scheduler.config.prediction_type
    if kind not in ("epsilon", "v_prediction"):
        raise RewardiffError(f"prediction_type {kind!r} is not supported for training (epsilon or v_prediction)")
    return kind


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the U-Net predicts, from the scheduler's config."""
    if _prediction_type(scheduler) == "epsilon":
        return noise
    return scheduler.get_velocity(latents, noise, t)


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-example loss weight of min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) / SNR for an
    epsilon target, min(SNR, gamma) / (SNR + 1) for a v target; ones when gamma <= 0."""
    if gamma <= 0:
        return torch.ones(len(t))
    ac = scheduler.alphas_cumprod[t.cpu()].float()
    snr = ac / (1 - ac).clamp(min=1e-8)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if _prediction_type(scheduler) == "epsilon":
        return clipped / snr.clamp(min=1e-8)
    return clipped / (snr + 1)


def timestep_bounds(scheduler, fraction: tuple[float, float] | list[float] = (0.0, 1.0)) -> tuple[int, int]:
    """[lo, hi) training timesteps from a fraction of the schedule: (0.6, 1.0) is the noisiest 40%,
    where a sample's layout (which objects, where) is decided; its fine detail forms below."""
    if len(fraction) != 2:
        raise RewardiffError(f"timestep fraction must be [lo, hi], got {list(fraction)}")
    lo, hi = (float(f) for f in fraction)
    if not 0.0 <= lo < hi <= 1.0:
        raise RewardiffError(f"timestep fraction must satisfy 0 <= lo < hi <= 1, got [{lo}, {hi}]")
    n = scheduler.config.num_train_timesteps
    a, b = round(lo * n), round(hi * n)
    return a, max(b, a + 1)


def sample_timesteps(scheduler, n: int, gen: torch.Generator, fraction: tuple[float, float] | list[float] = (0.0, 1.0)) -> torch.Tensor:
    """n training timesteps, uniform over the given fraction of the schedule (CPU, from `gen`)."""
    lo, hi = timestep_bounds(scheduler, fraction)
    return torch.randint(lo, hi, (n,), generator=gen)


def draw_noise(scheduler, shape: tuple[int, ...] | torch.Size, gen: torch.Generator,
               timesteps: tuple[float, float] | list[float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, t) of a batch of latents of `shape`, drawn on the CPU from `gen` in that order.
    A multi-process trainer draws them for the global batch and takes its rows, so its samples
    do not depend on the number of processes."""
    noise = torch.randn(tuple(shape), generator=gen)
    return noise, sample_timesteps(scheduler, int(shape[0]), gen, timesteps)


def denoising_loss(unet, scheduler, latents: torch.Tensor, cond: Conditioning | torch.Tensor, gen: torch.Generator | None = None,
                   snr_gamma: float = 0.0, timesteps: tuple[float, float] | list[float] = (0.0, 1.0),
                   noise: tuple[torch.Tensor, torch.Tensor] | None = None, uncond: Conditioning | torch.Tensor | None = None,
                   guidance: float = 0.0, guidance_rescale: float = 0.0) -> torch.Tensor:
    """The standard diffusion training loss of one batch: noise and timesteps drawn (on the CPU,
    in that order) from `gen` (timesteps from the `timesteps` fraction of the schedule), or given
    as `noise` = (noise, t) (`draw_noise`), per-example MSE to `diffusion_target`, min-SNR
    weighted, mean. `cond` is SD embeddings (B, L, D) or a `Conditioning` (SDXL: pooled embeds and
    time ids as added cond kwargs). With `guidance` > 1 (and `uncond`) the prediction trained is the
    classifier-free-guided one the sampler uses, both branches in one batched call."""
    eps, t = noise if noise is not None else draw_noise(scheduler, latents.shape, gen, timesteps)
    eps, t = eps.to(latents.device), t.to(latents.device)
    noisy = scheduler.add_noise(latents, eps, t)
    if guidance > 1.0:
        if uncond is None:
            raise RewardiffError("a guided denoising loss needs the unconditional embeddings")
        pred = guided_model_output(unet, noisy, t, cond, uncond, guidance, guidance_rescale)
    else:
        pred = unet(noisy, t, **as_conditioning(cond).unet_kwargs()).sample
    per_example = ((pred.float() - diffusion_target(scheduler, latents, eps, t).float()) ** 2).mean(dim=(1, 2, 3))
    return (per_example * min_snr_weight(scheduler, t, snr_gamma).to(per_example.device)).mean()
