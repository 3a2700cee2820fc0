"""The `rewardiff` command: argument parsing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rewardiff.errors import RewardiffError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML preset (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, e.g. --set sampling.steps=50 (repeatable)")


def _load(cls, args: argparse.Namespace, flags: dict[str, object]):
    """Defaults <- --config preset <- explicit flags <- --set overrides."""
    from rewardiff.config import load_config

    return load_config(cls, args.config, list(args.overrides), values=flags)


def _cmd_generate(args: argparse.Namespace) -> int:
    from rewardiff.generation import GenerateConfig, run_generation

    cfg = _load(GenerateConfig, args, {
        "model": args.model, "prompts": args.prompts, "num_images": args.num_images, "seed": args.seed,
        "out": args.out, "batch_size": args.batch_size, "device": args.device, "loras": args.lora or None,
        "sampling.steps": args.steps, "sampling.guidance": args.guidance, "best_of": args.best_of, "judge": args.judge,
    })
    meta = run_generation(cfg)
    print(f"wrote {meta}")
    return 0


def _cmd_eval_oracle(args: argparse.Namespace) -> int:
    from rewardiff.eval.oracle_eval import evaluate_with_oracle

    rep, out = evaluate_with_oracle(args.metadata, args.out)
    print(rep.markdown())
    print(f"\nwrote {out / 'oracle_eval.json'} and {out / 'oracle_eval.md'}")
    return 0


def _cmd_eval_preference(args: argparse.Namespace) -> int:
    from rewardiff.eval.preference_accuracy import RESULT_JSON, RESULT_MD, evaluate_preference

    table, out = evaluate_preference(args.data, args.reward, split=args.split, device=args.device,
                                     batch_size=args.batch_size, out=args.out, min_images=args.min_images,
                                     max_images=args.max_images)
    print(table.markdown())
    print(f"\nwrote {out / RESULT_JSON} and {out / RESULT_MD}")
    return 0


def _cmd_train_reward(args: argparse.Namespace) -> int:
    from rewardiff.algorithms.reward_model import RewardModelConfig, train_reward_model

    cfg = _load(RewardModelConfig, args, {"data": args.data, "out": args.out, "seed": args.seed, "device": args.device})
    result = train_reward_model(cfg)
    test = f", test accuracy {100 * result.test_accuracy:.2f}%" if result.test_accuracy is not None else ""
    print(f"best epoch {result.best_epoch}: validation accuracy {100 * result.best_val_accuracy:.2f}%{test}")
    print(f"reward model written to {result.run / 'best'} (use it as --reward preference@{result.run})")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from rewardiff.rewards.scoring import score_metadata

    out = score_metadata(args.metadata, args.reward, device=args.device, batch_size=args.batch_size, out=args.out)
    print(f"wrote {out} and {out.parent / 'scores_summary.json'}")
    return 0


def _cmd_train_refl(args: argparse.Namespace) -> int:
    from rewardiff.algorithms.refl import ReFLConfig, train_refl
    from rewardiff.runtime import process_device
    from rewardiff.generation import check_prompts_for_model, read_prompts
    from rewardiff.models.pipeline import load_pipeline
    from rewardiff.rewards.registry import build_rewards

    cfg = _load(ReFLConfig, args, {"out": args.out, "reward": args.reward or None, "seed": args.seed, "device": args.device})
    check_prompts_for_model(read_prompts(cfg.prompts), cfg.model)  # before loading anything
    device = process_device(cfg.device)  # this process's GPU under accelerate launch
    pipe, _ = load_pipeline(cfg.model, device=device)
    path = train_refl(cfg, pipe, build_rewards(cfg.reward, device=device))
    print(f"LoRA written to {path}")
    return 0


def _cmd_train_ddpo(args: argparse.Namespace) -> int:
    from rewardiff.algorithms.ddpo import DDPOConfig, train_ddpo, validate
    from rewardiff.runtime import process_device
    from rewardiff.generation import check_prompts_for_model, read_prompts
    from rewardiff.models.pipeline import load_pipeline, resolve_dtype
    from rewardiff.rewards.registry import build_rewards

    cfg = _load(DDPOConfig, args, {"out": args.out, "target": args.target, "reward": args.reward or None,
                                   "seed": args.seed, "device": args.device})
    validate(cfg)  # before loading anything (train_ddpo checks again)
    check_prompts_for_model(read_prompts(cfg.prompts), cfg.model)
    device = process_device(cfg.device)  # this process's GPU under accelerate launch
    pipe, _ = load_pipeline(cfg.model, device=device, dtype=resolve_dtype(cfg.dtype, cfg.device))
    result = train_ddpo(cfg, pipe, build_rewards(cfg.reward, device=device))
    print(f"LoRA written to {result.lora} ({result.cpu_minutes:.1f} CPU-minutes)")
    return 0


def _cmd_fuse(args: argparse.Namespace) -> int:
    from rewardiff.models.lora import fuse_loras, parse_lora_spec

    out = fuse_loras([parse_lora_spec(s) for s in args.loras], args.out)
    print(f"wrote {out}")
    return 0


def _cmd_self_reward(args: argparse.Namespace) -> int:
    from rewardiff.loop.self_reward import SelfRewardConfig, run_self_reward, summary_markdown

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    cfg = _load(SelfRewardConfig, args, {"out": args.out, "rounds": args.rounds, "classes": classes, "model": args.model})
    summary = run_self_reward(cfg)
    print(summary_markdown(summary))
    return 0


def _cmd_eval_winrate(args: argparse.Namespace) -> int:
    from rewardiff.eval.winrate import RESULT_JSON, RESULT_MD, evaluate_winrate

    result, out = evaluate_winrate(args.base, args.tuned, args.reward, out=args.out, device=args.device)
    print(result.markdown())
    print(f"\nwrote {out / RESULT_JSON} and {out / RESULT_MD}")
    return 0


def _cmd_eval_compare(args: argparse.Namespace) -> int:
    from rewardiff.eval.compare import RESULT_JSON, RESULT_MD, compare_runs

    results, out = compare_runs(args.base, args.tuned, rewards=args.reward or [], out=args.out, device=args.device)
    print("\n\n".join(r.markdown() for r in results))
    print(f"\nwrote {out / RESULT_JSON} and {out / RESULT_MD}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from rewardiff.demo import DemoConfig, run_demo

    cfg = _load(DemoConfig, args, {"out": args.out, "model": args.model})
    run_demo(cfg)
    return 0


def _cmd_train_generator(args: argparse.Namespace) -> int:
    from rewardiff.shapes.train_generator import TrainGeneratorConfig, train_generator

    cfg = _load(TrainGeneratorConfig, args, {"out": args.out, "seed": args.seed})
    path = train_generator(cfg)
    print(f"pipeline written to {path}")
    return 0


def _cmd_export_generator(args: argparse.Namespace) -> int:
    from rewardiff.shapes.train_generator import export_pipeline

    print(f"pipeline written to {export_pipeline(Path(args.run), Path(args.dest))}")
    return 0


def _cmd_train_judges(args: argparse.Namespace) -> int:
    from rewardiff.shapes.judges.train import TrainJudgesConfig, train_judges

    cfg = _load(TrainJudgesConfig, args, {"out": args.out, "seed": args.seed})
    for name, path in train_judges(cfg, only=args.only).items():
        print(f"{name} judge written to {path}")
    return 0


def _cmd_eval_judges(args: argparse.Namespace) -> int:
    from rewardiff.eval.judges_eval import evaluate_judges, markdown

    result, out = evaluate_judges(args.judges, args.out, generated=args.generated, per_prompt=args.per_prompt)
    print(markdown(result["rendered_heldout"], result["oracle_agreement"]))
    print(f"\nwrote {out / 'judges_eval.json'} and {out / 'judges_eval.md'}")
    return 0


def _cmd_make_preference_set(args: argparse.Namespace) -> int:
    from rewardiff.shapes.preference_set import REPORT, ShapesPreferenceConfig, build_shapes_preference_set

    cfg = _load(ShapesPreferenceConfig, args, {"out": args.out, "device": args.device})
    index = build_shapes_preference_set(cfg)
    print(f"wrote {index} and {index.parent / REPORT}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from rewardiff.shapes.dataset import render_dataset

    meta = render_dataset(args.prompts, args.num_images, args.seed, Path(args.out))
    print(f"wrote {meta}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardiff", description="Improve text-to-image diffusion models with AI feedback.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job: evaluate the shipped shapes generator on held-out prompts")
    p.add_argument("--out", help="run directory (default runs/demo)")
    p.add_argument("--model", help="generator (default: shapes)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("generate", help="generate images for prompts; writes PNGs + metadata.jsonl (resumable)")
    p.add_argument("--model", help="'shapes', a local pipeline folder, or a hub id (e.g. runwayml/stable-diffusion-v1-5)")
    p.add_argument("--prompts", help="prompts file (.txt/.jsonl), 'shapes:eval' (the evaluation protocol: every held-out prompt, "
                   ">= 320 images per category), 'shapes:train-eval' (the same on training prompts), 'shapes:heldout', 'shapes:train', or a prompt")
    p.add_argument("--num-images", type=int, help="images per prompt (default 4)")
    p.add_argument("--seed", type=int, help="base seed; image k of prompt p uses a seed derived from (seed, p, k) (default 0)")
    p.add_argument("--steps", type=int, help="denoising steps (default 30)")
    p.add_argument("--best-of", type=int, metavar="N", help="sample N candidates per image, keep the one --judge scores highest (default 1)")
    p.add_argument("--judge", metavar="SPEC", help="reward spec that picks among best-of-N candidates (default judge@shapes)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--lora", action="append", metavar="FILE[:SCALE]", help="LoRA safetensors, repeatable")
    p.add_argument("--batch-size", type=int, help="images per pipeline call")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", help="output directory")
    _add_config_args(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("score", help="score a generated set with one or more rewards (weighted sum in 'total')")
    p.add_argument("metadata", help="metadata.jsonl (or its folder)")
    p.add_argument("--reward", action="append", required=True, metavar="NAME[@MODEL][:WEIGHT]",
                   help="e.g. clip, clip@/models/clip:0.5, jpeg_incompressibility; repeatable")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", help="folder for scores.jsonl (default: beside the metadata)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("train", help="reward fine-tuning of a LoRA (ReFL, DDPO / TexForce)")
    tsub = p.add_subparsers(dest="train_command", required=True)
    # one sibling per algorithm: t = tsub.add_parser(NAME, ...); its flags; _add_config_args(t); t.set_defaults(func=...)
    t = tsub.add_parser("refl", help="ReFL + KL: backprop a differentiable reward through one late step into a U-Net LoRA (resumable)")
    t.add_argument("--reward", action="append", metavar="NAME[@MODEL][:WEIGHT]", help="differentiable reward spec, repeatable (replaces the preset's)")
    t.add_argument("--out", help="run directory (lora.safetensors, checkpoint/, train_log.jsonl)")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="cpu, cuda, ...")
    _add_config_args(t)
    t.set_defaults(func=_cmd_train_refl)
    t = tsub.add_parser("ddpo", help="DDPO / TexForce: PPO on a LoRA of the U-Net, the text encoder or both, any reward (resumable)")
    t.add_argument("--target", choices=["unet", "text_encoder", "both"], help="unet (DDPO), text_encoder (TexForce), both (joint)")
    t.add_argument("--reward", action="append", metavar="NAME[@MODEL][:WEIGHT]", help="reward spec, repeatable (replaces the preset's)")
    t.add_argument("--out", help="run directory (lora.safetensors, checkpoint/, train_log.jsonl, summary.json)")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="cpu, cuda, ...")
    _add_config_args(t)
    t.set_defaults(func=_cmd_train_ddpo)

    p = sub.add_parser("fuse", help="fuse LoRA files by weighted sums into one diffusers LoRA file (no training)")
    p.add_argument("loras", nargs="+", metavar="FILE[:WEIGHT]", help="LoRA safetensors with weights, e.g. refl.safetensors:0.7 texforce.safetensors:1.0")
    p.add_argument("--out", required=True, help="fused .safetensors file")
    p.set_defaults(func=_cmd_fuse)

    p = sub.add_parser("eval", help="evaluate a generated set")
    esub = p.add_subparsers(dest="eval_command", required=True)
    e = esub.add_parser("oracle", help="shapes world: per-category pass rates by the exact oracle")
    e.add_argument("metadata", help="metadata.jsonl (or its folder)")
    e.add_argument("--out", help="where to write oracle_eval.{json,md} (default: beside the metadata)")
    e.set_defaults(func=_cmd_eval_oracle)
    e = esub.add_parser("winrate", help="tuned vs base win rate by CLIP score per (prompt, seed), tie if |d| <= 0.01 (CCSR Fig. 3)")
    e.add_argument("--base", required=True, help="base model's metadata.jsonl (or folder)")
    e.add_argument("--tuned", required=True, help="tuned model's metadata.jsonl (same prompts and seeds)")
    e.add_argument("--reward", help="reward spec (default clip@shapes for shapes images, else clip)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", help="where to write winrate.{json,md} (default TUNED_DIR/winrate)")
    e.set_defaults(func=_cmd_eval_winrate)
    e = esub.add_parser("compare", help="paired per-category changes (oracle and rewards) with 95%% bootstrap CIs over prompts and images")
    e.add_argument("--base", required=True, help="base model's metadata.jsonl (or folder)")
    e.add_argument("--tuned", required=True, help="tuned model's metadata.jsonl (same prompts, image counts and seeds)")
    e.add_argument("--reward", action="append", metavar="SPEC", help="also compare by this reward (repeatable), e.g. judge@shapes")
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", help="where to write compare.{json,md} (default TUNED_DIR/compare)")
    e.set_defaults(func=_cmd_eval_compare)
    e = esub.add_parser("preference", help="preference accuracy of rewards on a ranked set (the report's Table 1)")
    e.add_argument("--data", required=True, help="preference dataset folder (index.jsonl + images)")
    e.add_argument("--reward", action="append", required=True, metavar="NAME[@MODEL]",
                   help="e.g. clip, aesthetic, preference@runs/reward-model; repeatable (one table row each)")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"])
    e.add_argument("--device", default="cpu")
    e.add_argument("--batch-size", type=int, default=16, help="images per reward call")
    e.add_argument("--out", help="where to write preference_accuracy.{json,md} (default DATA/eval-preference-SPLIT)")
    e.add_argument("--min-images", type=int, help="fewest images per prompt accepted (default 4, as ImageRewardDB)")
    e.add_argument("--max-images", type=int, help="most images per prompt accepted (default 9)")
    e.set_defaults(func=_cmd_eval_preference)

    p = sub.add_parser("self-reward", help="the CCSR loop in rounds: write prompts -> candidates -> judge -> select -> LoRA (resumable)")
    p.add_argument("--classes", help="comma-separated classes the prompts must name (e.g. circle,triangle)")
    p.add_argument("--rounds", type=int, help="number of rounds")
    p.add_argument("--model", help="generator: 'shapes', a pipeline folder or a hub id")
    p.add_argument("--out", help="run directory (default runs/self-reward)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_self_reward)

    p = sub.add_parser("train-reward", help="train the preference reward model (CLIP embeddings + MLP, Bradley-Terry; resumable)")
    p.add_argument("--data", help="preference dataset folder (index.jsonl + images)")
    p.add_argument("--out", help="run directory (default runs/reward-model)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, ...")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train_reward)

    p = sub.add_parser("shapes", help="the embedded shapes world")
    ssub = p.add_subparsers(dest="shapes_command", required=True)
    s = ssub.add_parser("train-generator", help="train the tiny generator on rendered images, from scratch or --set unet.init_from=DIR (resumable)")
    s.add_argument("--out", help="run directory (default runs/shapes-generator)")
    s.add_argument("--seed", type=int)
    _add_config_args(s)
    s.set_defaults(func=_cmd_train_generator)
    s = ssub.add_parser("export-generator", help="write a training run's EMA weights as a pipeline folder")
    s.add_argument("run", help="training run directory")
    s.add_argument("dest", help="destination pipeline folder")
    s.set_defaults(func=_cmd_export_generator)
    s = ssub.add_parser("train-judges", help="train the judges (CLIP-like, detector, captioner) on rendered images (resumable)")
    s.add_argument("--only", choices=["clip", "detector", "captioner"], help="train one judge only")
    s.add_argument("--out", help="run directory (default runs/shapes-judges)")
    s.add_argument("--seed", type=int)
    _add_config_args(s)
    s.set_defaults(func=_cmd_train_judges)
    s = ssub.add_parser("eval-judges", help="judges' accuracy on held-out rendered images and agreement with the oracle")
    s.add_argument("--judges", help="judges folder (<judge>/ or a train-judges run; default: the shipped judges)")
    s.add_argument("--generated", metavar="METADATA", help="generated set (metadata.jsonl or folder) to compare with the oracle")
    s.add_argument("--per-prompt", type=int, default=4, help="rendered images per held-out prompt")
    s.add_argument("--out", required=True, help="where to write judges_eval.{json,md}")
    s.set_defaults(func=_cmd_eval_judges)
    s = ssub.add_parser("make-preference-set", help="base-generator images ranked by a simulated noisy rater (ImageRewardDB layout; resumable)")
    s.add_argument("--out", help="dataset folder (default runs/shapes-preference)")
    s.add_argument("--device", help="cpu, cuda, ...")
    _add_config_args(s)
    s.set_defaults(func=_cmd_make_preference_set)
    s = ssub.add_parser("render", help="render ground-truth images for prompts (metadata.jsonl layout)")
    s.add_argument("--prompts", default="shapes:heldout")
    s.add_argument("--num-images", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_render)
    return parser


def os_error_line(e: OSError) -> str:
    """One line for a failed file operation: 'cannot write PATH: reason' (the path the command
    could not create or write), 'PATH: reason' for a missing file, else the reason alone."""
    name = e.filename2 if e.filename2 is not None else e.filename
    if name is None:
        return str(e.strerror or e)
    path = os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name)
    reason = e.strerror or str(e)
    if isinstance(e, FileNotFoundError):
        return f"{path}: {reason}"
    return f"cannot write {path}: {reason}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RewardiffError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable --out, a full disk, ...: one line, not a traceback
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
