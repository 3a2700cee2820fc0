"""The real loading path (from_pretrained on local folders, hub ids) on tiny pipelines, offline."""

import json

import numpy as np
import pytest

from rewardiff.errors import RewardiffError
from rewardiff.generation import SamplingSettings, sample_images
from rewardiff.models.pipeline import is_sdxl, load_pipeline, resolve_model

SMALL = SamplingSettings(steps=2, guidance=3.0, height=32, width=32)


def test_sd_folder_loads_as_stable_diffusion(tiny_sd_dir):
    pipe, source = load_pipeline(str(tiny_sd_dir))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert source.is_local and not source.is_shapes and not is_sdxl(pipe)
    assert not any(p.requires_grad for p in pipe.unet.parameters()), "loaded weights must be frozen"
    images = sample_images(pipe, ["a red circle", "two blue squares"], [0, 1], SMALL)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    again = sample_images(pipe, ["a red circle", "two blue squares"], [0, 1], SMALL)
    np.testing.assert_array_equal(images, again)  # seeded
    other = sample_images(pipe, ["a red circle", "two blue squares"], [5, 6], SMALL)
    assert not np.array_equal(images, other)


def test_sdxl_folder_loads_with_two_text_encoders(tiny_sdxl_dir):
    pipe, _ = load_pipeline(str(tiny_sdxl_dir))
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and is_sdxl(pipe)
    images = sample_images(pipe, ["a red circle"], [0], SMALL)
    assert images.shape == (1, 32, 32, 3)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardiffError, match=r"runwayml/stable-diffusion-v1-5.*offline"):
        load_pipeline("runwayml/stable-diffusion-v1-5")


@pytest.mark.parametrize("hub_id", ["runwayml/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2-1", "stabilityai/stable-diffusion-xl-base-1.0", "some-model"])
def test_hub_ids_resolve_as_hub(hub_id):
    source = resolve_model(hub_id)
    assert not source.is_local and source.location == hub_id


def test_missing_dir_and_non_pipeline_dir(tmp_path):
    with pytest.raises(RewardiffError, match="model directory not found"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(RewardiffError, match="no model_index.json"):
        resolve_model(str(tmp_path))


def test_unsupported_pipeline_class(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(RewardiffError, match="FluxPipeline"):
        load_pipeline(str(tmp_path))
