"""Captioners behind one interface, chosen by config: images (B, 3, H, W) in [0, 1] -> B captions.

| backend | what | model |
| --- | --- | --- |
| blip | BLIP unconditional captions (rewards.caption.BlipCaptioner) | BLIP hub id / folder / 'shapes' |
| transformers | any image-text-to-text model (LLaVA, Qwen2-VL, ...; AutoModelForImageTextToText), asked `instruction` | hub id / folder |
| openai | any OpenAI-compatible chat endpoint that accepts images (vLLM, Ollama, llama.cpp server), asked `instruction` | `url` (+ served `model`) |
| shapes | the shapes world's VLM stand-in in process (shapes captioner) | - |

The VLM back-ends batch, time out, retry and cache answers by image hash + model + instruction
(`cache`), so a resumed round asks nothing twice. A captioner that gets no caption for an image
(after the endpoint's retries) raises a RewardiffError naming it: a caption is never made up.

    >>> cfg = CaptionerConfig(backend="openai", url="http://localhost:8000/v1", cache="runs/captions.jsonl")
    >>> captioner = build_captioner(cfg)                                     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from rewardiff.errors import RewardiffError
from rewardiff.vlm.config import BACKENDS, VLMConfig

DEFAULT_INSTRUCTION = "Describe this image in one short sentence: the objects, their colours, counts and positions."
CAPTIONER_BACKENDS = ("blip", *BACKENDS)


@dataclass
class CaptionerConfig(VLMConfig):
    backend: str = "blip"  # blip | transformers | openai | shapes (table in rewards.captioners)
    instruction: str = DEFAULT_INSTRUCTION  # what the VLM back-ends are asked ('' = no text: BLIP-style unconditional captions)
    text_encoder: str = ""  # caption reward: text tower comparing caption and prompt ('' = CLIP default; 'shapes'; a CLIP folder / hub id)

    def check(self) -> None:
        if self.backend not in CAPTIONER_BACKENDS:
            raise RewardiffError(f"captioner backend must be one of {CAPTIONER_BACKENDS}, got {self.backend!r}")
        if self.backend != "blip":
            self.vlm().check()

    def vlm(self) -> VLMConfig:
        fields = {k: v for k, v in asdict(self).items() if k in VLMConfig.__dataclass_fields__}
        return VLMConfig(**fields)


class VLMCaptioner:
    """Captions as a VLM's answers to `instruction`."""

    def __init__(self, cfg: CaptionerConfig, backend=None):
        from rewardiff.vlm.backends import AskingVLM

        self.instruction = cfg.instruction
        self.vlm = AskingVLM(cfg.vlm(), backend)

    @property
    def model(self):  # the torch module when the back-end holds one (CaptionSimilarity.modules)
        return getattr(self.vlm.backend, "model", None)

    def __call__(self, images: torch.Tensor) -> list[str]:
        answers = self.vlm.ask(images, [self.instruction] * images.shape[0])
        missing = [i for i, a in enumerate(answers) if a.error or not a.text.strip()]
        if missing:
            why = answers[missing[0]].error or "empty answer"
            raise RewardiffError(f"captioner {self.vlm.model_id}: no caption for image(s) {missing[:10]} ({why})")
        return [a.text.strip() for a in answers]


def build_captioner(cfg: CaptionerConfig):
    """The captioner a config names (a callable images -> captions)."""
    cfg.check()
    if cfg.backend == "blip":
        from rewardiff.rewards.caption import DEFAULT_CAPTIONER, BlipCaptioner
        from rewardiff.rewards.loading import shapes_judge

        return BlipCaptioner(shapes_judge(cfg.model, "captioner") or DEFAULT_CAPTIONER, device=cfg.device)
    return VLMCaptioner(cfg)
