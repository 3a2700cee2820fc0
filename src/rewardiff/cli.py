"""The `rewardiff` command: argument parsing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rewardiff.cli_help import mark_config_flags, use_help_formatter
from rewardiff.errors import RewardiffError
from rewardiff.models.lora_formats import LORA_FORMATS

LORA_FORMAT_HELP = "key names of the written LoRA: diffusers, or kohya (lora_unet_*/lora_te*_ + .alpha: A1111, ComfyUI, kohya tools)"


def _add_config_args(p: argparse.ArgumentParser, config: str, example: str, keys: dict[str, str] | None = None) -> None:
    """--config/--set for a command whose settings are the dataclass `config` ('module:Class');
    its flags show the dataclass defaults in --help (`keys`: flag dest -> dotted key where they differ)."""
    p.add_argument("--config", help="YAML preset (see configs/); its values replace the defaults shown here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"dotted config override, e.g. {example} (repeatable; any field of the config, as in config.yaml)")
    p.set_defaults(config_class=config)
    mark_config_flags(p, config, keys)


def _add_log_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", metavar="BACKEND", help="also log to BACKEND beside tensorboard: wandb (needs rewardiff[wandb]; "
                   "WANDB_MODE=offline works without an account); sample images every $REWARDIFF_LOG_IMAGES_EVERY steps (default 10)")


def _use_log_backends(args: argparse.Namespace) -> None:
    """--log: checked before anything runs, then handed to every trainer's TrainLog via $REWARDIFF_LOG."""
    if getattr(args, "log", None):
        from rewardiff.train_log import LOG_ENV, check_wandb, log_backends

        if "wandb" in log_backends(args.log):
            check_wandb()
        os.environ[LOG_ENV] = args.log


def _load(cls, args: argparse.Namespace, flags: dict[str, object]):
    """Defaults <- --config preset <- explicit flags <- --set overrides."""
    from rewardiff.config import load_config

    return load_config(cls, args.config, list(args.overrides), values=flags)


def _report_at_end(run: str | Path) -> None:
    """The HTML report of a finished run, RUN/report/index.html; its path is the last line printed
    (by the main process only under `accelerate launch`)."""
    from rewardiff.eval.report import write_report
    from rewardiff.runtime import is_main_process

    if not is_main_process():
        return

    print(f"report: {write_report([Path(run)], Path(run) / 'report', on_note=print)}")


