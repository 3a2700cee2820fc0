"""LoRA files in the kohya / A1111 format (issue 16, item 4): the names ComfyUI's loader maps,
opened by diffusers' load_lora_weights with the same images as the diffusers file, on the shipped
shapes generator and on a tiny SDXL; export-lora, fuse and generate read both formats."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from rewardiff.cli import main
from rewardiff.errors import RewardiffError
from rewardiff.generation import SamplingSettings, sample_images
from rewardiff.models.lora import LoraSpec, add_lora, apply_loras, export_lora, fuse_loras, read_lora_layers, save_lora
from rewardiff.models.pipeline import load_pipeline

SMALL = SamplingSettings(steps=2, guidance=3.0, height=32, width=32)
PROMPTS, SEEDS = ["a red circle", "two blue squares left of a green triangle"], [0, 1]

# The key patterns of ComfyUI's comfy/lora.py (model_lora_keys_unet / model_lora_keys_clip) and
# kohya's sd-scripts, written out as fixed expectations: U-Net stems are 'lora_unet_' + the
# diffusers module path with '.' -> '_'; CLIP stems 'lora_te_text_model_encoder_layers_{i}_{proj}'
# (SD 1.x / 2.x) or lora_te1_ / lora_te2_ (SDXL); each stem has exactly these three tensors.
UNET_STEM = r"lora_unet_(down_blocks_\d+_|up_blocks_\d+_|mid_block_)attentions_\d+_transformer_blocks_\d+_attn[12]_to_(q|k|v|out_0)"
TE_STEM = r"lora_te{}_text_model_encoder_layers_\d+_self_attn_(q|k|v|out)_proj"
SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
FIRST_UNET_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
FIRST_TE_KEY = "lora_te{}_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"


def _randomise(*modules) -> None:
    """A trained-looking adapter (B != 0), seeded."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)


