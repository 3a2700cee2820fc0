"""Generate images for prompts x seeds, and the resumable run behind `rewardiff generate`.

Image k of prompt p uses the seed `image_seed(seed, p, k)` (rewardiff.seeding): independent noise
for every (prompt, image), so an evaluation's samples are independent, and the same noise for the
same (prompt, k) in every run, so two models compared on one prompt set are paired, as the CCSR
win-rate protocol and `eval compare` need.

Best-of-N (`best_of` > 1, the CCSR selection used at inference): image k is the candidate the
judge scores highest among N samples with seeds image_seed(seed, p, k, j), j < N; candidate 0 is
the plain image, so a best-of-N run stays paired with a plain run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rewardiff.errors import RewardiffError
from rewardiff.io_utils import append_jsonl, read_jsonl, save_png
from rewardiff.runtime import Runtime
from rewardiff.seeding import SEED_SCHEME, image_seed

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


def is_finite_number(value) -> bool:
    """A real number (not a bool, NaN or inf): the one test every config's numeric check uses."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_sampling(settings: SamplingSettings, where: str = "sampling") -> None:
    """Refuse sampling settings that cannot give the images asked for, naming the field
    (`where` prefixes the field names: 'sampling' -> 'sampling.steps'; '' -> 'steps')."""

    def name(field_name: str) -> str:
        return f"{where}.{field_name}" if where else field_name

    steps = settings.steps
    if not (isinstance(steps, int) and not isinstance(steps, bool)) or steps < 1:
        raise RewardiffError(f"{name('steps')} must be an integer >= 1, got {steps!r}")
    for field_name in ("guidance", "eta"):
        value = getattr(settings, field_name)
        if not (is_finite_number(value) and value >= 0):
            raise RewardiffError(f"{name(field_name)} must be a finite number >= 0, got {value!r}")
    rescale = settings.guidance_rescale
    if rescale is not None and not (is_finite_number(rescale) and 0 <= rescale <= 1):
        raise RewardiffError(f"{name('guidance_rescale')} must be empty (the model's default) or a number in [0, 1], got {rescale!r}")
    for field_name in ("height", "width"):
        value = getattr(settings, field_name)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0 and value % 8 == 0):
            raise RewardiffError(f"{name(field_name)} must be empty (the model's default) or a positive multiple of 8 pixels, got {value!r}")


def check_prompts_for_model(prompts: list[str], model: str) -> None:
    """Refuse prompts the model cannot draw: the shapes world reads only its own language, so
    every prompt must parse (UnsupportedPromptError names the first that does not)."""
    from rewardiff.models.pipeline import resolve_model

    if not resolve_model(model).is_shapes:
        return
    from rewardiff.shapes.prompts import parse_prompt

    for p in prompts:
        parse_prompt(p)  # raises UnsupportedPromptError naming the prompt


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


PROTOCOL_SOURCES = {"shapes:eval": "heldout", "shapes:train-eval": "train"}
"""Prompt sources of the evaluation protocol: each prompt carries its own image count."""


def read_prompts(source: str) -> list[str]:
    """A prompts file (.txt one per line, .jsonl with a 'prompt' field), 'shapes:heldout',
    'shapes:train', 'shapes:eval' / 'shapes:train-eval' (the protocol sets), or a literal prompt."""
    from rewardiff.shapes.prompts import heldout_eval_prompts, protocol_prompts, train_prompts

    if source in PROTOCOL_SOURCES:
        return [p for p, _ in protocol_prompts(PROTOCOL_SOURCES[source])]
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


def images_per_prompt(source: str, prompts: list[str], num_images: int) -> list[int]:
    """Images of each prompt: the protocol's per-category counts for a protocol source, else num_images."""
    if source in PROTOCOL_SOURCES:
        from rewardiff.shapes.prompts import protocol_prompts

        return [n for _, n in protocol_prompts(PROTOCOL_SOURCES[source])]
    return [num_images] * len(prompts)


