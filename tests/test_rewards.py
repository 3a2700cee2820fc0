"""The reward interface, JPEG rewards, registry, weighted sum, optional extras and set scoring.

Model-backed rewards (CLIP, aesthetic, PickScore, caption, detection) are in test_rewards_models.py.
"""

from __future__ import annotations

import doctest
import io
import json
import sys
import types

import numpy as np
import pytest
import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards import REWARDS, Reward, RewardOutput, WeightedSum, build_reward, build_rewards, parse_reward_spec
from rewardiff.rewards.jpeg import JpegCompressibility, JpegIncompressibility

torch.set_num_threads(1)


class Brightness(Reward):
    """Mean pixel value: differentiable, exact."""

    name = "brightness"
    differentiable = True

    def score(self, images, prompts):
        self.grad_enabled = torch.is_grad_enabled()
        return RewardOutput(images.mean(dim=(1, 2, 3)))


class PromptLength(Reward):
    """Characters in the prompt: not differentiable."""

    name = "prompt_length"

    def score(self, images, prompts):
        self.grad_enabled = torch.is_grad_enabled()
        return RewardOutput(torch.tensor([float(len(p)) for p in prompts]), {"length": [len(p) for p in prompts]})


class Broken(Reward):
    """Returns what the test asks for."""

    name = "broken"

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def score(self, images, prompts):
        return RewardOutput(self.scores)


# --- the interface ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images, prompts, message",
    [
        (torch.rand(2, 3, 8), ["a", "b"], "shape"),
        (torch.rand(2, 1, 8, 8), ["a", "b"], "shape"),
        (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), ["a", "b"], "float"),
        (torch.rand(2, 3, 8, 8) * 255, ["a", "b"], r"\[0, 1\]"),
        (torch.rand(2, 3, 8, 8) * 2 - 1, ["a", "b"], r"\[0, 1\]"),
        (torch.full((2, 3, 8, 8), float("nan")), ["a", "b"], "NaN"),
        (torch.rand(2, 3, 8, 8), ["a"], "2 images but 1 prompts"),
        (torch.rand(2, 3, 8, 8), ["a", "  "], "empty prompt"),
        (torch.rand(0, 3, 8, 8), [], "empty batch"),
    ],
)
def test_inputs_are_checked(images, prompts, message):
    with pytest.raises(RewardiffError, match=message) as info:
        Brightness()(images, prompts)
    assert "brightness" in str(info.value)


def test_values_within_tolerance_pass():
    images = torch.rand(1, 3, 4, 4).clamp(0, 1)
    images[0, 0, 0, 0] = 1.0005
    assert Brightness()(images, ["a"]).scores.shape == (1,)


@pytest.mark.parametrize(
    "scores, message",
    [
        (torch.tensor([1.0, float("nan"), 2.0]), r"NaN or inf scores for images at index \[1\]"),
        (torch.tensor([float("inf"), 0.0, float("-inf")]), r"index \[0, 2\]"),
        (torch.zeros(2), r"shape \(2,\), expected \(3,\)"),
        (torch.zeros(3, 1), r"shape \(3, 1\)"),
    ],
)
def test_bad_scores_name_the_reward(scores, message):
    with pytest.raises(RewardiffError, match=message) as info:
        Broken(scores)(torch.rand(3, 3, 4, 4), ["a", "b", "c"])
    assert "'broken'" in str(info.value)


def test_non_differentiable_rewards_run_without_grad():
    images = torch.rand(2, 3, 4, 4, requires_grad=True)
    plain, smooth = PromptLength(), Brightness()
    assert not plain.differentiable and smooth.differentiable
    assert not plain(images, ["a", "bb"]).scores.requires_grad and plain.grad_enabled is False
    out = smooth(images, ["a", "bb"])
    assert smooth.grad_enabled is True
    out.scores.sum().backward()
    assert torch.allclose(images.grad, torch.full_like(images, 1 / 48))


def test_scores_come_back_float32():
    out = Broken(torch.tensor([1.0, 2.0], dtype=torch.float64))(torch.rand(2, 3, 4, 4), ["a", "b"])
    assert out.scores.dtype == torch.float32


# --- JPEG --------------------------------------------------------------------------------------


def _pil_jpeg_bytes(array: np.ndarray) -> int:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return len(buffer.getvalue())


