"""LoRA fusion: the fused file's delta is exactly sum_i w_i * s_i * B_i A_i, it loads with
load_lora_weights, and the fused model equals diffusers' own multi-adapter weighting."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rewardiff.cli import main
from rewardiff.errors import RewardiffError
from rewardiff.io_utils import load_image, read_jsonl
from rewardiff.models.lora import LoraSpec, add_lora, fuse_loras, read_lora_layers, save_lora
from rewardiff.models.pipeline import load_pipeline

W_A, W_B = 0.7, 1.3
B_RANK, B_ALPHA = 3, 6.0  # file B carries alpha != rank (scale 2) in diffusers' adapter metadata


def _randomise_b(*modules) -> None:
    """A trained-looking adapter: B is zero at init (a no-op), so give it values."""
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)


@pytest.fixture(scope="module")
def loras(tiny_sd_dir, tmp_path_factory):
    """A: U-Net (4 targets) + text encoder, rank 2, no alpha. B: U-Net only, to_q/to_v, rank 3, alpha 6."""
    d = tmp_path_factory.mktemp("loras")
    torch.manual_seed(0)
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    add_lora(pipe.unet, rank=2)
    add_lora(pipe.text_encoder, rank=2)
    _randomise_b(pipe.unet, pipe.text_encoder)
    a = save_lora(d / "a.safetensors", unet=pipe.unet, text_encoder=pipe.text_encoder)

    pipe, _ = load_pipeline(str(tiny_sd_dir))
    add_lora(pipe.unet, rank=B_RANK, alpha=B_ALPHA, targets=("to_q", "to_v"))
    _randomise_b(pipe.unet)
    save_lora(d / "b.safetensors", unet=pipe.unet)  # alpha travels in diffusers' adapter metadata
    # the closed form, straight from the peft modules that made file B
    expected_b = {}
    for name, module in pipe.unet.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            expected_b["unet." + name] = B_ALPHA / B_RANK * module.lora_B["default"].weight @ module.lora_A["default"].weight
    return a, d / "b.safetensors", expected_b


def _outputs(pipe):
    """U-Net and text-encoder outputs on fixed inputs."""
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, 32, generator=g)
    ids = pipe.tokenizer(["a red circle", "two blue squares"], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        unet = pipe.unet(latents, torch.tensor([500, 20]), encoder_hidden_states=context).sample
        text = pipe.text_encoder(ids)[0]
    return unet, text


def test_read_lora_layers_scales(loras):
    a, b, expected_b = loras
    layers_a, layers_b = read_lora_layers(a), read_lora_layers(b)
    assert {m.split(".")[0] for m in layers_a} == {"unet", "text_encoder"}
    assert all(layer.scale == 1.0 and layer.rank == 2 for layer in layers_a.values())
    assert set(layers_b) == set(expected_b) and all(m.endswith(("to_q", "to_v")) for m in layers_b)
    for m, layer in layers_b.items():
        assert layer.scale == pytest.approx(B_ALPHA / B_RANK)
        torch.testing.assert_close(layer.delta(), expected_b[m], rtol=0, atol=1e-6)


def test_fused_delta_is_the_weighted_sum(loras, tmp_path):
    a, b, expected_b = loras
    out = fuse_loras([LoraSpec(str(a), W_A), LoraSpec(str(b), W_B)], tmp_path / "f.safetensors")
    layers_a, fused = read_lora_layers(a), read_lora_layers(out)
    assert set(fused) == set(layers_a)  # B's layers are a subset of A's U-Net layers
    for m, layer in fused.items():
        want = W_A * layers_a[m].up @ layers_a[m].down + W_B * expected_b.get(m, 0.0)
        torch.testing.assert_close(layer.delta(), want, rtol=0, atol=1e-5)
        assert layer.scale == 1.0
    # one rank per component (zero-padded), so no rank/alpha patterns are needed to load it
    unet_ranks = {layer.rank for m, layer in fused.items() if m.startswith("unet.")}
    assert unet_ranks == {2 + B_RANK}
    assert {layer.rank for m, layer in fused.items() if m.startswith("text_encoder.")} == {2}
    assert not any(k.endswith("alpha") for k in load_file(str(out)))


def test_fused_model_equals_set_adapters(tiny_sd_dir, loras, tmp_path):
    a, b, _ = loras
    base = _outputs(load_pipeline(str(tiny_sd_dir))[0])

    pipe, _ = load_pipeline(str(tiny_sd_dir))
    pipe.load_lora_weights(str(a.parent), weight_name=a.name, adapter_name="a")
    pipe.load_lora_weights(str(b.parent), weight_name=b.name, adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[W_A, W_B])
    both = _outputs(pipe)

    out = fuse_loras([LoraSpec(str(a), W_A), LoraSpec(str(b), W_B)], tmp_path / "f.safetensors")
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    pipe.load_lora_weights(str(out.parent), weight_name=out.name)
    fused = _outputs(pipe)

    for got, want, was in zip(fused, both, base):
        assert (want - was).abs().max() > 1e-2, "the LoRAs must change the model for this test to mean anything"
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_text_encoder_lora_and_unet_lora_merge(tiny_sd_dir, loras, tmp_path):
    """TexForce's ReFL + TexForce: a text-encoder-only file and a U-Net-only file just merge."""
    a, b, _ = loras
    te_only = tmp_path / "te.safetensors"
    save_file({k: v for k, v in load_file(str(a)).items() if k.startswith("text_encoder.")}, str(te_only))
    out = fuse_loras([LoraSpec(str(te_only), 1.0), LoraSpec(str(b), 1.0)], tmp_path / "f.safetensors")
    fused, te, unet = read_lora_layers(out), read_lora_layers(te_only), read_lora_layers(b)
    assert set(fused) == set(te) | set(unet)
    for m, layer in fused.items():
        torch.testing.assert_close(layer.delta(), (te.get(m) or unet.get(m)).delta(), rtol=0, atol=1e-6)
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    pipe.load_lora_weights(str(out.parent), weight_name=out.name)  # loads both components


