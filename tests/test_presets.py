"""Every YAML preset in configs/ loads into its config class (presets cannot drift from code)."""

from pathlib import Path

import pytest

from rewardiff.algorithms.ddpo import DDPOConfig
from rewardiff.algorithms.refl import ReFLConfig
from rewardiff.algorithms.reward_model import RewardModelConfig
from rewardiff.config import load_config
from rewardiff.demo import DemoConfig
from rewardiff.generation import GenerateConfig
from rewardiff.judges.prompt_writer import PromptTemplate
from rewardiff.loop.distill import DistillConfig
from rewardiff.loop.self_reward import SelfRewardConfig
from rewardiff.shapes.judges.train import TrainJudgesConfig
from rewardiff.shapes.preference_set import ShapesPreferenceConfig
from rewardiff.shapes.train_generator import TrainGeneratorConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KINDS = {"demo": DemoConfig, "generate": GenerateConfig, "shapes_generator": TrainGeneratorConfig, "shapes_judges": TrainJudgesConfig, "reward_model": RewardModelConfig,
         "shapes_preference": ShapesPreferenceConfig, "ddpo": DDPOConfig, "texforce": DDPOConfig, "refl": ReFLConfig,
         "self_reward": SelfRewardConfig, "prompt_writer": PromptTemplate, "distill": DistillConfig}


def _kind(path: Path):
    for prefix, cls in KINDS.items():
        if path.stem.startswith(prefix):
            return cls
    raise AssertionError(f"{path.name}: no config class for this preset name")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_preset_loads(path):
    kind = _kind(path)
    cfg = kind.load(path) if hasattr(kind, "load") else load_config(kind, path)  # templates validate themselves
    assert cfg is not None


def test_shipped_generator_recipe_matches_defaults():
    cfg = load_config(TrainGeneratorConfig, CONFIGS / "shapes_generator.yaml")
    assert cfg.arch == TrainGeneratorConfig().arch
    assert cfg.vae == TrainGeneratorConfig().vae
