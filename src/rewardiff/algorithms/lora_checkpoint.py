"""The resumable state of a LoRA training run: adapter tensors, optimiser, progress.

Only the LoRA parameters are saved (the frozen base comes from the model), keyed
'<module>::<parameter name>' so a U-Net and a text encoder can share one file. Written atomically
(a temp folder renamed over the old one), so a kill never leaves half a checkpoint. state.pt is
our own file, read back with torch's weights-only loader (never a user's file).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rewardiff.errors import RewardiffError
from rewardiff.io_utils import safetensors_intact, write_folder_atomically

LORA_PARAMS = "lora_params.safetensors"
STATE = "state.pt"
META = "state.json"


def lora_parameters(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """Every LoRA parameter of the named modules, keyed '<module>::<parameter name>'."""
    return {f"{m}::{n}": p for m, mod in modules.items() for n, p in mod.named_parameters() if "lora_" in n}


def save_lora_state(directory: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    meta: dict, extra: dict | None = None) -> None:
    """Write LoRA tensors, the optimiser (+ `extra` tensors/objects, e.g. RNG state) and `meta` (JSON)."""
    from safetensors.torch import save_file

    tensors = {k: p.detach().contiguous().clone() for k, p in lora_parameters(modules).items()}
    blob = {"optimizer": optimizer.state_dict(), **(extra or {})}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / LORA_PARAMS))
        torch.save(blob, tmp / STATE)
        (tmp / META).write_text(json.dumps(meta))

    write_folder_atomically(directory, write)


def read_lora_meta(directory: Path) -> dict | None:
    """The checkpoint's meta, or None when there is no checkpoint yet or it is broken (its
    tensors, optimiser or meta do not read back): a resume then starts over rather than trust it."""
    path = directory / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        torch.load(directory / STATE, weights_only=True)
    except Exception:  # a truncated or foreign file, whatever the reader raises
        meta = None
    if meta is None or not safetensors_intact(directory / LORA_PARAMS):
        import sys

        print(f"warning: {directory} is broken; training starts over", file=sys.stderr)
        return None
    return meta


def load_lora_state(directory: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Inverse of save_lora_state: copy the tensors into the modules' LoRA parameters, restore the
    optimiser; returns (meta, extra)."""
    from safetensors.torch import load_file

    params = lora_parameters(modules)
    saved = load_file(str(directory / LORA_PARAMS))
    if set(saved) != set(params):
        odd = sorted(set(saved) ^ set(params))[0]
        raise RewardiffError(f"{directory}: the checkpoint's LoRA does not match this run's (target / rank?), e.g. {odd!r}; use another --out")
    with torch.no_grad():
        for key, value in saved.items():
            if value.shape != params[key].shape:
                raise RewardiffError(f"{directory}: checkpoint tensor {key!r} has shape {tuple(value.shape)}, the model's LoRA {tuple(params[key].shape)}; use another --out")
            params[key].copy_(value)
    blob = torch.load(directory / STATE, weights_only=True)
    optimizer.load_state_dict(blob.pop("optimizer"))
    return json.loads((directory / META).read_text()), blob
