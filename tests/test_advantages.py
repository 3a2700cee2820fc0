"""Advantages: exact values of batch, group-relative and running per-prompt normalisation."""

import json
import math
from collections import deque

import numpy as np
import pytest
import torch

from rewardiff.algorithms.advantages import (
    EPS,
    PerPromptStatTracker,
    batch_advantages,
    compute_advantages,
    group_relative_advantages,
)
from rewardiff.errors import RewardiffError


def test_batch_advantages_exact():
    out = batch_advantages(torch.tensor([1.0, 3.0, 5.0, 7.0]))
    std = math.sqrt(5.0)  # population std of 1, 3, 5, 7
    torch.testing.assert_close(out, torch.tensor([-3.0, -1.0, 1.0, 3.0]) / (std + EPS))
    assert torch.equal(batch_advantages(torch.tensor([2.0, 2.0])), torch.zeros(2))  # equal rewards: 0, not NaN


def test_group_relative_advantages_exact_and_singletons_use_the_batch():
    prompts = ["a", "b", "a", "b"]
    out = group_relative_advantages(prompts, torch.tensor([1.0, 10.0, 3.0, 14.0]))
    torch.testing.assert_close(out, torch.tensor([-1 / (1 + EPS), -2 / (2 + EPS), 1 / (1 + EPS), 2 / (2 + EPS)]))
    out = group_relative_advantages(["a", "a", "c"], torch.tensor([0.0, 2.0, 4.0]))
    batch_std = float(np.std([0.0, 2.0, 4.0]))
    torch.testing.assert_close(out, torch.tensor([-1 / (1 + EPS), 1 / (1 + EPS), (4 - 2) / (batch_std + EPS)]))


class _ReferenceTracker:
    """ddpo-pytorch's stat_tracking.PerPromptStatTracker, verbatim logic in numpy."""

    def __init__(self, buffer_size, min_count):
        self.buffer_size, self.min_count, self.stats = buffer_size, min_count, {}

    def update(self, prompts, rewards):
        prompts, rewards = np.array(prompts), np.array(rewards, dtype=np.float64)
        advantages = np.empty_like(rewards)
        for prompt in np.unique(prompts):
            prompt_rewards = rewards[prompts == prompt]
            self.stats.setdefault(prompt, deque(maxlen=self.buffer_size)).extend(prompt_rewards)
            if len(self.stats[prompt]) < self.min_count:
                mean, std = np.mean(rewards), np.std(rewards) + 1e-6
            else:
                mean, std = np.mean(self.stats[prompt]), np.std(self.stats[prompt]) + 1e-6
            advantages[prompts == prompt] = (prompt_rewards - mean) / std
        return advantages


def test_tracker_exact_values():
    t = PerPromptStatTracker(buffer_size=3, min_count=2)
    # first sight of each prompt: too few rewards, so the batch statistics (mean 3, std 2)
    torch.testing.assert_close(t.update(["a", "b"], torch.tensor([1.0, 5.0])), torch.tensor([-2 / (2 + EPS), 2 / (2 + EPS)]))
    # a now has [1, 3]: mean 2, std 1
    torch.testing.assert_close(t.update(["a"], torch.tensor([3.0])), torch.tensor([1 / (1 + EPS)]))
    # buffer of 3 drops the 1: [3, 5, 7], mean 5, std sqrt(8/3)
    s = math.sqrt(8 / 3)
    torch.testing.assert_close(t.update(["a", "a"], torch.tensor([5.0, 7.0])), torch.tensor([0.0, 2 / (s + EPS)]))
    assert list(t.stats["a"]) == [3.0, 5.0, 7.0]


def test_tracker_matches_ddpo_pytorch_and_resumes_from_its_state():
    rng = np.random.default_rng(0)
    ours, ref = PerPromptStatTracker(buffer_size=5, min_count=3), _ReferenceTracker(5, 3)
    batches = [(list(rng.choice(["p", "q", "r"], size=6)), rng.normal(size=6)) for _ in range(6)]
    for i, (prompts, rewards) in enumerate(batches):
        if i == 3:  # save, reload through JSON (as a checkpoint does), continue
            state = json.loads(json.dumps(ours.state_dict()))
            ours = PerPromptStatTracker()
            ours.load_state_dict(state)
        got = ours.update(prompts, torch.tensor(rewards, dtype=torch.float64))
        np.testing.assert_allclose(got.numpy(), ref.update(prompts, rewards), rtol=1e-12, atol=1e-12)


def test_non_finite_rewards_and_bad_modes_are_clear_errors():
    with pytest.raises(RewardiffError, match="NaN.*'b'"):
        compute_advantages("per_prompt", ["a", "b"], torch.tensor([1.0, float("nan")]), PerPromptStatTracker())
    with pytest.raises(RewardiffError, match="NaN"):
        compute_advantages("batch", ["a", "b"], torch.tensor([1.0, float("inf")]))
    with pytest.raises(RewardiffError, match="unknown advantages mode"):
        compute_advantages("ppo", ["a"], torch.tensor([1.0]))
    with pytest.raises(RewardiffError, match="PerPromptStatTracker"):
        compute_advantages("per_prompt", ["a"], torch.tensor([1.0]))
    with pytest.raises(RewardiffError, match="prompts"):
        compute_advantages("group", ["a"], torch.tensor([1.0, 2.0]))


def test_group_mean_batch_std_keeps_near_ties_near_zero():
    """A group whose rewards nearly tie gets near-zero advantages (group std would blow them up to +-1)."""
    from rewardiff.algorithms.advantages import compute_advantages

    prompts = ["a", "a", "b", "b"]
    rewards = torch.tensor([3.00, 3.01, 1.0, 3.0])
    adv = compute_advantages("group_batch_std", prompts, rewards)
    grpo = compute_advantages("group", prompts, rewards)
    assert grpo[:2].abs().min() > 0.99  # GRPO: the 0.01 tie becomes +-1
    assert adv[:2].abs().max() < 0.01 and adv[3] > 0.9 and adv[2] < -0.9
    torch.testing.assert_close(adv.sum(), torch.tensor(0.0))