def _cmd_report(args: argparse.Namespace) -> int:
    from rewardiff.eval.report import write_report

    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    print(f"wrote {write_report([Path(r) for r in args.runs], out, on_note=lambda line: print(f'note: {line}'))}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from rewardiff.generation import GenerateConfig, run_generation
    from rewardiff.runtime import is_main_process

    cfg = _load(GenerateConfig, args, {
        "model": args.model, "prompts": args.prompts, "num_images": args.num_images, "seed": args.seed,
        "out": args.out, "batch_size": args.batch_size, "device": args.device, "loras": args.lora or None,
        "sampling.steps": args.steps, "sampling.guidance": args.guidance, "best_of": args.best_of, "judge": args.judge, "keep_worst": args.keep_worst,
        "plain": args.plain,
    })
    meta = run_generation(cfg)
    if is_main_process():
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
    from rewardiff.runtime import is_main_process

    cfg = _load(RewardModelConfig, args, {"data": args.data, "out": args.out, "seed": args.seed, "device": args.device})
    result = train_reward_model(cfg)
    test = f", test accuracy {100 * result.test_accuracy:.2f}%" if result.test_accuracy is not None else ""
    if is_main_process():
        print(f"best epoch {result.best_epoch}: validation accuracy {100 * result.best_val_accuracy:.2f}%{test}")
        print(f"reward model written to {result.run / 'best'} (use it as --reward preference@{result.run})")
    _report_at_end(result.run)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from rewardiff.rewards.scoring import score_metadata
    from rewardiff.runtime import Runtime

    runtime = Runtime(args.device)  # under accelerate launch: each process scores its part of the batches
    out = score_metadata(args.metadata, args.reward, device=args.device, batch_size=args.batch_size, out=args.out, runtime=runtime)
    if runtime.is_main:
        print(f"wrote {out} and {out.parent / 'scores_summary.json'}")
    return 0


def _cmd_train_refl(args: argparse.Namespace) -> int:
    from rewardiff.algorithms.refl import ReFLConfig, train_refl
    from rewardiff.runtime import process_device
    from rewardiff.generation import check_prompts_for_model, read_prompts
    from rewardiff.models.pipeline import load_pipeline
    from rewardiff.rewards.registry import build_rewards

    cfg = _load(ReFLConfig, args, {"out": args.out, "reward": args.reward or None, "seed": args.seed, "device": args.device,
                                   "lora_format": args.lora_format})
    check_prompts_for_model(read_prompts(cfg.prompts), cfg.model)  # before loading anything
    device = process_device(cfg.device)  # this process's GPU under accelerate launch
    pipe, _ = load_pipeline(cfg.model, device=device)
    path = train_refl(cfg, pipe, build_rewards(cfg.reward, device=device))
    print(f"LoRA written to {path} (run: {cfg.out}: checkpoint/, train_log.jsonl, config.yaml)")
    _report_at_end(cfg.out)
    return 0


def _cmd_train_ddpo(args: argparse.Namespace) -> int:
    from rewardiff.algorithms.ddpo import DDPOConfig, train_ddpo, validate
    from rewardiff.runtime import process_device
    from rewardiff.generation import check_prompts_for_model, read_prompts
    from rewardiff.models.pipeline import load_pipeline, resolve_dtype
    from rewardiff.rewards.registry import build_rewards

    cfg = _load(DDPOConfig, args, {"out": args.out, "target": args.target, "reward": args.reward or None,
                                   "seed": args.seed, "device": args.device, "lora_format": args.lora_format})
    validate(cfg)  # before loading anything (train_ddpo checks again)
    check_prompts_for_model(read_prompts(cfg.prompts), cfg.model)
    device = process_device(cfg.device)  # this process's GPU under accelerate launch
    pipe, _ = load_pipeline(cfg.model, device=device, dtype=resolve_dtype(cfg.dtype, cfg.device))
    result = train_ddpo(cfg, pipe, build_rewards(cfg.reward, device=device))
    print(f"LoRA written to {result.lora} ({result.cpu_minutes:.1f} CPU-minutes)")
    _report_at_end(cfg.out)
    return 0


def _cmd_train_sft(args: argparse.Namespace) -> int:
    from rewardiff.loop.distill import DistillConfig, check_distill_config, run_distill
    from rewardiff.models.pipeline import load_pipeline
    from rewardiff.runtime import is_main_process, process_device

    cfg = _load(DistillConfig, args, {"data": args.data or None, "out": args.out, "train.seed": args.seed, "device": args.device,
                                      "train.lora_format": args.lora_format, "init_lora": args.init_lora})
    check_distill_config(cfg)  # before loading anything
    pipe, _ = load_pipeline(cfg.model, device=process_device(cfg.device))  # this process's GPU under accelerate launch
    path = run_distill(cfg, pipe)
    if is_main_process():
        print(f"LoRA written to {path} (run: {cfg.out}: data.json, checkpoint/, train_log.jsonl, config.yaml)")
    _report_at_end(cfg.out)
    return 0


def _cmd_fuse(args: argparse.Namespace) -> int:
    from rewardiff.models.lora import fuse_loras, parse_lora_spec

    out = fuse_loras([parse_lora_spec(s) for s in args.loras], args.out, lora_format=args.lora_format)
    print(f"wrote {out}")
    return 0


def _cmd_self_reward(args: argparse.Namespace) -> int:
    from rewardiff.loop.self_reward import SelfRewardConfig, run_self_reward, summary_markdown
    from rewardiff.runtime import is_main_process

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    cfg = _load(SelfRewardConfig, args, {"out": args.out, "rounds": args.rounds, "classes": classes, "model": args.model,
                                         "train.lora_format": args.lora_format})
    summary = run_self_reward(cfg)
    if is_main_process():  # under accelerate launch: the summary once
        print(summary_markdown(summary))
        run = Path(cfg.out)
        print(f"\nwrote {run / 'summary.md'}, {run / 'summary.json'}, {run / 'plots'}; "
              f"LoRA of the last round: {run / f'round_{cfg.rounds}' / 'train' / 'lora' / 'lora.safetensors'}")
    _report_at_end(cfg.out)
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


def _cmd_data_import(args: argparse.Namespace) -> int:
    from rewardiff.data.importers import import_preferences

    rep = import_preferences(args.format, args.src, args.out, split=args.split, limit=args.limit, images_dir=args.images)
    print(f"wrote {rep.rows} rows ({rep.images} images; per split {rep.per_split}; skipped {rep.skipped}) to {rep.out}/index.jsonl")
    return 0


def _cmd_eval_geneval(args: argparse.Namespace) -> int:
    from rewardiff.eval.geneval import RESULT_JSON, RESULT_MD, evaluate_geneval

    result, out = evaluate_geneval(args.metadata, geneval=args.geneval, detector=args.detector, threshold=args.threshold,
                                   counting_threshold=args.counting_threshold,
                                   out=args.out, device=args.device, agreement=args.agreement)
    print(result.markdown())
    print(f"\nwrote {out / RESULT_JSON} and {out / RESULT_MD}")
    return 0


def _cmd_serve_vlm(args: argparse.Namespace) -> int:
    import time

    from rewardiff.shapes.vlm_server import ShapesVLMServer

    with ShapesVLMServer(port=args.port) as server:
        print(f"shapes VLM (OpenAI-compatible) at {server.url}; try --reward vlm@{server.url}  (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rewardiff.demo import DemoConfig, run_demo

    cfg = _load(DemoConfig, args, {"out": args.out, "model": args.model, "self_reward.train.lora_format": args.lora_format})
    run_demo(cfg)  # prints what it wrote, and the report's path last
    return 0


def _cmd_export_lora(args: argparse.Namespace) -> int:
    from rewardiff.models.lora import export_lora

    print(f"wrote {export_lora(args.lora, args.out, args.format)} ({args.format} format)")
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


DEMO_DESCRIPTION = """\
The demo on the embedded shapes world (CPU, no model hub; about 9 minutes on 2 cores):
 1. generates the evaluation protocol's held-out set (shapes:eval: every held-out prompt,
    >= 320 images per category, one seed per (prompt, image)) with the shipped generator and
    judges it with the exact oracle (evaluation only): the per-category table;
 2. best-of-2 at inference: one more candidate per image, the learned captioner + detector keep
    the one they score higher; paired changes with 95% CIs (eval compare) of the oracle and of the
    judge's own score;
 3. optional: --set self_reward_round=true adds one short self-rewarding (CCSR) round (LoRA SFT,
    about 6 more minutes) evaluated the same way; --set best_lora=FILE evaluates a LoRA.
Writes OUT/base/ (images, metadata.jsonl, oracle_eval.md), OUT/grid.png, OUT/best_of/ (images,
compare/), OUT/grid_best_of.png and the HTML report OUT/report/index.html (its path is the last line)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardiff", description="Improve text-to-image diffusion models with AI feedback.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job: evaluate the shipped shapes generator on held-out prompts", description=DEMO_DESCRIPTION)
    p.add_argument("--out", help="run directory (default runs/demo)")
    p.add_argument("--model", help="generator (default: shapes)")
    p.add_argument("--lora-format", choices=LORA_FORMATS, help="key names of the self-rewarding round's LoRA: diffusers or kohya")
    _add_config_args(p, "rewardiff.demo:DemoConfig", "--set best_of=4 --set self_reward.train.steps=300",
                     keys={"lora_format": "self_reward.train.lora_format"})
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
    p.add_argument("--keep-worst", action="store_true", default=None,
                   help="best-of-N: also write each image's lowest-scored candidate (rejected_image in metadata.jsonl): Diffusion-DPO pairs for train sft")
    p.add_argument("--plain", metavar="DIR", help="best-of-N: a finished plain run (--best-of 1, same settings) whose images are candidate 0, so each image costs N-1 samples")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--lora", action="append", metavar="FILE[:SCALE]", help="LoRA safetensors, repeatable")
    p.add_argument("--batch-size", type=int, help="images per pipeline call")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", help="output directory")
    _add_config_args(p, "rewardiff.generation:GenerateConfig", "--set sampling.steps=50 --set sampling.guidance_rescale=0.7",
                     keys={"steps": "sampling.steps", "guidance": "sampling.guidance", "lora": "loras"})
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("score", help="score a generated set with one or more rewards (weighted sum in 'total')")
    p.add_argument("metadata", help="metadata.jsonl (or its folder)")
    p.add_argument("--reward", action="append", required=True, metavar="NAME[@MODEL][:WEIGHT]",
                   help="e.g. clip, clip@/models/clip:0.5, jpeg_incompressibility; repeatable")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", help="folder for scores.jsonl (default: beside the metadata)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("train", help="fine-tuning of a LoRA: ReFL, DDPO / TexForce, SFT on judged generated sets")
    tsub = p.add_subparsers(dest="train_command", required=True)
    # one sibling per algorithm: t = tsub.add_parser(NAME, ...); its flags; _add_config_args(t); t.set_defaults(func=...)
    t = tsub.add_parser("refl", help="ReFL + KL: backprop a differentiable reward through one late step into a U-Net LoRA (resumable)")
    t.add_argument("--reward", action="append", metavar="NAME[@MODEL][:WEIGHT]", help="differentiable reward spec, repeatable (replaces the preset's)")
    t.add_argument("--out", help="run directory (lora.safetensors, checkpoint/, train_log.jsonl)")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="cpu, cuda, ...")
    t.add_argument("--lora-format", choices=LORA_FORMATS, help=LORA_FORMAT_HELP)
    _add_log_arg(t)
    _add_config_args(t, "rewardiff.algorithms.refl:ReFLConfig", "--set train_steps=200 --set beta=0.05")
    t.set_defaults(func=_cmd_train_refl)
    t = tsub.add_parser("ddpo", help="DDPO / TexForce: PPO on a LoRA of the U-Net, the text encoder or both, any reward (resumable)")
    t.add_argument("--target", choices=["unet", "text_encoder", "both"], help="unet (DDPO), text_encoder (TexForce), both (joint)")
    t.add_argument("--reward", action="append", metavar="NAME[@MODEL][:WEIGHT]", help="reward spec, repeatable (replaces the preset's)")
    t.add_argument("--out", help="run directory (lora.safetensors, checkpoint/, train_log.jsonl, summary.json)")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="cpu, cuda, ...")
    t.add_argument("--lora-format", choices=LORA_FORMATS, help=LORA_FORMAT_HELP)
    _add_log_arg(t)
    _add_config_args(t, "rewardiff.algorithms.ddpo:DDPOConfig", "--set epochs=40 --set lr=3e-3")
    t.set_defaults(func=_cmd_train_ddpo)

    t = tsub.add_parser("sft", help="best-of-N distillation: LoRA SFT on generated sets, or Diffusion-DPO on their (pick, worst) pairs (train.loss=dpo, data from generate --keep-worst), re-judged (CCSR filter) and balanced per category (resumable)")
    t.add_argument("--data", action="append", metavar="FOLDER", help="generated set with metadata.jsonl, e.g. from generate --best-of 4 [--keep-worst] (repeatable; replaces the preset's)")
    t.add_argument("--out", help="run directory (lora/lora.safetensors, checkpoint/, train_log.jsonl, data.json)")
    t.add_argument("--seed", type=int, help="training seed (LoRA init, batches, noise)")
    t.add_argument("--init-lora", metavar="FILE", help="continue this LoRA (an online round on data generated with it); DPO's reference stays the base model")
    t.add_argument("--device", help="cpu, cuda, ...")
    t.add_argument("--lora-format", choices=LORA_FORMATS, help=LORA_FORMAT_HELP)
    _add_log_arg(t)
    _add_config_args(t, "rewardiff.loop.distill:DistillConfig", "--set train.steps=300 --set train.lr=3e-4",
                     keys={"seed": "train.seed", "lora_format": "train.lora_format"})
    t.set_defaults(func=_cmd_train_sft)

    p = sub.add_parser("report", help="static HTML report of one or several runs (tables with CIs, curves, image grids); open it from disk")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders: generate, eval compare output, self-reward, train ddpo/refl, demo")
    p.add_argument("--out", help="report folder (index.html + figures/; default FIRST_RUN/report)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("fuse", help="fuse LoRA files (diffusers or kohya format) by weighted sums into one LoRA file (no training)")
    p.add_argument("loras", nargs="+", metavar="FILE[:WEIGHT]", help="LoRA safetensors with weights, e.g. refl.safetensors:0.7 texforce.safetensors:1.0")
    p.add_argument("--out", required=True, help="fused .safetensors file")
    p.add_argument("--lora-format", choices=LORA_FORMATS, default="diffusers", help=LORA_FORMAT_HELP)
    p.set_defaults(func=_cmd_fuse)

    p = sub.add_parser("export-lora", help="rewrite a LoRA file in the kohya (A1111, ComfyUI) or diffusers key format")
    p.add_argument("lora", metavar="IN", help="LoRA .safetensors (diffusers or kohya format)")
    p.add_argument("--format", required=True, choices=LORA_FORMATS, help="format of OUT")
    p.add_argument("--out", required=True, metavar="OUT", help="new .safetensors file (never IN)")
    p.set_defaults(func=_cmd_export_lora)

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
    e.add_argument("--reward", action="append", metavar="SPEC", help="also compare by this reward (repeatable), e.g. judge@shapes (default: the oracle only)")
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
    e = esub.add_parser("geneval", help="GenEval-style per-task scores (objects, counts, colours, position) by a detector")
    e.add_argument("metadata", help="generated set's metadata.jsonl (or its folder)")
    e.add_argument("--geneval", help="GenEval evaluation_metadata.jsonl (default: derived from shapes prompts)")
    e.add_argument("--detector", default="shapes", help="open-vocabulary detector: 'shapes' (default), an OWLv2 folder / hub id")
    e.add_argument("--threshold", type=float, help="detection confidence threshold (default: the detector's)")
    e.add_argument("--counting-threshold", type=float, help="threshold for counting prompts (GenEval counts with a stricter one; default: the detector's counting threshold)")
    e.add_argument("--agreement", action="store_true", help="shapes world: also report agreement with the oracle (evaluation only; default: off)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", help="where to write geneval.{json,md} (default beside the metadata)")
    e.set_defaults(func=_cmd_eval_geneval)

    p = sub.add_parser("self-reward", help="the CCSR loop in rounds: write prompts -> candidates -> judge -> select -> LoRA (resumable)")
    p.add_argument("--classes", help="comma-separated classes the prompts must name (e.g. circle,triangle)")
    p.add_argument("--rounds", type=int, help="number of rounds")
    p.add_argument("--model", help="generator: 'shapes', a pipeline folder or a hub id")
    p.add_argument("--out", help="run directory (default runs/self-reward)")
    p.add_argument("--lora-format", choices=LORA_FORMATS, help=LORA_FORMAT_HELP)
    _add_log_arg(p)
    _add_config_args(p, "rewardiff.loop.self_reward:SelfRewardConfig", "--set train.loss=dpo --set candidates=6",
                     keys={"lora_format": "train.lora_format"})
    p.set_defaults(func=_cmd_self_reward)

    p = sub.add_parser("train-reward", help="train the preference reward model (CLIP embeddings + MLP, Bradley-Terry; resumable)")
    p.add_argument("--data", help="preference dataset folder (index.jsonl + images)")
    p.add_argument("--out", help="run directory (default runs/reward-model)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, ...")
    _add_log_arg(p)
    _add_config_args(p, "rewardiff.algorithms.reward_model:RewardModelConfig", "--set epochs=10 --set lr=3e-5")
    p.set_defaults(func=_cmd_train_reward)

    p = sub.add_parser("shapes", help="the embedded shapes world")
    ssub = p.add_subparsers(dest="shapes_command", required=True)
    s = ssub.add_parser("train-generator", help="train the tiny generator on rendered images, from scratch or --set unet.init_from=DIR (resumable)")
    s.add_argument("--out", help="run directory (default runs/shapes-generator)")
    s.add_argument("--seed", type=int)
    _add_config_args(s, "rewardiff.shapes.train_generator:TrainGeneratorConfig", "--set unet.steps=2000 --set unet.lr=1e-4")
    s.set_defaults(func=_cmd_train_generator)
    s = ssub.add_parser("export-generator", help="write a training run's EMA weights as a pipeline folder")
    s.add_argument("run", help="training run directory")
    s.add_argument("dest", help="destination pipeline folder")
    s.set_defaults(func=_cmd_export_generator)
    s = ssub.add_parser("train-judges", help="train the judges (CLIP-like, detector, captioner) on rendered images (resumable)")
    s.add_argument("--only", choices=["clip", "detector", "captioner"], help="train one judge only (default: all three)")
    s.add_argument("--out", help="run directory (default runs/shapes-judges)")
    s.add_argument("--seed", type=int)
    _add_config_args(s, "rewardiff.shapes.judges.train:TrainJudgesConfig", "--set threads=2")
    s.set_defaults(func=_cmd_train_judges)
    s = ssub.add_parser("eval-judges", help="judges' accuracy on held-out rendered images and agreement with the oracle")
    s.add_argument("--judges", help="judges folder (<judge>/ or a train-judges run; default: the shipped judges)")
    s.add_argument("--generated", metavar="METADATA", help="generated set (metadata.jsonl or folder) to compare with the oracle (default: none, rendered images only)")
    s.add_argument("--per-prompt", type=int, default=4, help="rendered images per held-out prompt")
    s.add_argument("--out", required=True, help="where to write judges_eval.{json,md}")
    s.set_defaults(func=_cmd_eval_judges)
    s = ssub.add_parser("make-preference-set", help="base-generator images ranked by a simulated noisy rater (ImageRewardDB layout; resumable)")
    s.add_argument("--out", help="dataset folder (default runs/shapes-preference)")
    s.add_argument("--device", help="cpu, cuda, ...")
    _add_config_args(s, "rewardiff.shapes.preference_set:ShapesPreferenceConfig", "--set min_images=4 --set sampling.steps=20")
    s.set_defaults(func=_cmd_make_preference_set)
    s = ssub.add_parser("render", help="render ground-truth images for prompts (metadata.jsonl layout)")
    s.add_argument("--prompts", default="shapes:heldout")
    s.add_argument("--num-images", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_render)
    s = ssub.add_parser("serve-vlm", help="a local OpenAI-compatible endpoint answering with the shapes captioner + detector (127.0.0.1)")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=_cmd_serve_vlm)

    p = sub.add_parser("data", help="preference data sets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("import", help="convert ImageRewardDB / Pick-a-Pic / HPDv2 as downloaded into the ranked layout")
    d.add_argument("format", choices=["imagerewarddb", "pickapic", "hpdv2"])
    d.add_argument("src", help="the downloaded file or folder (metadata-*.parquet + image shards; pair parquet; HPDv2 JSON)")
    d.add_argument("--out", required=True, help="new folder for index.jsonl + images/")
    d.add_argument("--split", choices=["train", "validation", "test"], help="split of every row (default: from the file names)")
    d.add_argument("--limit", type=int, default=0, help="at most this many prompts / pairs per file (0 = all)")
    d.add_argument("--images", help="hpdv2: image folder (default: beside the JSON)")
    d.set_defaults(func=_cmd_data_import)
    return use_help_formatter(parser)


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
        _use_log_backends(args)
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
