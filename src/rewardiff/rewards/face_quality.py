"""Face quality (TexForce's face task): a no-reference image-quality model for faces, through pyiqa
(optional: pip install 'rewardiff[face]'), by default its TOPIQ face metric `topiq_nr-face`
(Chen et al. 2024, trained on the GFIQA face-quality set).

    score = metric(image)      in [0, 1] for TOPIQ (higher = better face quality)

The metric's network is built by pyiqa without its own weights (`pretrained=False`: pyiqa would
unpickle a downloaded .pth) and loaded from a local **safetensors** checkpoint, since rewardiff
never unpickles a file. Convert the published .pth once, on a machine you trust:

    python -c "import torch, safetensors.torch as s; sd = torch.load('topiq_nr_gfiqa_res50.pth', weights_only=True);
               s.save_file({k: v.contiguous() for k, v in sd.get('params', sd).items()}, 'topiq_face.safetensors')"

Images go to the metric at the resolution given (pyiqa resizes inside the network as it was
trained); TOPIQ is built from torch ops, so the score is differentiable (ReFL can use it).

    >>> reward = FaceQuality("topiq_face.safetensors", device="cuda")      # doctest: +SKIP
    >>> reward(torch.rand(2, 3, 512, 512), ["a portrait", "a face"]).scores  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.loading import import_extra

DEFAULT_FACE_METRIC = "topiq_nr-face"
PIP_PACKAGE = "pyiqa"


def load_safetensors_into(module: torch.nn.Module, path: Path, what: str) -> None:
    """Load a safetensors state dict, strictly: a checkpoint of another network is an error naming the keys."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:
        raise RewardiffError(f"cannot read the {what} checkpoint {path} (safetensors expected): {type(e).__name__}: {e}") from None
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RewardiffError(f"{path} does not fit the {what}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


class FaceQuality(Reward):
    name = "face_quality"
    differentiable = True

    def __init__(self, checkpoint: str | Path | None, metric: str = DEFAULT_FACE_METRIC, device: str | torch.device = "cpu"):
        super().__init__(device)
        if not checkpoint:
            raise RewardiffError("reward 'face_quality' needs a safetensors checkpoint of the TOPIQ face metric: face_quality@FILE.safetensors "
                                 "(see rewardiff.rewards.face_quality for the one-line conversion of pyiqa's .pth)")
        path = Path(checkpoint)
        if path.suffix != ".safetensors":
            raise RewardiffError(f"face_quality: {path} is not a .safetensors file; rewardiff never unpickles a checkpoint")
        if not path.is_file():
            raise RewardiffError(f"face_quality: checkpoint not found: {path}")
        pyiqa = import_extra("pyiqa", PIP_PACKAGE, "face_quality")
        try:
            self.metric = pyiqa.create_metric(metric, as_loss=True, device=self.device, pretrained=False)
        except Exception as e:  # unknown metric names and arch errors come in many classes
            raise RewardiffError(f"face_quality: pyiqa cannot build metric {metric!r}: {type(e).__name__}: {e}") from None
        load_safetensors_into(self.metric.net, path, f"pyiqa {metric} network")
        self.metric.requires_grad_(False)
        self.metric.eval()

    def modules(self) -> list[torch.nn.Module]:
        return [self.metric]

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        return RewardOutput(self.metric(images).reshape(-1).float())
