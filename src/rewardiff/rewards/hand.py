"""Hand detection confidence (TexForce's hand task): the open-vocabulary detector queried for
"hand", whatever the prompt says; score = the best box's confidence, in [0, 1].

TexForce rewards images whose hands a detector finds with high confidence (well-formed hands);
here the detector is OWLv2 (default) or Grounding DINO, as for the `detection` reward, and the
query is configurable (`query`), so the shapes world can play it with its own detector and a
class it knows. Differentiable in the image through the best box, like `detection`.

    >>> reward = HandConfidence(device="cuda")                               # doctest: +SKIP
    >>> reward(torch.rand(1, 3, 512, 512), ["a person waving"]).scores       # doctest: +SKIP
"""

from __future__ import annotations

import torch

from rewardiff.rewards.base import RewardOutput
from rewardiff.rewards.detection import DEFAULT_DETECTOR, DetectionConfidence

HAND_QUERY = "hand"


class HandConfidence(DetectionConfidence):
    name = "hand"

    def __init__(self, model: str = DEFAULT_DETECTOR, device: str | torch.device = "cpu", query: str = HAND_QUERY, dtype: torch.dtype = torch.float32):
        super().__init__(model, device=device, classes=[query], dtype=dtype)

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        out = super().score(images, prompts)
        out.details["confidence"] = out.scores.detach().cpu().tolist()
        return out