_rng = np.random.default_rng(0)
JPEG_CASES = {
    "white": np.full((64, 64, 3), 255, np.uint8),
    "black": np.zeros((64, 48, 3), np.uint8),
    "half grey": np.full((32, 32, 3), 128, np.uint8),
    "stripes": np.tile(np.array([0, 255], np.uint8).repeat(4)[None, :, None], (64, 8, 3)),
    "noise": _rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
}


@pytest.mark.parametrize("case", list(JPEG_CASES))
def test_jpeg_sizes_match_pil(case):
    array = JPEG_CASES[case]
    images = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0
    expected_kb = _pil_jpeg_bytes(array) / 1000
    small = JpegCompressibility()(images, ["x"])
    big = JpegIncompressibility()(images, ["x"])
    assert small.scores.item() == pytest.approx(-expected_kb, abs=1e-6)
    assert big.scores.item() == pytest.approx(expected_kb, abs=1e-6)
    assert small.details["jpeg_bytes"] == [round(expected_kb * 1000)]


def test_jpeg_ordering_and_signs():
    flat = torch.ones(1, 3, 64, 64)
    noise = torch.from_numpy(JPEG_CASES["noise"]).permute(2, 0, 1)[None].float() / 255.0
    images = torch.cat([flat, noise])
    small = JpegCompressibility()(images, ["flat", "noise"]).scores
    big = JpegIncompressibility()(images, ["flat", "noise"]).scores
    assert small[0] > small[1]  # compressibility prefers the flat image
    assert big[1] > big[0]  # incompressibility prefers the noise
    assert (small < 0).all() and (big > 0).all()
    assert not JpegCompressibility.differentiable and not JpegIncompressibility.differentiable


def test_jpeg_rounds_like_ddpo():
    """0.5 * 255 = 127.5 rounds to 128 (half to even), as ddpo-pytorch's .round()."""
    images = torch.full((1, 3, 32, 32), 0.5)
    assert JpegIncompressibility()(images, ["x"]).scores.item() == pytest.approx(_pil_jpeg_bytes(JPEG_CASES["half grey"]) / 1000)


# --- registry and weighted sum -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, name, model, weight",
    [
        ("clip", "clip", None, 1.0),
        ("clip:0.5", "clip", None, 0.5),
        ("clip:-2", "clip", None, -2.0),
        ("clip@/models/my-clip", "clip", "/models/my-clip", 1.0),
        ("clip@/models/my-clip:1e-1", "clip", "/models/my-clip", 0.1),
        ("aesthetic@C:/heads/h.safetensors", "aesthetic", "C:/heads/h.safetensors", 1.0),
        ("pickscore@owner/repo:3", "pickscore", "owner/repo", 3.0),
        ("hpsv2.1", "hpsv2.1", None, 1.0),
    ],
)
def test_parse_reward_spec(text, name, model, weight):
    spec = parse_reward_spec(text)
    assert (spec.name, spec.model, spec.weight) == (name, model, weight)


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope", "unknown reward 'nope'; known rewards: clip, aesthetic, pickscore"),
        ("clip:heavy", "weight 'heavy' is not a number"),
        ("clip@", "nothing after '@'"),
        ("clip:inf", "finite"),
    ],
)
def test_bad_specs(text, message):
    with pytest.raises(RewardiffError, match=message):
        parse_reward_spec(text)


def test_unknown_reward_lists_every_known_name():
    with pytest.raises(RewardiffError) as info:
        build_reward("aesthetics")
    for name in REWARDS:
        assert name in str(info.value)


def test_registry_is_explicit():
    assert set(REWARDS) >= {"clip", "aesthetic", "pickscore", "hpsv2", "hpsv2.1", "imagereward", "caption", "detection", "grounding_dino", "jpeg_compressibility", "jpeg_incompressibility"}
    assert isinstance(build_reward("jpeg_incompressibility:3"), JpegIncompressibility)
    with pytest.raises(RewardiffError, match="takes no model"):
        build_reward("jpeg_compressibility@/some/model")


