"""Scale benchmark (issue 14): step time and peak memory of each trainer on SD-shaped and
SDXL-shaped pipelines with random weights built from configs (no download).

Sizes: `tiny` (the tests' 32x32 models; CPU), `sd15` (SD 1.5's U-Net, CLIP ViT-L/14 text encoder
and VAE at 512x512) and `sdxl` (SDXL base's U-Net, both text encoders and VAE at 1024x1024); the
full sizes are for a GPU. Peak memory: `torch.cuda.max_memory_allocated` (reset after each
pipeline is built, so model + training call) on a GPU; on a CPU each (size, trainer) runs in a fresh
subprocess and reports its peak RSS (ru_maxrss: Python, libraries and model included).
One "step" is one optimiser step of the trainer as a user runs it (DDPO / TexForce: one epoch =
sample + score + update; ReFL: sampling prefix + grad step; SFT / DPO: one batch).

    python benchmarks/bench_scale.py --sizes tiny                       # CPU
    python benchmarks/bench_scale.py --sizes sd15,sdxl --device cuda --precision bf16 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rewardiff.rewards.base import Reward, RewardOutput

TRAINERS = ("ddpo", "texforce", "refl", "sft", "dpo")

SIZES = {
    # image side (px), DDIM steps per trajectory, images per step
    "tiny": dict(side=32, steps=3, batch=2),
    "sd15": dict(side=512, steps=4, batch=1),
    "sdxl": dict(side=1024, steps=4, batch=1),
}


def _text_config(tokenizer, layers: int, width: int, heads: int, ffn: int, projection: int = 768, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=ffn, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=tokenizer.model_max_length, hidden_act=act,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, projection_dim=projection)


def build_pipeline(size: str, work: Path, device: str, dtype: torch.dtype):
    """A random pipeline of the given size (SD 1.5 / SDXL architectures from their published configs)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from rewardiff.shapes.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer(work / "tok")
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    with torch.device(device):
        if size == "tiny":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from tiny_models import build_tiny_sd

            path = build_tiny_sd(work / "tiny")
            pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
            return pipe.to(device=device, dtype=dtype)
        tok.model_max_length = 77
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512)
        if size == "sd15":
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
            text = CLIPTextModel(_text_config(tok, 12, 768, 12, 3072))
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler,
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        else:
            unet = UNet2DConditionModel(
                sample_size=128, block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            text = CLIPTextModel(_text_config(tok, 12, 768, 12, 3072))
            text2 = CLIPTextModelWithProjection(_text_config(tok, 32, 1280, 20, 5120, projection=1280, act="gelu"))
            pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text2, tokenizer=tok, tokenizer_2=tok,
                                             unet=unet, scheduler=scheduler)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


class _Redness(Reward):
    """A cheap differentiable reward on the device (the benchmark times the trainers, not a reward)."""

    name, differentiable = "redness", True

    def score(self, images, prompts):
        return RewardOutput(images[:, 0].float().mean(dim=(1, 2)) - images[:, 1:].float().mean(dim=(1, 2, 3)))


