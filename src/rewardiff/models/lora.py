"""LoRA files as users name them ('file.safetensors:0.7'), their application at inference, and
their weighted fusion into one file (`fuse_loras`), and their export to another key format
(`export_lora`: diffusers <-> kohya, see lora_formats).

Loading goes through diffusers' `load_lora_weights` (it reads both formats), so what rewardiff
writes is what any diffusers user can open, and vice versa.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rewardiff.errors import RewardiffError
from rewardiff.models.lora_formats import check_lora_format, from_kohya, is_kohya, kohya_metadata, kohya_state_dict, normalize_module
from rewardiff.io_utils import give_default_modes

if TYPE_CHECKING:
    import torch


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
    if not math.isfinite(scale):
        raise RewardiffError(f"LoRA {path}: scale must be a finite number, got {tail!r}")
    if not Path(path).is_file():
        raise RewardiffError(f"LoRA file not found: {path}")
    if not str(path).endswith(".safetensors"):
        raise RewardiffError(f"LoRA {path}: only .safetensors LoRA files are accepted (no pickles)")
    return LoraSpec(path, scale)


def apply_loras(pipe, loras: list[LoraSpec]) -> None:
    """Load each LoRA as a named adapter and activate them all with their scales.

    Every file is checked first (finite tensors; every adapted layer exists in the pipeline with
    the LoRA's in/out sizes), so a LoRA of another model is one clear error naming the file and
    its first bad key, never a partial load; the library's own log lines are held back while it
    loads and shown only if it succeeds (a failure is the one RewardiffError).
    """
    if not loras:
        return
    names = []
    for i, spec in enumerate(loras):
        name = f"lora{i}"
        path = Path(spec.path)
        try:
            layers = read_lora_layers(path)
        except UnsupportedLoraFormat:
            layers = None  # a format only the library reads (DoRA, biases, ...): it checks it itself
        if layers is not None:
            check_lora_fits(pipe, path, layers)
        try:
            with _library_logs_held():
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        except Exception as e:
            raise RewardiffError(f"cannot load LoRA {spec.path}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") from None
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[s.scale for s in loras])


@contextlib.contextmanager
def _library_logs_held() -> Iterator[None]:
    """Hold the log records diffusers / peft / transformers emit inside the block; replay them
    only when the block succeeds (a failed LoRA load is reported once, by the caller)."""
    import logging

    held: list[logging.LogRecord] = []

    class _Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    hold = _Hold()
    saved = []
    for logger_name in ("diffusers", "peft", "transformers"):
        logger = logging.getLogger(logger_name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers, logger.propagate = [hold], False
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
    for record in held:
        logging.getLogger(record.name).handle(record)


def _component_modules(pipe, component: str) -> dict:
    module = getattr(pipe, component, None)
    return {} if module is None else dict(module.named_modules())


def check_lora_fits(pipe, path: str | Path, layers: dict[str, LoraLayer]) -> None:
    """Refuse a LoRA whose layers are not in `pipe` or have other in/out sizes, naming the file and
    its first bad key. A file's layer 'component.P' adapts the module named P, or ending in '.P'
    (peft's target-module rule: text-encoder files omit the 'text_model.' prefix)."""
    import torch

    modules = {component: _component_modules(pipe, component) for component in {m.split(".", 1)[0] for m in layers}}
    for module_path, layer in layers.items():
        component, inner = module_path.split(".", 1)
        key = layer.key or module_path
        found = modules[component]
        if not found:
            raise RewardiffError(f"cannot load LoRA {path}: key {key!r} adapts the {component}, which this model does not have (a LoRA of another model?)")
        target = found.get(inner)
        if target is None:
            target = next((m for n, m in found.items() if n.endswith("." + inner)), None)
        if target is None:
            raise RewardiffError(f"cannot load LoRA {path}: key {key!r} adapts {component}.{inner}, which this model does not have (a LoRA of another model?)")
        base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
        weight = getattr(base, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() not in (2, 4):
            raise RewardiffError(f"cannot load LoRA {path}: key {key!r} adapts {component}.{inner}, which is not a linear or convolution layer")
        fan_in, fan_out = int(weight[0].numel()), int(weight.shape[0])
        if int(layer.down[0].numel()) != fan_in or int(layer.up.shape[0]) != fan_out:
            raise RewardiffError(
                f"cannot load LoRA {path}: key {key!r} has shape {tuple(layer.down.shape)} (up {tuple(layer.up.shape)}) but the model's "
                f"{component}.{inner} has {fan_in} inputs and {fan_out} outputs (weight {tuple(weight.shape)}): a LoRA of another model?")


UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
"""Attention projections, as diffusers' train_text_to_image_lora.py and TexForce adapt."""
UNET_LORA_SCOPES = ("attention", "cross_attention", "none")
"""Which U-Net attention a trainer adapts: every attention block (the default), only the
cross-attention that reads the prompt (`attn2`: a change the LoRA makes is then a function of the
text, it cannot add a prompt-independent bias through self-attention), or none (text encoder only)."""


def unet_lora_targets(scope: str) -> tuple[str, ...] | str | None:
    """peft `target_modules` of a U-Net LoRA scope (see UNET_LORA_SCOPES); None for 'none'."""
    if scope == "attention":
        return UNET_LORA_TARGETS
    if scope == "cross_attention":
        return r".*attn2\.(to_q|to_k|to_v|to_out\.0)"
    if scope == "none":
        return None
    raise RewardiffError(f"unet LoRA scope must be one of {', '.join(UNET_LORA_SCOPES)}, got {scope!r}")


def add_lora(module, rank: int = 4, alpha: float | None = None, targets: tuple[str, ...] | str | None = None, adapter_name: str = "default") -> None:
    """Attach a trainable peft LoRA adapter (B initialised to zero: a no-op until trained).
    `targets`: module-name suffixes, or one regex string (peft's full-name match)."""
    from peft import LoraConfig

    if targets is None:
        targets = TEXT_LORA_TARGETS if "TextModel" in type(module).__name__ else UNET_LORA_TARGETS
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights="gaussian",
                        target_modules=targets if isinstance(targets, str) else list(targets))
    module.add_adapter(config, adapter_name=adapter_name)


@contextlib.contextmanager
def adapters_disabled(*modules) -> Iterator[None]:
    """Run the frozen base model: every peft LoRA layer of `modules` (None entries skipped) is
    bypassed inside the block, then restored as it was, requires_grad flags included (peft's
    re-enable would otherwise mark every active adapter trainable). Works for adapters added by
    `add_lora` and for those loaded by `pipe.load_lora_weights`, on U-Nets and text encoders alike."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for module in modules if module is not None for m in module.modules() if isinstance(m, BaseTunerLayer)]
    was_disabled = [layer.disable_adapters for layer in layers]
    grads = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.enable_adapters(not disabled)
        for p, flag in grads:
            p.requires_grad_(flag)


def _adapter_metadata(module) -> dict | None:
    """The active peft adapter's LoraConfig as a plain dict (None when the module has none)."""
    configs = getattr(module, "peft_config", None) or {}
    active = getattr(module, "active_adapters", None)
    name = (active() if callable(active) else active or ["default"])[0] if configs else None
    if name not in configs:
        return None
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in configs[name].to_dict().items()}


def save_lora(path: str | Path, unet=None, text_encoder=None, pipeline_cls=None, text_encoder_2=None,
              lora_format: str = "diffusers") -> Path:
    """Write the adapters of a U-Net and/or text encoder(s) as one LoRA safetensors file.

    `lora_format` 'diffusers' (default) opens with `pipe.load_lora_weights(dir, weight_name=file)`;
    'kohya' writes the names A1111 / ComfyUI / kohya tools load (`lora_formats.kohya_state_dict`),
    which `load_lora_weights` opens too. SDXL's second encoder needs `text_encoder_2`.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    path = Path(path)
    if path.suffix != ".safetensors":
        raise RewardiffError(f"LoRA output must be a .safetensors file, got {path}")
    if unet is None and text_encoder is None and text_encoder_2 is None:
        raise RewardiffError("save_lora needs a U-Net or a text encoder with a LoRA adapter")
    if check_lora_format(lora_format) == "kohya":
        # written in diffusers' format first (its converter knows peft's names), then renamed
        tmp = save_lora(path.with_name(f".{path.stem}.diffusers.tmp.safetensors"), unet, text_encoder, pipeline_cls, text_encoder_2)
        try:
            sdxl = text_encoder_2 is not None or "XL" in getattr(pipeline_cls, "__name__", "")
            return write_lora_layers(read_lora_layers(tmp), path, "kohya", sdxl=sdxl)
        finally:
            tmp.unlink(missing_ok=True)
    if text_encoder_2 is not None and pipeline_cls is None:
        from diffusers import StableDiffusionXLPipeline

        pipeline_cls = StableDiffusionXLPipeline
    layers = {}
    for name, module in (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        if module is not None:
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
            # rank and alpha travel with the tensors (diffusers' lora_adapter_metadata), so a LoRA
            # trained with alpha != rank loads back at its trained strength, here and in diffusers
            layers[f"{name}_lora_adapter_metadata"] = _adapter_metadata(module)
    cls = pipeline_cls or StableDiffusionPipeline
    path.parent.mkdir(parents=True, exist_ok=True)
    # written into a temp folder beside the target, then renamed: atomic, and with the default
    # file mode (the safetensors writer makes 0600 files)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        cls.save_lora_weights(str(tmp), weight_name=path.name, safe_serialization=True, **layers)
        give_default_modes(tmp)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def save_pipeline_lora(path: str | Path, pipe, modules: dict, lora_format: str = "diffusers") -> Path:
    """`save_lora` of the trained modules of `pipe` ({'unet' | 'text_encoder' | 'text_encoder_2':
    module}), in the format of the pipeline's own class (SD or SDXL), diffusers or kohya key names."""
    return save_lora(path, unet=modules.get("unet"), text_encoder=modules.get("text_encoder"),
                     text_encoder_2=modules.get("text_encoder_2"), pipeline_cls=type(pipe) if hasattr(type(pipe), "save_lora_weights") else None,
                     lora_format=lora_format)


# ---------------------------------------------------------------------------------------------
# Fusion: several LoRA files -> one, by weighted sums of their deltas, without training.
#
# A LoRA adds delta_W = s * B @ A to a layer (A: (r, in), B: (out, r), s = alpha / r, or 1 when
# the file carries no alpha: the diffusers/peft convention). The weighted sum of n LoRAs on one
# layer, sum_i w_i * s_i * B_i @ A_i, is itself a LoRA of rank sum_i r_i:
#     A = cat_i(A_i) (rows),  B = cat_i(w_i * s_i * B_i) (columns),  scale 1,
# so concatenating ranks is exact (no SVD truncation) and the result stays a standard LoRA file.
# Layers only one file adapts (a text-encoder LoRA + a U-Net LoRA) are copied, weighted.
# ---------------------------------------------------------------------------------------------

LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
"""Key prefixes of a diffusers pipeline LoRA file (what `save_lora_weights` writes)."""

_PAIR_SUFFIXES = (
    (".lora.down.weight", ".lora.up.weight"),  # diffusers U-Net keys (save_lora)
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),  # diffusers text-encoder keys
    (".lora_A.weight", ".lora_B.weight"),  # peft keys (also accepted by load_lora_weights)
)
_ALPHA_SUFFIX = ".alpha"  # per-layer network alpha (kohya-style, also found in older diffusers files)
_OUT_SUFFIXES = {"unet": _PAIR_SUFFIXES[0], "text_encoder": _PAIR_SUFFIXES[1], "text_encoder_2": _PAIR_SUFFIXES[1]}
"""Written suffixes: the ones `save_lora` (diffusers' convert_state_dict_to_diffusers) writes."""


