"""One DDPO epoch: rewardiff vs trl's DDPOTrainer (trl 0.22.2), same pipeline, prompts, reward, sizes.

    bash benchmarks/setup_trl_env.sh          # trl lives only in .venv-bench-trl
    OMP_NUM_THREADS=1 .venv-bench-trl/bin/python benchmarks/bench_ddpo_vs_trl.py

Both sides: the shipped shapes generator (a fresh copy each), a U-Net LoRA of rank 4 on
to_q/k/v/out (trl's fixed choice), the same 8 training prompts, reward clip@shapes (one Reward
object shared), 8 images per epoch (one sampling batch), 20 DDIM steps, eta 1.0, guidance 5.0
without rescale (trl's trainer passes none), every timestep trained (fraction 1.0), one
minibatch of 8, one inner epoch, batch-normalised advantages, AdamW 3e-4, one thread.
One epoch = sample + decode + reward + advantages + the PPO update (trl: `trainer.step`; ours:
what `train_ddpo` runs per epoch, without its checkpoint write, which trl's step skips too).
Two rewardiff variants, each with its own fresh pipeline and LoRA:
  "ours"      : `reuse_sampling_forward` (this setting makes ONE optimiser step per epoch on the
                sampling weights, so the PPO gradient comes from the sampling graph: no second
                forward pass over the 8 x 20 steps);
  "ours-recompute": the general path (`sample_epoch` + `ppo_update`, log-probs recomputed,
                `timestep_batch` timesteps per U-Net call), to show where the gain comes from.
The epochs of all sides alternate (a busy machine slows them alike); after one warm-up epoch
each, medians are printed.

trl needs `PartialState()` before the trainer is built and `mixed_precision="no"` on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

PROMPTS_N = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per side (after one warm-up)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--timestep-batch", type=int, default=2, help="ours: timesteps per U-Net call in the update")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from accelerate import PartialState
    from trl import DDPOConfig as TrlConfig
    from trl import DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    from rewardiff.algorithms import ddpo as ours
    from rewardiff.algorithms.advantages import compute_advantages
    from rewardiff.models.pipeline import load_pipeline, shipped_generator_dir
    from rewardiff.rewards.registry import build_rewards
    from rewardiff.shapes.prompts import train_prompts

    PartialState()
    prompts = train_prompts()[:PROMPTS_N]
    reward = build_rewards(["clip@shapes"])

    # --- trl -------------------------------------------------------------------------------
    trl_pipe = DefaultDDPOStableDiffusionPipeline(str(shipped_generator_dir()), use_lora=True)
    cycle = {"i": 0}

    def prompt_fn():
        p = prompts[cycle["i"] % len(prompts)]
        cycle["i"] += 1
        return p, {}

    def reward_fn(images, batch_prompts, metadata):
        return reward(images.clamp(0, 1).float(), list(batch_prompts)).scores, {}

    logdir = tempfile.mkdtemp(prefix="bench-trl-")
    trl_cfg = TrlConfig(
        num_epochs=1, sample_num_steps=args.steps, sample_eta=1.0, sample_guidance_scale=5.0,
        sample_batch_size=args.batch, sample_num_batches_per_epoch=1, train_batch_size=args.batch,
        train_gradient_accumulation_steps=1, train_num_inner_epochs=1, train_timestep_fraction=1.0,
        train_learning_rate=3e-4, train_clip_range=1e-4, train_adv_clip_max=5.0, per_prompt_stat_tracking=False,
        mixed_precision="no", log_with=None, save_freq=10**6, logdir=logdir, seed=0,
    )
    trainer = DDPOTrainer(trl_cfg, reward_fn, prompt_fn, trl_pipe)
    trl_step = {"epoch": 0}

    def trl_epoch() -> None:
        trainer.step(trl_step["epoch"] + 1, 0)  # epoch != 0 would checkpoint only at save_freq multiples
        trl_step["epoch"] += 1

    # --- rewardiff -------------------------------------------------------------------------
    def make_ours(reuse: bool):
        pipe, _ = load_pipeline("shapes")
        cfg = ours.DDPOConfig(
            reward=["clip@shapes"], target="unet", lora_rank=4, lr=3e-4, steps=args.steps, eta=1.0, guidance=5.0,
            guidance_rescale=0.0, sample_batch_size=args.batch, sample_batches=1, samples_per_prompt=1,
            train_batch_size=args.batch, gradient_accumulation=1, inner_epochs=1, timestep_fraction=1.0,
            timestep_batch=args.timestep_batch, clip_range=0.1, advantages="batch", reuse_sampling_forward=reuse,
            out=tempfile.mkdtemp(prefix="bench-ours-"),
        )
        ours.validate(cfg)
        policy = ours.Policy(pipe, cfg)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
        step = {"epoch": 0}

        def epoch() -> None:  # the body of train_ddpo's epoch loop
            e = step["epoch"]
            batch_prompts, seeds = ours.epoch_prompts(prompts, cfg, e)
            if reuse:
                ours.fused_epoch(pipe, policy, optimizer, reward, batch_prompts, seeds, cfg, cfg.guidance_rescale, None)
            else:
                samples = ours.sample_epoch(pipe, reward, batch_prompts, seeds, cfg, cfg.guidance_rescale)
                samples.advantages = compute_advantages(cfg.advantages, samples.prompts, samples.rewards).clamp(-cfg.adv_clip_max, cfg.adv_clip_max)
                ours.ppo_update(pipe, policy, optimizer, samples, cfg, cfg.guidance_rescale, e)
            step["epoch"] += 1

        return epoch

    sides = (("trl", trl_epoch), ("ours", make_ours(True)), ("ours-recompute", make_ours(False)))
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for i in range(args.repeats + 1):
        for name, fn in sides:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i > 0:
                times[name].append(dt)
            print(f"{'warm-up' if i == 0 else f'epoch {i}'} {name}: {dt:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nshapes generator, batch {args.batch}, {args.steps} steps, guidance 5.0, eta 1.0, 1 thread; "
          f"median of {args.repeats} epochs")
    print(f"  trl DDPOTrainer.step : {med['trl']:.2f} s per epoch")
    print(f"  rewardiff DDPO epoch : {med['ours']:.2f} s per epoch (reuse_sampling_forward)")
    print(f"  rewardiff, recompute : {med['ours-recompute']:.2f} s per epoch (log-probs recomputed, timestep_batch {args.timestep_batch})")
    print(f"  ratio trl / ours     : {med['trl'] / med['ours']:.2f}x")
    print(f"  ratio trl / recompute: {med['trl'] / med['ours-recompute']:.2f}x")


if __name__ == "__main__":
    main()