def run_one(size: str, trainer: str, device: str, precision: str, checkpointing: bool, weights: str) -> dict:
    """One optimiser step of `trainer` (after one warm-up step on CUDA); returns seconds and peak memory."""
    import numpy as np

    from rewardiff.algorithms.ddpo import DDPOConfig, train_ddpo
    from rewardiff.algorithms.refl import ReFLConfig, train_refl
    from rewardiff.algorithms.sft import SFTConfig, TrainExample, train_lora
    from rewardiff.models.pipeline import resolve_dtype

    s = SIZES[size]
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    side, steps, batch = s["side"], s["steps"], s["batch"]
    reward = _Redness()
    runtime = dict(mixed_precision=precision, gradient_checkpointing=checkpointing, allow_tf32=True)

    def once(tag: str) -> float:
        """Seconds of one training call on a fresh pipeline (a trainer leaves its LoRA on the modules)."""
        pipe = build_pipeline(size, work / tag, device, resolve_dtype(weights, device))
        out = str(work / f"{trainer}-{tag}")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if trainer in ("ddpo", "texforce"):
            cfg = DDPOConfig(model="random-init", reward=["redness"], prompts="a red circle", target="unet" if trainer == "ddpo" else "both",
                             epochs=1, sample_batch_size=batch, sample_batches=1, train_batch_size=batch, steps=steps, guidance=5.0,
                             guidance_rescale=0.0, advantages="batch", timestep_batch=1, out=out, device=device, **runtime)
            train_ddpo(cfg, pipe, reward, progress=False)
        elif trainer == "refl":
            cfg = ReFLConfig(model="random-init", prompts="a red circle", steps=steps, last_k=1, batch_size=batch, train_steps=1,
                             save_every=1, out=out, device=device, **runtime)
            train_refl(cfg, pipe, reward, progress=False)
        else:
            image = np.full((side, side, 3), 255, np.uint8)
            examples = [TrainExample("a red circle", image, image)] * batch
            train_lora(pipe, examples, SFTConfig(loss=trainer, steps=1, batch_size=batch, rank=4, alpha=4.0, **runtime), out, progress=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    cuda = device.startswith("cuda")
    if cuda:
        once("warmup")  # kernels chosen, allocator warm; its pipeline is freed on return
        torch.cuda.empty_cache()
    seconds = once("timed")  # peak memory: the model plus this training call (reset after the build)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"size": size, "trainer": trainer, "precision": precision, "weights": weights, "checkpointing": checkpointing,
            "seconds": round(seconds, 3), "peak_gib": round(peak, 3), "memory": "cuda allocated" if cuda else "process RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny", help="comma list of tiny, sd15, sdxl")
    parser.add_argument("--trainers", default=",".join(TRAINERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="no", help="mixed precision: no, bf16, fp16")
    parser.add_argument("--weights", default="float32", help="frozen weights' dtype: float32, bfloat16, float16")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "TRAINER"), help=argparse.SUPPRESS)  # the subprocess's job
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.one:
        row = run_one(args.one[0], args.one[1], args.device, args.precision, args.gradient_checkpointing, args.weights)
        print("ROW " + json.dumps(row))
        return
    rows = []
    print(f"| size | trainer | precision | weights | grad ckpt | step s | peak GiB |\n|---|---|---|---|---|---:|---:|")
    for size in args.sizes.split(","):
        for trainer in args.trainers.split(","):
            if args.device.startswith("cuda"):  # one process: CUDA's peak counter resets per run
                try:
                    row = run_one(size, trainer, args.device, args.precision, args.gradient_checkpointing, args.weights)
                except Exception as e:  # report and go on: one failing trainer must not hide the others
                    print(f"| {size} | {trainer} | {args.precision} | {args.weights} | {args.gradient_checkpointing} | failed: {type(e).__name__}: {str(e)[:120]} | |", flush=True)
                    continue
                finally:
                    torch.cuda.empty_cache()
                rows.append(row)
                print(f"| {size} | {trainer} | {row['precision']} | {row['weights']} | {row['checkpointing']} | {row['seconds']:.2f} | {row['peak_gib']:.2f} |", flush=True)
                continue
            cmd = [sys.executable, __file__, "--one", size, trainer, "--device", args.device, "--precision", args.precision,
                   "--weights", args.weights] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            line = next((l for l in done.stdout.splitlines() if l.startswith("ROW ")), None)
            if line is None:
                err = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
                print(f"| {size} | {trainer} | {args.precision} | {args.weights} | {args.gradient_checkpointing} | failed: {err} | |")
                continue
            row = json.loads(line[4:])
            rows.append(row)
            print(f"| {size} | {trainer} | {row['precision']} | {row['weights']} | {row['checkpointing']} | {row['seconds']:.2f} | {row['peak_gib']:.2f} ({row['memory']}) |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
