"""One way to ask any back-end: `VLMBackend.ask(images, questions) -> answers`, and `AskingVLM`,
which adds what every caller needs around it: uint8 conversion, batches of `batch_size`, and the
answer cache (image hash + model + question + settings), so nothing is asked twice.

    >>> cfg = VLMConfig(backend="shapes")                                     # doctest: +SKIP
    >>> vlm = AskingVLM(cfg)                                                  # doctest: +SKIP
    >>> vlm.ask(torch.rand(2, 3, 32, 32), ["Describe the image."] * 2)        # doctest: +SKIP
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from rewardiff.vlm.answers import Answer
from rewardiff.vlm.cache import AnswerCache, answer_key, image_hash
from rewardiff.vlm.config import VLMConfig


class VLMBackend(Protocol):
    def ask(self, images: list[np.ndarray], questions: list[str]) -> list[Answer]:
        """One answer per (uint8 (H, W, 3) image, question)."""
        ...


def build_backend(cfg: VLMConfig) -> VLMBackend:
    cfg.check()
    if cfg.backend == "openai":
        from rewardiff.vlm.openai_client import OpenAIVisionClient

        return OpenAIVisionClient(cfg)
    if cfg.backend == "shapes":
        from rewardiff.shapes.vlm import ShapesVLM

        return ShapesVLM(device=cfg.device)
    from rewardiff.vlm.transformers_backend import TransformersVLM

    return TransformersVLM(cfg)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) floats in [0, 1] -> B uint8 (H, W, 3) arrays (what files and endpoints carry)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(arr)


class AskingVLM:
    """A back-end with batching and the answer cache; `asked` counts questions actually sent."""

    def __init__(self, cfg: VLMConfig, backend: VLMBackend | None = None):
        cfg.check()
        self.cfg = cfg
        self.backend = backend if backend is not None else build_backend(cfg)
        self.cache = AnswerCache(cfg.cache or None)
        self.asked = 0
        self.settings = f"max_new_tokens={cfg.max_new_tokens},top_logprobs={cfg.top_logprobs}"

    @property
    def model_id(self) -> str:
        return self.cfg.model_id

    def ask(self, images: torch.Tensor | list[np.ndarray], questions: list[str]) -> list[Answer]:
        arrays = to_uint8(images) if isinstance(images, torch.Tensor) else [np.asarray(a, dtype=np.uint8) for a in images]
        keys = [answer_key(image_hash(a), self.model_id, q, self.settings) for a, q in zip(arrays, questions)]
        answers: list[Answer | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, a in enumerate(answers) if a is None]
        for s in range(0, len(todo), self.cfg.batch_size):
            idx = todo[s : s + self.cfg.batch_size]
            got = self.backend.ask([arrays[i] for i in idx], [questions[i] for i in idx])
            self.asked += len(idx)
            self.cache.put([(keys[i], a) for i, a in zip(idx, got)])  # before the next batch: a failure later keeps these
            for i, a in zip(idx, got):
                answers[i] = a
        return [a for a in answers if a is not None]
