"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic human preferences.

    score = exp(logit_scale) * cos(E_image, E_prompt)

as in the PickScore README (before its softmax over candidate images): one score per image with
its own prompt, about 18-24 for typical generations (exp(logit_scale) is ~100). The weights are
`yuvalkirstain/PickScore_v1`; its tokenizer and image settings live in the processor repository
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (224 px, shortest-edge bicubic resize + centre crop,
OpenAI CLIP mean/std), so the two are loaded separately.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.clip import ClipEmbedder
from rewardiff.rewards.loading import resolve_model_ref

DEFAULT_PICKSCORE = "yuvalkirstain/PickScore_v1"
DEFAULT_PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(Reward):
    """PickScore of each image for its prompt.

    `processor=None`: the model folder itself when it holds a preprocessor_config.json (a local
    copy saved with its processor), else the laion processor repository.

    >>> reward = PickScore(device="cuda")                                  # doctest: +SKIP
    >>> reward(torch.rand(2, 3, 512, 512), ["a cat", "a dog"]).scores      # doctest: +SKIP
    tensor([20.3, 19.8])
    """

    name = "pickscore"
    differentiable = True

    def __init__(self, model: str = DEFAULT_PICKSCORE, processor: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(device)
        if processor is None:
            ref = resolve_model_ref(model, "PickScore model")
            has_processor = ref.is_local and (Path(ref.location) / "preprocessor_config.json").is_file()
            processor = ref.location if has_processor else DEFAULT_PICKSCORE_PROCESSOR
        self.embedder = ClipEmbedder(model, device=self.device, processor=processor, dtype=dtype)

    def modules(self) -> list[torch.nn.Module]:
        return [self.embedder.model]

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        cosine = (self.embedder.image_embeds(images) * self.embedder.text_embeds(prompts)).sum(dim=-1)
        scale = self.embedder.model.logit_scale.exp().float()
        return RewardOutput(scale * cosine, {"cosine": cosine.detach()})
