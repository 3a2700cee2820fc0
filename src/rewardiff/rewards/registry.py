"""Rewards by name: an explicit dict from name to constructor, and the spec syntax users type.

Spec syntax (one reward):   NAME[@MODEL][:WEIGHT]

    clip                        CLIP score, hub default model, weight 1
    clip:0.5                    weight 0.5 in the weighted sum
    clip@/models/my-clip        a local model folder (or another hub id) instead of the default
    aesthetic@head.safetensors:2
A trailing ':NUMBER' is always the weight; everything between '@' and it is the model, so a
path may itself contain ':' (only a final ':NUMBER' is taken as the weight).
What MODEL names per reward is in each constructor's docstring (`describe_rewards()`).

    >>> parse_reward_spec("clip@/models/clip:0.5")
    RewardSpec(name='clip', model='/models/clip', weight=0.5)
    >>> build_reward("jpeg_compressibility").differentiable
    False
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward
from rewardiff.rewards.composite import WeightedSum

Device = str | torch.device
RewardFactory = Callable[[str | None, Device], Reward]
"""(model or None for the default, device) -> Reward."""


def _clip(model: str | None, device: Device) -> Reward:
    """CLIP score, 100 x cosine clamped at 0 (MODEL: CLIP folder / hub id / 'shapes'; default openai/clip-vit-large-patch14)."""
    from rewardiff.rewards.by_spec import clip_from_spec

    return clip_from_spec(model, device)


def _aesthetic(model: str | None, device: Device) -> Reward:
    """LAION aesthetic v2 (MODEL: head .safetensors, or CLIP folder holding aesthetic_head.safetensors)."""
    from rewardiff.rewards.aesthetic import aesthetic_from_spec

    return aesthetic_from_spec(model, device)


def _pickscore(model: str | None, device: Device) -> Reward:
    """PickScore (MODEL: PickScore folder / hub id; default yuvalkirstain/PickScore_v1)."""
    from rewardiff.rewards.pickscore import DEFAULT_PICKSCORE, PickScore

    return PickScore(model or DEFAULT_PICKSCORE, device=device)


def _hpsv2(model: str | None, device: Device) -> Reward:
    """HPS v2.0, needs pip install hpsv2 (MODEL: local checkpoint file; default xswu/HPSv2)."""
    from rewardiff.rewards.hps import HpsScore

    return HpsScore("v2.0", checkpoint=model, device=device)


def _hpsv21(model: str | None, device: Device) -> Reward:
    """HPS v2.1, needs pip install hpsv2 (MODEL: local checkpoint file; default xswu/HPSv2)."""
    from rewardiff.rewards.hps import HpsScore

    return HpsScore("v2.1", checkpoint=model, device=device)


def _imagereward(model: str | None, device: Device) -> Reward:
    """ImageReward, needs pip install image-reward (MODEL: checkpoint file or package model name)."""
    from rewardiff.rewards.imagereward import DEFAULT_IMAGEREWARD, ImageRewardScore

    return ImageRewardScore(model or DEFAULT_IMAGEREWARD, device=device)


def _caption(model: str | None, device: Device) -> Reward:
    """BLIP caption vs prompt, CLIP text cosine (MODEL: BLIP folder / hub id / 'shapes'; default Salesforce/blip-image-captioning-large)."""
    from rewardiff.rewards.by_spec import caption_from_spec

    return caption_from_spec(model, device)


def _detection(model: str | None, device: Device) -> Reward:
    """Mean best-box confidence of the prompt's objects (MODEL: OWLv2 or Grounding DINO folder / hub id / 'shapes'; default OWLv2)."""
    from rewardiff.rewards.by_spec import detection_from_spec

    return detection_from_spec(model, device)


def _grounding_dino(model: str | None, device: Device) -> Reward:
    """Detection confidence with Grounding DINO (MODEL: folder / hub id; default IDEA-Research/grounding-dino-base)."""
    from rewardiff.rewards.detection import GROUNDING_DINO, DetectionConfidence

    return DetectionConfidence(model or GROUNDING_DINO, device=device)


def _jpeg_compressibility(model: str | None, device: Device) -> Reward:
    """-kB of the JPEG at quality 95 (DDPO); no model."""
    from rewardiff.rewards.jpeg import JpegCompressibility

    _no_model("jpeg_compressibility", model)
    return JpegCompressibility(device)


def _jpeg_incompressibility(model: str | None, device: Device) -> Reward:
    """+kB of the JPEG at quality 95 (DDPO); no model."""
    from rewardiff.rewards.jpeg import JpegIncompressibility

    _no_model("jpeg_incompressibility", model)
    return JpegIncompressibility(device)


def _preference(model: str | None, device: Device) -> Reward:
    """Reward model trained by `rewardiff train-reward` (MODEL: its run folder; required)."""
    from rewardiff.rewards.preference import PreferenceReward

    from rewardiff.rewards.loading import SHAPES_JUDGES, shapes_judge

    if model is None:
        raise RewardiffError("reward 'preference' needs its run folder: preference@RUN_DIR (from rewardiff train-reward), or preference@shapes")
    if model == SHAPES_JUDGES:  # the shipped shapes reward model, trained on the synthetic preference set
        model = str(shapes_judge(model, "reward_model"))
    return PreferenceReward.from_run(model, device)


