"""`rewardiff demo`: the main job on the embedded world.

1. Loads the shipped shapes generator, generates for the held-out prompt set (4 fixed seeds per
   prompt), judges with the oracle, prints the per-category table and writes images + a grid PNG.
2. Runs one short self-rewarding (CCSR) round on training prompts with the learned judges only
   (prompts -> candidates -> captioner + detector judging -> best candidate -> LoRA SFT).
3. Evaluates the tuned model on the same held-out prompts and seeds: the before/after table
   (oracle, evaluation only) and the CLIP-score win rate against the base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rewardiff.generation import GenerateConfig, SamplingSettings, load_metadata, run_generation
from rewardiff.loop.self_reward import SelfRewardConfig


def _demo_self_reward() -> SelfRewardConfig:
    """One short round, sized for a 2-core CPU (configs/self_reward_shapes.yaml is the full run)."""
    from rewardiff.shapes.judges.detector import CLASS_NAMES

    cfg = SelfRewardConfig(rounds=1, prompts_per_round=32, candidates=6)
    cfg.judge.vocabulary = list(CLASS_NAMES)
    cfg.judge.weights = {"caption": 1.0, "detection": 1.0, "count": 1.0, "relation": 1.0, "clip": 0.0, "clip_margin": 0.0}
    cfg.judge.thresholds = {"count": 1.0, "relation": 1.0}
    cfg.train.steps, cfg.train.batch_size, cfg.train.lr = 150, 32, 1e-4
    cfg.eval.scales, cfg.eval.round_scales = [1.0], []
    return cfg


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # demo run directory
    model: str = "shapes"
    num_images: int = 4  # fixed seeds per held-out prompt
    seed: int = 0
    batch_size: int = 64
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    self_reward_round: bool = True  # run step 2-3 (one self-rewarding round + evaluation)
    self_reward: SelfRewardConfig = field(default_factory=_demo_self_reward)  # out/model/sampling/eval set are the demo's


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    from rewardiff.config import save_config
    from rewardiff.eval.grid import make_grid
    from rewardiff.eval.oracle_eval import evaluate_with_oracle

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    steps = 4 if cfg.self_reward_round else 2
    gen = GenerateConfig(model=cfg.model, prompts="shapes:heldout", num_images=cfg.num_images, seed=cfg.seed,
                         batch_size=cfg.batch_size, out=str(out / "base"), sampling=cfg.sampling)
    print(f"[1/{steps}] generating {cfg.num_images} images per held-out prompt with model {cfg.model!r} -> {gen.out}")
    meta = run_generation(gen, progress=progress)
    print(f"[2/{steps}] judging with the oracle (evaluation only)")
    rep, eval_dir = evaluate_with_oracle(meta)
    rows, root = load_metadata(meta)
    grid = make_grid(rows, root, out / "grid.png")
    print()
    print(f"Base generator on held-out prompts ({len(rows)} images):")
    print(rep.markdown())
    print()
    print(f"images: {root / 'images'}   grid: {grid}   table: {eval_dir / 'oracle_eval.md'}")
    result = {"base": rep.to_dict()}
    if cfg.self_reward_round:
        result["self_reward"] = _self_reward_round(cfg, out, progress)
    return result


def _self_reward_round(cfg: DemoConfig, out: Path, progress: bool) -> dict:
    from dataclasses import replace

    from rewardiff.eval.grid import make_grid
    from rewardiff.loop.self_reward import run_self_reward

    sr = cfg.self_reward
    sr = replace(sr, out=str(out / "self_reward"), model=cfg.model, sampling=cfg.sampling, batch_size=cfg.batch_size,
                 eval=replace(sr.eval, prompts="shapes:heldout", num_images=cfg.num_images, seed=cfg.seed, base_dir=str(out / "base"), oracle=True))
    print()
    print(f"[3/4] one self-rewarding round: {sr.prompts_per_round} prompts naming {', '.join(sr.classes)} x {sr.candidates} candidates, "
          f"judged by the learned captioner + detector, best per prompt -> LoRA ({sr.train.loss}, {sr.train.steps} steps)")
    summary = run_self_reward(sr, progress=progress)
    base = summary["base"]
    scale, tuned = next(iter(summary["rounds"][-1]["eval"].items()))
    print(f"[4/4] the tuned model (LoRA scale {scale}) on the same held-out prompts and seeds")
    rows, root = load_metadata(tuned["metadata"])
    make_grid(rows, root, out / "grid_tuned.png")
    print()
    print(before_after_markdown(base["oracle"], tuned["oracle"]))
    wr = tuned.get("winrate")
    if wr:
        print()
        print(f"CLIP-score win rate of tuned vs base: {wr['win_rate']:.3f} of non-tied pairs, 95% CI [{wr['ci_low']:.3f}, {wr['ci_high']:.3f}] "
              f"(wins {wr['wins']}, ties {wr['ties']}, losses {wr['losses']}; tie if |d| <= 0.01)")
    print(f"\nrun: {sr.out}   summary: {Path(sr.out) / 'summary.md'}   grid: {out / 'grid_tuned.png'}")
    return {"tuned": tuned["oracle"], "winrate": wr}


def before_after_markdown(base: dict, tuned: dict) -> str:
    """Per-category pass rates of two oracle reports side by side."""
    lines = ["| category | base | tuned | change |", "| --- | ---: | ---: | ---: |"]
    for cat, b in base["categories"].items():
        t = tuned["categories"].get(cat)
        if b["rate"] is None or t is None or t["rate"] is None:
            continue
        lines.append(f"| {cat} | {b['rate']:.3f} | {t['rate']:.3f} | {t['rate'] - b['rate']:+.3f} |")
    lines.append(f"| **overall** | **{base['overall']:.3f}** | **{tuned['overall']:.3f}** | **{tuned['overall'] - base['overall']:+.3f}** |")
    return "\n".join(lines)
