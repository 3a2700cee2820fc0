"""LoRA files: written in the diffusers format, opened by load_lora_weights, applied with a scale."""

import numpy as np
import pytest
import torch

from rewardiff.errors import RewardiffError
from rewardiff.generation import SamplingSettings, sample_images
from rewardiff.models.lora import LoraSpec, add_lora, apply_loras, parse_lora_spec, save_lora
from rewardiff.models.pipeline import load_pipeline

SMALL = SamplingSettings(steps=2, guidance=3.0, height=32, width=32)


@pytest.fixture(scope="module")
def lora_file(tiny_sd_dir, tmp_path_factory):
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    add_lora(pipe.unet, rank=2)
    add_lora(pipe.text_encoder, rank=2)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in list(pipe.unet.named_parameters()) + list(pipe.text_encoder.named_parameters()):
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter, not the no-op init
    return save_lora(tmp_path_factory.mktemp("lora") / "a.safetensors", unet=pipe.unet, text_encoder=pipe.text_encoder)


def test_parse_lora_spec(lora_file, tmp_path):
    assert parse_lora_spec(str(lora_file)) == LoraSpec(str(lora_file), 1.0)
    assert parse_lora_spec(f"{lora_file}:0.4") == LoraSpec(str(lora_file), 0.4)
    with pytest.raises(RewardiffError, match="LoRA file not found"):
        parse_lora_spec(str(tmp_path / "missing.safetensors:0.5"))
    pickle = tmp_path / "x.bin"
    pickle.write_bytes(b"0")
    with pytest.raises(RewardiffError, match="safetensors"):
        parse_lora_spec(str(pickle))


def test_lora_changes_images_and_scale_zero_does_not(tiny_sd_dir, lora_file):
    base_pipe, _ = load_pipeline(str(tiny_sd_dir))
    base = sample_images(base_pipe, ["a red circle"], [0], SMALL)

    pipe, _ = load_pipeline(str(tiny_sd_dir))
    apply_loras(pipe, [LoraSpec(str(lora_file), 1.0)])
    tuned = sample_images(pipe, ["a red circle"], [0], SMALL)
    assert np.abs(tuned.astype(int) - base).max() > 0

    pipe0, _ = load_pipeline(str(tiny_sd_dir))
    apply_loras(pipe0, [LoraSpec(str(lora_file), 0.0)])
    np.testing.assert_array_equal(sample_images(pipe0, ["a red circle"], [0], SMALL), base)


def test_lora_of_wrong_shape_is_a_clear_error(tiny_sdxl_dir, lora_file):
    pipe, _ = load_pipeline(str(tiny_sdxl_dir))
    with pytest.raises(RewardiffError, match="cannot load LoRA"):
        apply_loras(pipe, [LoraSpec(str(lora_file), 1.0)])


def test_alpha_other_than_rank_survives_save_and_load(tiny_sd_dir, tmp_path):
    """A LoRA trained with alpha != rank (scale alpha / r) must load back at the same strength."""
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    add_lora(pipe.unet, rank=2, alpha=8.0)  # scale 4
    add_lora(pipe.text_encoder, rank=2, alpha=1.0)  # scale 0.5
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in list(pipe.unet.named_parameters()) + list(pipe.text_encoder.named_parameters()):
            if "lora_B" in name:
                p.normal_(0, 0.5)
    trained = sample_images(pipe, ["a red circle"], [0], SMALL)
    path = save_lora(tmp_path / "alpha.safetensors", unet=pipe.unet, text_encoder=pipe.text_encoder)

    loaded, _ = load_pipeline(str(tiny_sd_dir))
    apply_loras(loaded, [LoraSpec(str(path), 1.0)])
    np.testing.assert_allclose(sample_images(loaded, ["a red circle"], [0], SMALL).astype(int), trained.astype(int), atol=1)