def test_weighted_sum_equals_manual_combination():
    images = torch.rand(3, 3, 8, 8)
    prompts = ["a", "bb", "ccc"]
    total = WeightedSum([("bright", Brightness(), 2.0), ("length", PromptLength(), -0.5)])
    out = total(images, prompts)
    expected = 2.0 * images.mean(dim=(1, 2, 3)) - 0.5 * torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(out.scores, expected)
    assert torch.allclose(out.details["bright"], images.mean(dim=(1, 2, 3)))
    assert out.details["length.length"] == [1, 2, 3]
    assert not total.differentiable  # one part is not


def test_weighted_sum_of_differentiable_parts_is_differentiable():
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    total = WeightedSum([("a", Brightness(), 1.0), ("b", Brightness(), 3.0)])
    assert total.differentiable
    total(images, ["x", "y"]).scores.sum().backward()
    assert torch.allclose(images.grad, torch.full_like(images, 4.0 / (3 * 8 * 8)))


def test_weighted_sum_nan_names_the_part():
    total = WeightedSum([("ok", Brightness(), 1.0), ("bad", Broken(torch.tensor([0.0, float("nan")])), 1.0)])
    with pytest.raises(RewardiffError, match=r"'broken' returned NaN or inf scores for images at index \[1\]"):
        total(torch.rand(2, 3, 4, 4), ["x", "y"])


@pytest.mark.parametrize(
    "parts, message",
    [
        ([], "at least one"),
        ([("a", Brightness(), 1.0), ("a", Brightness(), 1.0)], "listed twice"),
        ([("total", Brightness(), 1.0)], "reserved"),
        ([("a", Brightness(), float("nan"))], "finite"),
        ([("a", object(), 1.0)], "not a Reward"),
    ],
)
def test_weighted_sum_checks_its_parts(parts, message):
    with pytest.raises(RewardiffError, match=message):
        WeightedSum(parts)


def test_build_rewards_keys_and_weights():
    total = build_rewards(["jpeg_compressibility:2", "jpeg_incompressibility"])
    assert total.keys == ["jpeg_compressibility", "jpeg_incompressibility"]
    assert total.weights == {"jpeg_compressibility": 2.0, "jpeg_incompressibility": 1.0}
    with pytest.raises(RewardiffError, match="listed twice"):
        build_rewards(["jpeg_compressibility", "jpeg_compressibility:2"])
    with pytest.raises(RewardiffError, match="no reward given"):
        build_rewards([])


