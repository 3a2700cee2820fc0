"""Samples per second of the experiments' inner loops: the old presets against the new ones, same run.

    .venv/bin/python benchmarks/bench_experiment_presets.py [--repeats 3]

Old: 30 DDIM steps for sampling, 20 steps and every step trained for DDPO, one torch thread.
New: 10 DDIM steps (the protocol measures the base the same at 10 and 30 steps), DDPO trains the
high-noise half of each trajectory (`train_window: [0, 0.5]`), two threads (both cores).
Each measurement alternates old and new (a busy machine slows both alike); medians and the
new / old throughput ratio are printed. Work per sample differs by design: this measures what a
preset costs, which is what bounds an experiment's sample budget.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def _time(fn, threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    from rewardiff.algorithms.ddpo import DDPOConfig, train_ddpo
    from rewardiff.generation import SamplingSettings, sample_images
    from rewardiff.models.pipeline import load_pipeline
    from rewardiff.rewards.jpeg import JpegIncompressibility
    from rewardiff.shapes.prompts import train_prompts

    pipe, _ = load_pipeline("shapes")
    prompts = train_prompts()[: args.batch]
    seeds = list(range(args.batch))

    def sampling(steps: int):
        return lambda: sample_images(pipe, prompts, seeds, SamplingSettings(steps=steps, guidance_rescale=0.7, height=32, width=32))

    def ddpo_epoch(steps: int, window: list[float]):
        def run():
            with tempfile.TemporaryDirectory() as out:
                cfg = DDPOConfig(prompts=train_prompts()[0], steps=steps, train_window=window, epochs=1, sample_batch_size=args.batch,
                                 sample_batches=1, train_batch_size=args.batch // 2, out=out)
                train_ddpo(cfg, load_pipeline("shapes")[0], JpegIncompressibility(), progress=False)
        return run

    cases = {
        "sampling": ((sampling(30), 1), (sampling(10), 2)),
        "DDPO epoch": ((ddpo_epoch(20, [0.0, 1.0]), 1), (ddpo_epoch(10, [0.0, 0.5]), 2)),
    }
    print(f"shapes generator, {args.batch} images per call, median of {args.repeats}; old = 1 thread, new = 2 threads")
    for name, ((old, t_old), (new, t_new)) in cases.items():
        old(), new()  # warm-up
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            times["old"].append(_time(old, t_old))
            times["new"].append(_time(new, t_new))
        o, n = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"  {name:11s} old {args.batch / o:7.1f} samples/s   new {args.batch / n:7.1f} samples/s   new/old {o / n:.2f}x")


if __name__ == "__main__":
    main()
