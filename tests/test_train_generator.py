"""The generator trainer: a tiny run killed mid-way and resumed ends with the same weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

import rewardiff.shapes.train_generator as tg
from rewardiff.config import load_config

TINY = [
    "arch.unet_channels=[16, 32]", "arch.text_hidden=32", "arch.vae_channels=[16, 16]",
    "vae.steps=3", "vae.batch_size=4", "unet.steps=6", "unet.batch_size=4",
    "unet.checkpoint_every=2", "unet.warmup_steps=2",
]


def _cfg(out):
    return load_config(tg.TrainGeneratorConfig, None, [f"out={out}", *TINY])


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, monkeypatch):
    straight = tg.train_generator(_cfg(tmp_path / "straight"), progress=False)

    real = tg.rendered_batch
    calls = {"n": 0}

    def killed_at_unet_step_5(rng, n, *args):
        calls["n"] += 1
        if calls["n"] == 3 + 1 + 5:  # 3 VAE steps, 1 scale batch, then the 5th U-Net step
            raise KeyboardInterrupt
        return real(rng, n, *args)

    monkeypatch.setattr(tg, "rendered_batch", killed_at_unet_step_5)
    with pytest.raises(KeyboardInterrupt):
        tg.train_generator(_cfg(tmp_path / "resumed"), progress=False)
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4  # last checkpoint before the kill
    monkeypatch.setattr(tg, "rendered_batch", real)
    resumed = tg.train_generator(_cfg(tmp_path / "resumed"), progress=False)

    for part in ("unet", "text_encoder"):
        a = load_file(str(straight / part / "diffusion_pytorch_model.safetensors")) if part == "unet" else load_file(str(straight / part / "model.safetensors"))
        b = load_file(str(resumed / part / "diffusion_pytorch_model.safetensors")) if part == "unet" else load_file(str(resumed / part / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{part}.{k} differs after resume")


def test_exported_folder_loads_through_the_standard_path(tmp_path):
    from rewardiff.generation import SamplingSettings, sample_images
    from rewardiff.models.pipeline import load_pipeline

    path = tg.train_generator(_cfg(tmp_path / "run"), progress=False)
    pipe, source = load_pipeline(str(path))
    assert source.is_shapes and type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr
    images = sample_images(pipe, ["a red circle"], [0], SamplingSettings(steps=2, height=32, width=32))
    assert images.shape == (1, 32, 32, 3)
    log = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {"vae", "unet"}


def _weights(folder):
    return {
        "unet": load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")),
        "text_encoder": load_file(str(folder / "text_encoder" / "model.safetensors")),
        "vae": load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")),
    }


def test_init_from_continues_an_exported_generator(tmp_path):
    """With lr 0 a continued run must export exactly the weights it started from (and its VAE)."""
    first = tg.train_generator(_cfg(tmp_path / "first"), progress=False)
    cfg = load_config(tg.TrainGeneratorConfig, None, [f"out={tmp_path / 'cont'}", *TINY, f"unet.init_from={first}", "unet.lr=0", "unet.steps=2"])
    cont = tg.train_generator(cfg, progress=False)
    a, b = _weights(first), _weights(cont)
    for part in a:
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k} moved")
    log = [json.loads(l) for l in (tmp_path / "cont" / "train_log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {"unet"}  # no VAE stage: the init pipeline's VAE is kept


def test_init_from_with_another_architecture_is_refused(tmp_path):
    from rewardiff.errors import RewardiffError

    first = tg.train_generator(_cfg(tmp_path / "first"), progress=False)
    cfg = load_config(tg.TrainGeneratorConfig, None, [f"out={tmp_path / 'cont'}", *TINY, "arch.unet_channels=[16, 48]", f"unet.init_from={first}"])
    with pytest.raises(RewardiffError, match="its unet does not match"):
        tg.train_generator(cfg, progress=False)


def test_cosine_schedule_and_bad_settings():
    stage = tg.UnetStageConfig(lr=1e-3, warmup_steps=10, steps=100, lr_schedule="cosine")
    assert tg.unet_stage_lr(stage, 0) == pytest.approx(1e-4)  # warm-up still applies
    assert tg.unet_stage_lr(stage, 10) < 1e-3 and tg.unet_stage_lr(stage, 99) == pytest.approx(1e-4, rel=1e-2)
    assert tg.unet_stage_lr(tg.UnetStageConfig(lr=1e-3, warmup_steps=10), 99) == 1e-3
    from rewardiff.errors import RewardiffError

    with pytest.raises(RewardiffError, match="lr_schedule"):
        tg.unet_stage_lr(tg.UnetStageConfig(lr_schedule="linear"), 0)
    with pytest.raises(RewardiffError, match="category_weights"):
        tg.check_category_weights({"pairs": 1.0}, "unet.category_weights")


def test_category_weights_change_the_prompt_mix():
    import random

    from rewardiff.shapes.prompts import split_prompts

    prompts, _ = tg.rendered_batch(random.Random(0), 40, {"position": 1.0})
    assert set(prompts) <= set(split_prompts("position")[0])
