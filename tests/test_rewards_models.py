"""Model-backed rewards on tiny random models of the real classes, loaded by local path (offline)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards import build_reward
from rewardiff.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform

torch.set_num_threads(1)

PROMPTS = ["a red circle", "a blue square and a green triangle"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_reward_models import build_tiny_blip, build_tiny_clip, build_tiny_grounding_dino, build_tiny_owlv2

    root = tmp_path_factory.mktemp("reward-models")
    return {
        "clip": build_tiny_clip(root / "clip"),
        "blip": build_tiny_blip(root / "blip"),
        "owlv2": build_tiny_owlv2(root / "owlv2"),
        "gdino": build_tiny_grounding_dino(root / "gdino"),
    }


def _images(n: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _clip_by_hand(clip_dir, images, prompts):
    """Cosine of get_image_features / get_text_features, for 32 x 32 inputs (no resize needed)."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=(images - mean) / std).pooler_output
        ids = tok(prompts, padding=True, return_tensors="pt")
        txt = model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask).pooler_output
    return torch.nn.functional.cosine_similarity(img, txt, dim=-1), model


def _grad_flows(reward, images, prompts=PROMPTS):
    images = images.clone().requires_grad_(True)
    out = reward(images, prompts)
    assert out.scores.requires_grad
    out.scores.sum().backward()
    return images.grad is not None and images.grad.abs().sum().item() > 0


# --- preprocessing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transform, hw, expected",
    [
        (ImageTransform(shortest_edge=224), (480, 640), (224, 298)),  # CLIP: int(224 * 640 / 480)
        (ImageTransform(shortest_edge=224), (640, 480), (298, 224)),
        (ImageTransform(shortest_edge=224), (224, 224), (224, 224)),
        (ImageTransform(shortest_edge=800, longest_edge=1333), (480, 640), (800, 1066)),  # Grounding DINO
        (ImageTransform(shortest_edge=800, longest_edge=1333), (100, 1000), (133, 1333)),  # capped: 133.3 unrounded -> 1333
        (ImageTransform(size=(384, 384)), (512, 768), (384, 384)),  # BLIP: exact
    ],
)
def test_resize_sizes_follow_transformers(transform, hw, expected):
    assert transform.output_hw(*hw) == expected


