"""Where reward models come from: a hub id (the defaults) or a local folder, as models/pipeline.py.

One place wraps the transformers / huggingface_hub loaders, so their many exception classes become
one RewardiffError that names the model and says why (offline and not cached, missing folder, ...).
No remote code is ever trusted; loaded models are frozen and put in eval mode.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from rewardiff.errors import RewardiffError


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ModelRef:
    """A reward model as the user named it, resolved."""

    name: str  # what the user typed
    location: str  # a local folder or a hub id
    is_local: bool


SHAPES_JUDGES = "shapes"
"""The model name users type for the shipped shapes-world judges: clip@shapes, caption@shapes, ..."""


def shipped_judge_dir(judge: str) -> Path:
    """rewardiff/shapes/weights/judges/<judge> (judge: clip, captioner, detector or reward_model)."""
    return Path(__file__).resolve().parent.parent / "shapes" / "weights" / "judges" / judge


def shapes_judge(model: str | None, judge: str) -> str | None:
    """'shapes' -> the shipped judge folder (an error if it is missing); anything else unchanged.

    The one place where the name 'shapes' becomes a path, for every reward that has a judge."""
    if model != SHAPES_JUDGES:
        return model
    path = shipped_judge_dir(judge)
    if judge == "reward_model":
        if not (path / "model.safetensors").is_file():
            raise RewardiffError(f"the shipped shapes reward model is missing at {path}; train it with configs/reward_model_shapes.yaml and copy RUN/best there")
    elif not (path / "config.json").is_file():
        raise RewardiffError(f"the shipped shapes {judge} judge is missing at {path}; run 'rewardiff shapes train-judges' and copy OUT/{judge}/model there")
    return str(path)


def resolve_model_ref(model: str, what: str) -> ModelRef:
    """An existing path (or anything path-like) -> that folder; otherwise a hub id ('owner/name')."""
    if not model or not str(model).strip():
        raise RewardiffError(f"empty {what}: give a local model folder or a hub id")
    model = str(model)
    path = Path(model).expanduser()
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if path.exists() or looks_like_path:
        if not path.is_dir():
            raise RewardiffError(f"{what} folder not found: {model}")
        return ModelRef(model, str(path), True)
    return ModelRef(model, model, False)


def _why(e: Exception) -> str:
    if offline():
        return "offline (HF_HUB_OFFLINE=1) and not in the local cache"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def _load_error(ref: ModelRef, what: str, e: Exception) -> RewardiffError:
    if ref.is_local:
        return RewardiffError(f"cannot load {what} from {ref.location}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    return RewardiffError(f"cannot load {what} {ref.location!r} from the hub: {_why(e)}")


def _dtype_kwarg() -> str:
    """transformers renamed from_pretrained's `torch_dtype` to `dtype` (4.56); older ones need the old name."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__.split(".dev")[0]) >= Version("4.56") else "torch_dtype"


def load_model(cls, ref: ModelRef, what: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """`cls.from_pretrained` on a folder or hub id; frozen, eval mode, on `device`."""
    if ref.is_local and not (Path(ref.location) / "config.json").is_file():
        raise RewardiffError(f"{ref.name} is not a transformers model folder (no config.json) for the {what}")
    try:
        model = cls.from_pretrained(ref.location, local_files_only=ref.is_local or offline(), **{_dtype_kwarg(): dtype})
    except Exception as e:  # hub and format errors come in many classes; all mean "cannot get it"
        raise _load_error(ref, what, e) from None
    model.requires_grad_(False)
    model.eval()
    return model.to(device)


def load_tokenizer(ref: ModelRef, what: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref.location, local_files_only=ref.is_local or offline())
    except Exception as e:
        raise _load_error(ref, f"{what} tokenizer", e) from None


def load_image_processor(ref: ModelRef, what: str):
    """The transformers image processor: we only read its settings (sizes, mean/std), never run it."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(ref.location, local_files_only=ref.is_local or offline())
    except Exception as e:
        raise _load_error(ref, f"{what} image processor", e) from None


def hub_file(repo_id: str, filename: str, what: str) -> Path:
    """One file of a hub repository (downloaded, or from the cache when offline)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline()))
    except Exception as e:
        raise RewardiffError(f"cannot get the {what} ({repo_id}/{filename}) from the hub: {_why(e)}") from None


def import_extra(module: str, pip_name: str, reward: str) -> ModuleType:
    """Import an optional package only when its reward is built; a clear error names what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = f" (import failed: {e})" if getattr(e, "name", None) not in (None, module.split(".")[0]) else ""
        raise RewardiffError(f"the {reward!r} reward needs the optional package {pip_name!r}: pip install {pip_name}{missing}") from None


def load_config(ref: ModelRef, what: str):
    """The model's transformers config (to tell model families apart before loading weights)."""
    from transformers import AutoConfig

    if ref.is_local and not (Path(ref.location) / "config.json").is_file():
        raise RewardiffError(f"{ref.name} is not a transformers model folder (no config.json) for the {what}")
    try:
        return AutoConfig.from_pretrained(ref.location, local_files_only=ref.is_local or offline())
    except Exception as e:
        raise _load_error(ref, what, e) from None
