"""The trained preference reward model as saved on disk: its config, its network, its input
features and its loader (the run folder format of `rewardiff train-reward`).

Both training (algorithms/reward_model.py) and scoring (the `preference@RUN` reward,
rewards/preference.py) need these, so they live in the rewards layer: rewards never import
algorithms, and algorithms/reward_model.py imports (and re-exports) them from here.

Run folder: RUN/best/{config.yaml, model.safetensors, meta.json} (the best validation epoch);
meta.json holds the feature kind, the input width and the embedder key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file
from torch import nn

from rewardiff.config import load_config
from rewardiff.data.preference import MAX_IMAGES, MIN_IMAGES
from rewardiff.errors import RewardiffError
from rewardiff.rewards.clip import DEFAULT_CLIP

BEST = "best"
CONFIG_FILE, WEIGHTS_FILE, META_FILE = "config.yaml", "model.safetensors", "meta.json"


@dataclass
class RewardModelConfig:
    data: str = ""  # preference dataset folder (index.jsonl + images; see data/preference.py)
    out: str = "runs/reward-model"  # run folder: best/, state/, logs
    clip: str = DEFAULT_CLIP  # CLIP that embeds images and prompts (hub id or folder); frozen
    hidden: tuple[int, ...] = (1024, 256, 128, 32)  # MLP hidden widths (report V.1)
    dropout: tuple[float, ...] = (0.2, 0.2, 0.1)  # drop rates: on the input, after hidden layer 1, 2
    lr: float = 1e-5  # Adam learning rate, constant
    betas: tuple[float, float] = (0.9, 0.99)  # Adam (beta1, beta2)
    eps: float = 1e-8  # Adam epsilon
    batch_pairs: int = 256  # pairs per optimiser step (whole prompts packed up to this many)
    epochs: int = 20  # passes over the training pairs
    seed: int = 0  # model init, shuffling and dropout
    device: str = "cpu"  # where the MLP trains (embedding uses it too)
    threads: int = 0  # torch CPU threads; 0 = torch's default
    embed_batch: int = 32  # images per CLIP call when filling the cache
    features: str = "concat"  # MLP input: 'concat' [img, txt] (the report) or 'concat_product' [img, txt, img*txt]
    min_images: int = MIN_IMAGES  # images per prompt accepted (ImageRewardDB: 4 ..
    max_images: int = MAX_IMAGES  # .. 9)


FEATURES = ("concat", "concat_product")


def pair_features(image: torch.Tensor, text: torch.Tensor, kind: str = "concat") -> torch.Tensor:
    """The MLP's input for (image, prompt) embedding rows: see `RewardModelConfig.features`."""
    if kind == "concat":
        return torch.cat([image, text], dim=1)
    if kind == "concat_product":
        if image.shape[1] != text.shape[1]:
            raise RewardiffError(f"features 'concat_product' needs equal image and text widths, got {image.shape[1]} and {text.shape[1]}")
        return torch.cat([image, text, image * text], dim=1)
    raise RewardiffError(f"unknown reward-model features {kind!r}; choose one of {', '.join(FEATURES)}")


def feature_width(image_dim: int, text_dim: int, kind: str = "concat") -> int:
    return image_dim + text_dim + (image_dim if kind == "concat_product" else 0)


class PreferenceMLP(nn.Module):
    """r(x, z) = MLP(concat(image_emb, text_emb)) -> one scalar per row.

    Dropout(p0) -> Linear(in, h1) -> ReLU -> Dropout(p1) -> Linear(h1, h2) -> ReLU -> Dropout(p2)
    -> Linear(h2, h3) -> ReLU -> Linear(h3, h4) -> ReLU -> Linear(h4, 1); the dropout list may be
    shorter than the hidden list (layers past it get none).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (1024, 256, 128, 32), dropout: Sequence[float] = (0.2, 0.2, 0.1)):
        super().__init__()
        if len(dropout) > len(hidden):
            raise RewardiffError(f"{len(dropout)} dropout rates for {len(hidden)} hidden layers (one on the input, then one per hidden layer)")
        layers: list[nn.Module] = []
        width = in_dim
        for n, h in enumerate(hidden):
            if n < len(dropout) and dropout[n] > 0:
                layers.append(nn.Dropout(dropout[n]))
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_dim) -> rewards (B,)."""
        return self.layers(x).squeeze(-1)


def load_preference_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[PreferenceMLP, RewardModelConfig, dict]:
    """A trained run folder (its best/ checkpoint) or a best/ folder itself -> (model in eval
    mode, its config, meta with the embedding widths and embedder key)."""
    path = Path(path)
    ckpt = path / BEST if (path / BEST / WEIGHTS_FILE).is_file() else path
    if not (ckpt / WEIGHTS_FILE).is_file() or not (ckpt / META_FILE).is_file():
        raise RewardiffError(f"{path}: not a reward-model run (no {BEST}/{WEIGHTS_FILE}); train one with rewardiff train-reward")
    cfg = load_config(RewardModelConfig, ckpt / CONFIG_FILE)
    meta = json.loads((ckpt / META_FILE).read_text())
    model = PreferenceMLP(int(meta["in_dim"]), cfg.hidden, cfg.dropout)
    model.load_state_dict(load_file(str(ckpt / WEIGHTS_FILE)))
    model.requires_grad_(False)
    return model.eval().to(device), cfg, meta
