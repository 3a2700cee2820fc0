"""The denoising loss's target and its min-SNR weight, shared by every trainer of a U-Net
(the shapes generator's pre-training, LoRA SFT and Diffusion-DPO), so fine-tuning weighs
timesteps the way the model was trained to."""

from __future__ import annotations

import torch

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


def denoising_loss(unet, scheduler, latents: torch.Tensor, cond: torch.Tensor, gen: torch.Generator, snr_gamma: float = 0.0) -> torch.Tensor:
    """The standard diffusion training loss of one batch: noise and timesteps drawn (on the CPU,
    in that order) from `gen`, per-example MSE to `diffusion_target`, min-SNR weighted, mean."""
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=gen).to(latents.device)
    pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=cond).sample
    per_example = ((pred.float() - diffusion_target(scheduler, latents, noise, t).float()) ** 2).mean(dim=(1, 2, 3))
    return (per_example * min_snr_weight(scheduler, t, snr_gamma).to(per_example.device)).mean()
