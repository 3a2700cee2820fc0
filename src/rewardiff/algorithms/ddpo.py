"""DDPO (Black et al. 2023) with PPO on LoRA adapters of the U-Net, the text encoder (TexForce,
Chen et al. 2024) or both (joint).

One epoch = one sampling round:
1. sample `sample_batches` x `sample_batch_size` DDIM trajectories (eta > 0) under no_grad with
   the current LoRA, recording log p(x_{t-1} | x_t) of every step (`rewardiff.diffusion`);
2. score the decoded images under no_grad (any reward, non-differentiable included);
3. advantages (per-prompt running statistics, group-relative, or batch), clipped to +-adv_clip_max;
4. `inner_epochs` PPO passes: the log-prob of each stored x_{t-1} is recomputed under the current
   weights (`ddim_step_with_logprob(prev_sample=...)`), ratio = exp(new - old), clipped surrogate
   `ppo_loss`, gradients accumulated over the trained timesteps (a random `timestep_fraction` of
   each trajectory, drawn per sample as ddpo-pytorch) and `gradient_accumulation` minibatches.

TexForce (target text_encoder): the LoRA is on the CLIP text encoder, the U-Net frozen; the
prompt embeddings are recomputed WITH grad once per minibatch. Their gradient is accumulated on
a detached leaf over all timesteps and pushed through the text encoder once (the same gradient
as re-encoding at every timestep, for one text-encoder backward instead of K).

Efficiency (the loop against trl's DDPOTrainer, see benchmarks/bench_ddpo_vs_trl.py): guidance is
one batched U-Net call; the update runs `timestep_batch` timesteps of a minibatch in ONE U-Net
forward/backward (rows = samples x timesteps, per-row timesteps), which gives the same gradient as
one call per timestep with fewer, larger calls; U-Net-only runs reuse the sampled prompt embeddings.
When an epoch makes ONE optimiser step on the weights it sampled with (inner_epochs 1, every
timestep trained, one minibatch group holding all samples: trl's and the benchmark's setting),
the recomputed log-probs equal the sampled ones (ratio = 1 exactly), so recomputing them is a
second forward pass for nothing: `reuse_sampling_forward` samples under grad with the chain
detached between steps (`sample_trajectories(detach_chain=True)`) and backpropagates the same
PPO loss through the sampling graph (tested equal to the recomputed gradient). It keeps every
step's activations until the rewards are in: fine for the 32x32 shapes model, not for SD at 512.

Resume: OUT/checkpoint/ (LoRA, optimiser, tracker, RNG states, epoch, CPU time) is written
atomically every `save_every` epochs. Prompts, seeds and permutations of epoch e come from
generators seeded by (seed, e), so a killed run rerun with the same command ends with the
same weights, bit for bit, as an uninterrupted one (tests/test_ddpo.py).

The algorithm never loads a model: the pipeline and the reward are injected (the CLI loads them).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rewardiff.algorithms.advantages import MODES, PerPromptStatTracker, compute_advantages
from rewardiff.algorithms.lora_checkpoint import load_lora_state, read_lora_meta, save_lora_state
from rewardiff.config import to_dict
from rewardiff.diffusion.conditioning import backward_leaves
from rewardiff.diffusion import Conditioning, ddim_step_with_logprob, encode_prompts, guided_model_output, sample_trajectories
from rewardiff.errors import RewardiffError
from rewardiff.io_utils import write_json
from rewardiff.runtime import Runtime

TARGETS = ("unet", "text_encoder", "both")
CHECKPOINT = "checkpoint"
LORA_FILE = "lora.safetensors"
SUMMARY = "summary.json"
NOT_IN_SIGNATURE = ("epochs", "save_every", "out", "threads", "device", "lora_format", "mixed_precision", "allow_tf32", "gradient_checkpointing")
"""Fields a resumed run may change (run longer, elsewhere, with more threads or processes, in
another precision or LoRA file format); any other change means a different run."""


@dataclass
class DDPOConfig:
    model: str = "shapes"  # generator: 'shapes', a pipeline folder or a hub id (loaded by the CLI)
    reward: list[str] = field(default_factory=lambda: ["clip@shapes"])  # reward specs NAME[@MODEL][:WEIGHT], weighted sum
    prompts: str = "shapes:train"  # prompt source: file (.txt/.jsonl), shapes:train, or one literal prompt
    target: str = "unet"  # LoRA trained: unet (DDPO) | text_encoder (TexForce) | both (joint)
    lora_rank: int = 4  # LoRA rank r of every adapted projection
    lora_alpha: float | None = None  # LoRA alpha (scale alpha / r); None = rank, i.e. scale 1
    lr: float = 3e-4  # AdamW learning rate (per optimiser step)
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    adam_eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # clip the LoRA gradient's global L2 norm to this before each step
    epochs: int = 10  # sampling rounds; one round = sample, score, inner_epochs PPO passes
    sample_batch_size: int = 8  # images per sampling call
    sample_batches: int = 2  # sampling calls per epoch (images per epoch = sample_batch_size x sample_batches)
    samples_per_prompt: int = 1  # images of each drawn prompt per epoch (> 1 makes groups for 'group' advantages)
    train_batch_size: int = 8  # trajectories per PPO minibatch
    gradient_accumulation: int = 1  # minibatches per optimiser step
    timestep_batch: int = 2  # timesteps of a minibatch per U-Net forward/backward in the update (0 = all at once)
    reuse_sampling_forward: bool = False  # one optimiser step per epoch: take its gradient from the sampling forward (module doc)
    inner_epochs: int = 1  # PPO passes over one epoch's samples
    clip_range: float = 1e-4  # PPO clip epsilon on the PER-DIMENSION ratio exp(log-ratio / D) (ddpo-pytorch's 1e-4; independent of latent size)
    adv_clip_max: float = 5.0  # advantages clipped to [-adv_clip_max, adv_clip_max] (in reward std units)
    advantages: str = "per_prompt"  # per_prompt (running tracker, DDPO) | group (GRPO) | batch
    tracker_buffer: int = 32  # per-prompt tracker: rewards kept per prompt
    tracker_min_count: int = 16  # per-prompt tracker: rewards needed before a prompt uses its own statistics
    steps: int = 20  # DDIM steps per trajectory
    eta: float = 1.0  # DDIM noise weight (> 0: the policy must be stochastic to have a log-prob)
    guidance: float = 5.0  # classifier-free guidance scale
    guidance_rescale: float | None = None  # Lin et al. rescale; None = model default (0.7 shapes, else 0)
    timestep_fraction: float = 1.0  # fraction of the window's steps trained on (random per sample)
    train_window: list[float] = field(default_factory=lambda: [0.0, 1.0])  # trained part of each trajectory, as fractions of its steps from the noisiest (0) to the last (1); [0, 0.5] = the high-noise half, where layout is decided
    seed: int = 0  # seeds prompts, noise, LoRA init and minibatch order
    save_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    out: str = "runs/ddpo"  # run folder: lora.safetensors, checkpoint/, train_log.jsonl, summary.json
    lora_format: str = "diffusers"  # key names of OUT/lora.safetensors: diffusers | kohya (A1111, ComfyUI)
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    device: str = "cpu"  # cpu, cuda, cuda:1, mps
    dtype: str = "float32"  # weights dtype: float32 (LoRA training), float16, bfloat16, auto
    mixed_precision: str = "no"  # forward passes in no | bf16 | fp16 (autocast; LoRA master weights stay fp32; fp16 adds a grad scaler)
    gradient_checkpointing: bool = False  # recompute U-Net / text-encoder activations in backward (memory for time)
    allow_tf32: bool = False  # TF32 matmuls and convolutions on CUDA (Ampere+)


@dataclass
class Samples:
    """One epoch's trajectories, flattened over sampling batches: the PPO data."""

    prompts: list[str]
    latents: torch.Tensor  # (N, K+1, C, H, W)
    log_probs: torch.Tensor  # (N, K) under the sampling policy
    timesteps: torch.Tensor  # (K,)
    cond: Conditioning  # (N rows) prompt conditioning (SDXL: pooled embeds + time ids)
    uncond: Conditioning  # (N rows) negative-prompt conditioning
    rewards: torch.Tensor  # (N,)
    advantages: torch.Tensor | None = None  # (N,) clipped


