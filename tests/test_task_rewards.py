"""TexForce's task rewards: hand-detection confidence (played by the shapes detector, queried for a
class it knows) and face quality through pyiqa (optional; its loading is tested with a stand-in
pyiqa module, since the package is not installed here), and their presets."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rewardiff.config import load_config
from rewardiff.errors import RewardiffError
from rewardiff.rewards.face_quality import FaceQuality
from rewardiff.rewards.hand import HandConfidence
from rewardiff.rewards.loading import SHAPES_JUDGES, shapes_judge
from rewardiff.rewards.registry import build_reward, parse_reward_spec
from rewardiff.shapes.render import render

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _images(prompts, seed=0):
    return torch.from_numpy(np.stack([render(p, seed + i).image for i, p in enumerate(prompts)])).permute(0, 3, 1, 2).float() / 255.0


def test_hand_reward_is_the_detectors_confidence_for_its_query():
    reward = HandConfidence(shapes_judge(SHAPES_JUDGES, "detector"), query="red circle")  # the shapes world's "hand"
    with_it = _images(["a red circle", "a red circle and a blue square", "two red circles"])
    without = _images(["a blue square", "a green triangle", "two yellow squares"])
    out_with, out_without = reward(with_it, ["a person waving"] * 3), reward(without, ["a person waving"] * 3)
    assert out_with.details["classes"] == [["red circle"]] * 3  # the prompt is not parsed: always the query
    assert out_with.scores.min() > out_without.scores.max()
    assert reward.differentiable
    with pytest.raises(RewardiffError, match="offline"):
        build_reward("hand")  # the default OWLv2 is not in the cache


class _Metric(torch.nn.Module):
    """Stands in for a pyiqa InferenceModel: `.net` holds the weights, forward scores images."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return torch.sigmoid(self.net(x).mean(dim=(2, 3)))


@pytest.fixture
def fake_pyiqa(monkeypatch):
    calls = []
    module = types.ModuleType("pyiqa")

    def create_metric(name, as_loss=False, device=None, **kwargs):
        calls.append((name, as_loss, kwargs))
        if name != "topiq_nr-face":
            raise ValueError(f"unknown metric {name}")
        return _Metric()

    module.create_metric = create_metric
    monkeypatch.setitem(sys.modules, "pyiqa", module)
    return calls


def test_face_quality_loads_a_safetensors_checkpoint(tmp_path, fake_pyiqa):
    weights = {"weight": torch.full((1, 3, 1, 1), 0.5), "bias": torch.tensor([-0.25])}
    save_file(weights, tmp_path / "topiq_face.safetensors")
    reward = build_reward(f"face_quality@{tmp_path / 'topiq_face.safetensors'}")
    images = torch.rand(2, 3, 16, 16)
    expected = torch.sigmoid(0.5 * images.sum(1).mean(dim=(1, 2)) - 0.25)
    assert reward(images, ["a portrait"] * 2).scores == pytest.approx(expected.tolist(), abs=1e-5)
    assert fake_pyiqa == [("topiq_nr-face", True, {"pretrained": False})]  # pyiqa never loads (unpickles) its own weights
    save_file({"other": torch.zeros(2)}, tmp_path / "wrong.safetensors")
    with pytest.raises(RewardiffError, match="does not fit"):
        FaceQuality(tmp_path / "wrong.safetensors")


def test_face_quality_bad_inputs(tmp_path, monkeypatch):
    with pytest.raises(RewardiffError, match="needs a safetensors checkpoint"):
        build_reward("face_quality")
    (tmp_path / "m.pth").write_bytes(b"x")
    with pytest.raises(RewardiffError, match="never unpickles"):
        FaceQuality(tmp_path / "m.pth")
    save_file({"w": torch.zeros(1)}, tmp_path / "m.safetensors")
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # not installed
    with pytest.raises(RewardiffError, match="optional package 'pyiqa'"):
        FaceQuality(tmp_path / "m.safetensors")


@pytest.mark.parametrize("name, reward", [("texforce_face_sd15.yaml", "face_quality"), ("texforce_hand_sd15.yaml", "hand")])
def test_task_presets(name, reward):
    from rewardiff.algorithms.ddpo import DDPOConfig

    cfg = load_config(DDPOConfig, CONFIGS / name)
    assert [parse_reward_spec(s).name for s in cfg.reward] == [reward] and cfg.target == "text_encoder"
