"""Rewards: images (B, 3, H, W) in [0, 1] + prompts -> scores (B,); see base.py for the interface,
registry.py for names and the 'NAME[@MODEL][:WEIGHT]' syntax, scoring.py for scoring a set.

Model-backed rewards import transformers (and optional extras) only when built.
"""

from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.composite import WeightedSum
from rewardiff.rewards.registry import REWARDS, RewardSpec, build_reward, build_rewards, describe_rewards, parse_reward_spec

__all__ = [
    "REWARDS",
    "Reward",
    "RewardOutput",
    "RewardSpec",
    "WeightedSum",
    "build_reward",
    "build_rewards",
    "describe_rewards",
    "parse_reward_spec",
]
