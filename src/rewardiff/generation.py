"""Generate images for prompts x seeds, and the resumable run behind `rewardiff generate`.

Seeds are per image index, shared by every prompt (image k of each prompt uses seed + k), so two
models compared on the same prompt set see the same starting noise: paired comparisons, as the
CCSR win-rate protocol needs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rewardiff.errors import RewardiffError
from rewardiff.io_utils import append_jsonl, read_jsonl, save_png, write_json

METADATA = "metadata.jsonl"
RUN_FILE = "run.json"


@dataclass
class SamplingSettings:
    """How to sample; None means the pipeline's own default for that model."""

    steps: int = 30  # denoising steps
    guidance: float = 5.0  # classifier-free guidance scale
    guidance_rescale: float | None = None  # Lin et al. 2023; shapes default 0.7, else pipeline's 0
    height: int | None = None  # pixels; None = model default
    width: int | None = None
    eta: float = 0.0  # DDIM eta (0 = deterministic)


SHAPES_SAMPLING = {"guidance_rescale": 0.7, "height": 32, "width": 32}
"""Defaults for the shapes generator (zero-terminal-SNR models want guidance rescale)."""


def sample_images(pipe, prompts: list[str], seeds: list[int], settings: SamplingSettings) -> np.ndarray:
    """One batched pipeline call; returns uint8 (B, H, W, 3). Each image has its own seeded noise."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    device = pipe.device if pipe.device.type != "mps" else "cpu"
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    kwargs = dict(
        prompt=list(prompts),
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        generator=generators,
        output_type="np",
        eta=settings.eta,
    )
    if settings.guidance_rescale is not None:
        kwargs["guidance_rescale"] = settings.guidance_rescale
    if settings.height is not None:
        kwargs["height"], kwargs["width"] = settings.height, settings.width or settings.height
    with torch.no_grad():
        images = pipe(**kwargs).images
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def read_prompts(source: str) -> list[str]:
    """A prompts file (.txt one per line, .jsonl with a 'prompt' field), 'shapes:heldout',
    'shapes:train', or a literal prompt."""
    from rewardiff.shapes.prompts import heldout_eval_prompts, train_prompts

    if source == "shapes:heldout":
        return heldout_eval_prompts()
    if source == "shapes:train":
        return train_prompts()
    path = Path(source)
    if path.suffix in (".txt", ".jsonl") and not path.is_file():
        raise RewardiffError(f"prompts file not found: {source}")
    if path.is_file():
        if path.suffix == ".jsonl":
            prompts = [str(row.get("prompt", "")) for row in read_jsonl(path)]
        else:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            prompts = [p for p in prompts if p and not p.startswith("#")]
        for i, p in enumerate(prompts, 1):
            if not p.strip():
                raise RewardiffError(f"{source}: prompt {i} is empty")
        if not prompts:
            raise RewardiffError(f"{source}: no prompts in file")
        return prompts
    if not source.strip():
        raise RewardiffError("empty prompt")
    return [source.strip()]


@dataclass
class GenerateConfig:
    model: str = "shapes"  # 'shapes', a local pipeline folder, or a hub id
    prompts: str = "shapes:heldout"  # file, 'shapes:heldout' / 'shapes:train', or literal text
    num_images: int = 4  # images per prompt
    seed: int = 0  # image k of every prompt uses seed + k
    batch_size: int = 16  # images per pipeline call
    out: str = "runs/generate"
    loras: list[str] = field(default_factory=list)  # 'file.safetensors[:scale]'
    device: str = "cpu"  # cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto (float16 on cuda, else float32), float32, float16, bfloat16
    sampling: SamplingSettings = field(default_factory=SamplingSettings)


def _run_signature(cfg: GenerateConfig, prompts: list[str]) -> dict:
    """What makes two runs 'the same run' (resumable into one folder)."""
    return {
        "model": cfg.model,
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "num_prompts": len(prompts),
        "num_images": cfg.num_images,
        "seed": cfg.seed,
        "loras": list(cfg.loras),
        "sampling": asdict(cfg.sampling),
    }


def _check_run_dir(out: Path, signature: dict) -> None:
    run_file = out / RUN_FILE
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        diffs = [k for k in signature if old.get(k) != signature[k]]
        if diffs:
            k = diffs[0]
            raise RewardiffError(f"output directory {out} already holds a different run ({k}: {old.get(k)!r} there, {signature[k]!r} now); choose another --out")
    elif (out / METADATA).exists():
        raise RewardiffError(f"output directory {out} already holds a metadata.jsonl from another run; choose another --out")


def run_generation(cfg: GenerateConfig, pipe=None, progress: bool = True) -> Path:
    """Generate cfg.num_images per prompt into cfg.out, resuming what a killed run left.

    Images are written (atomically) before their metadata rows, so a row always points to a
    complete PNG; a kill between the two only costs regenerating that batch.
    """
    from tqdm.auto import tqdm

    from rewardiff.config import save_config
    from rewardiff.models.lora import apply_loras, parse_lora_spec
    from rewardiff.models.pipeline import load_pipeline, resolve_model

    prompts = read_prompts(cfg.prompts)
    if cfg.num_images < 1:
        raise RewardiffError("--num-images must be at least 1")
    source = resolve_model(cfg.model)
    sampling = cfg.sampling
    if source.is_shapes:
        from rewardiff.shapes.prompts import parse_prompt

        for p in prompts:
            parse_prompt(p)  # raises UnsupportedPromptError naming the prompt
        sampling = SamplingSettings(**{**asdict(sampling), **{k: v for k, v in SHAPES_SAMPLING.items() if getattr(sampling, k) is None}})
    loras = [parse_lora_spec(s) for s in cfg.loras]

    out = Path(cfg.out)
    signature = _run_signature(cfg, prompts)
    _check_run_dir(out, signature)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUN_FILE, signature)
    save_config(cfg, out / "config.yaml")

    meta_path = out / METADATA
    done = set()
    if meta_path.is_file():
        done = {(r["prompt_index"], r["index"]) for r in read_jsonl(meta_path) if (out / r["image"]).is_file()}
    jobs = [(i, k) for i in range(len(prompts)) for k in range(cfg.num_images) if (i, k) not in done]
    if not jobs:
        return meta_path
    if pipe is None:
        from rewardiff.models.pipeline import resolve_dtype

        pipe, _ = load_pipeline(cfg.model, device=cfg.device, dtype=resolve_dtype(cfg.dtype, cfg.device))
    apply_loras(pipe, loras)
    lora_names = [str(s) for s in loras]
    bar = tqdm(total=len(prompts) * cfg.num_images, initial=len(prompts) * cfg.num_images - len(jobs), desc="generate", unit="img", disable=not progress)
    for start in range(0, len(jobs), cfg.batch_size):
        batch = jobs[start : start + cfg.batch_size]
        images = sample_images(pipe, [prompts[i] for i, _ in batch], [cfg.seed + k for _, k in batch], sampling)
        rows = []
        for (i, k), image in zip(batch, images):
            rel = f"images/{i:05d}_{k:03d}.png"
            save_png(out / rel, image)
            rows.append({"prompt": prompts[i], "image": rel, "seed": cfg.seed + k, "model": cfg.model, "lora": lora_names, "prompt_index": i, "index": k})
        append_jsonl(meta_path, rows)
        bar.update(len(batch))
    bar.close()
    return meta_path


def load_metadata(path: str | Path) -> tuple[list[dict], Path]:
    """Rows of a metadata.jsonl and the folder their image paths are relative to."""
    path = Path(path)
    if path.is_dir():
        path = path / METADATA
    if not path.is_file():
        raise RewardiffError(f"metadata file not found: {path}")
    rows = list(read_jsonl(path))
    for n, row in enumerate(rows, 1):
        if "prompt" not in row or "image" not in row:
            raise RewardiffError(f"{path}: row {n} lacks 'prompt' or 'image'")
    if not rows:
        raise RewardiffError(f"{path}: no rows")
    return rows, path.parent
