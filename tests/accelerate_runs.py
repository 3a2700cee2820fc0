"""Entry points of tests/test_accelerate_runs.py: tiny runs of SFT / Diffusion-DPO (and SFT on
judge-filtered data), ReFL, the reward model, `generate`, `score` and the self-reward loop, launched by `accelerate launch` (several processes) or imported
(one process). `python accelerate_runs.py NAME WORK LABEL` writes its outputs under WORK/LABEL;
inputs the test prepared lie in WORK."""

from __future__ import annotations

import sys
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from rewardiff.rewards.base import Reward, RewardOutput

LR = 1e-3  # every trainer: 2 Adam steps of at most ~lr per weight


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread, as each launched worker is (OMP_NUM_THREADS=1): the one-process run
    inside pytest then does the same float arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sft(work: Path, label: str) -> None:
    """`rewardiff train sft` on WORK/data (4 rendered images; judge filter off: the judge is not
    what is tested), 2 steps of 4 examples; then Diffusion-DPO with the text encoder trained, 2
    steps of 4 pairs, through train_lora."""
    from rewardiff.algorithms.sft import SFTConfig, TrainExample, train_lora
    from rewardiff.cli import main
    from rewardiff.io_utils import load_image, read_jsonl
    from rewardiff.models.pipeline import load_pipeline

    model, out = (work / "model").read_text(), work / label
    code = main(["train", "sft", "--data", str(work / "data"), "--out", str(out / "sft"), "--seed", "3",
                 "--set", f"model={model}", "--set", "filter=false", "--set", "train.steps=2", "--set", "train.batch_size=4",
                 "--set", "train.rank=2", "--set", "train.alpha=2", "--set", f"train.lr={LR}", "--set", "train.checkpoint_every=1"])
    assert code == 0
    rows = list(read_jsonl(work / "data" / "metadata.jsonl"))
    images = [load_image(work / "data" / r["image"]) for r in rows]
    examples = [TrainExample(r["prompt"], images[n], images[-1 - n]) for n, r in enumerate(rows)]
    cfg = SFTConfig(loss="dpo", train_text_encoder=True, steps=2, batch_size=4, rank=2, alpha=2.0, lr=LR, dpo_beta=500.0, seed=1)
    train_lora(load_pipeline(model)[0], examples, cfg, out / "dpo", progress=False)


