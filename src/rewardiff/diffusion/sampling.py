"""Sample whole DDIM trajectories with log-probabilities: the one sampler of ReFL, DDPO and CCSR.

The loop is diffusers' `StableDiffusionPipeline.__call__` / `StableDiffusionXLPipeline.__call__`
(0.42; SDXL's pooled embeds and time ids travel in `Conditioning`) reduced to what RL needs, with
the same arithmetic so that, with eta = 0 and the same per-image seeds, the images are the
pipeline's images:
- initial noise drawn by `randn_tensor` from one generator per image (the pipeline's
  `generator=[...]` list), times `init_noise_sigma`;
- classifier-free guidance in ONE batched U-Net call on cat([uncond, cond]), then diffusers'
  `rescale_noise_cfg` when guidance_rescale > 0;
- the step is `ddim_step_with_logprob`, which also returns log p(x_{t-1} | x_t).
What changed: the negative ("") prompt is encoded once per call together with the prompts (one
text-encoder call) and broadcast, not encoded B times; the trajectory is written into one
preallocated tensor; nothing is decoded unless the whole chain ran and `decode` is set.
Everything runs under the caller's grad mode: TexForce needs grads through the text encoder,
ReFL runs a no-grad prefix then a step with grad, PPO samples under no_grad.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rewardiff.diffusion.conditioning import Conditioning, as_conditioning, encode_text, text_encoders, unconditional, uses_added_cond
from rewardiff.diffusion.logprob import ddim_step_with_logprob
from rewardiff.errors import RewardiffError


@dataclass
class Trajectory:
    latents: torch.Tensor  # (B, K+1, C, H, W): x_T ... x after the last step run
    log_probs: torch.Tensor  # (B, K) float32 log p(x_{t-1} | x_t) of each step (zeros when eta = 0)
    timesteps: torch.Tensor  # (K,) the scheduler timesteps t of the steps run
    cond: Conditioning  # (B rows) the prompts' conditioning (SDXL: with pooled embeds and time ids)
    uncond: Conditioning  # (B rows) the negative prompt's (a broadcast view of one row)
    images: torch.Tensor | None  # (B, 3, H, W) in [0, 1], decoded final x_0 when the whole chain ran

    @property
    def prompt_embeds(self) -> torch.Tensor:
        return self.cond.embeds

    @property
    def negative_prompt_embeds(self) -> torch.Tensor:
        return self.uncond.embeds


def check_supported(pipe) -> None:
    """A Stable-Diffusion-shaped pipeline: a U-Net and its text encoder(s) (SD 1.x / 2.x, SDXL).

    SDXL-style pipelines without the first text encoder (the refiner) are refused: their
    conditioning is not the base model's."""
    if getattr(pipe, "unet", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise RewardiffError(f"{type(pipe).__name__} is not a Stable-Diffusion-shaped pipeline (needs unet and text_encoder)")
    if uses_added_cond(pipe) and getattr(pipe, "text_encoder_2", None) is None:
        raise RewardiffError(f"{type(pipe).__name__}: an SDXL U-Net without text_encoder_2 is not supported")


def ensure_ddim(pipe):
    """The log-prob is that of a DDIM step: a pipeline shipped with another scheduler (SD 1.5's
    PNDM) gets a DDIMScheduler built from the same config, as ddpo-pytorch does. Returns it."""
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        config = dict(pipe.scheduler.config)
        # SD 1.5 / 2.1 ship set_alpha_to_one = False; SDXL's Euler config has no such key and
        # DDIM's default (True) would make the last step deterministic (sigma_t = 0, no log-prob)
        config.setdefault("set_alpha_to_one", False)
        pipe.scheduler = DDIMScheduler.from_config(config)
    return pipe.scheduler


def encode_prompts(pipe, prompts: list[str], text_encoder=None, size: tuple[int, int] | None = None,
                   text_encoder_2=None) -> tuple[Conditioning, Conditioning]:
    """(cond, uncond), B rows each, as the pipeline's `encode_prompt` with its default negative
    prompt ("" for SD; zeros for SDXL with `force_zeros_for_empty_prompt`).

    For SD one text-encoder call on the B prompts plus one "" row; uncond is that row broadcast
    (a view). Runs under the caller's grad mode; `text_encoder` / `text_encoder_2` default to the
    pipeline's; `size` (H, W) sets SDXL's time ids.
    """
    if not prompts:
        raise RewardiffError("encode_prompts: no prompts")
    encoders = text_encoders(pipe)
    if text_encoder is not None:
        encoders[0] = text_encoder
    if text_encoder_2 is not None and len(encoders) > 1:
        encoders[1] = text_encoder_2
    if uses_added_cond(pipe) and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        cond = encode_text(pipe, list(prompts), size, encoders)
        return cond, unconditional(pipe, cond, size, encoders).expand(len(prompts))
    both = encode_text(pipe, list(prompts) + [""], size, encoders)
    return both[:-1], both[-1:].expand(len(prompts))


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Lin et al. 2023 sec. 3.4, the same ops as diffusers' `rescale_noise_cfg` (kept here so a
    diffusers refactor of its pipeline module cannot break us)."""
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def guided_model_output(unet, latents: torch.Tensor, timestep: int | torch.Tensor, cond: Conditioning | torch.Tensor,
                        uncond: Conditioning | torch.Tensor, guidance: float, guidance_rescale: float = 0.0) -> torch.Tensor:
    """Classifier-free guided U-Net output: ONE batched call on cat([uncond, cond]).

    guidance <= 1 means no guidance (one call on cond only), as the pipeline does.
    `timestep` may be shared (int / 0-dim) or per image ((B,) tensor); cond / uncond are
    `Conditioning` (SDXL: added cond kwargs) or plain (B, L, D) embeddings (SD).
    """
    cond = as_conditioning(cond)
    if guidance <= 1.0:
        return unet(latents, timestep, **cond.unet_kwargs(), return_dict=False)[0]
    t = timestep
    if isinstance(t, torch.Tensor) and t.dim() == 1:
        t = torch.cat([t, t])
    both = Conditioning.cat([as_conditioning(uncond), cond])
    out = unet(torch.cat([latents, latents]), t, **both.unet_kwargs(), return_dict=False)[0]
    out_uncond, out_cond = out.chunk(2)
    guided = out_uncond + guidance * (out_cond - out_uncond)
    if guidance_rescale > 0.0:
        guided = rescale_noise_cfg(guided, out_cond, guidance_rescale)
    return guided


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode x_0 latents to (B, 3, H, W) images in [0, 1]; differentiable (ReFL)."""
    vae = pipe.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return (images / 2 + 0.5).clamp(0, 1)


