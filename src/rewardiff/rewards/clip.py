"""CLIP score, and the CLIP embedder that the aesthetic, PickScore and caption rewards share.

CLIP score (Hessel et al. 2021, "CLIPScore"; as torchmetrics' CLIPScore computes it):

    score = max(100 * cos(E_image, E_text), 0)

with E the projected CLIP embeddings. The clamp at 0 is the metric's convention (a negative
cosine means "unrelated", all alike); it also zeroes the gradient there, so a ReFL-style training
reward may prefer `clamp_negative=False` (the plain 100 * cosine). The cosine is in the details.
"""

from __future__ import annotations

import torch

from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.loading import load_image_processor, load_model, load_tokenizer, resolve_model_ref
from rewardiff.rewards.preprocess import ImageTransform

DEFAULT_CLIP = "openai/clip-vit-large-patch14"

CLIP_SCORE_SCALE = 100.0
"""CLIPScore multiplies the cosine by 100 (torchmetrics); Hessel et al. use w = 2.5 instead."""


def _pooled(out) -> torch.Tensor:
    """transformers 4.x returns the projected features as a tensor, 5.x as `.pooler_output`."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipEmbedder:
    """A frozen transformers CLIPModel with its tokenizer and a differentiable image transform.

    `processor` names where the tokenizer and image settings live when not beside the weights
    (PickScore keeps them in the laion/CLIP-ViT-H-14 repository).
    """

    def __init__(self, model: str = DEFAULT_CLIP, device: str | torch.device = "cpu", processor: str | None = None, dtype: torch.dtype = torch.float32):
        from transformers import CLIPModel

        from rewardiff.rewards.loading import shapes_judge

        # 'shapes' keeps its name in the key (cached embeddings stay valid in any clone of the repo)
        ref = resolve_model_ref(shapes_judge(model, "clip") or model, "CLIP model")
        proc_ref = resolve_model_ref(processor, "CLIP processor") if processor else ref
        self.model = load_model(CLIPModel, ref, "CLIP model", dtype=dtype, device=device)
        self.tokenizer = load_tokenizer(proc_ref, "CLIP")
        self.transform = ImageTransform.from_processor(load_image_processor(proc_ref, "CLIP"))
        self.dtype = dtype
        self.key = f"clip-{model}"  # names this embedder's cached embeddings (see algorithms/reward_model.py)
        text_positions = self.model.config.text_config.max_position_embeddings
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", text_positions)), text_positions)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> L2-normalised (B, D) float32; differentiable in `images`."""
        pixels = self.transform(images, dtype=self.dtype)
        emb = _pooled(self.model.get_image_features(pixel_values=pixels)).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """Texts -> L2-normalised (N, D) float32 (truncated to the text model's length)."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
        emb = _pooled(self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """The `Embedder` protocol of algorithms/reward_model.py: `image_embeds` on this device."""
        return self.image_embeds(images.to(self.device))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """The `Embedder` protocol of algorithms/reward_model.py: `text_embeds`."""
        return self.text_embeds(texts)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """A `TextEncoder` (see caption.py): texts -> normalised embeddings."""
        return self.text_embeds(texts)


class ClipScore(Reward):
    """100 x cosine between CLIP image and prompt embeddings, clamped at 0 (see module doc).

    >>> reward = ClipScore("openai/clip-vit-large-patch14", device="cpu")  # doctest: +SKIP
    >>> reward(torch.rand(2, 3, 512, 512), ["a cat", "a dog"]).scores     # doctest: +SKIP
    tensor([19.2, 21.7])
    """

    name = "clip"
    differentiable = True

    def __init__(self, model: str = DEFAULT_CLIP, device: str | torch.device = "cpu", clamp_negative: bool = True, dtype: torch.dtype = torch.float32):
        super().__init__(device)
        self.embedder = ClipEmbedder(model, device=self.device, dtype=dtype)
        self.clamp_negative = clamp_negative

    def modules(self) -> list[torch.nn.Module]:
        return [self.embedder.model]

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        cosine = (self.embedder.image_embeds(images) * self.embedder.text_embeds(prompts)).sum(dim=-1)
        scores = CLIP_SCORE_SCALE * cosine
        if self.clamp_negative:
            scores = scores.clamp_min(0.0)
        return RewardOutput(scores, {"cosine": cosine.detach()})
