"""LoRA key formats: the diffusers names rewardiff trains with, and the kohya / A1111 names
(`lora_unet_*`, `lora_te_*`, `lora_te1_*` / `lora_te2_*` for SDXL, with `.alpha` tensors) that
kohya's sd-scripts, AUTOMATIC1111 and ComfyUI load.

Writing kohya names goes through diffusers' own `convert_state_dict_to_kohya` (one layer at a
time, so each layer's `.alpha` can carry its own scale); reading them back is diffusers' kohya
converter, called by `read_lora_layers`. This module only renames and re-scales tensors: it never
loads a model and imports no other rewardiff module, so every LoRA writer can use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Protocol

from rewardiff.errors import RewardiffError

if TYPE_CHECKING:
    import torch

LORA_FORMATS = ("diffusers", "kohya")
"""What `--lora-format` accepts: diffusers (load_lora_weights' own names) or kohya (A1111, ComfyUI)."""

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
"""Key prefixes of a kohya-format file: U-Net, text encoder (SD 1.x / 2.x), SDXL's two encoders."""

_TEXT_MODEL = "text_model."  # CLIPTextModel's inner module, which peft's text-encoder keys omit


class _Layer(Protocol):
    """What a LoRA layer offers (models.lora.LoraLayer): delta_W = scale * up @ down."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float


def check_lora_format(name: str) -> str:
    """The format name, or a RewardiffError listing the accepted ones."""
    if name not in LORA_FORMATS:
        raise RewardiffError(f"unknown LoRA format {name!r}; choose one of {', '.join(LORA_FORMATS)}")
    return name


def is_kohya(keys: object) -> bool:
    """True when every key of a LoRA file has a kohya prefix."""
    keys = list(keys)  # type: ignore[call-overload]
    return bool(keys) and all(str(k).startswith(KOHYA_PREFIXES) for k in keys)


def normalize_module(module: str) -> str:
    """One name per layer whatever the file's format: 'text_encoder.text_model.encoder...' (kohya,
    full module path) and 'text_encoder.encoder...' (what diffusers' save_lora_weights writes)
    both become the latter, so layers read from the two formats fuse and compare."""
    component, _, inner = module.partition(".")
    if component.startswith("text_encoder") and inner.startswith(_TEXT_MODEL):
        return f"{component}.{inner[len(_TEXT_MODEL):]}"
    return module


def kohya_state_dict(layers: Mapping[str, _Layer], sdxl: bool | None = None) -> dict[str, torch.Tensor]:
    """{'unet.<module>' | 'text_encoder[_2].<module>': layer} -> kohya tensors.

    Each layer becomes `<stem>.lora_down.weight`, `<stem>.lora_up.weight` and `<stem>.alpha`
    with alpha = scale * rank (kohya's scale is alpha / rank), so the file loads at the layer's
    trained strength. Text encoders are `lora_te_` on SD 1.x / 2.x and `lora_te1_` / `lora_te2_`
    on SDXL (`sdxl`; None = SDXL when a layer adapts text_encoder_2).
    """
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    if sdxl is None:
        sdxl = any(m.startswith("text_encoder_2.") for m in layers)
    out: dict[str, torch.Tensor] = {}
    for module, layer in layers.items():
        component, _, inner = normalize_module(module).partition(".")
        if component.startswith("text_encoder"):
            inner = _TEXT_MODEL + inner  # kohya names the full CLIPTextModel path
        peft = {f"{component}.{inner}.lora_A.weight": layer.down, f"{component}.{inner}.lora_B.weight": layer.up}
        converted = convert_state_dict_to_kohya(peft)
        alpha_key = next(k for k in converted if k.endswith(".alpha"))
        converted[alpha_key] = torch.tensor(float(layer.scale) * int(layer.down.shape[0]), dtype=torch.float32)
        for key, value in converted.items():
            if not sdxl and key.startswith("lora_te1_"):
                key = "lora_te_" + key[len("lora_te1_"):]
            if not key.startswith(KOHYA_PREFIXES):
                raise RewardiffError(f"layer {module!r} has no kohya name (got {key!r}); only unet / text_encoder / text_encoder_2 layers convert")
            out[key] = value.contiguous() if isinstance(value, torch.Tensor) else value
    return out


def kohya_metadata(layers: Mapping[str, _Layer]) -> dict[str, str]:
    """The safetensors header kohya tools read to describe a LoRA (rank and alpha when uniform)."""
    meta = {"format": "pt", "ss_network_module": "networks.lora"}
    ranks = {int(layer.down.shape[0]) for layer in layers.values()}
    alphas = {float(layer.scale) * int(layer.down.shape[0]) for layer in layers.values()}
    if len(ranks) == 1:
        meta["ss_network_dim"] = str(ranks.pop())
    if len(alphas) == 1:
        meta["ss_network_alpha"] = f"{alphas.pop():g}"
    return meta


def from_kohya(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Kohya tensors -> ({'<component>.<module>.lora_A|lora_B.weight': tensor}, {'<component>.<module>': alpha}).

    diffusers' kohya converter (a private function, wrapped here only) yields its old key style
    ('...processor.to_q_lora.down.weight' in the U-Net, '...self_attn.to_q_lora.down.weight' in
    text encoders); its public U-Net / text-encoder converters then give peft names, as
    `load_lora_weights` does before loading.
    """
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from diffusers.utils.state_dict_utils import StateDictType, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    converted, network_alphas = _convert_non_diffusers_lora_to_diffusers(dict(tensors))
    alpha_of_down = {k[: -len(".alpha")]: float(v) for k, v in (network_alphas or {}).items()}

    def to_peft(key: str) -> str:
        component, _, inner = key.partition(".")
        if component == "unet":
            new = convert_unet_state_dict_to_peft({inner: None})
        else:
            new = convert_state_dict_to_peft({inner: None}, original_type=StateDictType.DIFFUSERS_OLD)
        return f"{component}.{next(iter(new))}"

    out: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for key, value in converted.items():
        new = to_peft(key)
        out[new] = value
        if key in alpha_of_down and new.endswith(".lora_A.weight"):
            alphas[new[: -len(".lora_A.weight")]] = alpha_of_down[key]
    return out, alphas
