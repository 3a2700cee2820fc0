"""Load a text-to-image pipeline: the shipped shapes generator, a local folder, or a hub id.

Every source goes through the same diffusers `from_pretrained` path; SD 1.x / 2.x load as
`StableDiffusionPipeline`, SDXL (two text encoders) as `StableDiffusionXLPipeline`.
No remote code is ever trusted. Weights are frozen: training adds LoRA adapters on top.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rewardiff.errors import RewardiffError

SHAPES_MODEL = "shapes"
"""The name users type for the shipped shapes-world generator."""

SUPPORTED_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def shipped_generator_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "shapes" / "weights" / "generator"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved from what the user typed."""

    name: str  # what the user typed; recorded in metadata
    location: str  # a local folder or a hub id
    is_local: bool
    is_shapes: bool


def resolve_model(model: str) -> ModelSource:
    """'shapes' -> the shipped folder; an existing path -> that folder; otherwise a hub id."""
    if not model or not model.strip():
        raise RewardiffError("empty --model: give 'shapes', a local pipeline folder, or a hub id")
    if model == SHAPES_MODEL:
        path = shipped_generator_dir()
        if not (path / "model_index.json").is_file():
            raise RewardiffError(f"the shipped shapes generator is missing at {path}; reinstall rewardiff or run 'rewardiff shapes train-generator'")
        return ModelSource(model, str(path), True, True)
    path = Path(model).expanduser()
    # A hub id is 'name' or 'owner/name'; anything else (or anything that exists) is a folder.
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if path.exists() or looks_like_path:
        if not path.is_dir():
            raise RewardiffError(f"model directory not found: {model}")
        if not (path / "model_index.json").is_file():
            raise RewardiffError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
        return ModelSource(model, str(path), True, _is_shapes_folder(path))
    return ModelSource(model, model, False, False)


WORLD_MARKER = "rewardiff_world.json"
"""Written beside model_index.json by the shapes trainer: says which embedded world a folder serves."""


def _is_shapes_folder(path: Path) -> bool:
    """A folder exported by the shapes trainer (or a copy of it): its prompts must be shapes prompts."""
    try:
        return json.loads((path / WORLD_MARKER).read_text()).get("world") == "shapes"
    except (OSError, json.JSONDecodeError):
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _model_index(source: ModelSource) -> dict:
    from diffusers import DiffusionPipeline

    if source.is_local:
        return json.loads((Path(source.location) / "model_index.json").read_text())
    try:
        return dict(DiffusionPipeline.load_config(source.location, local_files_only=_offline()))
    except Exception as e:  # hub errors come in many classes; all mean "cannot get it"
        where = "offline (HF_HUB_OFFLINE=1) and not in the local cache" if _offline() else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        raise RewardiffError(f"cannot load hub model {source.location!r}: {where}") from None


def check_trainable(model: str) -> None:
    """Refuse, from the model index alone (no weights loaded), a pipeline the trainers cannot
    train: every method supports SD 1.x / 2.x and SDXL base pipelines, which need a U-Net and
    their first text encoder (an SDXL refiner has none). Callers run this before any work."""
    source = resolve_model(model)
    _pipeline_class_name(source)
    index = _model_index(source)
    for part in ("unet", "text_encoder"):
        if not any(index.get(part) or []):
            raise RewardiffError(f"{source.name}: the pipeline has no {part} (an SDXL refiner?); rewardiff trains SD 1.x / 2.x and SDXL base pipelines")


def _pipeline_class_name(source: ModelSource) -> str:
    name = _model_index(source).get("_class_name", "")
    if name not in SUPPORTED_CLASSES:
        raise RewardiffError(f"{source.name}: pipeline class {name!r} is not supported; expected one of {SUPPORTED_CLASSES}")
    return name


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """'auto' -> float16 on CUDA (as SD is usually run), float32 elsewhere."""
    if name == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise RewardiffError(f"unknown dtype {name!r}; expected auto or one of {sorted(dtypes)}")
    return dtypes[name]


def _dtype_kwarg() -> str:
    """diffusers renamed from_pretrained's `torch_dtype` to `dtype` (0.42); older ones need the old name."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__.split(".dev")[0]) >= Version("0.42") else "torch_dtype"


def load_pipeline(model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load, freeze and move a pipeline; returns (pipe, source)."""
    import diffusers

    source = resolve_model(model)
    cls = getattr(diffusers, _pipeline_class_name(source))
    kwargs: dict = {_dtype_kwarg(): dtype, "local_files_only": source.is_local or _offline()}
    if cls.__name__ == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(source.location, **kwargs)
    except RewardiffError:
        raise
    except Exception as e:
        raise RewardiffError(f"cannot load {source.name!r}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, source


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None