@pytest.mark.parametrize("kind, hw", [("clip", (40, 56)), ("clip", (32, 32)), ("clip", (20, 24)), ("blip", (48, 40))])
def test_transform_matches_the_transformers_processor(models, kind, hw):
    """Our torch transform vs the library's PIL processor on the same uint8 image: same shape,
    values within resampling / uint8 rounding differences (normalised units: 0.02 ~ 1.4/255)."""
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(models[kind])
    array = (np.random.default_rng(0).random((*hw, 3)) * 255).round().astype(np.uint8)
    array = np.asarray(Image.fromarray(array).resize((hw[1] // 4, hw[0] // 4)).resize((hw[1], hw[0]), Image.BICUBIC))  # smooth
    theirs = torch.as_tensor(np.asarray(processor(images=Image.fromarray(array), return_tensors="np")["pixel_values"]))
    ours = ImageTransform.from_processor(processor)(torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().mean() < 0.01 and (ours - theirs).abs().max() < 0.02


def test_pad_square_then_resize_keeps_gradients():
    transform = ImageTransform(size=(32, 32), pad_square=True, mode="bilinear")
    images = torch.rand(1, 3, 20, 40, requires_grad=True)
    out = transform(images)
    assert out.shape == (1, 3, 32, 32)
    out.sum().backward()
    assert images.grad.abs().sum() > 0


# --- CLIP score --------------------------------------------------------------------------------------


def test_clip_score_is_100_cosine_clamped(models):
    from rewardiff.rewards.clip import ClipScore

    images = _images()
    cosine, _ = _clip_by_hand(models["clip"], images, PROMPTS)
    clamped = ClipScore(str(models["clip"]))(images, PROMPTS)
    raw = ClipScore(str(models["clip"]), clamp_negative=False)(images, PROMPTS)
    assert torch.allclose(raw.scores, 100 * cosine, atol=1e-4)
    assert torch.allclose(clamped.scores, (100 * cosine).clamp_min(0), atol=1e-4)
    assert torch.allclose(clamped.details["cosine"], cosine, atol=1e-6)


def test_clip_score_through_the_registry_and_resize(models):
    reward = build_reward(f"clip@{models['clip']}:0.5")
    assert reward.name == "clip" and reward.differentiable
    out = reward(_images(3, 48, 40), ["a red circle", "two blue squares", "a green triangle left of a red square"])
    assert out.scores.shape == (3,) and (out.scores >= 0).all() and (out.scores <= 100).all()


def test_clip_gradient_reaches_the_image(models):
    from rewardiff.rewards.clip import ClipScore

    assert _grad_flows(ClipScore(str(models["clip"]), clamp_negative=False), _images(2, 40, 48))


# --- LAION aesthetic ---------------------------------------------------------------------------------


def test_aesthetic_head_matches_manual_mlp(models, tmp_path):
    from safetensors.torch import load_file
    from tiny_reward_models import write_aesthetic_head

    from rewardiff.rewards.aesthetic import AestheticScore

    head = write_aesthetic_head(tmp_path / "head.safetensors")
    reward = AestheticScore(str(models["clip"]), head=head)
    images = _images()
    _, model = _clip_by_hand(models["clip"], images, PROMPTS)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        x = model.get_image_features(pixel_values=(images - mean) / std).pooler_output
    x = x / x.norm(dim=-1, keepdim=True)
    weights = load_file(str(head))
    for index in (0, 2, 4, 6, 7):  # Linear layers; no activations in the LAION linear head
        x = x @ weights[f"layers.{index}.weight"].T + weights[f"layers.{index}.bias"]
    assert torch.allclose(reward(images, PROMPTS).scores, x.squeeze(-1), atol=1e-5)
    assert _grad_flows(reward, _images(2, 40, 40))


def test_aesthetic_from_a_model_folder(models, tmp_path):
    import shutil

    from tiny_reward_models import write_aesthetic_head

    from rewardiff.rewards.aesthetic import HEAD_FILENAME

    folder = tmp_path / "aesthetic-model"
    shutil.copytree(models["clip"], folder)
    write_aesthetic_head(folder / HEAD_FILENAME)
    reward = build_reward(f"aesthetic@{folder}")  # the head beside the CLIP weights
    assert reward.name == "aesthetic" and reward.differentiable
    assert reward(_images(), PROMPTS).scores.shape == (2,)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.with_suffix(".pth").write_bytes(b"pickle") and p.with_suffix(".pth"), "only .safetensors"),
        (lambda p: p, "not found"),
        (lambda p: _save(p, {"mlp.weight": torch.zeros(1, 16)}), "expected keys 'layers.N.weight'"),
        (lambda p: _save(p, {"layers.0.weight": torch.zeros(8, 16), "layers.0.bias": torch.zeros(8), "layers.2.weight": torch.zeros(1, 4), "layers.2.bias": torch.zeros(1)}), "does not chain"),
        (lambda p: _save(p, {"layers.0.weight": torch.zeros(2, 16), "layers.0.bias": torch.zeros(2)}), "must output 1 value"),
        (lambda p: _save(p, {"layers.0.weight": torch.zeros(1, 768), "layers.0.bias": torch.zeros(1)}), "takes 768-d embeddings but the CLIP model gives 16-d"),
    ],
)
def test_aesthetic_head_errors(models, tmp_path, make, message):
    from rewardiff.rewards.aesthetic import AestheticScore

    head = make(tmp_path / "head.safetensors")
    with pytest.raises(RewardiffError, match=message):
        AestheticScore(str(models["clip"]), head=head)


def _save(path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


def test_aesthetic_default_head_needs_the_hub(models):
    with pytest.raises(RewardiffError, match="LAION aesthetic head .*offline"):
        build_reward(f"aesthetic@{models['clip']}")  # no head file beside it -> hub default


# --- PickScore ---------------------------------------------------------------------------------------


def test_pickscore_is_logit_scale_times_cosine(models):
    from rewardiff.rewards.pickscore import PickScore

    images = _images()
    cosine, model = _clip_by_hand(models["clip"], images, PROMPTS)
    reward = build_reward(f"pickscore@{models['clip']}")
    assert isinstance(reward, PickScore) and reward.differentiable
    expected = model.logit_scale.exp().item() * cosine
    assert torch.allclose(reward(images, PROMPTS).scores, expected, atol=1e-4)
    separate = PickScore(str(models["clip"]), processor=str(models["clip"]))
    assert torch.allclose(separate(images, PROMPTS).scores, expected, atol=1e-4)
    assert _grad_flows(reward, _images(2, 36, 36))


# --- caption similarity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption_vec, prompt_vec, expected",
    [
        ([1.0, 0.0], [1.0, 0.0], 1.0),
        ([1.0, 0.0], [0.0, 1.0], 0.0),
        ([1.0, 1.0], [1.0, 0.0], 1 / math.sqrt(2)),
        ([1.0, 0.0], [-2.0, 0.0], -1.0),
        ([3.0, 4.0], [4.0, 3.0], 24 / 25),
    ],
)
def test_caption_similarity_is_the_cosine(caption_vec, prompt_vec, expected):
    from rewardiff.rewards.caption import CaptionSimilarity

    vectors = {"the caption": caption_vec, "the prompt": prompt_vec}
    reward = CaptionSimilarity(captioner=lambda images: ["the caption"] * len(images), text_encoder=lambda texts: torch.tensor([vectors[t] for t in texts]))
    out = reward(_images(1), ["the prompt"])
    assert out.scores.item() == pytest.approx(expected, abs=1e-6)
    assert out.details["caption"] == ["the caption"]


def test_caption_with_tiny_blip_and_clip(models):
    from rewardiff.rewards.caption import CaptionSimilarity
    from rewardiff.rewards.clip import ClipEmbedder

    reward = CaptionSimilarity(str(models["blip"]), text_encoder=str(models["clip"]))
    assert not reward.differentiable
    images = _images(2, 40, 48).requires_grad_(True)
    out = reward(images, PROMPTS)
    captions = out.details["caption"]
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert not out.scores.requires_grad
    clip = ClipEmbedder(str(models["clip"]))
    with torch.no_grad():
        expected = (clip.text_embeds(captions) * clip.text_embeds(PROMPTS)).sum(-1)
    assert torch.allclose(out.scores, expected, atol=1e-5)


def test_caption_spec_needs_the_text_model_from_the_hub(models):
    with pytest.raises(RewardiffError, match="openai/clip-vit-large-patch14.*offline"):
        build_reward(f"caption@{models['blip']}")


# --- detection ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, classes",
    [
        ("a red circle", ["red circle"]),
        ("a blue square and a green triangle", ["blue square", "green triangle"]),
        ("two yellow squares left of a red circle", ["yellow squares", "red circle"]),
        ("A photo of a cat, a dog and 3 birds on the sofa.", ["cat", "dog", "birds", "sofa"]),
        ("an image of the Eiffel tower in the snow", ["eiffel tower", "snow"]),
        ("a circle and a circle", ["circle"]),
    ],
)
def test_parse_object_phrases(prompt, classes):
    from rewardiff.rewards.detection import parse_object_phrases

    assert parse_object_phrases(prompt) == classes


