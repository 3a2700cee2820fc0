"""Model-backed rewards from the MODEL part of a spec ('NAME@MODEL'): 'shapes' (the shipped
shapes-world judges), a local folder, a hub id, or None for the default.

The registry and the self-judge (rewards/judged.py) both build these, and must resolve names
alike; they cannot share the registry itself (the registry builds the self-judge's `judge`
reward), so the constructors live here, below both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rewardiff.rewards.caption import DEFAULT_CAPTIONER, CaptionSimilarity
from rewardiff.rewards.clip import DEFAULT_CLIP, ClipScore
from rewardiff.rewards.detection import DEFAULT_DETECTOR, DetectionConfidence
from rewardiff.rewards.loading import SHAPES_JUDGES, shapes_judge

if TYPE_CHECKING:
    from rewardiff.rewards.captioners import CaptionerConfig

Device = str | torch.device


def clip_from_spec(model: str | None, device: Device) -> ClipScore:
    """'clip@X': a CLIP folder / hub id, or 'shapes'; no X: the hub default."""
    return ClipScore(shapes_judge(model, "clip") or DEFAULT_CLIP, device=device)


def caption_from_spec(model: str | None, device: Device) -> CaptionSimilarity:
    """'caption@X': a BLIP folder / hub id, or 'shapes': the shapes captioner compared through the
    shapes CLIP's text tower; no X: the hub defaults."""
    if model == SHAPES_JUDGES:
        return CaptionSimilarity(shapes_judge(model, "captioner"), text_encoder=shapes_judge(model, "clip"), device=device)
    return CaptionSimilarity(model or DEFAULT_CAPTIONER, device=device)


def caption_from_config(cfg: "CaptionerConfig", captioner: str | None, device: Device) -> CaptionSimilarity:
    """A caption reward whose captioner a CaptionerConfig names (rewards.captioners); its text tower is
    cfg.text_encoder, else the shapes CLIP when `captioner` (the judge's BLIP field) is 'shapes', else CLIP."""
    from rewardiff.rewards.captioners import build_captioner

    text = cfg.text_encoder or (SHAPES_JUDGES if captioner == SHAPES_JUDGES else "")
    encoder = shapes_judge(text, "clip") if text == SHAPES_JUDGES else (text or DEFAULT_CLIP)
    return CaptionSimilarity(build_captioner(cfg), text_encoder=encoder, device=device)


def detection_from_spec(model: str | None, device: Device) -> DetectionConfidence:
    """'detection@X': an OWLv2 / Grounding DINO folder / hub id, or 'shapes': the shapes detector,
    queried with "{color} {shape}" class names; no X: OWLv2."""
    if model == SHAPES_JUDGES:
        from rewardiff.shapes.judges.detector import prompt_classes

        return DetectionConfidence(shapes_judge(model, "detector"), device=device, parse_classes=prompt_classes)
    return DetectionConfidence(model or DEFAULT_DETECTOR, device=device)
