"""Entry point of tests/test_accelerate_ddpo.py: one tiny DDPO / TexForce run, launched by
`accelerate launch` (several processes) or imported (one process)."""

import sys

from rewardiff.algorithms.ddpo import DDPOConfig, train_ddpo
from rewardiff.models.pipeline import load_pipeline
from rewardiff.rewards.jpeg import JpegIncompressibility


def config(model: str, out: str, epochs: int) -> DDPOConfig:
    """4 images per epoch (2 per process with 2 processes), one minibatch of 4 -> one optimiser step."""
    return DDPOConfig(model=model, reward=["jpeg_incompressibility"], prompts="a red circle", target="both", lora_rank=2,
                      lr=1e-2, epochs=epochs, sample_batch_size=2, sample_batches=2, train_batch_size=4, steps=3,
                      guidance=3.0, guidance_rescale=0.0, advantages="batch", clip_range=0.2, timestep_batch=0, out=out)


def run(model: str, out: str, epochs: int) -> None:
    pipe, _ = load_pipeline(model)
    train_ddpo(config(model, out, epochs), pipe, JpegIncompressibility(), progress=False)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