def initial_noise(pipe, batch: int, height: int, width: int, seeds: list[int] | None = None,
                  generator: torch.Generator | None = None, dtype: torch.dtype | None = None):
    """x_T as the pipeline draws it: one generator per seed (the pipeline's `generator=[...]`).

    Returns (latents, generators); the generators are reused for the step noise (eta > 0).
    """
    from diffusers.utils.torch_utils import randn_tensor

    device = pipe.unet.device
    gen: torch.Generator | list[torch.Generator] | None = generator
    if seeds is not None:
        if len(seeds) != batch:
            raise RewardiffError(f"{batch} prompts but {len(seeds)} seeds")
        gen_device = device if device.type != "mps" else torch.device("cpu")
        gen = [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]
    scale = pipe.vae_scale_factor
    shape = (batch, pipe.unet.config.in_channels, int(height) // scale, int(width) // scale)
    latents = randn_tensor(shape, generator=gen, device=device, dtype=dtype or pipe.unet.dtype)
    return latents * pipe.scheduler.init_noise_sigma, gen


def sample_trajectories(pipe, prompts: list[str], seeds: list[int] | None = None, generator: torch.Generator | None = None,
                        steps: int = 30, guidance: float = 5.0, guidance_rescale: float = 0.0, eta: float = 1.0,
                        stop_at_step: int | None = None, decode: bool = True, unet=None, text_encoder=None,
                        height: int | None = None, width: int | None = None, detach_chain: bool = False) -> Trajectory:
    """Run `steps` DDIM steps (or the first `stop_at_step`) for each prompt and return the trajectory.

    With eta = 0 and `seeds`, `images` equals `StableDiffusionPipeline(prompts, generator=[one per
    seed], guidance_scale=guidance, guidance_rescale=..., output_type="pt")`. `unet` /
    `text_encoder` default to the pipeline's (pass a LoRA-wrapped or frozen copy to use another).
    height / width default to the U-Net's sample size x the VAE scale.
    `detach_chain` (under grad mode): each step starts from the previous x_{t-1} detached, so the
    log-probs keep their graph to the weights but nothing flows along the chain (DDPO's per-step
    policy gradient taken from the sampling forward itself); images are then decoded without grad.
    """
    check_supported(pipe)
    prompts = list(prompts)
    unet = unet if unet is not None else pipe.unet
    scheduler = ensure_ddim(pipe)
    if steps < 1:
        raise RewardiffError(f"steps must be >= 1, got {steps}")
    k = steps if stop_at_step is None else stop_at_step
    if not 0 <= k <= steps:
        raise RewardiffError(f"stop_at_step must lie in [0, {steps}], got {stop_at_step}")
    default_size = unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or default_size, width or default_size

    device = unet.device
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps[:k]
    cond, uncond = encode_prompts(pipe, prompts, text_encoder, size=(height, width))
    x, gen = initial_noise(pipe, len(prompts), height, width, seeds, generator, dtype=cond.embeds.dtype)

    trail = x.new_empty((x.shape[0], k + 1, *x.shape[1:]))
    trail[:, 0] = x
    log_probs = torch.zeros((x.shape[0], k), dtype=torch.float32, device=x.device)
    for i, t in enumerate(timesteps):
        out = guided_model_output(unet, x, t, cond, uncond, guidance, guidance_rescale)
        step = ddim_step_with_logprob(scheduler, out, t, x, eta=eta, generator=gen)
        x = step.prev_sample.detach() if detach_chain else step.prev_sample
        trail[:, i + 1] = x
        log_probs[:, i] = step.log_prob
    images = decode_latents(pipe, x) if decode and k == steps else None
    return Trajectory(latents=trail, log_probs=log_probs, timesteps=timesteps, cond=cond, uncond=uncond, images=images)