@pytest.mark.parametrize("kind", ["owlv2", "gdino"])
def test_detection_score_is_mean_best_confidence(models, kind):
    from rewardiff.rewards.detection import DetectionConfidence

    reward = DetectionConfidence(str(models[kind]))
    images = _images(2, 32, 40)
    out = reward(images, PROMPTS)
    assert out.details["classes"] == [["red circle"], ["blue square", "green triangle"]]
    for score, conf in zip(out.scores.tolist(), out.details["confidences"]):
        assert all(0.0 <= c <= 1.0 for c in conf)
        assert score == pytest.approx(float(np.mean(conf)), abs=1e-6)
    # the padding of queries / text in a batch changes nothing: each image alone scores the same
    for i, prompt in enumerate(PROMPTS):
        alone = reward(images[i : i + 1], [prompt])
        assert alone.scores.item() == pytest.approx(out.scores[i].item(), abs=1e-4)
    assert reward.differentiable and _grad_flows(reward, images)


def test_detection_owlv2_confidence_by_hand(models):
    from transformers import AutoTokenizer, Owlv2ForObjectDetection

    from rewardiff.rewards.detection import DetectionConfidence

    reward = DetectionConfidence(str(models["owlv2"]), classes=["red circle", "blue square"])
    images = _images(1)
    out = reward(images, ["anything at all"])
    model = Owlv2ForObjectDetection.from_pretrained(models["owlv2"]).eval()
    tok = AutoTokenizer.from_pretrained(models["owlv2"])
    ids = tok(["red circle", "blue square"], padding="max_length", max_length=16, return_tensors="pt")
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask, pixel_values=(images - mean) / std).logits
    best = logits.sigmoid().amax(dim=1)[0]
    assert out.details["confidences"][0] == pytest.approx(best.tolist(), abs=1e-6)
    assert out.scores.item() == pytest.approx(best.mean().item(), abs=1e-6)


