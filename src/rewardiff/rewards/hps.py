"""HPSv2 / HPSv2.1 (Wu et al. 2023), through the `hpsv2` package (optional: pip install hpsv2).

Adapted from hpsv2 `img_score.py::score`. What changed: the model is built and its checkpoint
loaded once (the package reloads it on every call), on the device the caller gives (the package
picks cuda when it sees one), for a whole batch at once, and without first downloading the
laion2B open_clip weights that the HPS checkpoint overwrites anyway (`pretrained=None`).
Kept as is: the package's own ViT-H-14 open_clip model, tokenizer and validation transform
(applied to the uint8 PIL image, hence not differentiable), and

    score = <E_image, E_text>     (open_clip's normalised features: a cosine, ~0.2-0.35)

Checkpoints: xswu/HPSv2 on the hub (HPS_v2_compressed.pt, HPS_v2.1_compressed.pt), or a local
`.safetensors` file. Only the official hub `.pt` files are read with `torch.load(weights_only=True)`,
the restricted loader that accepts tensors and plain containers only; a local checkpoint must be
safetensors, since rewardiff never unpickles a user's file.

    >>> reward = HpsScore("v2.1", device="cuda")                          # doctest: +SKIP
    >>> reward(torch.rand(2, 3, 512, 512), ["a cat", "a dog"]).scores     # doctest: +SKIP
    tensor([0.27, 0.25])
"""

from __future__ import annotations

from pathlib import Path

import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.loading import hub_file, import_extra
from rewardiff.rewards.preprocess import to_uint8_hwc

PIP_PACKAGE = "hpsv2"
HPS_REPO = "xswu/HPSv2"
HPS_CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
"""As hpsv2.utils.hps_version_map."""
HPS_ARCH = "ViT-H-14"
"""The open_clip architecture every HPS checkpoint fine-tunes."""


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: safetensors, or a .pt read with the weights-only loader."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RewardiffError(f"cannot read HPS checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from None
    return state.get("state_dict", state)


class HpsScore(Reward):
    """Human Preference Score v2.0 or v2.1 of each image for its prompt."""

    differentiable = False

    def __init__(self, version: str = "v2.1", checkpoint: str | Path | None = None, device: str | torch.device = "cpu"):
        super().__init__(device)
        if version not in HPS_CHECKPOINTS:
            raise RewardiffError(f"unknown HPS version {version!r}; expected one of {sorted(HPS_CHECKPOINTS)}")
        self.name = "hpsv2" if version == "v2.0" else "hpsv2.1"
        open_clip = import_extra("hpsv2.src.open_clip", PIP_PACKAGE, self.name)
        if checkpoint is None:
            path = hub_file(HPS_REPO, HPS_CHECKPOINTS[version], f"HPS {version} checkpoint")
        else:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise RewardiffError(f"HPS checkpoint not found: {checkpoint}")
            if path.suffix != ".safetensors":
                # A user's file is never unpickled, not even by the weights-only loader.
                raise RewardiffError(f"HPS checkpoint {checkpoint}: a local checkpoint must be .safetensors (convert the official .pt once with safetensors.torch.save_file)")
        state = load_state_dict_file(path)
        model, _, self.preprocess = open_clip.create_model_and_transforms(HPS_ARCH, pretrained=None, precision="fp32", device=str(self.device), output_dict=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise RewardiffError(f"HPS checkpoint {path} does not fit the {HPS_ARCH} model: {str(e).splitlines()[0][:300]}") from None
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(HPS_ARCH)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        from PIL import Image

        pixels = torch.stack([self.preprocess(Image.fromarray(a)) for a in to_uint8_hwc(images)]).to(self.device)
        out = self.model(pixels, self.tokenizer(prompts).to(self.device))
        scores = (out["image_features"].float() * out["text_features"].float()).sum(dim=-1)
        return RewardOutput(scores)
