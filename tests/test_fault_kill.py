"""The fault suite (issue 15): every long-running command, SIGKILLed at seeded random writes and
rerun, ends with the folder an uninterrupted run writes: the same files, the same tensors, no row
twice (tests/fault_harness.py: each run is a forked child, each kill a real SIGKILL).

Settings are the tiniest that still pass through every write of the command (several batches,
checkpoints, log rows); each command is killed at KILLS points drawn with its own seed.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fault_harness import check_kill_and_resume

KILLS = 3  # kill points per command


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\na blue square\n")
    return path


def test_generate_killed_anywhere_resumes_to_the_same_folder(tiny_sd_dir, tmp_path):
    from rewardiff.cli import main

    prompts = _prompts(tmp_path)

    def run(out: Path) -> int:
        return main(["generate", "--model", str(tiny_sd_dir), "--prompts", str(prompts), "--num-images", "2", "--steps", "2",
                     "--batch-size", "1", "--out", str(out)])

    points = check_kill_and_resume(run, tmp_path, KILLS, seed=15)
    assert len(points) == KILLS


def test_train_ddpo_killed_anywhere_resumes_to_the_same_folder(tiny_sd_dir, tmp_path):
    from rewardiff.cli import main

    def run(out: Path) -> int:
        return main(["train", "ddpo", "--set", f"model={tiny_sd_dir}", "--set", "prompts=a red circle", "--reward", "jpeg_incompressibility",
                     "--target", "unet", "--set", "lora_rank=2", "--set", "epochs=3", "--set", "save_every=1", "--set", "sample_batch_size=2",
                     "--set", "sample_batches=1", "--set", "train_batch_size=1", "--set", "steps=2", "--set", "guidance=3.0",
                     "--set", "guidance_rescale=0.0", "--set", "advantages=batch", "--set", "threads=1", "--out", str(out)])

    check_kill_and_resume(run, tmp_path, KILLS, seed=16)


def _redness():
    """A differentiable reward without a model: mean red minus the other channels."""
    from rewardiff.rewards.base import Reward, RewardOutput

    class Redness(Reward):
        name = "redness"
        differentiable = True

        def score(self, images, prompts):
            return RewardOutput(images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3)))

    return Redness()


def test_train_refl_killed_anywhere_resumes_to_the_same_folder(tiny_sd_dir, tmp_path):
    from rewardiff.algorithms.refl import ReFLConfig, train_refl
    from rewardiff.models.pipeline import load_pipeline

    def run(out: Path) -> int:
        cfg = ReFLConfig(model=str(tiny_sd_dir), prompts="a red circle", steps=3, last_k=2, batch_size=1, grad_accum=1, train_steps=3,
                         save_every=1, guidance=3.0, lr=1e-2, alpha=10.0, beta=0.1, lora_rank=2, seed=3, threads=1, out=str(out))
        train_refl(cfg, load_pipeline(str(tiny_sd_dir))[0], _redness(), progress=False)
        return 0

    check_kill_and_resume(run, tmp_path, KILLS, seed=17)


class _Embedder:
    """Image: 2 x 2 average pool; text: a fixed random 4-d vector per prompt (no model)."""

    key = "fake/pool2x2"

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1) - 0.5

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([torch.randn(4, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts])


def _preference_set(root: Path) -> Path:
    from rewardiff.data.preference import write_preference_dataset

    rng = np.random.default_rng(0)
    items = []
    for p in range(24):
        images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
        split = "train" if p < 16 else "validation" if p < 20 else "test"
        items.append((f"p{p:03d}", f"prompt number {p}", images, [int(r) for r in rng.permutation(4) + 1], split))
    write_preference_dataset(root, items)
    return root


def test_train_reward_killed_anywhere_resumes_to_the_same_folder(tmp_path):
    from rewardiff.algorithms.reward_model import RewardModelConfig, train_reward_model

    data = _preference_set(tmp_path / "set")
    train_reward_model(RewardModelConfig(data=str(data), out=str(tmp_path / "warm"), epochs=1, hidden=(8, 4), dropout=(0.0, 0.0)),
                       embedder=_Embedder(), progress=False)  # fills the data set's embedding cache once (outside the run folder)

    def run(out: Path) -> int:
        cfg = RewardModelConfig(data=str(data), out=str(out), lr=3e-3, epochs=4, batch_pairs=16, hidden=(16, 8), dropout=(0.0, 0.1), threads=1)
        train_reward_model(cfg, embedder=_Embedder(), progress=False)
        return 0

    check_kill_and_resume(run, tmp_path, KILLS, seed=18)


def test_shapes_train_generator_killed_anywhere_resumes_to_the_same_folder(tmp_path):
    from rewardiff.cli import main

    tiny = ["arch.unet_channels=[16, 32]", "arch.text_hidden=32", "arch.vae_channels=[16, 16]", "vae.steps=3", "vae.batch_size=2",
            "unet.steps=4", "unet.batch_size=2", "unet.checkpoint_every=2", "unet.warmup_steps=2", "threads=1"]

    def run(out: Path) -> int:
        return main(["shapes", "train-generator", "--out", str(out), *[a for t in tiny for a in ("--set", t)]])

    check_kill_and_resume(run, tmp_path, KILLS, seed=19)


def test_self_reward_killed_anywhere_resumes_to_the_same_folder(tmp_path):
    from rewardiff.config import load_config
    from rewardiff.loop.self_reward import SelfRewardConfig, run_self_reward

    config = Path(__file__).parent.parent / "configs" / "self_reward_shapes.yaml"

    def run(out: Path) -> int:
        cfg = load_config(SelfRewardConfig, config, values={
            "out": str(out), "rounds": 1, "prompts_per_round": 2, "candidates": 2, "batch_size": 4, "sampling.steps": 2,
            "train.steps": 2, "train.batch_size": 2, "train.checkpoint_every": 1, "eval.scales": [], "eval.round_scales": [],
            "classes": ["triangle"], "judge.thresholds": {}})
        run_self_reward(cfg, progress=False)
        return 0

    check_kill_and_resume(run, tmp_path, KILLS, seed=20)


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_killed_first_write_leaves_a_folder_the_rerun_accepts(tiny_sd_dir, tmp_path, kill_at):
    """A kill at the very first writes (the marker, the config) must not make the folder look
    like another run's."""
    from fault_harness import assert_same_run, run_forked

    from rewardiff.cli import main

    def run(out: Path) -> int:
        return main(["generate", "--model", str(tiny_sd_dir), "--prompts", "a red circle", "--num-images", "1", "--steps", "2",
                     "--out", str(out)])

    assert run_forked(lambda: run(tmp_path / "a"))["code"] == 0
    assert run_forked(lambda: run(tmp_path / "b"), kill_at=kill_at)["killed"]
    assert run_forked(lambda: run(tmp_path / "b"))["code"] == 0
    assert_same_run(tmp_path / "a", tmp_path / "b")
