"""LoRA files as users name them ('file.safetensors:0.7') and their application at inference.

Loading goes through diffusers' `load_lora_weights` (the diffusers LoRA format), so what
rewardiff writes is what any diffusers user can open, and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rewardiff.errors import RewardiffError


@dataclass(frozen=True)
class LoraSpec:
    path: str
    scale: float = 1.0

    def __str__(self) -> str:
        return f"{self.path}:{self.scale:g}"


def parse_lora_spec(text: str) -> LoraSpec:
    """'a.safetensors' or 'a.safetensors:0.7' -> LoraSpec; the file must exist."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            path = text
    if not Path(path).is_file():
        raise RewardiffError(f"LoRA file not found: {path}")
    if not str(path).endswith(".safetensors"):
        raise RewardiffError(f"LoRA {path}: only .safetensors LoRA files are accepted (no pickles)")
    return LoraSpec(path, scale)


def apply_loras(pipe, loras: list[LoraSpec]) -> None:
    """Load each LoRA as a named adapter and activate them all with their scales."""
    if not loras:
        return
    names = []
    for i, spec in enumerate(loras):
        name = f"lora{i}"
        path = Path(spec.path)
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        except Exception as e:
            raise RewardiffError(f"cannot load LoRA {spec.path}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[s.scale for s in loras])


UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
"""Attention projections, as diffusers' train_text_to_image_lora.py and TexForce adapt."""


def add_lora(module, rank: int = 4, alpha: float | None = None, targets: tuple[str, ...] | None = None, adapter_name: str = "default") -> None:
    """Attach a trainable peft LoRA adapter (B initialised to zero: a no-op until trained)."""
    from peft import LoraConfig

    if targets is None:
        targets = TEXT_LORA_TARGETS if "TextModel" in type(module).__name__ else UNET_LORA_TARGETS
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights="gaussian", target_modules=list(targets))
    module.add_adapter(config, adapter_name=adapter_name)


def save_lora(path: str | Path, unet=None, text_encoder=None, pipeline_cls=None) -> Path:
    """Write the adapters of a U-Net and/or text encoder as one diffusers LoRA safetensors file.

    The result opens with `pipe.load_lora_weights(dir, weight_name=file)`.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    path = Path(path)
    if path.suffix != ".safetensors":
        raise RewardiffError(f"LoRA output must be a .safetensors file, got {path}")
    if unet is None and text_encoder is None:
        raise RewardiffError("save_lora needs a U-Net or a text encoder with a LoRA adapter")
    layers = {}
    if unet is not None:
        layers["unet_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    if text_encoder is not None:
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
    cls = pipeline_cls or StableDiffusionPipeline
    path.parent.mkdir(parents=True, exist_ok=True)
    cls.save_lora_weights(str(path.parent), weight_name=path.name, safe_serialization=True, **layers)
    return path
