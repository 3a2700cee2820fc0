"""Mixed precision through the run-time (issue 14): every trainer runs a few steps in bf16 on the
CPU on tiny SD 1.x, SD 2.x and SDXL pipelines (fp16 + grad scaler for DDPO where the CPU's autocast
has it): forward passes really run in the half type, LoRA master weights stay float32, the LoRA
is trained and finite, and gradient checkpointing + accumulation run alongside."""

import pytest
import torch
from safetensors.torch import load_file

from rewardiff.algorithms.ddpo import DDPOConfig, train_ddpo
from rewardiff.algorithms.refl import ReFLConfig, train_refl
from rewardiff.algorithms.sft import SFTConfig, TrainExample, train_lora
from rewardiff.errors import RewardiffError
from rewardiff.models.pipeline import load_pipeline
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.shapes.render import render


class Redness(Reward):
    name, differentiable = "redness", True

    def score(self, images, prompts):
        return RewardOutput(images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3)))


def _pipe(model_dir):
    """The pipeline plus the dtypes its U-Net's first convolution produced (autocast's witness)."""
    pipe, _ = load_pipeline(str(model_dir))
    seen = []
    pipe.unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return pipe, seen


def _check(lora_path, seen, dtype):
    assert dtype in seen  # the U-Net ran under autocast
    tensors = load_file(str(lora_path))
    assert all(bool(torch.isfinite(v).all()) for v in tensors.values())
    assert any(float(v.abs().sum()) > 0 for k, v in tensors.items() if "up" in k or "lora_B" in k)


def _lora_dtypes(pipe):
    return {p.dtype for n, p in pipe.unet.named_parameters() if "lora_" in n}


MODELS = ["tiny_sd_dir", "tiny_sd2_dir", "tiny_sdxl_dir"]


@pytest.mark.parametrize("model", MODELS)
def test_ddpo_and_texforce_in_bf16(model, request, tmp_path):
    model_dir = request.getfixturevalue(model)
    pipe, seen = _pipe(model_dir)
    cfg = DDPOConfig(model=str(model_dir), reward=["jpeg_incompressibility"], prompts="a red circle", target="both", lora_rank=2,
                     lr=1e-2, epochs=1, sample_batch_size=2, sample_batches=1, train_batch_size=1, gradient_accumulation=2,
                     steps=2, guidance=3.0, guidance_rescale=0.0, advantages="batch", clip_range=0.2, mixed_precision="bf16",
                     gradient_checkpointing=True, out=str(tmp_path / "ddpo"))
    from rewardiff.rewards.jpeg import JpegIncompressibility

    result = train_ddpo(cfg, pipe, JpegIncompressibility(), progress=False)
    _check(result.lora, seen, torch.bfloat16)
    assert _lora_dtypes(pipe) == {torch.float32}


@pytest.mark.parametrize("model", MODELS)
def test_refl_in_bf16(model, request, tmp_path):
    model_dir = request.getfixturevalue(model)
    pipe, seen = _pipe(model_dir)
    cfg = ReFLConfig(prompts="a red circle", steps=3, last_k=2, batch_size=2, grad_accum=2, train_steps=1, save_every=1,
                     guidance=3.0, lr=1e-2, alpha=10.0, beta=0.1, lora_rank=2, mixed_precision="bf16",
                     gradient_checkpointing=True, out=str(tmp_path / "refl"))
    _check(train_refl(cfg, pipe, Redness(), progress=False), seen, torch.bfloat16)
    assert _lora_dtypes(pipe) == {torch.float32}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("loss", ["sft", "dpo"])
def test_sft_and_dpo_in_bf16(model, loss, request, tmp_path):
    model_dir = request.getfixturevalue(model)
    pipe, seen = _pipe(model_dir)
    prompts = ["a red circle", "a blue square"]
    examples = [TrainExample(p, render(p, i).image, render("a green triangle", i).image) for i, p in enumerate(prompts)]
    cfg = SFTConfig(loss=loss, rank=2, alpha=2.0, lr=1e-2, steps=2, batch_size=2, gradient_accumulation=2, train_text_encoder=True,
                    dpo_beta=100.0, mixed_precision="bf16", gradient_checkpointing=True)
    _check(train_lora(pipe, examples, cfg, tmp_path / loss, progress=False), seen, torch.bfloat16)
    assert _lora_dtypes(pipe) == {torch.float32}


def test_ddpo_fp16_with_grad_scaler(tiny_sd_dir, tmp_path):
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
    except RuntimeError:
        pytest.skip("this torch has no float16 CPU autocast")
    pipe, seen = _pipe(tiny_sd_dir)
    cfg = DDPOConfig(model=str(tiny_sd_dir), reward=["jpeg_incompressibility"], prompts="a red circle", target="unet", lora_rank=2,
                     lr=1e-2, epochs=1, sample_batch_size=2, sample_batches=1, train_batch_size=2, steps=2, guidance=3.0,
                     guidance_rescale=0.0, advantages="batch", clip_range=0.2, mixed_precision="fp16", out=str(tmp_path / "fp16"))
    from rewardiff.rewards.jpeg import JpegIncompressibility

    result = train_ddpo(cfg, pipe, JpegIncompressibility(), progress=False)
    assert torch.float16 in seen
    assert all(bool(torch.isfinite(v).all()) for v in load_file(str(result.lora)).values())


def test_unknown_precision_is_refused_before_any_work(tiny_sd_dir, tmp_path):
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    with pytest.raises(RewardiffError, match="mixed_precision"):
        train_refl(ReFLConfig(prompts="a red circle", mixed_precision="fp8", out=str(tmp_path / "r")), pipe, Redness(), progress=False)
    assert not (tmp_path / "r").exists()
