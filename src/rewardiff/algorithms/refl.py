"""ReFL with a KL penalty (Xu et al. 2023 "ImageReward", sec. 4; the Quyen report, eq. 5).

Reward feedback learning backpropagates a differentiable reward through ONE late denoising step:

1. sample T DDIM steps under no_grad, stopping at a random step t among the last `last_k`
   (the report: t in [30, 40) of T = 40; only the last step is "very unstable");
2. run step t with grad through the LoRA U-Net: x_0 predicted at t -> VAE decode (with grad) ->
   reward r (must be differentiable);
3. minimise  L = -alpha * r + beta * KL(p_theta(x_{t-1} | x_t, z) || p_pre(x_{t-1} | x_t, z)),
   the KL in closed form between two Gaussians with the same sigma_t (the DDIM step of the LoRA
   model and of the frozen model = the same U-Net with its adapters disabled, under no_grad).

The pipeline and the reward are injected (the CLI builds them); only a U-Net LoRA is trained.
Every random choice of optimiser step s (prompts, image seeds, t) comes from an RNG seeded by
(seed, s, micro-batch), so a run killed after a checkpoint resumes to bit-identical weights.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rewardiff.algorithms.lora_checkpoint import load_lora_state, lora_parameters, read_lora_meta, save_lora_state
from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward
from rewardiff.runtime import Runtime, check_precision

LORA_FILE = "lora.safetensors"
CHECKPOINT = "checkpoint"
RESUME_FREE_FIELDS = ("train_steps", "save_every", "out", "threads", "device", "lora_format", "mixed_precision", "allow_tf32", "gradient_checkpointing")
"""Config fields a resumed run may change; any other difference means another run."""


@dataclass
class ReFLConfig:
    model: str = "shapes"  # generator the CLI loads: 'shapes', a pipeline folder or a hub id
    reward: list[str] = field(default_factory=lambda: ["clip@shapes"])  # reward specs NAME[@MODEL][:WEIGHT], summed; all differentiable
    prompts: str = "shapes:train"  # prompt source: file, 'shapes:train', or a literal prompt
    steps: int = 40  # T: DDIM steps of the sampling chain
    last_k: int = 10  # the grad step t is drawn uniformly from the last `last_k` steps of T
    eta: float = 0.0  # DDIM noise weight of the no-grad prefix (0 = the chain evaluation samples)
    kl_eta: float = 1.0  # sigma_t of the step distributions the KL compares, as a DDIM eta (> 0)
    alpha: float = 1.0  # reward weight in the loss (per reward unit)
    beta: float = 0.01  # KL weight in the loss (per nat)
    lr: float = 1e-4  # AdamW learning rate of the LoRA parameters
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradient clipping (L2 norm over LoRA parameters); 0 = off
    lora_rank: int = 4  # rank of the U-Net LoRA (alpha = rank: scale 1)
    batch_size: int = 4  # images (prompts) per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    train_steps: int = 100  # optimiser steps
    guidance: float = 5.0  # classifier-free guidance scale
    guidance_rescale: float = 0.0  # Lin et al. 2023 rescale (shapes generator: 0.7)
    gradient_checkpointing: bool = False  # recompute U-Net activations in backward (memory for time)
    mixed_precision: str = "no"  # forward passes in no | bf16 | fp16 (autocast; LoRA master weights fp32; fp16 adds a grad scaler)
    allow_tf32: bool = False  # TF32 matmuls and convolutions on CUDA
    seed: int = 0  # seeds the LoRA init and every step's prompts, image noise and t
    save_every: int = 10  # optimiser steps between checkpoints (and at the end)
    out: str = "runs/refl"  # run directory: lora.safetensors, checkpoint/, train_log.jsonl, config.yaml
    lora_format: str = "diffusers"  # key names of OUT/lora.safetensors: diffusers | kohya (A1111, ComfyUI)
    device: str = "cpu"  # cpu, cuda, ...
    threads: int = 0  # torch CPU threads; 0 = torch's default


def refl_loss(reward: torch.Tensor, kl: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Batch mean of -alpha * r + beta * KL (the report's eq. 5); both inputs (B,).

    >>> refl_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.5]), alpha=2.0, beta=0.1)
    tensor(-3.9000)
    """
    if reward.shape != kl.shape:
        raise ValueError(f"reward {tuple(reward.shape)} and kl {tuple(kl.shape)} must have the same shape")
    return (-alpha * reward + beta * kl).mean()


