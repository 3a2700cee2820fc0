"""Caption similarity: caption the image, then compare the caption with the prompt.

    score = cos(T(caption(image)), T(prompt))      in [-1, 1]

`caption` is BLIP (transformers BlipForConditionalGeneration, default
Salesforce/blip-image-captioning-large; unconditional captioning, beam search, deterministic) and
`T` is a text encoder: by default the CLIP text tower (projected, L2-normalised text embedding of
openai/clip-vit-large-patch14). Both are injectable: any callable `images -> list[str]` as
captioner and any `list[str] -> (N, D) tensor` as text encoder (a sentence embedder, a judge).
Not differentiable: captions are discrete. The captions are kept in the details.

    >>> import torch
    >>> reward = CaptionSimilarity(captioner=lambda images: ["a red circle"] * len(images),
    ...                            text_encoder=lambda texts: torch.tensor([[1.0, 0.0]] * len(texts)))
    >>> reward(torch.rand(1, 3, 32, 32), ["a red circle"]).scores
    tensor([1.])
"""

from __future__ import annotations

from typing import Callable

import torch

from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.clip import DEFAULT_CLIP, ClipEmbedder
from rewardiff.rewards.loading import load_image_processor, load_model, load_tokenizer, resolve_model_ref
from rewardiff.rewards.preprocess import ImageTransform

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"

Captioner = Callable[[torch.Tensor], list[str]]
"""(B, 3, H, W) images in [0, 1] -> B captions."""

TextEncoder = Callable[[list[str]], torch.Tensor]
"""N texts -> (N, D) embeddings (normalised here, so any scale will do)."""


class BlipCaptioner:
    """Unconditional BLIP captions with deterministic beam search."""

    def __init__(self, model: str = DEFAULT_CAPTIONER, device: str | torch.device = "cpu", max_new_tokens: int = 30, num_beams: int = 3, dtype: torch.dtype = torch.float32):
        from transformers import BlipForConditionalGeneration

        ref = resolve_model_ref(model, "BLIP captioner")
        self.model = load_model(BlipForConditionalGeneration, ref, "BLIP captioner", dtype=dtype, device=device)
        self.tokenizer = load_tokenizer(ref, "BLIP captioner")
        self.transform = ImageTransform.from_processor(load_image_processor(ref, "BLIP captioner"))
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens  # caption length cap, in tokens
        self.num_beams = num_beams  # beam width (3 as in the BLIP paper's captioning)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[str]:
        pixels = self.transform(images, dtype=self.dtype).to(next(self.model.parameters()).device)
        ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


class CaptionSimilarity(Reward):
    """Cosine between the text embeddings of the image's caption and of the prompt.

    `captioner` / `text_encoder`: a model folder or hub id (BLIP / CLIP), or a ready callable.
    """

    name = "caption"
    differentiable = False

    def __init__(self, captioner: str | Captioner = DEFAULT_CAPTIONER, text_encoder: str | TextEncoder = DEFAULT_CLIP, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(device)
        self.captioner = BlipCaptioner(captioner, device=self.device, dtype=dtype) if isinstance(captioner, str) else captioner
        self.text_encoder = ClipEmbedder(text_encoder, device=self.device, dtype=dtype) if isinstance(text_encoder, str) else text_encoder

    def modules(self) -> list[torch.nn.Module]:
        owned = (getattr(self.captioner, "model", None), getattr(self.text_encoder, "model", None))
        return [m for m in owned if isinstance(m, torch.nn.Module)]

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        captions = list(self.captioner(images))
        if len(captions) != len(prompts):
            raise ValueError(f"captioner returned {len(captions)} captions for {len(prompts)} images")
        emb = self.text_encoder(captions + prompts).float().to(self.device)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        cap, prompt = emb[: len(captions)], emb[len(captions) :]
        return RewardOutput((cap * prompt).sum(dim=-1), {"caption": captions})