@dataclass
class GenerateConfig:
    model: str = "shapes"  # 'shapes', a local pipeline folder, or a hub id
    prompts: str = "shapes:heldout"  # file, 'shapes:heldout' / 'shapes:train', or literal text
    num_images: int = 4  # images per prompt (protocol sets shapes:eval / shapes:train-eval fix their own)
    seed: int = 0  # base seed: image k of prompt p uses image_seed(seed, p, k)
    best_of: int = 1  # > 1: sample N candidates per image and keep the one the judge scores highest
    judge: str = "judge@shapes"  # reward spec that picks among best-of-N candidates
    keep_worst: bool = False  # best-of-N: also write the judge's lowest-scored candidate (a Diffusion-DPO pair with the pick)
    plain: str = ""  # best-of-N: a finished plain run of the same settings whose images are candidate 0 (N-1 samples per image instead of N)
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
        "seed_scheme": SEED_SCHEME,
        "best_of": cfg.best_of,
        "judge": cfg.judge if cfg.best_of > 1 else None,
        "loras": list(cfg.loras),
        "sampling": asdict(cfg.sampling),
        **({"keep_worst": True} if cfg.keep_worst else {}),
    }


def verified_rows(out: Path, prompts: list[str], counts: list[int]) -> tuple[list[dict], bool]:
    """The metadata rows of OUT a resume may keep, and whether the file needs rewriting: one row
    per (prompt, image) of this run (the first; duplicates dropped), pointing to a PNG that decodes
    fully. A torn last line (a kill mid-append), a missing or truncated PNG: that image is redone."""
    from rewardiff.io_utils import load_image

    meta_path = out / METADATA
    if not meta_path.is_file():
        return [], False
    text = meta_path.read_text(encoding="utf-8", errors="replace")
    kept, seen, changed = [], set(), bool(text) and not text.endswith("\n")
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (int(row["prompt_index"]), int(row["index"]))
            ok = key not in seen and 0 <= key[0] < len(prompts) and row["prompt"] == prompts[key[0]] and 0 <= key[1] < counts[key[0]]
            if ok:
                load_image(out / row["image"])
                if "rejected_image" in row:
                    load_image(out / row["rejected_image"])
        except (ValueError, KeyError, TypeError, FileNotFoundError):
            ok = False
        if not ok:
            changed = True
            continue
        seen.add(key)
        kept.append(row)
    return kept, changed


def run_generation(cfg: GenerateConfig, pipe=None, progress: bool = True, runtime: Runtime | None = None) -> Path:
    """Generate cfg.num_images per prompt into cfg.out, resuming what a killed run left.

    Images are written (atomically) before their metadata rows, so a row always points to a
    complete PNG; a kill between the two only costs regenerating that batch. On resume every kept
    row is verified (verified_rows); the folder is claimed first (rewardiff.run_folder: owner
    checked, one writer at a time, a failed start leaves it as it was).

    Under `accelerate launch` (`runtime`, default from cfg.device) the batches of one process's
    run are dealt out in turn: in round r process k samples batch r * N + k, writes its PNGs, and
    the main process appends the round's rows in batch order. Every batch holds the images it
    holds in one process and each image has its own seed, so the images and the metadata are
    byte for byte those of one process, and a killed run resumes under any number of processes.
    """
    from rewardiff.models.lora import parse_lora_spec
    from rewardiff.models.pipeline import resolve_model
    from rewardiff.run_folder import claim_run_folder_main

    # every check first: a refused run writes nothing (its --out is left as it was)
    validate_sampling(cfg.sampling, "sampling")
    prompts = read_prompts(cfg.prompts)
    if cfg.num_images < 1:
        raise RewardiffError("--num-images must be at least 1")
    if cfg.best_of < 1:
        raise RewardiffError(f"--best-of must be at least 1, got {cfg.best_of}")
    if cfg.keep_worst and cfg.best_of < 2:
        raise RewardiffError("--keep-worst needs --best-of 2 or more (the worst of N candidates)")
    if cfg.batch_size < 1:
        raise RewardiffError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    counts = images_per_prompt(cfg.prompts, prompts, cfg.num_images)
    check_prompts_for_model(prompts, cfg.model)
    sampling = cfg.sampling
    if resolve_model(cfg.model).is_shapes:
        sampling = SamplingSettings(**{**asdict(sampling), **{k: v for k, v in SHAPES_SAMPLING.items() if getattr(sampling, k) is None}})
    loras = [parse_lora_spec(s) for s in cfg.loras]

    signature = _run_signature(cfg, prompts)
    reused = _plain_candidates(cfg, signature, prompts, counts) if cfg.plain and cfg.best_of > 1 else None
    runtime = runtime or Runtime(cfg.device)
    with claim_run_folder_main(cfg.out, "generate", signature, cfg, runtime.is_main) as folder:
        return _generate_into(folder, cfg, pipe, progress, prompts, counts, sampling, loras, reused, runtime)


