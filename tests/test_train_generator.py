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

    def killed_at_unet_step_5(rng, n):
        calls["n"] += 1
        if calls["n"] == 3 + 1 + 5:  # 3 VAE steps, 1 scale batch, then the 5th U-Net step
            raise KeyboardInterrupt
        return real(rng, n)

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
