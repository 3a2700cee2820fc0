"""One DDIM step that also returns log p(x_{t-1} | x_t): the policy density of DDPO / TexForce.

Adapted from diffusers `DDIMScheduler.step` (schedulers/scheduling_ddim.py, 0.42) and
ddpo-pytorch `diffusers_patch/ddim_with_logprob.py`. What changed:
- returns the Gaussian's mean and std and the exact log-density of `prev_sample`, summed over
  (C, H, W) (ddpo-pytorch takes the mean over dims, a different, unnormalised quantity);
- `prev_sample` may be given, to be scored instead of sampled (PPO recomputes the log-prob of a
  stored trajectory under the current weights);
- `timestep` may be one int / 0-dim tensor (all images at the same step, as the pipeline) or a
  (B,) tensor (one step per image, as ddpo-pytorch's per-sample timestep shuffling);
- no `use_clipped_model_output`, `variance_noise`, `return_dict` (unused by the RL code);
- the schedule's alphas, sigma_t, the coefficients, pred_x0 and the mean are float32 whatever the
  sample's dtype (diffusers casts the alphas to the sample's dtype: wrong sigma_t in float16, NaN in
  bfloat16); `prev_sample` comes back in the sample's dtype;
- the radicands of sigma_t and of the direction coefficient are clamped at 0 (on a zero-terminal-SNR
  schedule with eta = 1 the first step's rounds to -6e-8: NaN in diffusers too).
Thresholding and clip_sample are honoured as in diffusers, so with eta = 0 `prev_sample` equals
`DDIMScheduler.step(...).prev_sample` for epsilon, v_prediction and sample prediction types and
zero-terminal-SNR schedules.

Notation (DDIM paper, Song et al. 2021, eq. 12), variable names in brackets:
    alpha_bar_t [alpha_t], alpha_bar_{t-1} [alpha_prev], x_0 predicted [pred_x0], eps [pred_eps]
    sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))            [std]
    mean    = sqrt(a_prev) * pred_x0 + sqrt(1 - a_prev - sigma_t^2) * pred_eps      [mean]
    x_{t-1} = mean + sigma_t * z,  z ~ N(0, I)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rewardiff.errors import RewardiffError

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # x_{t-1}, (B, C, H, W)
    log_prob: torch.Tensor  # (B,) float32 exact log N(x_{t-1}; mean, std^2 I), summed over C, H, W (zeros when eta = 0)
    mean: torch.Tensor  # (B, C, H, W) float32 mean of p(x_{t-1} | x_t)
    std: torch.Tensor  # float32 sigma_t: 0-dim for one shared timestep, (B, 1, 1, 1) for per-image timesteps
    pred_original_sample: torch.Tensor  # float32 x_0 predicted at this step (differentiable if model_output is)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I) per image, summed over all but the batch dim -> (B,).

    `std` broadcasts against x (a scalar or (B, 1, 1, 1)); it must be > 0. Computed in float32
    (a float16 sum over 16k latent dims would lose whole nats).
    """
    x, mean = x.float(), mean.float()
    std = torch.as_tensor(std, device=x.device).float()
    z = (x - mean) / std
    per_dim = -0.5 * z**2 - torch.log(std) - _LOG_SQRT_2PI
    return per_dim.expand_as(x).flatten(1).sum(dim=1)