def sft_judged(work: Path, label: str) -> None:
    """`rewardiff train sft` with the judge filter on (configs/distill_shapes.yaml's judges) on
    WORK/data, 3 images per judge batch (two parts of unequal size), 1 step; then the filtered
    data again, through load_distill_data, with its kept examples listed in WORK/LABEL/kept.json."""
    import hashlib
    import json

    from rewardiff.cli import main
    from rewardiff.config import load_config
    from rewardiff.judges.self_judge import SelfJudge
    from rewardiff.loop.distill import DistillConfig, load_distill_data
    from rewardiff.runtime import Runtime

    model, out, preset = (work / "model").read_text(), work / label, Path(__file__).resolve().parents[1] / "configs/distill_shapes.yaml"
    overrides = [f"model={model}", "judge.batch_size=3", "train.steps=1", "train.batch_size=4", "train.rank=2", "train.alpha=2", f"train.lr={LR}"]
    args = ["train", "sft", "--config", str(preset), "--data", str(work / "data"), "--out", str(out / "sft"), "--seed", "3"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    cfg = load_config(DistillConfig, preset, [f"data=[{work / 'data'}]", *overrides])
    runtime = Runtime()
    data = load_distill_data(cfg, SelfJudge(cfg.judge), progress=False, runtime=runtime)
    if runtime.is_main:
        kept = [[e.prompt, hashlib.sha256(e.image.tobytes()).hexdigest()] for e in data.examples]
        (out / "kept.json").write_text(json.dumps(kept))


def refl(work: Path, label: str) -> None:
    """ReFL on the tiny SD pipeline: 2 optimiser steps of 2 micro-batches of 2 images."""
    from rewardiff.algorithms.refl import ReFLConfig, train_refl
    from rewardiff.models.pipeline import load_pipeline

    model = (work / "model").read_text()
    cfg = ReFLConfig(model=model, prompts="a red circle", steps=4, last_k=2, batch_size=2, grad_accum=2, train_steps=2, save_every=1,
                     guidance=3.0, lr=LR, alpha=10.0, beta=0.1, lora_rank=2, seed=3, out=str(work / label))
    train_refl(cfg, load_pipeline(model)[0], Redness(), progress=False)


def reward(work: Path, label: str) -> None:
    """train-reward on WORK/preference (embedded by PoolEmbedder, 16 images a batch: the
    processes share out the batches): 2 epochs, dropout on."""
    from rewardiff.algorithms.reward_model import train_reward_model
    from rewardiff.rewards.preference_model import RewardModelConfig

    cfg = RewardModelConfig(data=str(work / "preference"), out=str(work / label), lr=3e-3, epochs=2, batch_pairs=32,
                            hidden=(32, 16), dropout=(0.2, 0.1), embed_batch=16)
    train_reward_model(cfg, embedder=PoolEmbedder(), progress=False)


def generate(work: Path, label: str) -> None:
    """`rewardiff generate`: 2 prompts x 3 images, 2 per batch (3 batches) into WORK/LABEL, and a
    resume of WORK/LABEL-resumed when the test left a partial run there."""
    from rewardiff.cli import main

    model = (work / "model").read_text()
    for out in (work / label, work / f"{label}-resumed"):
        if out == work / label or out.is_dir():
            args = ["generate", "--model", model, "--prompts", str(work / "prompts.txt"), "--num-images", "3", "--batch-size", "2",
                    "--steps", "2", "--guidance", "3", "--seed", "5", "--out", str(out)]
            assert main(args) == 0


def score(work: Path, label: str) -> None:
    """`rewardiff score` of WORK/data (6 rendered images) by the shapes CLIP and JPEG size, 4
    images per batch: two batches, one per process, of unequal size."""
    from rewardiff.cli import main

    assert main(["score", str(work / "data"), "--reward", "clip@shapes:0.5", "--reward", "jpeg_compressibility",
                 "--batch-size", "4", "--out", str(work / label)]) == 0


def self_reward(work: Path, label: str) -> None:
    """`rewardiff self-reward` on the shapes world (configs/self_reward_shapes.yaml), 1 round: 2
    prompts x 3 candidates in batches of 2, judged 2 at a time (both split unevenly over two
    processes), 2 SFT steps of 2, then base and LoRA 0.7 evaluated on WORK/eval.txt."""
    from rewardiff.cli import main

    preset = Path(__file__).resolve().parents[1] / "configs/self_reward_shapes.yaml"
    overrides = ["prompts_per_round=2", "candidates=3", "batch_size=2", "sampling.steps=2", "judge.batch_size=2", "judge.thresholds={}",
                 "train.steps=2", "train.batch_size=2", "train.rank=2", "train.alpha=2", f"train.lr={LR}", "train.checkpoint_every=1",
                 f"eval.prompts={work / 'eval.txt'}", "eval.num_images=2", "eval.scales=[0.7]", "eval.round_scales=[]"]
    args = ["self-reward", "--config", str(preset), "--out", str(work / label), "--rounds", "1", "--classes", "triangle"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0


class Redness(Reward):
    """A differentiable toy reward for ReFL: red minus the other channels."""

    name = "redness"
    differentiable = True

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        return RewardOutput(images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3)))


class PoolEmbedder:
    """Image: 2 x 2 average pool (12-d); text: a fixed random 4-d vector per prompt."""

    key = "test/pool2x2"

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1) - 0.5

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([torch.randn(4, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts])


def write_preference_set(root: Path, prompts: int = 24, seed: int = 0) -> Path:
    """A ranked set whose order is a linear utility of PoolEmbedder's image features."""
    from rewardiff.data.preference import write_preference_dataset

    rng = np.random.default_rng(seed)
    weights = torch.linspace(-1, 1, 12)
    items = []
    for p in range(prompts):
        images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(int(rng.integers(4, 7)))]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        ranking = (np.argsort(np.argsort(-(PoolEmbedder().embed_images(x) @ weights).numpy())) + 1).tolist()
        split = "train" if p < prompts * 0.6 else "validation" if p < prompts * 0.8 else "test"
        items.append((f"p{p:03d}", f"prompt number {p}", images, ranking, split))
    write_preference_dataset(root, items)
    return root


RUNS = {"sft": sft, "refl": refl, "reward": reward, "generate": generate, "score": score, "sft_judged": sft_judged, "self_reward": self_reward}


def run(name: str, work: Path, label: str) -> None:
    with one_thread():
        RUNS[name](Path(work), label)


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