@dataclass
class LoraLayer:
    """One adapted layer of a LoRA file: delta_W = scale * up @ down."""

    down: torch.Tensor  # A: (r, in) or (r, in, kh, kw) for convolutions
    up: torch.Tensor  # B: (out, r) or (out, r, 1, 1)
    scale: float  # alpha / r (alpha / sqrt(r) with rsLoRA); 1.0 when the file has no alpha
    key: str = ""  # the file's key of `down` (for messages); "" for computed layers

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense weight update this layer adds (for tests and inspection)."""
        return self.scale * (self.up.flatten(1) @ self.down.flatten(1)).reshape(self.up.shape[0], *self.down.shape[1:])


class UnsupportedLoraFormat(RewardiffError):
    """A LoRA file rewardiff cannot parse into plain down/up layers (diffusers may still load it)."""


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    """Tensors and metadata of a LoRA file; refuses one holding NaN or inf, naming the first such key."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise RewardiffError(f"LoRA {path}: not a readable safetensors file ({e})") from None
    for key in sorted(tensors):
        value = tensors[key]
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise RewardiffError(f"LoRA {path}: tensor {key!r} holds NaN or inf values (a diverged training run?)")
    return tensors, meta


def _metadata_scale(meta: dict | None, component: str, module: str, rank: int) -> float | None:
    """alpha / r from diffusers' `lora_adapter_metadata` (LoraConfig fields prefixed by component)."""
    import math
    import re

    if not meta or f"{component}.lora_alpha" not in meta:
        return None
    alpha = float(meta[f"{component}.lora_alpha"])
    for pattern, value in (meta.get(f"{component}.alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):  # peft's get_pattern_key rule
            alpha = float(value)
            break
    return alpha / (math.sqrt(rank) if meta.get(f"{component}.use_rslora") else rank)


def read_lora_layers(path: str | Path) -> dict[str, LoraLayer]:
    """A diffusers- or kohya-format LoRA file -> {'unet.<module>' | 'text_encoder[_2].<module>': LoraLayer}.

    Kohya/A1111 files (lora_unet_* / lora_te* keys) are converted with diffusers' own converters
    first (`lora_formats.from_kohya`); text-encoder modules are named without 'text_model.' in both.
    """
    import json

    import torch

    path = Path(path)
    if not path.is_file():
        raise RewardiffError(f"LoRA file not found: {path}")
    if path.suffix != ".safetensors":
        raise RewardiffError(f"LoRA {path}: only .safetensors LoRA files are accepted (no pickles)")
    tensors, file_meta = _read_safetensors(path)
    if not tensors:
        raise RewardiffError(f"LoRA {path}: the file holds no tensors")
    alphas: dict[str, float] = {}
    if is_kohya(tensors):
        try:
            tensors, alphas = from_kohya(tensors)
        except Exception as e:
            raise UnsupportedLoraFormat(f"LoRA {path}: cannot convert this kohya-format file ({type(e).__name__}: {e})") from None
    try:
        meta = json.loads(file_meta["lora_adapter_metadata"]) if "lora_adapter_metadata" in file_meta else None
    except json.JSONDecodeError:
        raise RewardiffError(f"LoRA {path}: its lora_adapter_metadata is not valid JSON") from None

    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    down_keys: dict[str, str] = {}
    for key, value in tensors.items():
        if key.endswith(_ALPHA_SUFFIX):
            alphas[key[: -len(_ALPHA_SUFFIX)]] = float(value.float().reshape(-1)[0])
            continue
        for down_suffix, up_suffix in _PAIR_SUFFIXES:
            if key.endswith(down_suffix):
                downs[key[: -len(down_suffix)]] = value
                down_keys[key[: -len(down_suffix)]] = key
                break
            if key.endswith(up_suffix):
                ups[key[: -len(up_suffix)]] = value
                break
        else:
            raise UnsupportedLoraFormat(f"LoRA {path}: unsupported key {key!r} (only plain LoRA down/up weights and alphas; no DoRA, biases or LoKr)")
    layers: dict[str, LoraLayer] = {}
    for module in sorted(set(downs) | set(ups)):
        component = module.split(".", 1)[0]
        if component not in LORA_COMPONENTS:
            raise UnsupportedLoraFormat(f"LoRA {path}: layer {module!r} does not start with one of {LORA_COMPONENTS} (not a diffusers pipeline LoRA file)")
        if module not in downs or module not in ups:
            raise RewardiffError(f"LoRA {path}: layer {module!r} has only its {'up' if module in ups else 'down'} weight")
        down, up = downs[module].float(), ups[module].float()
        if down.dim() < 2 or up.dim() < 2 or up.shape[1] != down.shape[0]:
            raise RewardiffError(f"LoRA {path}: layer {module!r} has inconsistent shapes down {tuple(down.shape)} / up {tuple(up.shape)}")
        rank = int(down.shape[0])
        if module in alphas:
            scale = alphas[module] / rank
        else:
            inner = module.split(".", 1)[1]
            scale = _metadata_scale(meta, component, inner, rank)
            scale = 1.0 if scale is None else scale
        name = normalize_module(module)  # one name per layer in either format, so files fuse and compare
        if name in layers:
            raise RewardiffError(f"LoRA {path}: layer {module!r} appears twice (with and without 'text_model.')")
        layers[name] = LoraLayer(down, up, scale, down_keys[module])
    return layers


def fuse_lora_layers(parts: list[tuple[str, float, dict[str, LoraLayer]]]) -> dict[str, LoraLayer]:
    """Weighted sum of several files' layers by rank concatenation (exact; see the section note).

    `parts`: (name for messages, weight, layers). Every component's layers are zero-padded to one
    rank, so the output needs no rank/alpha patterns and loads alike in every diffusers version.
    """
    import torch

    fused: dict[str, LoraLayer] = {}
    modules = sorted({m for _, _, layers in parts for m in layers})
    for module in modules:
        present = [(name, w, layers[module]) for name, w, layers in parts if module in layers]
        first_name, _, first = present[0]
        for name, _, layer in present[1:]:
            if layer.down.shape[1:] != first.down.shape[1:] or layer.up.shape[0] != first.up.shape[0] or layer.up.shape[2:] != first.up.shape[2:]:
                raise RewardiffError(
                    f"cannot fuse layer {module!r}: {first_name} has in/out shape {tuple(first.down.shape[1:])}/{first.up.shape[0]} "
                    f"but {name} has {tuple(layer.down.shape[1:])}/{layer.up.shape[0]} (LoRAs of different models?)")
        down = torch.cat([layer.down for _, _, layer in present], dim=0)
        up = torch.cat([w * layer.scale * layer.up for _, w, layer in present], dim=1)
        fused[module] = LoraLayer(down, up, 1.0)
    for component in LORA_COMPONENTS:
        names = [m for m in fused if m.split(".", 1)[0] == component]
        top = max((fused[m].rank for m in names), default=0)
        for m in names:
            layer = fused[m]
            pad = top - layer.rank
            if pad:
                down = torch.cat([layer.down, layer.down.new_zeros(pad, *layer.down.shape[1:])], dim=0)
                up = torch.cat([layer.up, layer.up.new_zeros(layer.up.shape[0], pad, *layer.up.shape[2:])], dim=1)
                fused[m] = LoraLayer(down, up, 1.0)
    return fused


def lora_state_dict(layers: dict[str, LoraLayer]) -> dict:
    """Scale-1 layers -> the diffusers-format tensors `save_lora` writes (no alpha keys needed)."""
    out = {}
    for module, layer in layers.items():
        if layer.scale != 1.0:
            raise ValueError(f"layer {module}: fold the scale into `up` before writing")
        down_suffix, up_suffix = _OUT_SUFFIXES[module.split(".", 1)[0]]
        out[module + down_suffix] = layer.down.contiguous()
        out[module + up_suffix] = layer.up.contiguous()
    return out


def write_lora_layers(layers: dict[str, LoraLayer], out: str | Path, lora_format: str = "diffusers", sdxl: bool | None = None) -> Path:
    """Write layers as one LoRA file (atomically) in the diffusers or kohya format.

    diffusers: each layer's scale is folded into `up` (scale-1 tensors, no alpha keys needed);
    kohya: `.alpha` = scale * rank beside unchanged tensors. `sdxl` picks lora_te1_/lora_te2_
    over lora_te_ (None: when a layer adapts text_encoder_2)."""
    from safetensors.torch import save

    from rewardiff.io_utils import atomic_write_bytes

    if check_lora_format(lora_format) == "kohya":
        tensors, meta = kohya_state_dict(layers, sdxl=sdxl), kohya_metadata(layers)
    else:
        folded = {m: LoraLayer(layer.down, layer.up * layer.scale, 1.0) for m, layer in layers.items()}
        tensors, meta = lora_state_dict(folded), {"format": "pt"}
    return atomic_write_bytes(Path(out), save(tensors, metadata=meta))


def export_lora(src: str | Path, out: str | Path, lora_format: str) -> Path:
    """Rewrite a LoRA file in another format (diffusers <-> kohya); the same deltas on every layer.

    Refuses a file that is not a LoRA and OUT == IN (the input is never overwritten)."""
    src, out = Path(src), Path(out)
    check_lora_format(lora_format)
    if out.suffix != ".safetensors":
        raise RewardiffError(f"export-lora --out must be a .safetensors file, got {out}")
    if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
        raise RewardiffError(f"export-lora --out {out} is the input file; write the converted LoRA to a new file")
    try:
        layers = read_lora_layers(src)
    except UnsupportedLoraFormat as e:
        raise RewardiffError(f"{src} is not a LoRA rewardiff can convert: {str(e).split(': ', 1)[-1]}") from None
    return write_lora_layers(layers, out, lora_format)


def fuse_loras(specs: list[LoraSpec], out: str | Path, lora_format: str = "diffusers") -> Path:
    """Write one LoRA file whose delta on every layer is sum_i w_i * s_i * B_i A_i.

    TexForce's "ReFL + TexForce" fusion: a U-Net LoRA and a text-encoder LoRA trained apart merge
    into one file; LoRAs on the same layers add. Inputs in either format; output in
    `lora_format` (diffusers or kohya). No training; loads with `load_lora_weights`.
    """
    check_lora_format(lora_format)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise RewardiffError(f"fused LoRA output must be a .safetensors file, got {out}")
    if not specs:
        raise RewardiffError("fuse needs at least one LoRA file (FILE[:WEIGHT] ...)")
    for s in specs:
        if not math.isfinite(s.scale):
            raise RewardiffError(f"LoRA {s.path}: weight must be a finite number, got {s.scale}")
        if Path(s.path).resolve() == out.resolve():
            raise RewardiffError(f"fuse --out {out} is one of the input LoRA files; write the fused LoRA to a new file")
    parts = [(str(s.path), float(s.scale), read_lora_layers(s.path)) for s in specs]
    return write_lora_layers(fuse_lora_layers(parts), out, lora_format)
