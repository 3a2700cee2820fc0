"""`rewardiff demo`: the main job on the embedded world.

Loads the shipped shapes generator, generates for the held-out prompt set (4 fixed seeds per
prompt), judges with the oracle, prints the per-category table and writes images + a grid PNG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rewardiff.generation import GenerateConfig, SamplingSettings, load_metadata, run_generation


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # demo run directory
    model: str = "shapes"
    num_images: int = 4  # fixed seeds per held-out prompt
    seed: int = 0
    batch_size: int = 64
    sampling: SamplingSettings = field(default_factory=SamplingSettings)


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    from rewardiff.config import save_config
    from rewardiff.eval.grid import make_grid
    from rewardiff.eval.oracle_eval import evaluate_with_oracle

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    gen = GenerateConfig(model=cfg.model, prompts="shapes:heldout", num_images=cfg.num_images, seed=cfg.seed,
                         batch_size=cfg.batch_size, out=str(out / "base"), sampling=cfg.sampling)
    print(f"[1/2] generating {cfg.num_images} images per held-out prompt with model {cfg.model!r} -> {gen.out}")
    meta = run_generation(gen, progress=progress)
    print("[2/2] judging with the oracle (evaluation only)")
    rep, eval_dir = evaluate_with_oracle(meta)
    rows, root = load_metadata(meta)
    grid = make_grid(rows, root, out / "grid.png")
    print()
    print(f"Base generator on held-out prompts ({len(rows)} images):")
    print(rep.markdown())
    print()
    print(f"images: {root / 'images'}   grid: {grid}   table: {eval_dir / 'oracle_eval.md'}")
    return rep.to_dict()