def check_differentiable(reward: Reward) -> None:
    """ReFL backpropagates through the reward: refuse one that cannot, naming it."""
    if reward.differentiable:
        return
    parts = getattr(reward, "parts", None)
    names = [key for key, r, _ in parts if not r.differentiable] if parts else [reward.name]
    raise RewardiffError(f"ReFL needs a differentiable reward; {', '.join(repr(n) for n in names)} is not "
                         "(use DDPO/TexForce for non-differentiable rewards: rewardiff train ddpo)")


def _check_config(cfg: ReFLConfig) -> None:
    from rewardiff.models.lora_formats import check_lora_format

    check_lora_format(cfg.lora_format)
    if cfg.steps < 1 or not 1 <= cfg.last_k <= cfg.steps:
        raise RewardiffError(f"need steps >= 1 and 1 <= last_k <= steps, got steps={cfg.steps}, last_k={cfg.last_k}")
    if cfg.kl_eta <= 0:
        raise RewardiffError(f"kl_eta must be > 0 (the KL of two point masses is undefined), got {cfg.kl_eta}")
    for name in ("batch_size", "grad_accum", "train_steps", "save_every", "lora_rank"):
        if getattr(cfg, name) < 1:
            raise RewardiffError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    check_precision(cfg.mixed_precision, cfg.device)


@contextlib.contextmanager
def adapters_disabled(unet):
    """The frozen pre-trained model: the same U-Net with its LoRA switched off."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


@dataclass
class MicroBatch:
    """Everything random about one micro-batch, drawn from its own seeded RNG."""

    prompts: list[str]
    seeds: list[int]  # per-image initial-noise seeds
    stop: int  # index (0-based) of the grad step among the T steps

    @classmethod
    def draw(cls, cfg: ReFLConfig, prompts: list[str], step: int, micro: int) -> "MicroBatch":
        rng = random.Random(f"refl:{cfg.seed}:{step}:{micro}")
        return cls([rng.choice(prompts) for _ in range(cfg.batch_size)],
                   [rng.getrandbits(31) for _ in range(cfg.batch_size)],
                   cfg.steps - cfg.last_k + rng.randrange(cfg.last_k))

    def shard(self, part: slice) -> "MicroBatch":
        """This process's images of the global micro-batch (same grad step t for all)."""
        return MicroBatch(self.prompts[part], self.seeds[part], self.stop)


@dataclass
class StepStats:
    reward: float  # mean reward of the micro-batches
    kl: float  # mean KL (nats per image)
    loss: float  # mean loss


