"""`rewardiff demo`: the main job on the embedded world (about 9 minutes on 2 CPU cores).

1. Loads the shipped shapes generator and generates the evaluation protocol's held-out set
   (`shapes:eval`: every held-out prompt, >= 320 images per category, one seed per (prompt,
   image)); judges it with the oracle and prints the per-category table.
2. Best-of-2 at inference (`best_of`; the CCSR selection used at generation time, AI feedback
   without training): the base image and one more candidate per (prompt, image), the judges
   (captioner + detector) keep the one they score higher; paired per-category changes with 95% CIs,
   of the oracle and of the judge's own score (the hacking check). The base images are candidate 0,
   so this costs one more sample per image.
3. Optional (`best_lora`): a LoRA evaluated the same way (no fine-tuned LoRA beats the base on
   held-out prompts yet; see the README).
4. Optional (`self_reward_round: true`, about 6 more minutes): one short self-rewarding (CCSR)
   round on training prompts with the learned judges only, evaluated the same way.
The oracle only evaluates; nothing it says reaches a judge, a selection or a training step.
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
    prompts: str = "shapes:eval"  # evaluation set (the protocol)
    num_images: int = 4  # images per prompt for prompt sources other than the protocol sets
    seed: int = 0
    batch_size: int = 64
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(steps=10))
    best_of: int = 2  # > 1: also best-of-N at inference, judged by `judge` ((N-1) x the base sampling time; 1 = skip)
    judge: str = "judge@shapes"  # the self-judge's score (captioner + detector), never the oracle
    best_lora: str = ""  # a LoRA file evaluated against the base ('' to skip)
    self_reward_round: bool = False  # also run one short self-rewarding round + its evaluation (about 6 minutes)
    self_reward: SelfRewardConfig = field(default_factory=_demo_self_reward)  # out/model/sampling/eval set are the demo's


def _generate(cfg: DemoConfig, out: Path, loras: list[str], progress: bool, best_of: int = 1) -> Path:
    plain = str(out.parent / "base") if best_of > 1 and not loras else ""  # the base images are candidate 0: N-1 new samples per image
    gen = GenerateConfig(model=cfg.model, prompts=cfg.prompts, num_images=cfg.num_images, seed=cfg.seed, batch_size=cfg.batch_size,
                         out=str(out), loras=loras, sampling=cfg.sampling, best_of=best_of, judge=cfg.judge, plain=plain)
    return run_generation(gen, progress=progress)


DEMO_FREE = ("out", "best_of", "judge", "best_lora", "self_reward_round")
"""Fields a rerun may change: they add or skip parts written in their own (guarded) subfolders."""


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    from rewardiff.run_folder import claim_run_folder, settings_of

    with claim_run_folder(cfg.out, "demo", settings_of(cfg, DEMO_FREE), config=cfg) as folder:
        folder.commit()
        return _demo_in(folder.path, cfg, progress)


def _demo_in(out: Path, cfg: DemoConfig, progress: bool) -> dict:
    """run_demo's steps, in the claimed run folder."""
    from rewardiff.eval.compare import compare_runs
    from rewardiff.eval.grid import make_grid
    from rewardiff.eval.oracle_eval import evaluate_with_oracle

    steps = 1 + (cfg.best_of > 1) + bool(cfg.best_lora) + bool(cfg.self_reward_round)
    print(f"[1/{steps}] base generator on {cfg.prompts} ({cfg.sampling.steps} DDIM steps), judged by the oracle (evaluation only)")
    meta = _generate(cfg, out / "base", [], progress)
    rep, eval_dir = evaluate_with_oracle(meta)
    rows, root = load_metadata(meta)
    grid = make_grid(rows, root, out / "grid.png")
    print(f"\nBase generator on held-out prompts ({len(rows)} images):")
    print(rep.markdown())
    print(f"\nimages: {root / 'images'}   grid: {grid}   table: {eval_dir / 'oracle_eval.md'}")
    result: dict = {"base": rep.to_dict()}
    n = 1
    variants = []
    if cfg.best_of > 1:
        variants.append(("best_of", f"best-of-{cfg.best_of} at inference: {cfg.best_of} candidates per image, {cfg.judge} keeps the best", [], cfg.best_of))
    if cfg.best_lora:
        variants.append(("best_lora", f"the LoRA {cfg.best_lora} (trained from the judges' picks only; the oracle never selected)", [cfg.best_lora], 1))
    for key, title, loras, best_of in variants:
        n += 1
        print(f"\n[{n}/{steps}] {title}, on the same prompts and seeds")
        variant_meta = _generate(cfg, out / key, loras, progress, best_of)
        comparisons, cmp_dir = compare_runs(meta, variant_meta, rewards=[cfg.judge], out=out / key / "compare", progress=progress)
        rows, root = load_metadata(variant_meta)
        make_grid(rows, root, out / f"grid_{key}.png")
        print()
        print("\n\n".join(c.markdown() for c in comparisons))
        print(f"\ntable: {cmp_dir / 'compare.md'}   grid: {out / f'grid_{key}.png'}")
        result[key] = [c.to_dict() for c in comparisons]
    if cfg.self_reward_round:
        n += 1
        result["self_reward"] = _self_reward_round(cfg, out, progress, n, steps)
    print()
    for key, label in (("best_of", f"best-of-{cfg.best_of} (AI feedback at inference)"), ("best_lora", f"LoRA {cfg.best_lora}")):
        if key in result:
            o = result[key][0]["overall"]
            print(f"{label} vs base, oracle overall: {o['base']:.3f} -> {o['tuned']:.3f} ({o['change']:+.3f}, 95% CI "
                  f"[{o['ci_low']:+.3f}, {o['ci_high']:+.3f}]: {o['verdict']})")
    if "self_reward" in result:
        o = result["self_reward"]["compare"]["overall"]
        print(f"the short self-rewarding round's LoRA vs base, oracle overall: {o['base']:.3f} -> {o['tuned']:.3f} ({o['change']:+.3f}, "
              f"95% CI [{o['ci_low']:+.3f}, {o['ci_high']:+.3f}]: {o['verdict']})")
    from rewardiff.eval.report import write_report

    written = ["base/ (images, metadata.jsonl, oracle_eval.md)", "grid.png"]
    written += [f"{key}/ (images, compare/), grid_{key}.png" for key in ("best_of", "best_lora") if key in result]
    written += ["self_reward/ (summary.md, the round's LoRA), grid_tuned.png"] if "self_reward" in result else []
    print(f"\nwrote {out}: {', '.join(written)}")
    print(f"report: {write_report([out], out / 'report')}")  # the demo's last line: the page to open
    return result


