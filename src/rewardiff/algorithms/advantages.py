"""Advantages for policy-gradient fine-tuning: rewards (B,) -> normalised advantages (B,).

Three ways, chosen by `DDPOConfig.advantages`:
- "per_prompt": DDPO's running per-prompt statistics (ddpo-pytorch `stat_tracking.py`): each
  prompt keeps its last `buffer_size` rewards; once it has `min_count` of them its advantages are
  (r - mean_prompt) / (std_prompt + eps), before that the batch's mean and std are used.
- "group": group-relative (GRPO, Shao et al. 2024): (r - mean) / (std + eps) over the samples of
  the same prompt in this batch (needs several samples per prompt); a prompt with one sample
  falls back to the batch statistics.
- "group_batch_std": the group's mean as baseline, the batch's std as scale (Liu et al. 2025,
  "Dr. GRPO"). A prompt whose samples nearly tie (a judge's discrete parts all equal, only
  confidences differing by 0.01) gets near-zero advantages instead of noise blown up to +-1 by its
  tiny std: on the shapes judge that noise dominated the update.
- "batch": plain normalisation over the batch.
Standard deviations are population ones (numpy's default, as ddpo-pytorch).

    >>> batch_advantages(torch.tensor([1.0, 3.0]))
    tensor([-1.0000,  1.0000])
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import torch

from rewardiff.errors import RewardiffError

EPS = 1e-6
"""Added to standard deviations (ddpo-pytorch's value) so equal rewards give zero, not NaN."""

MODES = ("per_prompt", "group", "group_batch_std", "batch")


def _normalise(values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float) -> torch.Tensor:
    return (values - mean) / (std + eps)


def batch_advantages(rewards: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(r - mean(r)) / (std(r) + eps) over the whole batch."""
    _check(None, rewards)
    r = rewards.double()
    return _normalise(r, r.mean(), r.std(unbiased=False), eps).to(rewards.dtype)


def group_relative_advantages(prompts: Sequence[str], rewards: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps), a group being the samples of one prompt in this batch."""
    _check(prompts, rewards)
    r = rewards.double()
    out = torch.empty_like(r)
    for idx, group in _groups(prompts, r):
        out[idx] = _normalise(r[idx], group.mean(), group.std(unbiased=False), eps)
    return out.to(rewards.dtype)


def _groups(prompts: Sequence[str], r: torch.Tensor):
    """(indices, rewards of the group) per prompt; a prompt with one sample is grouped with the batch."""
    for prompt in dict.fromkeys(prompts):
        idx = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
        yield idx, (r[idx] if len(idx) > 1 else r)


def group_mean_batch_std_advantages(prompts: Sequence[str], rewards: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(r - mean_group) / (std_batch + eps): group baseline, one scale for the whole batch."""
    _check(prompts, rewards)
    r = rewards.double()
    centred = torch.empty_like(r)
    for idx, group in _groups(prompts, r):
        centred[idx] = r[idx] - group.mean()
    return (centred / (r.std(unbiased=False) + eps)).to(rewards.dtype)


class PerPromptStatTracker:
    """Running per-prompt reward statistics over the last `buffer_size` rewards of each prompt.

    `state_dict()` is JSON-serialisable, so a resumed run continues with the same statistics.
    """

    def __init__(self, buffer_size: int = 16, min_count: int = 16, eps: float = EPS):
        if buffer_size < 1 or min_count < 1:
            raise RewardiffError(f"tracker buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count, self.eps = buffer_size, min_count, eps
        self.stats: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Add this batch's rewards, then return its advantages (B,)."""
        _check(prompts, rewards)
        r = rewards.double()
        out = torch.empty_like(r)
        for prompt in dict.fromkeys(prompts):
            idx = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            buffer = self.stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(r[idx].tolist())
            ref = torch.tensor(list(buffer), dtype=torch.float64) if len(buffer) >= self.min_count else r
            out[idx] = _normalise(r[idx], ref.mean(), ref.std(unbiased=False), self.eps)
        return out.to(rewards.dtype)

    def state_dict(self) -> dict:
        return {"buffer_size": self.buffer_size, "min_count": self.min_count,
                "stats": {p: list(b) for p, b in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffer_size, self.min_count = int(state["buffer_size"]), int(state["min_count"])
        self.stats = {p: deque(v, maxlen=self.buffer_size) for p, v in state["stats"].items()}


def compute_advantages(mode: str, prompts: Sequence[str], rewards: torch.Tensor,
                       tracker: PerPromptStatTracker | None = None) -> torch.Tensor:
    """Dispatch on `mode` (one of MODES); "per_prompt" needs the run's tracker."""
    if mode == "per_prompt":
        if tracker is None:
            raise RewardiffError("per-prompt advantages need a PerPromptStatTracker")
        return tracker.update(prompts, rewards)
    if mode == "group":
        return group_relative_advantages(prompts, rewards)
    if mode == "group_batch_std":
        return group_mean_batch_std_advantages(prompts, rewards)
    if mode == "batch":
        return batch_advantages(rewards)
    raise RewardiffError(f"unknown advantages mode {mode!r}; expected one of {MODES}")


def _check(prompts: Sequence[str] | None, rewards: torch.Tensor) -> None:
    """Rewards (B,), one per prompt, all finite: a NaN would silently poison every advantage."""
    if rewards.dim() != 1 or rewards.shape[0] == 0 or (prompts is not None and len(prompts) != rewards.shape[0]):
        raise RewardiffError(f"{'?' if prompts is None else len(prompts)} prompts but rewards of shape {tuple(rewards.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        idx = (~torch.isfinite(rewards)).nonzero().flatten().tolist()[:3]
        where = f"for prompts {[prompts[i] for i in idx]}" if prompts is not None else f"at index {idx}"
        raise RewardiffError(f"non-finite (NaN or inf) rewards {where}; check the reward function")