def _tensors(path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _check_kohya_keys(keys, te_tag: str, te_stems: tuple[str, ...], first_unet_key: str = FIRST_UNET_KEY) -> None:
    stems: dict[str, set[str]] = {}
    for key in keys:
        suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
        assert suffix is not None, key
        stems.setdefault(key[: -len(suffix)], set()).add(suffix)
    assert all(found == set(SUFFIXES) for found in stems.values())
    patterns = [UNET_STEM] + [TE_STEM.format(t) for t in te_stems]
    for stem in stems:
        assert any(re.fullmatch(p, stem) for p in patterns), stem
    assert first_unet_key in keys
    assert FIRST_TE_KEY.format(te_tag) in keys


@pytest.fixture(scope="module")
def shapes_loras(tmp_path_factory):
    """The same trained LoRA (U-Net alpha 6 / rank 2 = scale 3; text encoder scale 0.5) in both formats."""
    pipe, _ = load_pipeline("shapes")
    add_lora(pipe.unet, rank=2, alpha=6.0)
    add_lora(pipe.text_encoder, rank=2, alpha=1.0)
    _randomise(pipe.unet, pipe.text_encoder)
    folder = tmp_path_factory.mktemp("lora-formats")
    diffusers = save_lora(folder / "diffusers.safetensors", unet=pipe.unet, text_encoder=pipe.text_encoder)
    kohya = save_lora(folder / "kohya.safetensors", unet=pipe.unet, text_encoder=pipe.text_encoder, lora_format="kohya")
    return diffusers, kohya


def test_kohya_keys_are_the_ones_comfyui_maps(shapes_loras):
    diffusers, kohya = shapes_loras
    tensors, meta = _tensors(kohya)
    _check_kohya_keys(tensors, "", ("",))
    assert not any(k.startswith(("lora_te1_", "lora_te2_")) for k in tensors)  # SD 1.x: lora_te_
    layers = read_lora_layers(diffusers)
    assert len(tensors) == 3 * len(layers)
    # alpha = scale * rank, so kohya tools (scale alpha / rank) apply the trained strength
    assert float(tensors[FIRST_UNET_KEY.replace(".lora_down.weight", ".alpha")]) == pytest.approx(6.0)
    assert float(tensors[FIRST_TE_KEY.format("").replace(".lora_down.weight", ".alpha")]) == pytest.approx(1.0)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "2"


def test_kohya_file_has_the_same_deltas_and_images_in_diffusers(shapes_loras):
    diffusers, kohya = shapes_loras
    a, b = read_lora_layers(diffusers), read_lora_layers(kohya)
    assert set(a) == set(b)
    for module in a:
        torch.testing.assert_close(b[module].delta(), a[module].delta(), rtol=1e-5, atol=1e-6)

    base_pipe, _ = load_pipeline("shapes")
    base = sample_images(base_pipe, PROMPTS, SEEDS, SMALL)
    images = {}
    for name, path in (("diffusers", diffusers), ("kohya", kohya)):
        pipe, _ = load_pipeline("shapes")
        apply_loras(pipe, [LoraSpec(str(path), 1.0)])  # diffusers' load_lora_weights opens the file
        images[name] = sample_images(pipe, PROMPTS, SEEDS, SMALL).astype(int)
    assert np.abs(images["diffusers"] - base).max() > 50  # the LoRA changes the images
    np.testing.assert_allclose(images["kohya"], images["diffusers"], atol=1)


def test_sdxl_kohya_names_and_images(tiny_sdxl_dir, tmp_path):
    pipe, _ = load_pipeline(str(tiny_sdxl_dir))
    add_lora(pipe.unet, rank=2, alpha=4.0)
    add_lora(pipe.text_encoder, rank=2)
    add_lora(pipe.text_encoder_2, rank=2)
    _randomise(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    diffusers = save_lora(tmp_path / "xl.safetensors", unet=pipe.unet, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2)
    kohya = save_lora(tmp_path / "xl_kohya.safetensors", unet=pipe.unet, text_encoder=pipe.text_encoder,
                      text_encoder_2=pipe.text_encoder_2, lora_format="kohya")
    tensors, _ = _tensors(kohya)
    # the tiny SDXL's first block has no attention (DownBlock2D, CrossAttnDownBlock2D)
    _check_kohya_keys(tensors, "1", ("1", "2"), FIRST_UNET_KEY.replace("down_blocks_0", "down_blocks_1"))
    assert FIRST_TE_KEY.format("2") in tensors and not any(k.startswith("lora_te_") for k in tensors)
    assert {m.split(".")[0] for m in read_lora_layers(kohya)} == {"unet", "text_encoder", "text_encoder_2"}

    images = {}
    for name, path in (("diffusers", diffusers), ("kohya", kohya)):
        loaded, _ = load_pipeline(str(tiny_sdxl_dir))
        apply_loras(loaded, [LoraSpec(str(path), 1.0)])
        images[name] = sample_images(loaded, PROMPTS, SEEDS, SMALL).astype(int)
    base, _ = load_pipeline(str(tiny_sdxl_dir))
    assert np.abs(images["diffusers"] - sample_images(base, PROMPTS, SEEDS, SMALL)).max() > 0
    np.testing.assert_allclose(images["kohya"], images["diffusers"], atol=1)


def test_export_lora_round_trip_and_refusals(shapes_loras, tmp_path, capsys):
    diffusers, kohya = shapes_loras
    out = tmp_path / "exported_kohya.safetensors"
    assert main(["export-lora", str(diffusers), "--format", "kohya", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out.strip().splitlines()[-1]  # the output path, last
    assert set(_tensors(out)[0]) == set(_tensors(kohya)[0])
    back = export_lora(out, tmp_path / "back.safetensors", "diffusers")
    assert not any(k.startswith("lora_") for k in _tensors(back)[0])
    a, b = read_lora_layers(diffusers), read_lora_layers(back)
    for module in a:
        torch.testing.assert_close(b[module].delta(), a[module].delta(), rtol=1e-5, atol=1e-6)

    before = diffusers.read_bytes()
    with pytest.raises(RewardiffError, match="is the input file"):
        export_lora(diffusers, diffusers, "kohya")
    assert main(["export-lora", str(diffusers), "--format", "kohya", "--out", str(diffusers)]) == 2
    assert diffusers.read_bytes() == before  # nothing already written is lost
    not_lora = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(not_lora))
    with pytest.raises(RewardiffError, match="not a LoRA"):
        export_lora(not_lora, tmp_path / "x.safetensors", "kohya")
    capsys.readouterr()
    assert main(["export-lora", str(not_lora), "--format", "kohya", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a LoRA" in err[0]
    assert not (tmp_path / "x.safetensors").exists()


def test_fuse_reads_both_formats_and_writes_kohya(shapes_loras, tmp_path, capsys):
    diffusers, kohya = shapes_loras
    fused = fuse_loras([LoraSpec(str(diffusers), 0.25), LoraSpec(str(kohya), 0.75)], tmp_path / "fused.safetensors")
    a, f = read_lora_layers(diffusers), read_lora_layers(fused)
    assert set(f) == set(a)  # one layer per module whatever the input format (no doubled layers)
    for module in a:
        torch.testing.assert_close(f[module].delta(), a[module].delta(), rtol=1e-5, atol=1e-6)
    out = tmp_path / "fused_kohya.safetensors"
    assert main(["fuse", f"{kohya}:0.5", f"{diffusers}:0.5", "--out", str(out), "--lora-format", "kohya"]) == 0
    assert str(out) in capsys.readouterr().out
    _check_kohya_keys(_tensors(out)[0], "", ("",))
    for module, layer in read_lora_layers(out).items():
        torch.testing.assert_close(layer.delta(), a[module].delta(), rtol=1e-5, atol=1e-6)


def test_generate_cli_with_a_kohya_lora(shapes_loras, tmp_path):
    diffusers, kohya = shapes_loras
    images = {}
    for name, path in (("diffusers", diffusers), ("kohya", kohya)):
        out = tmp_path / name
        assert main(["generate", "--model", "shapes", "--prompts", "a red circle", "--num-images", "1", "--steps", "2",
                     "--lora", str(path), "--out", str(out)]) == 0
        with Image.open(next((out / "images").glob("*.png"))) as im:
            images[name] = np.asarray(im.convert("RGB"), dtype=int)
    np.testing.assert_allclose(images["kohya"], images["diffusers"], atol=1)


class _Stop(Exception):
    """Raised by the patched config loader: the command stops before loading any model."""


def test_lora_format_flags_reach_every_lora_writer(monkeypatch):
    """`--lora-format` lands in the config of each command that writes a LoRA (through the
    command's own flag mapping), and a bad format is refused before any work."""
    import rewardiff.cli as cli
    from rewardiff.algorithms.ddpo import DDPOConfig, validate

    seen = []
    real_load = cli._load

    def capture(cls, args, flags):
        seen.append(real_load(cls, args, flags))
        raise _Stop

    monkeypatch.setattr(cli, "_load", capture)
    parser = cli.build_parser()
    for command, get in ((["train", "ddpo"], lambda c: c.lora_format), (["train", "refl"], lambda c: c.lora_format),
                         (["self-reward"], lambda c: c.train.lora_format), (["demo"], lambda c: c.self_reward.train.lora_format)):
        args = parser.parse_args([*command, "--lora-format", "kohya"])
        with pytest.raises(_Stop):
            args.func(args)
        assert get(seen[-1]) == "kohya", command
        args = parser.parse_args(command)
        with pytest.raises(_Stop):
            args.func(args)
        assert get(seen[-1]) == "diffusers", command  # the default
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "ddpo", "--lora-format", "onnx"])
    with pytest.raises(RewardiffError, match="unknown LoRA format"):
        validate(DDPOConfig(lora_format="onnx"))
    # the file format is not part of the training: a run resumes with another one (and old checkpoints lack it)
    from rewardiff.algorithms.ddpo import _signature
    from rewardiff.algorithms.refl import RESUME_FREE_FIELDS

    assert _signature(DDPOConfig(lora_format="kohya")) == _signature(DDPOConfig())
    assert "lora_format" in RESUME_FREE_FIELDS