# --- optional extras -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, module, package",
    [("hpsv2", "hpsv2", "pip install hpsv2"), ("hpsv2.1", "hpsv2", "pip install hpsv2"), ("imagereward", "ImageReward", "pip install image-reward")],
)
def test_missing_extra_names_the_pip_package(monkeypatch, spec, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail, installed or not
    with pytest.raises(RewardiffError, match=package) as info:
        build_reward(spec)
    assert repr(spec) in str(info.value)


class _FakeOpenClipModel(torch.nn.Module):
    """Stands in for hpsv2's open_clip CLIP: forward(image, text) -> normalised feature dict."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Linear(3, 4)
        self.token_embedding = torch.nn.Embedding(128, 4)

    def forward(self, image, text):
        img = self.visual(image.mean(dim=(2, 3)))
        txt = self.token_embedding(text).mean(dim=1)
        return {"image_features": img / img.norm(dim=-1, keepdim=True), "text_features": txt / txt.norm(dim=-1, keepdim=True)}


def _fake_hpsv2(monkeypatch, calls: dict):
    def create_model_and_transforms(arch, pretrained=None, precision="fp32", device="cpu", output_dict=None):
        calls.update(arch=arch, pretrained=pretrained, device=device, output_dict=output_dict)
        torch.manual_seed(1)  # different weights from the checkpoint's, so loading must matter
        return _FakeOpenClipModel(), None, lambda pil: torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255.0

    def get_tokenizer(arch):
        return lambda texts: torch.tensor([[ord(c) % 128 for c in (t + "    ")[:4]] for t in texts])

    open_clip = types.SimpleNamespace(create_model_and_transforms=create_model_and_transforms, get_tokenizer=get_tokenizer)
    for name, module in {"hpsv2": types.ModuleType("hpsv2"), "hpsv2.src": types.ModuleType("hpsv2.src"), "hpsv2.src.open_clip": open_clip}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return get_tokenizer("ViT-H-14")


def test_hps_glue_with_a_fake_package(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    from rewardiff.rewards.hps import HpsScore

    calls: dict = {}
    tokenizer = _fake_hpsv2(monkeypatch, calls)
    torch.manual_seed(0)
    trained = _FakeOpenClipModel()
    save_file(trained.state_dict(), str(tmp_path / "hps.safetensors"))
    reward = build_reward(f"hpsv2.1@{tmp_path / 'hps.safetensors'}")
    assert isinstance(reward, HpsScore) and reward.name == "hpsv2.1" and not reward.differentiable
    assert calls == {"arch": "ViT-H-14", "pretrained": None, "device": "cpu", "output_dict": True}
    images = torch.rand(2, 3, 8, 8)
    prompts = ["a red circle", "two blue squares"]
    pixels = (images * 255).round() / 255.0  # the package sees uint8 PIL images
    with torch.no_grad():
        feats = trained(pixels, tokenizer(prompts))
    expected = (feats["image_features"] * feats["text_features"]).sum(-1)
    assert torch.allclose(reward(images, prompts).scores, expected, atol=1e-6)


def test_hps_checkpoint_errors(monkeypatch, tmp_path):
    from rewardiff.rewards.hps import HpsScore

    _fake_hpsv2(monkeypatch, {})
    with pytest.raises(RewardiffError, match="offline"):
        HpsScore("v2.0")  # the hub checkpoint, with HF_HUB_OFFLINE=1 and no cache
    with pytest.raises(RewardiffError, match="not found"):
        HpsScore("v2.1", checkpoint=tmp_path / "missing.pt")
    with pytest.raises(RewardiffError, match="unknown HPS version"):
        HpsScore("v3")


class _FakeBlip(torch.nn.Module):
    def __init__(self, tokenizer, width: int = 8):
        super().__init__()
        self.tokenizer = tokenizer
        self.patches = torch.nn.Conv2d(3, width, kernel_size=56, stride=56)  # 224 px -> 4 x 4 patches
        self.words = torch.nn.Embedding(len(tokenizer), width)

    def visual_encoder(self, pixels):
        return self.patches(pixels).flatten(2).transpose(1, 2)  # (B, 16, width)

    def text_encoder(self, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, return_dict):
        hidden = self.words(input_ids) + encoder_hidden_states.mean(dim=1, keepdim=True)
        return types.SimpleNamespace(last_hidden_state=hidden)


class _FakeImageReward(torch.nn.Module):
    def __init__(self, tokenizer):
        super().__init__()
        torch.manual_seed(0)
        self.blip = _FakeBlip(tokenizer)
        self.mlp = torch.nn.Linear(8, 1)
        self.mean, self.std = 0.16717362830052426, 1.0333394966054072


def test_imagereward_glue_with_a_fake_package(monkeypatch):
    from tiny_reward_models import _bert_tokenizer

    from rewardiff.rewards.imagereward import ImageRewardScore

    tokenizer = _bert_tokenizer()
    loaded = {}

    def load(name, device="cpu", download_root=None):
        loaded.update(name=name, device=device)
        return _FakeImageReward(tokenizer)

    monkeypatch.setitem(sys.modules, "ImageReward", types.SimpleNamespace(load=load))
    reward = build_reward("imagereward")
    assert isinstance(reward, ImageRewardScore) and reward.differentiable
    assert loaded == {"name": "ImageReward-v1.0", "device": "cpu"}
    images = torch.rand(2, 3, 224, 224, requires_grad=True)  # 224 px: the transform only normalises
    prompts = ["a red circle", "a blue square and a green triangle"]
    out = reward(images, prompts)
    model = reward.model
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = model.blip.visual_encoder((images - mean) / std)
        cls = model.blip.words(ids)[:, 0] + embeds.mean(dim=1)
        expected = (model.mlp(cls).squeeze(-1) - model.mean) / model.std
    assert torch.allclose(out.scores, expected, atol=1e-5)
    out.scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_imagereward_load_failure_is_clear(monkeypatch):
    def load(name, device="cpu", download_root=None):
        raise RuntimeError(f"Model {name} not found; available models = ['ImageReward-v1.0']")

    monkeypatch.setitem(sys.modules, "ImageReward", types.SimpleNamespace(load=load))
    with pytest.raises(RewardiffError, match="cannot load ImageReward model 'nope'"):
        build_reward("imagereward@nope")


# --- scoring a set ---------------------------------------------------------------------------------


@pytest.fixture()
def rendered_set(tmp_path):
    from rewardiff.shapes.dataset import render_dataset

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square and a green triangle\ntwo yellow squares\n")
    return render_dataset(str(prompts), 2, 0, tmp_path / "set")


def test_score_metadata_writes_one_row_per_image(rendered_set):
    from rewardiff.io_utils import load_image, read_jsonl
    from rewardiff.rewards.scoring import SUMMARY, score_metadata

    path = score_metadata(rendered_set, ["jpeg_compressibility", "jpeg_incompressibility:0.5"], batch_size=4, progress=False)
    assert path == rendered_set.parent / "scores.jsonl"
    meta = list(read_jsonl(rendered_set))
    rows = list(read_jsonl(path))
    assert len(rows) == len(meta) == 6
    for row, m in zip(rows, meta):
        assert (row["image"], row["prompt"]) == (m["image"], m["prompt"])
        kb = _pil_jpeg_bytes(load_image(rendered_set.parent / m["image"])) / 1000
        assert row["jpeg_compressibility"] == pytest.approx(-kb, abs=1e-6)
        assert row["jpeg_incompressibility"] == pytest.approx(kb, abs=1e-6)
        assert row["total"] == pytest.approx(-kb + 0.5 * kb, abs=1e-5)
        assert row["jpeg_compressibility.jpeg_bytes"] == round(kb * 1000)
    summary = json.loads((rendered_set.parent / SUMMARY).read_text())
    assert summary["num_images"] == 6
    assert summary["rewards"]["jpeg_incompressibility"]["weight"] == 0.5
    values = [r["jpeg_incompressibility"] for r in rows]
    assert summary["rewards"]["jpeg_incompressibility"]["mean"] == pytest.approx(np.mean(values))
    assert summary["rewards"]["jpeg_incompressibility"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert summary["total"]["mean"] == pytest.approx(np.mean([r["total"] for r in rows]))


def test_score_metadata_out_folder_and_injected_reward(rendered_set, tmp_path):
    from rewardiff.io_utils import read_jsonl
    from rewardiff.rewards.scoring import score_metadata

    total = WeightedSum([("bright", Brightness(), 1.0)])
    path = score_metadata(rendered_set.parent, [], out=tmp_path / "elsewhere", progress=False, reward=total)
    assert path == tmp_path / "elsewhere" / "scores.jsonl"
    rows = list(read_jsonl(path))
    assert len(rows) == 6 and all(0 < r["bright"] <= 1 and r["total"] == r["bright"] for r in rows)


def test_corrupt_or_missing_image_names_row_and_file(rendered_set):
    from rewardiff.io_utils import read_jsonl
    from rewardiff.rewards.scoring import score_metadata

    meta = list(read_jsonl(rendered_set))
    bad = rendered_set.parent / meta[3]["image"]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(RewardiffError, match=r"row 4: corrupt image .*" + bad.name):
        score_metadata(rendered_set, ["jpeg_compressibility"], progress=False)
    bad.unlink()
    with pytest.raises(RewardiffError, match=r"row 4: image not found: .*" + bad.name):
        score_metadata(rendered_set, ["jpeg_compressibility"], progress=False)
    assert not (rendered_set.parent / "scores.jsonl").exists()  # nothing half-written


def test_score_metadata_rejects_bad_input(rendered_set):
    from rewardiff.rewards.scoring import score_metadata

    with pytest.raises(RewardiffError, match="unknown reward 'clipp'; known rewards"):
        score_metadata(rendered_set, ["clipp"], progress=False)
    with pytest.raises(RewardiffError, match="batch-size"):
        score_metadata(rendered_set, ["jpeg_compressibility"], batch_size=0, progress=False)
    lines = rendered_set.read_text().splitlines()
    row = json.loads(lines[1])
    row["prompt"] = ""
    lines[1] = json.dumps(row)
    rendered_set.write_text("\n".join(lines) + "\n")
    with pytest.raises(RewardiffError, match="row 2: empty prompt"):
        score_metadata(rendered_set, ["jpeg_compressibility"], progress=False)


# --- docstring examples ------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["base", "jpeg", "composite", "registry", "caption", "detection"])
def test_docstring_examples(module):
    import importlib

    mod = importlib.import_module(f"rewardiff.rewards.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