def test_detection_errors(models):
    from rewardiff.rewards.detection import DetectionConfidence

    with pytest.raises(RewardiffError, match="detector type 'clip' is not supported; expected one of"):
        DetectionConfidence(str(models["clip"]))
    reward = DetectionConfidence(str(models["owlv2"]), parse_classes=lambda prompt: [])
    with pytest.raises(RewardiffError, match="no object classes found in prompt 'a red circle'"):
        reward(_images(1), ["a red circle"])
    with pytest.raises(RewardiffError, match="non-empty"):
        DetectionConfidence(str(models["owlv2"]), classes=[])
    assert build_reward(f"grounding_dino@{models['gdino']}").name == "detection"


# --- loading errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        ("clip@./no/such/folder", "CLIP model folder not found: ./no/such/folder"),
        ("clip@rewardiff-test/not-a-model", "cannot load CLIP model 'rewardiff-test/not-a-model' from the hub: offline"),
        ("pickscore@rewardiff-test/not-a-model", "offline"),
        ("detection@rewardiff-test/not-a-model", "offline"),
    ],
)
def test_loading_errors_are_clear(spec, message):
    with pytest.raises(RewardiffError, match=message):
        build_reward(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(RewardiffError, match="no config.json"):
        build_reward(f"clip@{tmp_path}")


def test_to_moves_every_module(models):
    from rewardiff.rewards.clip import ClipScore

    reward = ClipScore(str(models["clip"])).to("cpu")
    assert reward.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for m in reward.modules() for p in m.parameters())
    assert not any(p.requires_grad for m in reward.modules() for p in m.parameters())  # frozen


# --- scoring a set with a model-backed reward ------------------------------------------------------


def test_score_metadata_with_clip_and_jpeg(models, tmp_path):
    from rewardiff.io_utils import read_jsonl
    from rewardiff.rewards.scoring import score_metadata
    from rewardiff.shapes.dataset import render_dataset

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square and a green triangle\n")
    meta = render_dataset(str(prompts), 3, 0, tmp_path / "set")
    path = score_metadata(meta, [f"clip@{models['clip']}:0.5", "jpeg_compressibility"], batch_size=4, progress=False)
    rows = list(read_jsonl(path))
    assert len(rows) == 6
    for row in rows:
        assert row["total"] == pytest.approx(0.5 * row["clip"] + row["jpeg_compressibility"], abs=1e-4)
        assert row["clip"] == pytest.approx(max(100 * row["clip.cosine"], 0.0), abs=1e-3)


def test_judge_reward_on_a_hub_style_owlv2(models):
    """judge@OWLV2_DIR: detection + exact counts + relation from a real OWLv2 class, no captioner."""
    from rewardiff.rewards.registry import build_reward

    reward = build_reward(f"judge@{models['owlv2']}")
    assert not reward.differentiable and reward.judge.caption is None
    images = _images(2, 32, 40)
    out = reward(images, PROMPTS)
    parts = sum(out.details[k] for k in ("detection", "count", "relation"))
    np.testing.assert_allclose(out.scores.numpy(), parts.numpy(), atol=1e-5)
    assert torch.isfinite(out.scores).all() and (out.details["caption"] == 0).all()
