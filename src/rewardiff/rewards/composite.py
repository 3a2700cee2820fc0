"""An explicit weighted sum of rewards: total = sum_k w_k * r_k(images, prompts).

Each part is called through its own `Reward.__call__` (so each checks its scores and runs under
no_grad unless it is differentiable); the sum is differentiable only if every part is. The
details keep every part's scores under its key, and its own details as "key.detail".

    >>> import torch
    >>> from rewardiff.rewards.jpeg import JpegCompressibility, JpegIncompressibility
    >>> total = WeightedSum([("small", JpegCompressibility(), 1.0), ("big", JpegIncompressibility(), 0.5)])
    >>> out = total(torch.zeros(1, 3, 16, 16), ["black"])
    >>> torch.allclose(out.scores, out.details["small"] + 0.5 * out.details["big"])
    True
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward, RewardOutput

RESERVED_KEYS = ("total", "image", "prompt")
"""Column names the scores file uses itself; a part may not take them."""


class WeightedSum(Reward):
    """`parts`: (key, reward, weight) triples; keys unique, weights finite."""

    name = "weighted_sum"

    def __init__(self, parts: Sequence[tuple[str, Reward, float]]):
        if not parts:
            raise RewardiffError("a weighted sum needs at least one reward")
        keys = [k for k, _, _ in parts]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise RewardiffError(f"reward {duplicates[0]!r} is listed twice")
        for key, reward, weight in parts:
            if not key or key in RESERVED_KEYS:
                raise RewardiffError(f"reward key {key!r} is empty or reserved ({', '.join(RESERVED_KEYS)})")
            if not isinstance(reward, Reward):
                raise RewardiffError(f"reward {key!r} is a {type(reward).__name__}, not a Reward")
            if not math.isfinite(float(weight)):
                raise RewardiffError(f"reward {key!r}: weight must be a finite number, got {weight}")
        super().__init__(parts[0][1].device)
        self.parts = [(k, r, float(w)) for k, r, w in parts]
        self.differentiable = all(r.differentiable for _, r, _ in self.parts)

    @property
    def keys(self) -> list[str]:
        return [k for k, _, _ in self.parts]

    @property
    def weights(self) -> dict[str, float]:
        return {k: w for k, _, w in self.parts}

    def modules(self) -> list[torch.nn.Module]:
        return [m for _, r, _ in self.parts for m in r.modules()]

    def to(self, device: str | torch.device) -> "WeightedSum":
        self.device = torch.device(device)
        for _, reward, _ in self.parts:
            reward.to(device)
        return self

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        total = torch.zeros(images.shape[0], device=self.device)
        details: dict[str, list | torch.Tensor] = {}
        for key, reward, weight in self.parts:
            out = reward(images, prompts)
            total = total + weight * out.scores.to(self.device)
            details[key] = out.scores.detach()
            details.update({f"{key}.{d}": v for d, v in out.details.items()})
        return RewardOutput(total, details)