@dataclass
class EpochStats:
    reward_mean: float
    reward_std: float
    loss: float
    approx_kl: float
    clipfrac: float


def per_dim_ratio(log_ratio: torch.Tensor, dims: int) -> torch.Tensor:
    """exp(log-ratio / D): the geometric-mean ratio per latent dimension.

    PPO clips a density ratio; summed over D latent dimensions the ratio of one DDIM step grows
    like exp(D * per-dim change), so a fixed epsilon means something different for the shapes
    latent (3 x 32 x 32) and for SD 1.5 (4 x 64 x 64) or SDXL (4 x 128 x 128). Dividing by D makes the
    trust region per dimension, which is what ddpo-pytorch's mean-over-dims log-prob clips with 1e-4.
    """
    return torch.exp(log_ratio / dims)


def ppo_loss(advantages: torch.Tensor, ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's clipped surrogate, to minimise: mean(max(-A r, -A clip(r, 1 - eps, 1 + eps))).

    A positive advantage gains nothing past ratio 1 + eps, a negative one nothing below 1 - eps:

    >>> ppo_loss(torch.tensor([1.0, -1.0]), torch.tensor([1.5, 0.5]), 0.2)  # (-1.2 + 0.8) / 2
    tensor(-0.2000)
    """
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean()


def validate(cfg: DDPOConfig) -> None:
    """Refuse settings that cannot run, naming the field."""
    if cfg.target not in TARGETS:
        raise RewardiffError(f"target must be one of {TARGETS}, got {cfg.target!r}")
    if cfg.advantages not in MODES:
        raise RewardiffError(f"advantages must be one of {MODES}, got {cfg.advantages!r}")
    if cfg.eta <= 0:
        raise RewardiffError("DDPO needs eta > 0: a deterministic DDIM step (eta = 0) has no log-probability")
    from rewardiff.generation import SamplingSettings, is_finite_number, validate_sampling

    validate_sampling(SamplingSettings(steps=cfg.steps, guidance=cfg.guidance, guidance_rescale=cfg.guidance_rescale, eta=cfg.eta), "")
    for name in ("lr", "clip_range", "adv_clip_max", "max_grad_norm"):
        value = getattr(cfg, name)
        if not (is_finite_number(value) and value > 0):
            raise RewardiffError(f"{name} must be a finite number > 0, got {value!r}")
    window = list(cfg.train_window)
    if not (len(window) == 2 and all(is_finite_number(v) for v in window) and 0 <= window[0] < window[1] <= 1):
        raise RewardiffError(f"train_window must be [lo, hi] with 0 <= lo < hi <= 1, got {cfg.train_window}")
    from rewardiff.models.lora_formats import check_lora_format

    check_lora_format(cfg.lora_format)
    if not 0 < cfg.timestep_fraction <= 1:
        raise RewardiffError(f"timestep_fraction must lie in (0, 1], got {cfg.timestep_fraction}")
    for name in ("epochs", "sample_batch_size", "sample_batches", "samples_per_prompt", "train_batch_size",
                 "gradient_accumulation", "inner_epochs", "steps", "lora_rank", "save_every"):
        if getattr(cfg, name) < 1:
            raise RewardiffError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if (cfg.sample_batch_size * cfg.sample_batches) % cfg.samples_per_prompt:
        raise RewardiffError(f"images per epoch ({cfg.sample_batch_size} x {cfg.sample_batches}) must be a multiple of samples_per_prompt ({cfg.samples_per_prompt})")
    if not cfg.reward:
        raise RewardiffError("no reward: give at least one --reward SPEC")
    from rewardiff.runtime import check_precision

    check_precision(cfg.mixed_precision, cfg.device)
    if cfg.reuse_sampling_forward and not (cfg.inner_epochs == 1 and cfg.timestep_fraction == 1.0 and list(cfg.train_window) == [0.0, 1.0] and
                                           cfg.train_batch_size * cfg.gradient_accumulation >= cfg.sample_batch_size * cfg.sample_batches):
        raise RewardiffError("reuse_sampling_forward needs one optimiser step per epoch on the sampling weights: inner_epochs 1, "
                             "timestep_fraction 1 and train_batch_size x gradient_accumulation >= images per epoch")


def _epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """All randomness of epoch e (prompts, noise seeds, minibatch order) comes from here, so a resumed
    run redraws exactly what an uninterrupted one draws."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, salt]).generate_state(1)[0]))


def epoch_prompts(pool: Sequence[str], cfg: DDPOConfig, epoch: int) -> tuple[list[str], list[int]]:
    """The epoch's prompts (each repeated samples_per_prompt times, adjacent) and per-image noise seeds."""
    g = _epoch_generator(cfg.seed, epoch, 0)
    n_images = cfg.sample_batch_size * cfg.sample_batches
    n_prompts = n_images // cfg.samples_per_prompt
    if n_prompts <= len(pool):
        picks = torch.randperm(len(pool), generator=g)[:n_prompts].tolist()
    else:
        picks = torch.randint(len(pool), (n_prompts,), generator=g).tolist()
    prompts = [pool[i] for i in picks for _ in range(cfg.samples_per_prompt)]
    seeds = torch.randint(0, 2**31 - 1, (n_images,), generator=g).tolist()
    return prompts, seeds


class Policy:
    """The trainable part: LoRA adapters on the U-Net and/or the text encoder of an injected pipeline."""

    def __init__(self, pipe, cfg: DDPOConfig):
        from rewardiff.models.lora import add_lora

        torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn from the global RNG
        self.pipe, self.target = pipe, cfg.target
        self.train_unet = cfg.target in ("unet", "both")
        self.train_text = cfg.target in ("text_encoder", "both")
        if self.train_unet:
            add_lora(pipe.unet, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        text_names = [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None] if self.train_text else []
        for name in text_names:  # SDXL: TexForce adapts both text encoders
            add_lora(getattr(pipe, name), rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        self.modules = {name: getattr(pipe, name) for name in (["unet"] if self.train_unet else []) + text_names}
        self.named = {f"{m}.{n}": p for m, module in self.modules.items() for n, p in module.named_parameters() if p.requires_grad}
        if not self.named:
            raise RewardiffError("no trainable LoRA parameters were created")
        for p in self.named.values():
            p.data = p.data.float()  # LoRA weights train in float32 even on a float16 pipeline
        if cfg.gradient_checkpointing:
            from rewardiff.runtime import enable_gradient_checkpointing

            enable_gradient_checkpointing(list(self.modules.values()))

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.named.values())

    def save_lora(self, path: Path, lora_format: str = "diffusers") -> Path:
        from rewardiff.models.lora import save_pipeline_lora

        return save_pipeline_lora(path, self.pipe, self.modules, lora_format)


def sample_epoch(pipe, reward, prompts: list[str], seeds: list[int], cfg: DDPOConfig, rescale: float,
                 runtime: Runtime | None = None) -> Samples:
    """Sample and score one epoch's trajectories under no_grad (this process's share)."""
    parts = []
    autocast = runtime.autocast() if runtime is not None else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for start in range(0, len(prompts), cfg.sample_batch_size):
            p, s = prompts[start:start + cfg.sample_batch_size], seeds[start:start + cfg.sample_batch_size]
            traj = sample_trajectories(pipe, p, seeds=s, steps=cfg.steps, guidance=cfg.guidance, guidance_rescale=rescale, eta=cfg.eta)
            parts.append((traj, _score(reward, traj.images, p)))
    trajs = [t for t, _ in parts]
    return Samples(
        prompts=list(prompts),
        latents=torch.cat([t.latents for t in trajs]),
        log_probs=torch.cat([t.log_probs for t in trajs]),
        timesteps=trajs[0].timesteps,
        cond=Conditioning.cat([t.cond for t in trajs]),
        uncond=Conditioning.cat([t.uncond for t in trajs]),
        rewards=torch.cat([s for _, s in parts]),
    )


def fused_epoch(pipe, policy: Policy, optimizer: torch.optim.Optimizer, reward, prompts: list[str], seeds: list[int],
                cfg: DDPOConfig, rescale: float, tracker: PerPromptStatTracker | None,
                runtime: Runtime | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Sample under grad, score, and make the epoch's single PPO step from the sampling graph.

    ratio = exp(lp - lp.detach()) is 1 with the gradient of lp: the first PPO step's value and
    gradient without a second forward. `prompts` / `seeds` are the epoch's global lists; this
    process samples its shard. Returns the global rewards (N,) and the update statistics.
    """
    runtime = runtime or Runtime(cfg.device)
    part = runtime.shard(len(prompts), "images per epoch")
    mine, my_seeds = prompts[part], seeds[part]
    log_probs, rewards = [], []
    with torch.enable_grad():
        with runtime.autocast():
            for start in range(0, len(mine), cfg.sample_batch_size):
                p, s = mine[start:start + cfg.sample_batch_size], my_seeds[start:start + cfg.sample_batch_size]
                traj = sample_trajectories(pipe, p, seeds=s, steps=cfg.steps, guidance=cfg.guidance, guidance_rescale=rescale,
                                           eta=cfg.eta, detach_chain=True)
                rewards.append(_score(reward, traj.images, p))
                log_probs.append(traj.log_probs)
        r = runtime.gather(torch.cat(rewards))
        adv = compute_advantages(cfg.advantages, prompts, r, tracker).clamp(-cfg.adv_clip_max, cfg.adv_clip_max)[part]
        lp = torch.cat(log_probs)  # (N / processes, K), graph to the weights
        ratio = per_dim_ratio(lp - lp.detach(), traj.latents[0, 0].numel())
        loss = ppo_loss(adv.to(lp.device)[:, None].expand_as(lp), ratio, cfg.clip_range)
        runtime.backward(loss)
    runtime.step(policy.parameters(), optimizer, cfg.max_grad_norm, reduce="mean")  # equal shards: mean of means
    return r, {"loss": runtime.sum([float(loss.detach())])[0] / runtime.num_processes, "approx_kl": 0.0, "clipfrac": 0.0}


def _score(reward, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        scores = reward(images, prompts).scores.detach().float().cpu()
    if not bool(torch.isfinite(scores).all()):
        raise RewardiffError(f"the reward returned NaN or inf for prompts {[prompts[i] for i in (~torch.isfinite(scores)).nonzero().flatten().tolist()[:3]]}")
    return scores


def window_positions(steps: int, window: Sequence[float]) -> torch.Tensor:
    """Trajectory positions inside [lo, hi) of the steps (at least one).

    Low-noise steps have a small sigma_t, so their log-prob gradients (~ z / sigma_t) dwarf the
    high-noise steps' after global gradient clipping, although the high-noise steps decide what is
    drawn where; a window lets the update train on the steps that decide the layout.
    """
    lo = min(int(round(window[0] * steps)), steps - 1)
    hi = max(lo + 1, int(round(window[1] * steps)))
    return torch.arange(lo, min(hi, steps))


def ppo_update(pipe, policy: Policy, optimizer: torch.optim.Optimizer, samples: Samples, cfg: DDPOConfig,
               rescale: float, epoch: int, runtime: Runtime | None = None) -> dict[str, float]:
    """`inner_epochs` PPO passes over one epoch's samples; returns mean loss, approx KL, clip fraction.

    With several processes `samples` is this process's shard (global samples [lo, lo + n_local)):
    minibatch order and per-sample timesteps are drawn over the global N as one process draws
    them, each process runs its rows of every minibatch, each loss is normalised by the global
    rows of its optimiser step, and the gradients are summed over processes: the update of one
    process holding everything, up to float summation order."""
    runtime = runtime or Runtime(cfg.device)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(cfg.steps, device=pipe.unet.device)
    n_local, k = samples.log_probs.shape
    n, lo = n_local * runtime.num_processes, n_local * runtime.process_index
    window = window_positions(k, cfg.train_window)
    n_train = max(1, int(len(window) * cfg.timestep_fraction))
    chunk = cfg.timestep_batch if cfg.timestep_batch > 0 else n_train
    device = samples.latents.device
    totals = {"loss": 0.0, "approx_kl": 0.0, "clipfrac": 0.0}
    rows_seen = 0
    for inner in range(cfg.inner_epochs):
        g = _epoch_generator(cfg.seed, epoch, 1 + inner)
        order = torch.randperm(n, generator=g)
        # per-sample random timesteps, as ddpo-pytorch: sample b trains on steps perms[b, :n_train]
        perms = window[torch.stack([torch.randperm(len(window), generator=g) for _ in range(n)])[:, :n_train]]
        minibatches = [order[i:i + cfg.train_batch_size] for i in range(0, n, cfg.train_batch_size)]
        for mb_index, idx_global in enumerate(minibatches):
            group_start = mb_index - mb_index % cfg.gradient_accumulation
            group = minibatches[group_start:group_start + cfg.gradient_accumulation]
            rows_per_step = sum(len(m) for m in group) * n_train
            last_of_group = mb_index == group_start + len(group) - 1
            idx = idx_global[(idx_global >= lo) & (idx_global < lo + n_local)] - lo  # this process's rows
            if len(idx) == 0:
                if last_of_group:
                    runtime.step(policy.parameters(), optimizer, cfg.max_grad_norm, reduce="sum")
                continue
            prompts = [samples.prompts[i] for i in idx.tolist()]
            if policy.train_text:
                size = tuple(int(v) * pipe.vae_scale_factor for v in samples.latents.shape[-2:])
                with runtime.autocast():
                    cond, uncond = encode_prompts(pipe, prompts, size=size)
                cond_leaf, uncond_leaf = cond.leaf(), uncond.leaf()
            else:
                cond_leaf, uncond_leaf = samples.cond[idx], samples.uncond[idx]
            adv = samples.advantages[idx].to(device)
            for j0 in range(0, n_train, chunk):
                cols = perms[idx + lo, j0:j0 + chunk]  # (b, c) trajectory positions
                c = cols.shape[1]
                rows_b = idx.repeat_interleave(c)  # row r = (sample r // c, position cols[r // c, r % c])
                pos = cols.reshape(-1)
                x_t = samples.latents[rows_b, pos]
                x_prev = samples.latents[rows_b, pos + 1]
                t = samples.timesteps[pos]
                local = torch.arange(len(idx)).repeat_interleave(c)
                with runtime.autocast():
                    out = guided_model_output(pipe.unet, x_t, t, cond_leaf[local], uncond_leaf[local], cfg.guidance, rescale)
                step = ddim_step_with_logprob(scheduler, out, t, x_t, eta=cfg.eta, prev_sample=x_prev)
                log_ratio = step.log_prob - samples.log_probs[rows_b, pos]
                ratio = per_dim_ratio(log_ratio, x_t[0].numel())
                loss = ppo_loss(adv[local], ratio, cfg.clip_range)
                runtime.backward(loss * (len(rows_b) / rows_per_step))
                with torch.no_grad():
                    rows = len(rows_b)
                    totals["loss"] += float(loss) * rows
                    totals["approx_kl"] += float(0.5 * (log_ratio**2).mean()) * rows
                    totals["clipfrac"] += float(((ratio - 1.0).abs() > cfg.clip_range).float().mean()) * rows
                    rows_seen += rows
            if policy.train_text:  # one text-encoder backward for all timesteps of the minibatch
                # without guidance (scale <= 1, e.g. SD-Turbo) the uncond leaf is unused and has no grad;
                # SDXL's zero negative prompt has no graph to the encoders at all
                backward_leaves([(cond, cond_leaf), (uncond, uncond_leaf)])
            if last_of_group:
                runtime.step(policy.parameters(), optimizer, cfg.max_grad_norm, reduce="sum")
    *sums, rows_seen = runtime.sum([totals["loss"], totals["approx_kl"], totals["clipfrac"], float(rows_seen)])
    return {key: value / max(1.0, rows_seen) for key, value in zip(totals, sums)}


def _rng_state() -> dict:
    """Every RNG stream, as tensors and plain values (so the weights-only loader reads it back)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _signature(cfg: DDPOConfig) -> dict:
    return {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_SIGNATURE}


def save_checkpoint(out: Path, policy: Policy, optimizer, tracker: PerPromptStatTracker, epoch: int,
                    cfg: DDPOConfig, cpu_seconds: float, history: list[dict]) -> None:
    meta = {"epoch": epoch, "cpu_seconds": cpu_seconds, "tracker": tracker.state_dict(), "signature": _signature(cfg), "history": history}
    save_lora_state(out / CHECKPOINT, policy.modules, optimizer, meta, extra={"rng": _rng_state()})


def load_checkpoint(out: Path, policy: Policy, optimizer, tracker: PerPromptStatTracker, cfg: DDPOConfig) -> tuple[int, float, list[dict]]:
    """Restore a checkpoint if OUT has one; returns (epochs done, CPU seconds so far, per-epoch history)."""
    state = read_lora_meta(out / CHECKPOINT)
    if state is None:
        return 0, 0.0, []
    if state["signature"] != _signature(cfg):
        diff = next(k for k in _signature(cfg) if state["signature"].get(k) != _signature(cfg)[k])
        raise RewardiffError(f"{out} holds a DDPO run with another {diff} ({state['signature'].get(diff)!r} there, "
                             f"{_signature(cfg)[diff]!r} now); choose another --out")
    _, extra = load_lora_state(out / CHECKPOINT, policy.modules, optimizer)
    _set_rng_state(extra["rng"])
    tracker.load_state_dict(state["tracker"])
    return int(state["epoch"]), float(state["cpu_seconds"]), list(state["history"])


def default_guidance_rescale(cfg: DDPOConfig) -> float:
    """Zero-terminal-SNR shapes generator: 0.7 (its sampling default); other models: 0."""
    if cfg.guidance_rescale is not None:
        return cfg.guidance_rescale
    from rewardiff.generation import SHAPES_SAMPLING
    from rewardiff.models.pipeline import resolve_model

    return float(SHAPES_SAMPLING["guidance_rescale"]) if resolve_model(cfg.model).is_shapes else 0.0


@dataclass
class DDPOResult:
    lora: Path
    epochs: int
    history: list[dict]  # one row per epoch: reward_mean, reward_std, loss, approx_kl, clipfrac
    cpu_minutes: float


def train_ddpo(cfg: DDPOConfig, pipe, reward, progress: bool = True, runtime: Runtime | None = None) -> DDPOResult:
    """Train LoRA adapters of `pipe` by DDPO on `reward`; resumes from OUT/checkpoint.

    `pipe`: an SD 1.x / 2.x or SDXL pipeline (frozen, as `load_pipeline` returns it); `reward`: a
    `rewardiff.rewards.base.Reward` (called under no_grad). Under `accelerate launch` each
    process samples its share of every epoch (`runtime`, default from cfg); the rewards are
    gathered, every process holds the same LoRA, and the main process writes. Returns the LoRA
    path and history.
    """
    from rewardiff.generation import check_prompts_for_model, read_prompts
    from rewardiff.run_folder import claim_run_folder_main

    validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    runtime = runtime or Runtime(cfg.device, cfg.mixed_precision, cfg.allow_tf32)
    runtime.shard(cfg.sample_batch_size * cfg.sample_batches, "images per epoch")  # refuse an uneven split now
    pipe.to(runtime.device)
    pool = read_prompts(cfg.prompts)
    check_prompts_for_model(pool, cfg.model)
    rescale = default_guidance_rescale(cfg)
    with claim_run_folder_main(cfg.out, "train ddpo", _signature(cfg), cfg, runtime.is_main) as folder:
        return _train_in(folder, cfg, pipe, reward, pool, rescale, progress, runtime)


def _train_in(folder, cfg: DDPOConfig, pipe, reward, pool: list[str], rescale: float, progress: bool, runtime: Runtime) -> DDPOResult:
    """train_ddpo's work, in the claimed run folder."""
    from tqdm.auto import tqdm

    from rewardiff.train_log import RecordingReward, TrainLog

    out = folder.path
    policy = Policy(pipe, cfg)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    tracker = PerPromptStatTracker(cfg.tracker_buffer, cfg.tracker_min_count)
    done, cpu_before, history = load_checkpoint(out, policy, optimizer, tracker, cfg)
    main = runtime.is_main
    folder.commit()
    log = TrainLog(out) if main else None
    reward = RecordingReward(reward)  # its last samples go to the log every N epochs
    if log is not None:
        log.keep_until("ddpo", done, step_key="epoch")
    cpu_start = time.process_time()
    bar = tqdm(range(done, cfg.epochs), initial=done, total=cfg.epochs, desc=f"ddpo[{cfg.target}]", unit="epoch", disable=not (progress and main))
    for epoch in bar:
        prompts, seeds = epoch_prompts(pool, cfg, epoch)  # the global epoch, whatever the number of processes
        if cfg.reuse_sampling_forward:
            rewards, stats = fused_epoch(pipe, policy, optimizer, reward, prompts, seeds, cfg, rescale, tracker, runtime)
        else:
            part = runtime.shard(len(prompts), "images per epoch")
            samples = sample_epoch(pipe, reward, prompts[part], seeds[part], cfg, rescale, runtime)
            rewards = runtime.gather(samples.rewards)
            adv = compute_advantages(cfg.advantages, prompts, rewards, tracker)  # on the global batch, the same in every process
            samples.advantages = adv.clamp(-cfg.adv_clip_max, cfg.adv_clip_max)[part]
            stats = ppo_update(pipe, policy, optimizer, samples, cfg, rescale, epoch, runtime)
        row = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)), **stats}
        history.append({"epoch": epoch + 1, **row})
        if log is not None:
            log.log("ddpo", epoch + 1, step_key="epoch", **row)
            if reward.last_images is not None and log.wants_images(epoch + 1):
                log.images("ddpo/samples", reward.last_images, epoch + 1, reward.last_prompts)
        bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['approx_kl']:.2g}")
        if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs:
            if main:
                save_checkpoint(out, policy, optimizer, tracker, epoch + 1, cfg, cpu_before + time.process_time() - cpu_start, history)
            runtime.wait()
    bar.close()
    if log is not None:
        log.close()
    cpu_minutes = (cpu_before + time.process_time() - cpu_start) / 60
    lora = out / LORA_FILE
    if not main:
        runtime.wait()
        return DDPOResult(lora=lora, epochs=cfg.epochs, history=history, cpu_minutes=cpu_minutes)
    lora = policy.save_lora(lora, lora_format=cfg.lora_format)  # atomic (models.lora.save_lora)
    write_json(out / SUMMARY, {
        "target": cfg.target, "reward": cfg.reward, "epochs": cfg.epochs,
        "images_per_epoch": cfg.sample_batch_size * cfg.sample_batches,
        "reward_first_epoch": history[0]["reward_mean"] if history else None,
        "reward_last_epoch": history[-1]["reward_mean"] if history else None,
        "cpu_minutes": cpu_minutes, "lora": str(lora), "processes": runtime.num_processes,
    })
    runtime.wait()
    return DDPOResult(lora=lora, epochs=cfg.epochs, history=history, cpu_minutes=cpu_minutes)
