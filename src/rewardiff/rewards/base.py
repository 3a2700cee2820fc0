"""The one reward interface: images (B, 3, H, W) floats in [0, 1] + B prompts -> scores (B,).

Every reward subclasses `Reward` and implements `score()`. `Reward.__call__` is the only entry
point: it checks the input, moves the images to the reward's device, runs `score()` under
`torch.no_grad()` unless the reward is differentiable, and checks the output (shape (B,), finite),
so no caller ever sees a NaN score or a reward-specific return shape.

    >>> import torch
    >>> class Brightness(Reward):
    ...     name = "brightness"
    ...     differentiable = True
    ...     def score(self, images, prompts):
    ...         return RewardOutput(images.mean(dim=(1, 2, 3)))
    >>> Brightness()(torch.ones(2, 3, 8, 8), ["a", "b"]).scores
    tensor([1., 1.])
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import torch

from rewardiff.errors import RewardiffError

VALUE_TOLERANCE = 1e-3
"""Input pixels may stray this far outside [0, 1] (float rounding after a VAE decode + clamp);
anything further is almost always a [-1, 1] or [0, 255] image passed by mistake."""


@dataclass
class RewardOutput:
    """What every reward returns."""

    scores: torch.Tensor  # (B,) float; higher is better
    details: dict[str, list | torch.Tensor] = field(default_factory=dict)  # per-image extras, each of length B


class Reward(abc.ABC):
    """Base of every reward. Subclasses set `name`, `differentiable` and implement `score()`.

    `differentiable` is a promise that `score()` is built from torch ops only, so `images.grad`
    is defined (ReFL needs that); otherwise it is run under `torch.no_grad()` (PPO-style use).
    """

    name: str = "reward"
    differentiable: bool = False

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    @abc.abstractmethod
    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        """Score a checked batch already on `self.device`. Called only through `__call__`."""

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules this reward holds (moved by `to()`); none by default."""
        return []

    def to(self, device: str | torch.device) -> "Reward":
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        return self

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        prompts = list(prompts)
        check_inputs(self.name, images, prompts)
        grad_context = contextlib.nullcontext() if self.differentiable else torch.no_grad()
        with grad_context:
            out = self.score(images.to(self.device), prompts)
        return check_output(self.name, out, len(prompts))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, differentiable={self.differentiable}, device={self.device})"


def check_inputs(name: str, images: torch.Tensor, prompts: list[str]) -> None:
    """Images (B, 3, H, W) float in [0, 1], B >= 1, one non-empty prompt per image."""
    if not isinstance(images, torch.Tensor):
        raise RewardiffError(f"reward {name!r}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise RewardiffError(f"reward {name!r}: images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise RewardiffError(f"reward {name!r}: images must be float in [0, 1], got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise RewardiffError(f"reward {name!r}: empty batch")
    if len(prompts) != images.shape[0]:
        raise RewardiffError(f"reward {name!r}: {images.shape[0]} images but {len(prompts)} prompts")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise RewardiffError(f"reward {name!r}: empty prompt at index {bad[:10]}")
    with torch.no_grad():
        finite = torch.isfinite(images).flatten(1).all(dim=1)
        if not bool(finite.all()):
            raise RewardiffError(f"reward {name!r}: images contain NaN or inf at index {_indices(~finite)}")
        lo, hi = float(images.min()), float(images.max())
    if lo < -VALUE_TOLERANCE or hi > 1 + VALUE_TOLERANCE:
        raise RewardiffError(f"reward {name!r}: image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}] (a [-1, 1] or [0, 255] image?)")


def check_output(name: str, out: RewardOutput, batch: int) -> RewardOutput:
    """Scores (B,) finite floats; every detail has one entry per image."""
    if not isinstance(out, RewardOutput) or not isinstance(out.scores, torch.Tensor):
        raise RewardiffError(f"reward {name!r} must return RewardOutput with a tensor of scores")
    if tuple(out.scores.shape) != (batch,):
        raise RewardiffError(f"reward {name!r} returned scores of shape {tuple(out.scores.shape)}, expected ({batch},)")
    finite = torch.isfinite(out.scores.detach())
    if not bool(finite.all()):
        raise RewardiffError(f"reward {name!r} returned NaN or inf scores for images at index {_indices(~finite)}")
    for key, value in out.details.items():
        if len(value) != batch:
            raise RewardiffError(f"reward {name!r}: detail {key!r} has {len(value)} entries for {batch} images")
    if out.scores.dtype != torch.float32:
        out.scores = out.scores.float()
    return out


def _indices(mask: torch.Tensor, limit: int = 10) -> list[int]:
    idx = mask.nonzero().flatten().tolist()
    return idx[:limit] + (["..."] if len(idx) > limit else [])