def refl_micro_batch(cfg: ReFLConfig, pipe, reward: Reward, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reward, kl) of one micro-batch; the loss carries the graph into the LoRA U-Net."""
    from rewardiff.diffusion import (
        ddim_step_with_logprob, decode_latents, gaussian_kl, guided_model_output, sample_trajectories,
    )

    unet = pipe.unet
    with torch.no_grad():
        traj = sample_trajectories(pipe, batch.prompts, seeds=batch.seeds, steps=cfg.steps, guidance=cfg.guidance,
                                   guidance_rescale=cfg.guidance_rescale, eta=cfg.eta, stop_at_step=batch.stop, decode=False)
    x_t = traj.latents[:, -1]
    t = pipe.scheduler.timesteps[batch.stop]
    cond, uncond = traj.cond, traj.uncond  # SDXL: with pooled embeds and time ids
    # the step's own sample is not used (only its mean and x_0), so it is drawn from a fixed generator
    gen = torch.Generator(device=x_t.device).manual_seed(0)
    out = guided_model_output(unet, x_t, t, cond, uncond, cfg.guidance, cfg.guidance_rescale)
    step = ddim_step_with_logprob(pipe.scheduler, out, t, x_t, eta=cfg.kl_eta, generator=gen)
    with torch.no_grad(), adapters_disabled(unet):
        out_pre = guided_model_output(unet, x_t, t, cond, uncond, cfg.guidance, cfg.guidance_rescale)
        mean_pre = ddim_step_with_logprob(pipe.scheduler, out_pre, t, x_t, eta=cfg.kl_eta, generator=gen).mean
    kl = gaussian_kl(step.mean, mean_pre, step.std)
    images = decode_latents(pipe, step.pred_original_sample)
    r = reward(images, batch.prompts).scores.to(kl.device)
    return refl_loss(r, kl, cfg.alpha, cfg.beta), r.detach(), kl.detach()


def _load_checkpoint(directory: Path, unet, optimizer: torch.optim.Optimizer, cfg: ReFLConfig) -> int:
    """Restore LoRA, optimiser and RNG state; returns the number of optimiser steps done."""
    from rewardiff.config import to_dict

    meta = read_lora_meta(directory)
    now = {k: v for k, v in to_dict(cfg).items() if k not in RESUME_FREE_FIELDS}
    then = {k: v for k, v in meta["config"].items() if k not in RESUME_FREE_FIELDS}
    diffs = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    if diffs:
        k = diffs[0]
        raise RewardiffError(f"{directory.parent} holds another ReFL run ({k}: {then.get(k)!r} there, {now.get(k)!r} now); choose another --out")
    meta, extra = load_lora_state(directory, {"unet": unet}, optimizer)
    torch.set_rng_state(extra["torch_rng"])
    return int(meta["step"])


def train_refl(cfg: ReFLConfig, pipe, reward: Reward, progress: bool = True, runtime: Runtime | None = None) -> Path:
    """Train a U-Net LoRA by ReFL + KL; resumes from OUT/checkpoint. Returns OUT/lora.safetensors.

    Under `accelerate launch` each process runs its shard of every micro-batch (the global draw
    of `MicroBatch`), gradients averaged; the main process writes."""
    from rewardiff.generation import check_prompts_for_model, read_prompts
    from rewardiff.run_folder import claim_run_folder_main, settings_of

    _check_config(cfg)
    check_differentiable(reward)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    runtime = runtime or Runtime(cfg.device, cfg.mixed_precision, cfg.allow_tf32)
    runtime.shard(cfg.batch_size, "images per micro-batch")  # refuse an uneven split now
    pipe.to(runtime.device)
    prompts = read_prompts(cfg.prompts)
    check_prompts_for_model(prompts, cfg.model)
    with claim_run_folder_main(cfg.out, "train refl", settings_of(cfg, RESUME_FREE_FIELDS), cfg, runtime.is_main) as folder:
        return _train_in(folder, cfg, pipe, reward, prompts, progress, runtime)


def _train_in(folder, cfg: ReFLConfig, pipe, reward: Reward, prompts: list[str], progress: bool, runtime: Runtime) -> Path:
    """train_refl's work, in the claimed run folder."""
    from tqdm.auto import tqdm

    from rewardiff.config import to_dict
    from rewardiff.diffusion import ensure_ddim
    from rewardiff.models.lora import add_lora, save_pipeline_lora
    from rewardiff.train_log import RecordingReward, TrainLog

    out = folder.path
    ensure_ddim(pipe)

    unet = pipe.unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        add_lora(unet, rank=cfg.lora_rank)
    params = list(lora_parameters({"unet": unet}).values())
    for p in params:
        p.data = p.data.float()  # LoRA master weights in float32 on a half-precision pipeline
        p.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    ckpt = out / CHECKPOINT
    start = _load_checkpoint(ckpt, unet, optimizer, cfg) if read_lora_meta(ckpt) is not None else 0
    main = runtime.is_main
    folder.commit()
    log = TrainLog(out) if main else None
    reward = RecordingReward(reward)  # its last x0 predictions go to the log every N steps
    if log is not None:
        log.keep_until("refl", start)
    bar = tqdm(total=cfg.train_steps, initial=min(start, cfg.train_steps), desc="refl", unit="step", disable=not (progress and main))
    for step in range(start, cfg.train_steps):
        rewards, kls, losses = [], [], []
        for micro in range(cfg.grad_accum):
            batch = MicroBatch.draw(cfg, prompts, step, micro).shard(runtime.shard(cfg.batch_size, "images per micro-batch"))
            with runtime.autocast():
                loss, r, kl = refl_micro_batch(cfg, pipe, reward, batch)
            runtime.backward(loss / cfg.grad_accum)
            rewards.append(r.mean().item())
            kls.append(kl.mean().item())
            losses.append(loss.item())
        runtime.step(params, optimizer, cfg.max_grad_norm, reduce="mean")
        totals = [v / runtime.num_processes for v in runtime.sum([sum(rewards) / len(rewards), sum(kls) / len(kls), sum(losses) / len(losses)])]
        stats = StepStats(*totals)
        if log is not None:
            log.log("refl", step + 1, reward=stats.reward, kl=stats.kl, loss=stats.loss)
            if reward.last_images is not None and log.wants_images(step + 1):
                log.images("refl/x0_predictions", reward.last_images, step + 1, reward.last_prompts)
        bar.update(1)
        bar.set_postfix(reward=f"{stats.reward:.3f}", kl=f"{stats.kl:.3g}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.train_steps:
            if main:
                save_lora_state(ckpt, {"unet": unet}, optimizer, {"step": step + 1, "config": to_dict(cfg)},
                                extra={"torch_rng": torch.get_rng_state()})
            runtime.wait()
    bar.close()
    if log is not None:
        log.close()
    final = out / LORA_FILE
    if main:
        save_pipeline_lora(final, pipe, {"unet": unet}, cfg.lora_format)  # atomic: a kill never leaves a half-written LoRA
    runtime.wait()
    return final
