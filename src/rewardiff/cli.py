"""The `rewardiff` command: argument parsing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
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
        "sampling.steps": args.steps, "sampling.guidance": args.guidance,
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


def _cmd_score(args: argparse.Namespace) -> int:
    from rewardiff.rewards.scoring import score_metadata

    out = score_metadata(args.metadata, args.reward, device=args.device, batch_size=args.batch_size, out=args.out)
    print(f"wrote {out} and {out.parent / 'scores_summary.json'}")
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
    p.add_argument("--prompts", help="prompts file (.txt/.jsonl), 'shapes:heldout', 'shapes:train', or a prompt")
    p.add_argument("--num-images", type=int, help="images per prompt (default 4)")
    p.add_argument("--seed", type=int, help="image k of each prompt uses seed + k (default 0)")
    p.add_argument("--steps", type=int, help="denoising steps (default 30)")
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

    p = sub.add_parser("eval", help="evaluate a generated set")
    esub = p.add_subparsers(dest="eval_command", required=True)
    e = esub.add_parser("oracle", help="shapes world: per-category pass rates by the exact oracle")
    e.add_argument("metadata", help="metadata.jsonl (or its folder)")
    e.add_argument("--out", help="where to write oracle_eval.{json,md} (default: beside the metadata)")
    e.set_defaults(func=_cmd_eval_oracle)

    p = sub.add_parser("shapes", help="the embedded shapes world")
    ssub = p.add_subparsers(dest="shapes_command", required=True)
    s = ssub.add_parser("train-generator", help="train the tiny generator from scratch on rendered images (resumable)")
    s.add_argument("--out", help="run directory (default runs/shapes-generator)")
    s.add_argument("--seed", type=int)
    _add_config_args(s)
    s.set_defaults(func=_cmd_train_generator)
    s = ssub.add_parser("export-generator", help="write a training run's EMA weights as a pipeline folder")
    s.add_argument("run", help="training run directory")
    s.add_argument("dest", help="destination pipeline folder")
    s.set_defaults(func=_cmd_export_generator)
    s = ssub.add_parser("render", help="render ground-truth images for prompts (metadata.jsonl layout)")
    s.add_argument("--prompts", default="shapes:heldout")
    s.add_argument("--num-images", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RewardiffError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
