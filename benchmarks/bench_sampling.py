"""Sampling with log-probabilities vs the diffusers pipeline's own loop (same process, same work).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sampling.py [--model shapes] [--batch 8] [--steps 20]

Both sides: the same pipeline, prompts, per-image seeds, steps, guidance 5.0 (+ rescale 0.7 on the
shapes model), DDIM eta 1.0 (the RL setting), VAE decode to (B, 3, H, W) tensors in [0, 1], under
no_grad. Ours also keeps the whole trajectory and every step's log-prob. Repeats alternate the two
sides (so a busy machine slows both alike); the medians and their ratio are printed.
Goal: ours / pipeline <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rewardiff.diffusion import sample_trajectories
    from rewardiff.models.pipeline import load_pipeline, resolve_model
    from rewardiff.shapes.prompts import train_prompts

    pipe, _ = load_pipeline(args.model)
    rescale = 0.7 if resolve_model(args.model).is_shapes else 0.0
    prompts = train_prompts()[: args.batch]
    seeds = list(range(args.batch))
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor

    def ours() -> torch.Tensor:
        return sample_trajectories(pipe, prompts, seeds=seeds, steps=args.steps, guidance=5.0,
                                   guidance_rescale=rescale, eta=1.0).images

    def diffusers_loop() -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(prompt=prompts, num_inference_steps=args.steps, guidance_scale=5.0, guidance_rescale=rescale,
                    eta=1.0, generator=gens, output_type="pt", height=size, width=size).images

    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    with torch.no_grad():
        a, b = ours(), diffusers_loop()  # warm-up, and the check that both did the same work
        print(f"max |ours - diffusers| over the images: {(a - b).abs().max().item():.2e}")
        for _ in range(args.repeats):
            for name, fn in (("ours", ours), ("diffusers", diffusers_loop)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, batch {args.batch}, {args.steps} steps, guidance 5.0, eta 1.0, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"  diffusers pipeline loop : {med['diffusers']:.3f} s")
    print(f"  sample_trajectories     : {med['ours']:.3f} s (with trajectory + log-probs)")
    print(f"  ratio ours / diffusers  : {med['ours'] / med['diffusers']:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
