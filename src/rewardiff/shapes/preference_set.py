"""The shapes world's synthetic preference set, in the ImageRewardDB layout.

Built once, deterministically: training prompts of every category, k in [4, 9] images per prompt
from the shipped base generator (through `rewardiff generate`'s resumable code, one run per k),
ranked by the simulated noisy rater of `rewardiff.shapes.labeller` (never the oracle). A second,
independent rater ranks the same images only to measure rater agreement, which is reported beside
the set (`labeller_report.json`). The reward model only ever reads `index.jsonl` and the images.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rewardiff.data.preference import MAX_IMAGES, MIN_IMAGES, write_preference_index
from rewardiff.errors import RewardiffError
from rewardiff.generation import GenerateConfig, SamplingSettings, load_metadata, run_generation
from rewardiff.io_utils import atomic_write_text, load_image, write_json
from rewardiff.shapes.labeller import LabellerConfig, NoisyLabeller, rater_agreement
from rewardiff.shapes.prompts import CATEGORIES, split_prompts

REPORT = "labeller_report.json"


@dataclass
class ShapesPreferenceConfig:
    out: str = "runs/shapes-preference"  # dataset folder (index.jsonl + gen/k*/images)
    model: str = "shapes"  # generator whose images are ranked
    prompts_per_category: dict[str, int] = field(default_factory=lambda: {"single": 10, "pair": 168, "counting": 36, "position": 300})  # training prompts drawn per category (capped at what exists)
    min_images: int = MIN_IMAGES  # k is drawn uniformly in [min_images, max_images] per prompt
    max_images: int = MAX_IMAGES
    seed: int = 1000  # prompt/k draw; image j of a prompt uses seed + j (disjoint from eval seeds 0-3)
    validation_fraction: float = 0.2  # share of prompts (by hash of the text) in the validation split
    test_fraction: float = 0.2  # share of prompts in the test split
    batch_size: int = 64  # images per pipeline call
    device: str = "cpu"
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(steps=12))  # 12 DDIM steps: cheap, same model, a wider spread of quality
    labeller: LabellerConfig = field(default_factory=LabellerConfig)


def _split_of(prompt: str, cfg: ShapesPreferenceConfig) -> str:
    u = int(hashlib.sha256(f"pref-split:{prompt}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if u < cfg.test_fraction:
        return "test"
    return "validation" if u < cfg.test_fraction + cfg.validation_fraction else "train"


def choose_prompts(cfg: ShapesPreferenceConfig) -> list[tuple[str, int]]:
    """(prompt, k) pairs: a seeded draw of training prompts per category, k uniform in [min, max]."""
    if not MIN_IMAGES <= cfg.min_images <= cfg.max_images <= MAX_IMAGES:
        raise RewardiffError(f"k range [{cfg.min_images}, {cfg.max_images}] must lie inside [{MIN_IMAGES}, {MAX_IMAGES}]")
    unknown = set(cfg.prompts_per_category) - set(CATEGORIES)
    if unknown:
        raise RewardiffError(f"prompts_per_category: unknown categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
    chosen = []
    for category in CATEGORIES:
        train, _ = split_prompts(category)
        rng = random.Random(f"{cfg.seed}:{category}")
        order = rng.sample(train, len(train))  # asking for more prompts extends the same draw
        for prompt in order[: cfg.prompts_per_category.get(category, 0)]:
            chosen.append((prompt, rng.randint(cfg.min_images, cfg.max_images)))
    return chosen


def build_shapes_preference_set(cfg: ShapesPreferenceConfig, pipe=None, progress: bool = True) -> Path:
    """Generate, rank and index the set; resumes a killed build (generation is resumable per k)."""
    from rewardiff.run_folder import claim_run_folder, settings_of

    with claim_run_folder(cfg.out, "shapes make-preference-set", settings_of(cfg, RESUME_FREE), config=cfg) as folder:
        return _build_in(folder, cfg, pipe, progress)


RESUME_FREE = ("out", "device", "batch_size")
"""Fields a resumed build may change (they do not change the images or the ranking)."""


def _build_in(folder, cfg: ShapesPreferenceConfig, pipe, progress: bool) -> Path:
    """build_shapes_preference_set's work, in the claimed folder."""
    from tqdm.auto import tqdm

    out = folder.path
    chosen = choose_prompts(cfg)
    by_k: dict[int, list[str]] = {}
    for prompt, k in chosen:
        by_k.setdefault(k, []).append(prompt)

    if pipe is None:
        from rewardiff.models.pipeline import load_pipeline

        pipe, _ = load_pipeline(cfg.model, device=cfg.device)
    folder.commit()
    images_of: dict[str, list[str]] = {}
    for k, prompts in sorted(by_k.items()):
        gen_dir = out / "gen" / f"k{k}"
        gen_dir.mkdir(parents=True, exist_ok=True)
        prompt_file = atomic_write_text(gen_dir / "prompts.txt", "\n".join(prompts) + "\n")
        gen = GenerateConfig(model=cfg.model, prompts=str(prompt_file), num_images=k, seed=cfg.seed,
                             batch_size=cfg.batch_size, out=str(gen_dir), device=cfg.device, sampling=cfg.sampling)
        if progress:
            print(f"generating {len(prompts)} prompts x {k} images -> {gen_dir}")
        rows, root = load_metadata(run_generation(gen, pipe=pipe, progress=progress))
        for row in sorted(rows, key=lambda r: (r["prompt_index"], r["index"])):
            images_of.setdefault(row["prompt"], []).append(str((root / row["image"]).relative_to(out)))

    rater = NoisyLabeller(cfg.labeller)
    second = NoisyLabeller(LabellerConfig(**{**asdict(cfg.labeller), "seed": cfg.labeller.seed + 1}))
    index_rows, ranks_a, ranks_b = [], [], []
    for n, (prompt, k) in enumerate(tqdm(chosen, desc="label", disable=not progress)):
        paths = images_of[prompt]
        if len(paths) != k:
            raise RewardiffError(f"prompt {prompt!r}: expected {k} generated images, found {len(paths)}")
        utilities = rater.utilities([load_image(out / p) for p in paths], prompt)
        ranking = rater.rank([], prompt, utilities=utilities)
        ranks_a.append(ranking)
        ranks_b.append(second.rank([], prompt, utilities=utilities))
        index_rows.append({"prompt_id": f"shapes-{n:05d}", "prompt": prompt, "images": paths, "ranking": ranking,
                           "split": _split_of(prompt, cfg)})
    index = write_preference_index(out, index_rows)
    pairs = sum(1 for r in ranks_a for i in range(len(r)) for j in range(len(r)) if r[i] < r[j])
    ties = sum(1 for r in ranks_a for i in range(len(r)) for j in range(i + 1, len(r)) if r[i] == r[j])
    write_json(out / REPORT, {
        "prompts": len(index_rows),
        "images": sum(len(r["images"]) for r in index_rows),
        "pairs": pairs,
        "tied_pairs": ties,
        "splits": {s: sum(1 for r in index_rows if r["split"] == s) for s in ("train", "validation", "test")},
        "rater_agreement": rater_agreement(ranks_a, ranks_b),
        "labeller": asdict(cfg.labeller),
    })
    return index
