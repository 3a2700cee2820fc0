"""JPEG (in)compressibility: the DDPO tasks (Black et al. 2023), also used by TexForce.

As ddpo-pytorch `rewards.py::jpeg_incompressibility` / `jpeg_compressibility`: each image is
quantised to uint8 (round, clamp), saved as JPEG at quality 95 with PIL, and

    incompressibility = +size_kB,   compressibility = -size_kB,   size_kB = bytes / 1000.

The prompt is not used. Not differentiable (the JPEG encoder is not).

    >>> import torch
    >>> JpegCompressibility()(torch.ones(1, 3, 64, 64), ["flat white"]).scores.item() < 0
    True
"""

from __future__ import annotations

import io

import torch

from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.preprocess import to_uint8_hwc

JPEG_QUALITY = 95
"""PIL quality setting used by ddpo-pytorch."""

BYTES_PER_KB = 1000
"""ddpo-pytorch divides by 1000 (kB, not KiB)."""


def jpeg_sizes(images: torch.Tensor, quality: int = JPEG_QUALITY) -> list[int]:
    """Bytes of each image saved as JPEG at `quality`."""
    from PIL import Image

    sizes = []
    for array in to_uint8_hwc(images):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell())
    return sizes


class _JpegSize(Reward):
    sign: float = 1.0  # +1: reward large files; -1: reward small ones
    differentiable = False

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        sizes = jpeg_sizes(images)
        scores = torch.tensor([self.sign * s / BYTES_PER_KB for s in sizes], dtype=torch.float32, device=self.device)
        return RewardOutput(scores, {"jpeg_bytes": sizes})


class JpegCompressibility(_JpegSize):
    """-size_kB of the JPEG at quality 95: flat, simple images score higher (closer to 0)."""

    name = "jpeg_compressibility"
    sign = -1.0


class JpegIncompressibility(_JpegSize):
    """+size_kB of the JPEG at quality 95: detailed, noisy images score higher."""

    name = "jpeg_incompressibility"
    sign = 1.0
