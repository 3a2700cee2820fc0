"""`preference@RUN`: the reward model trained by `rewardiff train-reward` (algorithms/reward_model.py;
its network and run-folder format are in rewards/preference_model.py).

    score = MLP(concat(E_img(image), E_txt(prompt)))     (or [.., .., E_img * E_txt], see `features`)

E is the same frozen CLIP the model was trained on (recorded as `clip` in the run's config.yaml),
so images are embedded exactly as when the cache was filled. The score is differentiable in the
images whenever the embedder is (CLIP here: torch ops only), so ReFL can use it.

    >>> reward = PreferenceReward.from_run("runs/reward-model")               # doctest: +SKIP
    >>> reward(torch.rand(2, 3, 512, 512), ["a cat", "a dog"]).scores        # doctest: +SKIP
    tensor([0.41, -0.13])
"""

from __future__ import annotations

from pathlib import Path

import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward, RewardOutput


class PreferenceReward(Reward):
    """A trained PreferenceMLP over an embedder with `embed_images` / `embed_texts`."""

    name = "preference"

    def __init__(self, model: torch.nn.Module, embedder, device: str | torch.device = "cpu", differentiable: bool = True, features: str = "concat"):
        super().__init__(device)
        self.features = features  # how embeddings become the MLP input (RewardModelConfig.features)
        self.model = model.to(self.device)
        self.embedder = embedder
        self.differentiable = differentiable

    @classmethod
    def from_run(cls, run: str | Path, device: str | torch.device = "cpu", embedder=None) -> "PreferenceReward":
        """A run folder (or its best/); the CLIP of its config unless `embedder` is given."""
        from rewardiff.rewards.preference_model import load_preference_model

        model, cfg, meta = load_preference_model(run, device)
        if embedder is None:
            from rewardiff.rewards.clip import ClipEmbedder

            embedder = ClipEmbedder(cfg.clip, device=device)
            if meta.get("embedder") and meta["embedder"] != embedder.key:
                raise RewardiffError(f"{run}: trained on embeddings of {meta['embedder']!r}, but its config names CLIP {cfg.clip!r}")
        return cls(model, embedder, device, differentiable=True, features=cfg.features)

    def modules(self) -> list[torch.nn.Module]:
        inner = getattr(self.embedder, "model", None)
        return [self.model] + ([inner] if isinstance(inner, torch.nn.Module) else [])

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        image_emb = self.embedder.embed_images(images).float()
        text_emb = self.embedder.embed_texts(prompts).float().to(image_emb.device)
        from rewardiff.rewards.preference_model import pair_features

        x = pair_features(image_emb, text_emb, self.features)
        if x.shape[1] != self.model.in_dim:
            raise RewardiffError(f"reward 'preference': embeddings of width {x.shape[1]}, the model expects {self.model.in_dim}")
        return RewardOutput(self.model(x))
