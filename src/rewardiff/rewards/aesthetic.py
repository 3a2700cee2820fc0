"""LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor, the model
`sac+logos+ava1-l14-linearMSE` that DDPO, DRaFT and AlignProp optimise).

    score = MLP(E / |E|),  E = CLIP ViT-L/14 projected image embedding (768-d)

The MLP is `nn.Sequential(Linear(768, 1024), Dropout, Linear(1024, 128), Dropout,
Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1))`: no activations (a purely linear
head, hence "linearMSE"); dropout is inactive at inference. Its weights are read from a
safetensors file with the original keys `layers.{0,2,4,6,7}.{weight,bias}` (a prefix before
`layers.` is accepted). Pickled `.pth` heads are refused: convert them once to safetensors.
Scores are on the AVA 1-10 scale (typical photos 4-7).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.clip import DEFAULT_CLIP, ClipEmbedder
from rewardiff.rewards.loading import hub_file, resolve_model_ref

DEFAULT_HEAD_REPO = "ttj/sac-logos-ava1-l14-linearMSE"
DEFAULT_HEAD_FILE = "model.safetensors"
"""A safetensors port of sac+logos+ava1-l14-linearMSE.pth on the hub (used when no head is given)."""

HEAD_FILENAME = "aesthetic_head.safetensors"
"""A CLIP model folder holding this file serves as the whole aesthetic model ('aesthetic@DIR')."""

_KEY = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(weight|bias)$")


class AestheticHead(torch.nn.Module):
    """The LAION MLP: a chain of Linear layers with no activations, read from safetensors."""

    def __init__(self, linears: list[torch.nn.Linear]):
        super().__init__()
        self.linears = torch.nn.ModuleList(linears)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear in self.linears:
            x = linear(x)
        return x.squeeze(-1)

    @classmethod
    def from_safetensors(cls, path: str | Path) -> "AestheticHead":
        from safetensors.torch import load_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise RewardiffError(f"aesthetic head {path}: only .safetensors files are accepted (no pickles)")
        if not path.is_file():
            raise RewardiffError(f"aesthetic head file not found: {path}")
        try:
            state = load_file(str(path))
        except Exception as e:
            raise RewardiffError(f"cannot read aesthetic head {path}: {type(e).__name__}: {e}") from None
        layers: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in state.items():
            m = _KEY.match(key)
            if m:
                layers.setdefault(int(m.group(1)), {})[m.group(2)] = tensor
        if not layers or any(set(p) != {"weight", "bias"} for p in layers.values()):
            raise RewardiffError(f"aesthetic head {path}: expected keys 'layers.N.weight' / 'layers.N.bias' (the LAION MLP), found {sorted(state)[:8]}")
        linears = []
        for index in sorted(layers):
            w, b = layers[index]["weight"], layers[index]["bias"]
            if w.dim() != 2 or b.shape != (w.shape[0],) or (linears and linears[-1].out_features != w.shape[1]):
                raise RewardiffError(f"aesthetic head {path}: layers.{index} has shape {tuple(w.shape)}, which does not chain with the layer before")
            linear = torch.nn.Linear(w.shape[1], w.shape[0])
            linear.weight.data.copy_(w.float())
            linear.bias.data.copy_(b.float())
            linears.append(linear)
        if linears[-1].out_features != 1:
            raise RewardiffError(f"aesthetic head {path}: the last layer must output 1 value, got {linears[-1].out_features}")
        head = cls(linears)
        head.requires_grad_(False)
        return head.eval()


class AestheticScore(Reward):
    """LAION aesthetic score of each image (the prompt is not used).

    >>> reward = AestheticScore(device="cpu")                       # doctest: +SKIP
    >>> reward(torch.rand(1, 3, 512, 512), ["anything"]).scores     # doctest: +SKIP
    tensor([4.1])
    """

    name = "aesthetic"
    differentiable = True

    def __init__(self, clip_model: str = DEFAULT_CLIP, head: str | Path | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(device)
        if head is None:
            ref = resolve_model_ref(clip_model, "CLIP model")
            beside = Path(ref.location) / HEAD_FILENAME
            head = beside if ref.is_local and beside.is_file() else hub_file(DEFAULT_HEAD_REPO, DEFAULT_HEAD_FILE, "LAION aesthetic head")
        self.head = AestheticHead.from_safetensors(head).to(self.device)
        self.embedder = ClipEmbedder(clip_model, device=self.device, dtype=dtype)
        width = self.embedder.model.config.projection_dim
        if self.head.linears[0].in_features != width:
            raise RewardiffError(f"aesthetic head {head} takes {self.head.linears[0].in_features}-d embeddings but the CLIP model gives {width}-d")

    def modules(self) -> list[torch.nn.Module]:
        return [self.embedder.model, self.head]

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        return RewardOutput(self.head(self.embedder.image_embeds(images)))


def aesthetic_from_spec(model: str | None, device: str | torch.device) -> AestheticScore:
    """'aesthetic@X': X is a head .safetensors file (CLIP stays the default), or a CLIP model folder
    that holds aesthetic_head.safetensors; no X: both defaults from the hub."""
    if model is None:
        return AestheticScore(device=device)
    if str(model).endswith(".safetensors"):
        return AestheticScore(head=model, device=device)
    return AestheticScore(clip_model=model, device=device)
