"""ImageReward (Xu et al. 2023), through the `ImageReward` package (optional: pip install image-reward).

Adapted from ImageReward `ImageReward.py::ImageReward.score` (and the `score_gard` path its ReFL
trainer uses). What changed: a whole batch with one prompt per image, and the image transform is
our torch one (224 px bicubic shortest-edge resize, centre crop, OpenAI CLIP mean/std, as the
package's torchvision `_transform(224)`), so the score is differentiable in the image as ReFL
needs. Kept as is: the package's loader (`ImageReward.load`, which downloads THUDM/ImageReward and
reads its checkpoint), its BLIP tokenizer (max 35 tokens), the BLIP image-grounded text encoder,
the MLP head and its normalisation

    score = (MLP(text_encoder(prompt | image)[CLS]) - mean) / std     (mean 0.167, std 1.033)

    >>> reward = ImageRewardScore(device="cuda")                          # doctest: +SKIP
    >>> reward(torch.rand(2, 3, 512, 512), ["a cat", "a dog"]).scores     # doctest: +SKIP
    tensor([-0.8, 0.3])
"""

from __future__ import annotations

import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.loading import import_extra, offline
from rewardiff.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform

PIP_PACKAGE = "image-reward"
DEFAULT_IMAGEREWARD = "ImageReward-v1.0"
TEXT_MAX_LENGTH = 35
"""The package pads / truncates prompts to 35 BLIP tokens."""
IMAGE_SIZE = 224


class ImageRewardScore(Reward):
    """ImageReward of each image for its prompt; `model` is a package model name or a checkpoint file."""

    name = "imagereward"
    differentiable = True

    def __init__(self, model: str = DEFAULT_IMAGEREWARD, device: str | torch.device = "cpu", download_root: str | None = None):
        super().__init__(device)
        package = import_extra("ImageReward", PIP_PACKAGE, self.name)
        try:
            self.model = package.load(model, device=str(self.device), download_root=download_root)
        except Exception as e:  # the package raises RuntimeError, hub errors, OSError...
            why = "offline (HF_HUB_OFFLINE=1) and not in the local cache" if offline() else f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            raise RewardiffError(f"cannot load ImageReward model {model!r}: {why}") from None
        self.model.requires_grad_(False)
        self.model.eval()
        self.transform = ImageTransform(shortest_edge=IMAGE_SIZE, crop=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        blip = self.model.blip
        text = blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt").to(self.device)
        image_embeds = blip.visual_encoder(self.transform(images))
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        out = blip.text_encoder(
            text.input_ids, attention_mask=text.attention_mask, encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts, return_dict=True,
        )
        rewards = self.model.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return RewardOutput((rewards - self.model.mean) / self.model.std)