def _generate_into(folder, cfg: GenerateConfig, pipe, progress: bool, prompts: list[str], counts: list[int],
                   sampling: SamplingSettings, loras: list, reused: dict | None, runtime: Runtime) -> Path:
    from tqdm.auto import tqdm

    from rewardiff.io_utils import atomic_write_text
    from rewardiff.models.lora import apply_loras
    from rewardiff.models.pipeline import load_pipeline

    out = folder.path
    meta_path = out / METADATA
    main = runtime.is_main
    runtime.wait()  # the main process has claimed the folder and recovered interrupted writes
    kept, changed = verified_rows(out, prompts, counts)
    done = {(r["prompt_index"], r["index"]) for r in kept}
    jobs = [(i, k) for i in range(len(prompts)) for k in range(counts[i]) if (i, k) not in done]
    judge = None
    if jobs:  # the model-dependent checks (a LoRA that does not fit the model) also come before any write
        if cfg.best_of > 1:
            from rewardiff.rewards.registry import build_rewards

            judge = build_rewards([cfg.judge], device=str(runtime.device))
        if pipe is None:
            from rewardiff.models.pipeline import resolve_dtype

            pipe, _ = load_pipeline(cfg.model, device=str(runtime.device), dtype=resolve_dtype(cfg.dtype, cfg.device))
        apply_loras(pipe, loras)

    folder.commit()
    runtime.wait()  # every process has read the kept rows: the main process may write now
    if changed and main:  # drop rows a resume cannot trust (their images are redone below)
        atomic_write_text(meta_path, "".join(json.dumps(r) + "\n" for r in kept))
    if not jobs:
        return meta_path
    lora_names = [str(s) for s in loras]
    total = sum(counts)
    bar = tqdm(total=total, initial=total - len(jobs), desc="generate" if judge is None else f"generate best-of-{cfg.best_of}",
               unit="img", disable=not (progress and main))
    per_call = max(1, cfg.batch_size // cfg.best_of)
    batches = [jobs[start : start + per_call] for start in range(0, len(jobs), per_call)]
    for first in range(0, len(batches), runtime.num_processes):
        turn = batches[first : first + runtime.num_processes]  # one batch per process this round
        batch = turn[runtime.process_index] if runtime.process_index < len(turn) else []
        rows = []
        if batch:
            plain = [reused[(i, k)] for i, k in batch] if reused is not None else None
            picks = _sample_batch(pipe, [prompts[i] for i, _ in batch], [k for _, k in batch], cfg, sampling, judge, plain)
            for (i, k), (image, seed, extra) in zip(batch, picks):
                rel = f"images/{i:05d}_{k:03d}.png"
                worst = extra.pop("rejected", None)
                if worst is not None:
                    extra["rejected_image"] = f"images/{i:05d}_{k:03d}_worst.png"
                    save_png(out / extra["rejected_image"], worst)
                save_png(out / rel, image)
                rows.append({"prompt": prompts[i], "image": rel, "seed": seed, "model": cfg.model, "lora": lora_names, "prompt_index": i, "index": k, **extra})
        gathered = runtime.gather_objects(rows)  # after every process wrote its PNGs: rows never point to a missing image
        if main:
            append_jsonl(meta_path, [row for part in gathered for row in part])
        bar.update(sum(len(b) for b in turn))
    bar.close()
    runtime.wait()  # the metadata is complete when any process returns
    return meta_path


def _plain_candidates(cfg: GenerateConfig, signature: dict, prompts: list[str], counts: list[int]) -> dict[tuple[int, int], Path]:
    """(prompt index, image index) -> PNG of a finished plain run that is this run with best_of 1:
    those images are exactly candidate 0 (same seeds), so they need not be sampled again."""
    from rewardiff.run_folder import normalise, read_marker

    plain = Path(cfg.plain)
    marker = read_marker(plain)
    if marker is None or marker["command"] != "generate":
        raise RewardiffError(f"--plain {plain}: not a generate run")
    theirs = marker["settings"]
    ours = normalise({**{k: v for k, v in signature.items() if k != "keep_worst"}, "best_of": 1, "judge": None})
    diffs = [k for k in ours if theirs.get(k) != ours[k]]
    if diffs:
        raise RewardiffError(f"--plain {plain}: a different run ({diffs[0]}: {theirs.get(diffs[0])!r} there, {ours[diffs[0]]!r} here); "
                             "it must be this run with --best-of 1")
    rows = {(r["prompt_index"], r["index"]): r for r in verified_rows(plain, prompts, counts)[0]}  # PNGs that decode, one row each
    wanted = [(i, k) for i in range(len(prompts)) for k in range(counts[i])]
    missing = [key for key in wanted if key not in rows]
    if missing:
        i, k = missing[0]
        raise RewardiffError(f"--plain {plain}: unfinished (image {k} of {prompts[i]!r} missing); finish it or drop --plain")
    return {key: plain / rows[key]["image"] for key in wanted}


def _sample_batch(pipe, prompts: list[str], indices: list[int], cfg: GenerateConfig, sampling: SamplingSettings,
                  judge, plain: list[Path] | None = None) -> list[tuple[np.ndarray, int, dict]]:
    """(image, seed, extra row fields) per (prompt, index): the plain sample, or the judge's best of N
    (candidate 0 read from `plain` PNGs when given, the others sampled)."""
    from rewardiff.io_utils import load_image

    n = cfg.best_of
    seeds = [image_seed(cfg.seed, p, k, j) for p, k in zip(prompts, indices) for j in range(n)]
    flat_prompts = [p for p in prompts for _ in range(n)]
    todo = [s for s in range(len(seeds)) if plain is None or s % n]
    sampled = np.concatenate([sample_images(pipe, [flat_prompts[s] for s in todo[c:c + cfg.batch_size]],
                                            [seeds[s] for s in todo[c:c + cfg.batch_size]], sampling)
                              for c in range(0, len(todo), cfg.batch_size)])
    if plain is None:
        images = sampled
    else:
        images = np.empty((len(seeds), *sampled.shape[1:]), dtype=sampled.dtype)
        images[todo] = sampled
        images[0::n] = np.stack([load_image(path) for path in plain])
    if judge is None:
        return [(img, seed, {}) for img, seed in zip(images, seeds)]
    with torch.no_grad():
        scores = judge(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, flat_prompts).scores.float().cpu().view(len(prompts), n)
    if not bool(torch.isfinite(scores).all()):
        raise RewardiffError(f"best-of-{n}: the judge {cfg.judge} returned NaN or inf")
    best = scores.argmax(dim=1).tolist()  # first maximum: ties go to the lower candidate
    picks = [(images[b * n + j], seeds[b * n + j], {"candidate": j, "judge_score": float(scores[b, j]), "best_of": n})
             for b, j in enumerate(best)]
    if cfg.keep_worst:
        for b, j in enumerate(scores.argmin(dim=1).tolist()):
            picks[b][2].update(rejected=images[b * n + j], rejected_candidate=j, rejected_seed=seeds[b * n + j],
                               rejected_score=float(scores[b, j]))
    return picks


def load_metadata(path: str | Path) -> tuple[list[dict], Path]:
    """Rows of a metadata.jsonl and the folder their image paths are relative to."""
    path = Path(path)
    if path.is_dir():
        path = path / METADATA
    if not path.is_file():
        raise RewardiffError(f"metadata file not found: {path}")
    from rewardiff.run_folder import folder_busy

    writer = folder_busy(path.parent)
    if writer is not None:  # its images and rows are still being written: a count now would be wrong
        raise RewardiffError(f"{path.parent} is being written by {writer}; wait for it to finish")
    rows = list(read_jsonl(path))
    for n, row in enumerate(rows, 1):
        if "prompt" not in row or "image" not in row:
            raise RewardiffError(f"{path}: row {n} lacks 'prompt' or 'image'")
    if not rows:
        raise RewardiffError(f"{path}: no rows")
    return rows, path.parent