def _judge(model: str | None, device: Device) -> Reward:
    """The self-judge's score: caption + detection + exact counts + relation (MODEL: 'shapes' (default) or an OWLv2 folder / hub id); PPO only."""
    from rewardiff.rewards.judged import JudgedReward

    return JudgedReward.build(model, device)


def _vlm(model: str | None, device: Device) -> Reward:
    """VLM as judge, P(yes) to "Does this image show {prompt}?" (MODEL: 'shapes', an OpenAI-compatible URL[#MODEL], or an image-text-to-text hub id / folder; required)."""
    from rewardiff.rewards.vlm_judge import VLMJudge

    return VLMJudge.from_spec(model, device)


def _face_quality(model: str | None, device: Device) -> Reward:
    """TexForce face task: pyiqa TOPIQ face quality, needs pip install pyiqa (MODEL: the metric's .safetensors checkpoint; required)."""
    from rewardiff.rewards.face_quality import FaceQuality

    return FaceQuality(model, device=device)


def _hand(model: str | None, device: Device) -> Reward:
    """TexForce hand task: best-box confidence of "hand" (MODEL: OWLv2 or Grounding DINO folder / hub id; default OWLv2)."""
    from rewardiff.rewards.detection import DEFAULT_DETECTOR
    from rewardiff.rewards.hand import HandConfidence

    return HandConfidence(model or DEFAULT_DETECTOR, device=device)


def _no_model(name: str, model: str | None) -> None:
    if model is not None:
        raise RewardiffError(f"reward {name!r} takes no model (got @{model})")


REWARDS: dict[str, RewardFactory] = {
    "clip": _clip,
    "aesthetic": _aesthetic,
    "pickscore": _pickscore,
    "hpsv2": _hpsv2,
    "hpsv2.1": _hpsv21,
    "imagereward": _imagereward,
    "caption": _caption,
    "detection": _detection,
    "grounding_dino": _grounding_dino,
    "jpeg_compressibility": _jpeg_compressibility,
    "jpeg_incompressibility": _jpeg_incompressibility,
    "preference": _preference,
    "judge": _judge,
    "vlm": _vlm,
    "face_quality": _face_quality,
    "hand": _hand,
}


def describe_rewards() -> dict[str, str]:
    """Name -> one line, for --help texts."""
    return {name: (factory.__doc__ or "").strip().splitlines()[0] for name, factory in REWARDS.items()}


@dataclass(frozen=True)
class RewardSpec:
    name: str  # a key of REWARDS
    model: str | None = None  # replaces the reward's default model; None = default
    weight: float = 1.0  # weight in the weighted sum

    def __str__(self) -> str:
        return self.name + (f"@{self.model}" if self.model else "") + f":{self.weight:g}"


def parse_reward_spec(text: str) -> RewardSpec:
    """'NAME[@MODEL][:WEIGHT]' -> RewardSpec; an unknown NAME is an error listing the known ones."""
    text = text.strip()
    body, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            weight = float(tail)
            body = head
        except ValueError:
            if "@" not in head:  # no model part that could own the ':' -> a malformed weight
                raise RewardiffError(f"reward {text!r}: weight {tail!r} is not a number (syntax NAME[@MODEL][:WEIGHT])") from None
    if not math.isfinite(weight):
        raise RewardiffError(f"reward {text!r}: weight must be finite")
    name, at, model = body.partition("@")
    name = name.strip()
    if at and not model.strip():
        raise RewardiffError(f"reward {text!r}: nothing after '@' (syntax NAME[@MODEL][:WEIGHT])")
    if name not in REWARDS:
        raise RewardiffError(f"unknown reward {name!r}; known rewards: {', '.join(REWARDS)}")
    return RewardSpec(name, model.strip() if at else None, weight)


def build_reward(spec: str | RewardSpec, device: Device = "cpu") -> Reward:
    """One reward from its spec (the weight, if any, is ignored here: see build_rewards)."""
    spec = parse_reward_spec(spec) if isinstance(spec, str) else spec
    if spec.name not in REWARDS:
        raise RewardiffError(f"unknown reward {spec.name!r}; known rewards: {', '.join(REWARDS)}")
    return REWARDS[spec.name](spec.model, device)


def spec_keys(specs: Sequence[RewardSpec]) -> list[str]:
    """Column keys: the name, or name@model where one name is used more than once."""
    names = [s.name for s in specs]
    return [s.name if names.count(s.name) == 1 else f"{s.name}@{s.model or 'default'}" for s in specs]


def build_rewards(specs: Sequence[str | RewardSpec], device: Device = "cpu") -> WeightedSum:
    """The weighted sum of several specs (e.g. ['clip:0.5', 'aesthetic'])."""
    if not specs:
        raise RewardiffError(f"no reward given; known rewards: {', '.join(REWARDS)}")
    parsed = [parse_reward_spec(s) if isinstance(s, str) else s for s in specs]
    keys = spec_keys(parsed)
    if len(set(keys)) != len(keys):
        raise RewardiffError(f"the same reward is listed twice: {[str(s) for s in parsed]}")
    return WeightedSum([(key, build_reward(s, device), s.weight) for key, s in zip(keys, parsed)])