def gaussian_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, std^2 I) || N(mean_q, std^2 I)) per image -> (B,): sum (mean_p - mean_q)^2 / (2 std^2).

    Two DDIM steps at the same (x_t, t, eta) share sigma_t, so their KL has this closed form
    (ReFL's penalty between the LoRA model and the frozen model).
    """
    mean_p, mean_q = mean_p.float(), mean_q.float()
    std = torch.as_tensor(std, device=mean_p.device).float()
    per_dim = (mean_p - mean_q) ** 2 / (2 * std**2)
    return per_dim.expand_as(mean_p).flatten(1).sum(dim=1)


def _like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Schedule values as float32 on like's device (0-dim, or (B, 1, 1, 1) per image).

    Always float32, never like's dtype: in float16 / bfloat16 the schedule's alphas round (SD 1.5's
    sigma_t at t = 1 came out 0.01804 instead of 0.02065 in float16, NaN in bfloat16)."""
    out = values.to(device=like.device, dtype=torch.float32)
    return out if out.dim() == 0 else out.view(-1, *([1] * (like.dim() - 1)))


def _sqrt_nonneg(x: torch.Tensor) -> torch.Tensor:
    """sqrt of a radicand that is >= 0 in exact arithmetic but may round below it.

    With a zero-terminal-SNR schedule the first step has alpha_t = 0, so sigma_t^2 = 1 - alpha_prev
    (eta = 1) and 1 - alpha_prev - sigma_t^2 is exactly 0; float32 gives -6e-8 for some step
    counts (3, 6, 7 on the shapes schedule), whose sqrt was NaN."""
    return x.clamp(min=0).sqrt()


def ddim_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    prev_sample: torch.Tensor | None = None,
) -> StepOutput:
    """x_t -> x_{t-1} by DDIM with noise weight eta, and log p(x_{t-1} | x_t).

    Args:
        scheduler: a `DDIMScheduler` after `set_timesteps` (its alphas and step spacing are used).
        model_output: U-Net output (after guidance) in the scheduler's prediction type.
        timestep: current t, an int, a 0-dim tensor, or a (B,) tensor of per-image steps.
        sample: x_t, (B, C, H, W).
        eta: 0 = deterministic DDIM, 1 = DDPM-like variance.
        generator: one generator or one per image (as the pipeline's `generator` list) for the noise.
        prev_sample: if given, this x_{t-1} is scored instead of drawing a new one (PPO).
    """
    if scheduler.num_inference_steps is None:
        raise RewardiffError("scheduler has no timesteps: call scheduler.set_timesteps(steps) first")
    config = scheduler.config
    # 1. previous step t - T / K, exactly as DDIMScheduler.step (prev < 0 -> final_alpha_cumprod)
    t = torch.as_tensor(timestep).to("cpu", torch.long)
    prev_t = t - config.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod.to("cpu")  # diffusers' add_noise may have moved them; 1000 floats
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=alphas.dtype)
    alpha_t = _like(alphas[t], sample)
    alpha_prev = _like(torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)], final), sample)
    beta_t = 1 - alpha_t
    # all arithmetic in float32, op for op as DDIMScheduler.step on float32 tensors (so eta = 0 and
    # eta > 0 steps equal diffusers' fp32 ones); only x_{t-1} is cast back to the sample's dtype
    x_t, out = sample.float(), model_output.float()

    # 2. predicted x_0 and eps from the model output ("predicted x_0" of DDIM eq. 12)
    if config.prediction_type == "epsilon":  # alpha_t = 0 (zero terminal SNR) gives inf here, as in diffusers
        pred_x0 = (x_t - beta_t ** (0.5) * out) / alpha_t ** (0.5)
        pred_eps = out
    elif config.prediction_type == "sample":
        pred_x0 = out
        pred_eps = (x_t - alpha_t ** (0.5) * pred_x0) / beta_t ** (0.5)
    elif config.prediction_type == "v_prediction":
        pred_x0 = (alpha_t**0.5) * x_t - (beta_t**0.5) * out
        pred_eps = (alpha_t**0.5) * out + (beta_t**0.5) * x_t
    else:
        raise RewardiffError(f"unknown prediction_type {config.prediction_type!r}")

    # 3. optional thresholding / clipping of x_0, as the scheduler is configured
    if config.thresholding:
        pred_x0 = scheduler._threshold_sample(pred_x0)
    elif config.clip_sample:
        pred_x0 = pred_x0.clamp(-config.clip_sample_range, config.clip_sample_range)

    # 4. sigma_t (DDIM eq. 16)
    variance = (1 - alpha_prev) / beta_t * (1 - alpha_t / alpha_prev)
    std = eta * _sqrt_nonneg(variance)

    # 5. the mean of p(x_{t-1} | x_t) (DDIM eq. 12 without the noise term)
    direction = _sqrt_nonneg(1 - alpha_prev - std**2) * pred_eps
    mean = alpha_prev ** (0.5) * pred_x0 + direction

    # 6. draw x_{t-1} (unless given), in the sample's dtype, and score that stored value, so a
    # later recomputation from the stored trajectory (PPO) sees the same density
    if prev_sample is None:
        if eta > 0:
            from diffusers.utils.torch_utils import randn_tensor

            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
            prev_sample = (mean + std * noise.float()).to(sample.dtype)
        else:
            prev_sample = mean.to(sample.dtype)
    if eta > 0:
        # a step with sigma_t = 0 (alpha_prev = 1: `set_alpha_to_one` at the last step) is a point
        # mass: its log-prob is 0, not the NaN of 0 / 0
        positive = std > 0
        log_prob = gaussian_log_prob(prev_sample.detach(), mean, torch.where(positive, std, torch.ones_like(std)))
        if not bool(positive.all()):
            log_prob = torch.where(positive.reshape(-1), log_prob, torch.zeros_like(log_prob))
    else:  # a point mass: no density; zeros keep shapes uniform for callers that ignore it
        log_prob = torch.zeros(sample.shape[0], device=sample.device, dtype=torch.float32)
    return StepOutput(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=torch.as_tensor(std), pred_original_sample=pred_x0)