def _self_reward_round(cfg: DemoConfig, out: Path, progress: bool, n: int, steps: int) -> dict:
    from dataclasses import replace

    from rewardiff.eval.compare import Comparison
    from rewardiff.eval.grid import make_grid
    from rewardiff.loop.self_reward import run_self_reward

    sr = cfg.self_reward
    sr = replace(sr, out=str(out / "self_reward"), model=cfg.model, sampling=cfg.sampling, batch_size=cfg.batch_size,
                 eval=replace(sr.eval, prompts=cfg.prompts, num_images=cfg.num_images, seed=cfg.seed, base_dir=str(out / "base"), oracle=True))
    print(f"\n[{n}/{steps}] one short self-rewarding round: {sr.prompts_per_round} prompts naming {', '.join(sr.classes)} x {sr.candidates} candidates, "
          f"judged by the learned captioner + detector, best per prompt -> LoRA ({sr.train.loss}, {sr.train.steps} steps)")
    summary = run_self_reward(sr, progress=progress)
    scale, tuned = next(iter(summary["rounds"][-1]["eval"].items()))
    rows, root = load_metadata(tuned["metadata"])
    make_grid(rows, root, out / "grid_tuned.png")
    cmp = tuned["compare"]
    table = Comparison.from_dict(cmp)
    print(f"\nThe short round's LoRA (scale {scale}) on the same prompts and seeds:")
    print(table.markdown())
    wr = tuned.get("winrate")
    if wr:
        print(f"\nCLIP-score win rate of tuned vs base (CCSR): {wr['win_rate']:.3f} of non-tied pairs, 95% CI [{wr['ci_low']:.3f}, {wr['ci_high']:.3f}] "
              f"(wins {wr['wins']}, ties {wr['ties']}, losses {wr['losses']}; tie if |d| <= 0.01)")
    print(f"\nrun: {sr.out}   summary: {Path(sr.out) / 'summary.md'}   grid: {out / 'grid_tuned.png'}")
    return {"tuned": tuned["oracle"], "compare": cmp, "winrate": wr}