def test_fuse_errors_name_file_and_layer(loras, tmp_path):
    a, _, _ = loras
    tensors = load_file(str(a))
    key = next(k for k in tensors if k.endswith("to_q.lora.down.weight"))
    bad = dict(tensors)
    bad[key] = torch.zeros(2, tensors[key].shape[1] + 1)  # same layer, other input width
    save_file(bad, str(tmp_path / "other.safetensors"))
    layer = key[: -len(".lora.down.weight")]
    with pytest.raises(RewardiffError, match=rf"{layer}.*a\.safetensors.*other\.safetensors"):
        fuse_loras([LoraSpec(str(a)), LoraSpec(str(tmp_path / "other.safetensors"))], tmp_path / "f.safetensors")

    with pytest.raises(RewardiffError, match="not found.*missing.safetensors"):
        fuse_loras([LoraSpec(str(tmp_path / "missing.safetensors"))], tmp_path / "f.safetensors")
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(RewardiffError, match=r"x\.bin.*safetensors"):
        fuse_loras([LoraSpec(str(tmp_path / "x.bin"))], tmp_path / "f.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RewardiffError, match=r"junk\.safetensors.*not a readable safetensors"):
        fuse_loras([LoraSpec(str(tmp_path / "junk.safetensors"))], tmp_path / "f.safetensors")
    dora = dict(tensors, **{layer + ".lora_magnitude_vector": torch.ones(4)})
    save_file(dora, str(tmp_path / "dora.safetensors"))
    with pytest.raises(RewardiffError, match="dora.safetensors.*lora_magnitude_vector"):
        fuse_loras([LoraSpec(str(tmp_path / "dora.safetensors"))], tmp_path / "f.safetensors")
    with pytest.raises(RewardiffError, match=r"\.safetensors file"):
        fuse_loras([LoraSpec(str(a))], tmp_path / "f.pt")


def test_network_alpha_keys_scale_the_layer(loras, tmp_path):
    a, _, _ = loras
    tensors = load_file(str(a))
    key = next(k for k in tensors if k.endswith("to_q.lora.down.weight"))
    layer = key[: -len(".lora.down.weight")]
    save_file(dict(tensors, **{layer + ".alpha": torch.tensor(8.0)}), str(tmp_path / "alpha.safetensors"))
    layers = read_lora_layers(tmp_path / "alpha.safetensors")
    assert layers[layer].scale == pytest.approx(8.0 / 2)
    assert all(v.scale == 1.0 for m, v in layers.items() if m != layer)


def _gen(model, out, *loras):
    args = ["generate", "--model", str(model), "--prompts", "a red circle", "--num-images", "2", "--steps", "2",
            "--out", str(out), "--set", "sampling.height=32", "--set", "sampling.width=32"]
    for spec in loras:
        args += ["--lora", spec]
    assert main(args) == 0
    return [load_image(out / r["image"]) for r in read_jsonl(out / "metadata.jsonl")]


def test_cli_fuse_and_generate_with_several_loras(tiny_sd_dir, loras, tmp_path, capsys):
    a, b, _ = loras
    fused = tmp_path / "fused.safetensors"
    assert main(["fuse", f"{a}:{W_A}", f"{b}:{W_B}", "--out", str(fused)]) == 0
    assert fused.is_file()
    two = _gen(tiny_sd_dir, tmp_path / "two", f"{a}:{W_A}", f"{b}:{W_B}")
    one = _gen(tiny_sd_dir, tmp_path / "one", str(fused))
    base = _gen(tiny_sd_dir, tmp_path / "base")
    assert any(np.abs(x.astype(int) - y).max() > 0 for x, y in zip(two, base))
    for x, y in zip(two, one):
        assert np.abs(x.astype(int) - y).max() <= 1  # same model up to uint8 rounding
    capsys.readouterr()
    assert main(["fuse", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "g.safetensors")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
