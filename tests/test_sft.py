"""LoRA SFT / Diffusion-DPO: the exact DPO loss, the v-prediction target, training lowers the
loss on its data, the file opens with pipe.load_lora_weights, and a killed run resumes to the
same weights."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rewardiff.algorithms.sft import SFTConfig, TrainExample, diffusion_dpo_loss, diffusion_target, dpo_errors, prepare_lora, train_lora
from rewardiff.errors import RewardiffError
from rewardiff.models.pipeline import load_pipeline
from rewardiff.shapes.render import render


def test_dpo_loss_exact_values():
    # unequal reference errors: a loss that dropped the reference or flipped its sign would differ
    mw, ml, rw, rl = torch.tensor([0.2, 0.5]), torch.tensor([0.4, 0.1]), torch.tensor([0.3, 0.1]), torch.tensor([0.25, 0.3])
    loss, m = diffusion_dpo_loss(mw, ml, rw, rl, beta=10.0)
    # model_diff = [-0.2, 0.4], ref_diff = [0.05, -0.2]; inside = -0.5 * 10 * (model_diff - ref_diff) = [1.25, -3.0]
    expected = (math.log1p(math.exp(-1.25)) + math.log1p(math.exp(3.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    no_reference = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2  # inside = [1.0, -2.0]
    flipped_reference = (math.log1p(math.exp(-0.75)) + math.log1p(math.exp(1.0))) / 2  # inside = [0.75, -1.0]
    assert abs(expected - no_reference) > 0.1 and abs(expected - flipped_reference) > 0.1
    assert m["implicit_acc"] == 0.5
    assert m["model_diff"] == pytest.approx(0.1) and m["ref_diff"] == pytest.approx(-0.075)
    same, _ = diffusion_dpo_loss(rw, rl, rw, rl, beta=5000.0)  # model == reference: log 2
    assert same.item() == pytest.approx(math.log(2), rel=1e-6)


def test_diffusion_target_follows_prediction_type():
    from diffusers import DDIMScheduler

    z0, noise, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([10, 500])
    eps = DDIMScheduler(prediction_type="epsilon")
    assert torch.equal(diffusion_target(eps, z0, noise, t), noise)
    v = DDIMScheduler(prediction_type="v_prediction")
    a = v.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - v.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(diffusion_target(v, z0, noise, t), a * noise - s * z0, atol=1e-6)
    with pytest.raises(RewardiffError):
        diffusion_target(DDIMScheduler(prediction_type="sample"), z0, noise, t)


def test_min_snr_weight_matches_the_formula_for_both_targets():
    from diffusers import DDIMScheduler, training_utils

    from rewardiff.diffusion.training_loss import min_snr_weight

    t = torch.tensor([0, 100, 500, 900, 999])
    for kind, denominator in (("epsilon", lambda snr: snr), ("v_prediction", lambda snr: snr + 1)):
        sched = DDIMScheduler(prediction_type=kind)
        snr = training_utils.compute_snr(sched, t)  # diffusers' own SNR, as its training scripts weigh
        expected = torch.minimum(snr, torch.full_like(snr, 5.0)) / denominator(snr)
        assert torch.allclose(min_snr_weight(sched, t, 5.0), expected, rtol=1e-4)
    assert torch.equal(min_snr_weight(sched, t, 0.0), torch.ones(5))
    zero_snr = DDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    w = min_snr_weight(zero_snr, torch.tensor([999, 0]), 5.0)
    assert w[0].item() == 0.0 and 0 < w[1].item() < 0.1  # pure noise and near-clean steps weigh little


def test_timestep_fraction_limits_training_noise_levels(tmp_path):
    from diffusers import DDIMScheduler

    from rewardiff.diffusion.training_loss import sample_timesteps, timestep_bounds

    sched = DDIMScheduler()
    high = sample_timesteps(sched, 4000, torch.Generator().manual_seed(0), [0.6, 1.0])
    assert int(high.min()) >= 600 and int(high.max()) == 999 and float(high.float().mean()) == pytest.approx(799.5, abs=5)
    # the full range draws exactly what the plain uniform draw did (earlier runs reproduce)
    assert torch.equal(sample_timesteps(sched, 16, torch.Generator().manual_seed(3)), torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(3)))
    assert timestep_bounds(sched, [0.999, 1.0]) == (999, 1000)
    for bad in ([0.5, 0.5], [-0.1, 1.0], [0.2, 1.5], [0.5]):
        with pytest.raises(RewardiffError, match="timestep fraction"):
            timestep_bounds(sched, bad)
    with pytest.raises(RewardiffError, match="timestep fraction"):  # refused before any work is written
        train_lora(load_pipeline("shapes")[0], _examples(), SFTConfig(timesteps=[0.9, 0.1]), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def _examples(rejected: bool = False) -> list[TrainExample]:
    prompts = ["a red circle", "a blue square"]
    return [TrainExample(p, render(p, i).image, render("a green triangle", i).image if rejected else None) for i, p in enumerate(prompts)]


CFG = dict(steps=4, batch_size=2, checkpoint_every=2, lr=1e-3, rank=2, alpha=2.0)


def test_sft_writes_diffusers_lora_and_resumes_identically(tmp_path):
    pipe, _ = load_pipeline("shapes")
    full = train_lora(pipe, _examples(), SFTConfig(**CFG), tmp_path / "full", progress=False)
    state = load_file(full)
    assert state and all(k.startswith("unet.") for k in state) and any(v.abs().sum() > 0 for k, v in state.items() if "up" in k)

    fresh, _ = load_pipeline("shapes")
    fresh.load_lora_weights(str(full.parent), weight_name=full.name, adapter_name="x")  # diffusers opens it
    assert "x" in fresh.unet.peft_config

    class Kill(Exception):
        pass

    import rewardiff.algorithms.sft as sft

    real_save = sft._save_checkpoint

    def save_then_die(*args):
        real_save(*args)
        raise Kill

    sft._save_checkpoint = save_then_die
    try:
        with pytest.raises(Kill):
            train_lora(load_pipeline("shapes")[0], _examples(), SFTConfig(**CFG), tmp_path / "killed", progress=False)
    finally:
        sft._save_checkpoint = real_save
    assert (tmp_path / "killed" / "checkpoint" / "state.json").is_file()
    resumed = train_lora(load_pipeline("shapes")[0], _examples(), SFTConfig(**CFG), tmp_path / "killed", progress=False)
    other = load_file(resumed)
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_dpo_trains_from_previous_lora_with_text_encoder(tmp_path):
    pipe, _ = load_pipeline("shapes")
    first = train_lora(pipe, _examples(), SFTConfig(**{**CFG, "steps": 2}), tmp_path / "r1", progress=False)
    pipe, _ = load_pipeline("shapes")
    cfg = SFTConfig(**{**CFG, "steps": 2, "loss": "dpo", "train_text_encoder": True})
    second = train_lora(pipe, _examples(rejected=True), cfg, tmp_path / "r2", init_lora=first, progress=False)
    a, b = load_file(first), load_file(second)
    assert any(k.startswith("text_encoder.") for k in b)
    shared = [k for k in a if k in b]
    assert shared and any(not torch.equal(a[k], b[k]) for k in shared)  # continued, then changed
    with pytest.raises(RewardiffError, match="rejected image"):
        train_lora(load_pipeline("shapes")[0], _examples(), SFTConfig(loss="dpo"), tmp_path / "bad", progress=False)
    with pytest.raises(RewardiffError, match="nothing to train"):
        train_lora(load_pipeline("shapes")[0], [], SFTConfig(), tmp_path / "none", progress=False)


@pytest.mark.parametrize("snr_gamma", [0.0, 5.0])
def test_sft_lowers_loss_on_its_data(tmp_path, snr_gamma):
    """More steps on a fixed set: the (min-SNR weighted) diffusion loss on that set (fixed t, noise) drops."""
    from rewardiff.algorithms.sft import _encode, _images_to_latents
    from rewardiff.diffusion.training_loss import min_snr_weight

    ex = _examples()

    def eval_loss(pipe) -> float:
        g = torch.Generator().manual_seed(0)
        z0 = _images_to_latents(pipe, [e.image for e in ex]).repeat(8, 1, 1, 1)
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (z0.shape[0],), generator=g)
        with torch.no_grad():
            text = _encode(pipe, [e.prompt for e in ex] * 8).embeds
            pred = pipe.unet(pipe.scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=text).sample
        per_example = ((pred - diffusion_target(pipe.scheduler, z0, noise, t)) ** 2).mean(dim=(1, 2, 3))
        return float((per_example * min_snr_weight(pipe.scheduler, t, snr_gamma)).mean())

    pipe, _ = load_pipeline("shapes")
    before = eval_loss(pipe)
    train_lora(pipe, ex, SFTConfig(steps=15, batch_size=4, lr=3e-3, rank=4, alpha=4.0, cond_dropout=0.0, snr_gamma=snr_gamma), tmp_path / "t", progress=False)
    assert eval_loss(pipe) < before


def _randomise_text_encoder_lora(pipe, seed: int = 0) -> None:
    """Non-zero text-encoder LoRA (B starts at zero), U-Net LoRA left at zero: the policy then
    differs from the base model through its prompt embeddings only."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pipe.text_encoder.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    assert all(float(p.detach().abs().sum()) == 0 for n, p in pipe.unet.named_parameters() if "lora_B" in n)


def _pair_batch(pipe, examples, repeat: int = 1, seed: int = 0):
    from rewardiff.algorithms.sft import _images_to_latents

    zw = _images_to_latents(pipe, [e.image for e in examples]).repeat(repeat, 1, 1, 1)
    zl = _images_to_latents(pipe, [e.rejected for e in examples]).repeat(repeat, 1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(zw.shape, generator=g)
    t = torch.randint(0, 1000, (zw.shape[0],), generator=g)
    return zw, zl, noise, t, [e.prompt for e in examples] * repeat


def test_dpo_reference_is_the_base_model_including_the_text_encoder():
    """With train_text_encoder the reference re-encodes the prompts with the frozen text encoder:
    its errors are the base pipeline's, not the policy's (text-encoder drift is penalised)."""
    from rewardiff.algorithms.sft import _encode

    pipe, _ = load_pipeline("shapes")
    torch.manual_seed(0)
    prepare_lora(pipe, SFTConfig(rank=2, alpha=2.0, loss="dpo", train_text_encoder=True))
    _randomise_text_encoder_lora(pipe)
    zw, zl, noise, t, prompts = _pair_batch(pipe, _examples(rejected=True))
    text = _encode(pipe, prompts)
    grads = {n: p.requires_grad for n, p in pipe.text_encoder.named_parameters()}
    with torch.no_grad():
        err, ref = dpo_errors(pipe, zw, zl, noise, t, text, prompts)
        base, _ = load_pipeline("shapes")
        base_err, base_ref = dpo_errors(base, zw, zl, noise, t, _encode(base, prompts))
    assert float((err - ref).abs().max()) > 1e-3  # the policy's text-encoder LoRA is visible to the loss
    torch.testing.assert_close(ref, base_err)  # the reference is the base model
    torch.testing.assert_close(base_ref, base_err)  # (no adapters: reference = policy)
    # the adapters are back on, trainability as before
    assert torch.equal(_encode(pipe, prompts).embeds, text.embeds)
    assert grads == {n: p.requires_grad for n, p in pipe.text_encoder.named_parameters()}


def test_dpo_training_scores_the_reference_with_the_frozen_text_encoder(tmp_path, monkeypatch):
    """Through train_lora: at the first step (U-Net LoRA still zero, text-encoder LoRA non-zero)
    the policy's errors differ from the reference's; reusing the LoRA text embeddings for the
    reference made them equal."""
    import rewardiff.algorithms.sft as sft

    real_prepare, real_loss, seen = sft.prepare_lora, sft.diffusion_dpo_loss, []

    def prepare_then_randomise(pipe, cfg, init_lora=None):
        modules = real_prepare(pipe, cfg, init_lora)
        _randomise_text_encoder_lora(pipe)
        return modules

    def record(model_w, model_l, ref_w, ref_l, beta):
        seen.append([x.detach().clone() for x in (model_w, model_l, ref_w, ref_l)])
        return real_loss(model_w, model_l, ref_w, ref_l, beta)

    monkeypatch.setattr(sft, "prepare_lora", prepare_then_randomise)
    monkeypatch.setattr(sft, "diffusion_dpo_loss", record)
    cfg = SFTConfig(**{**CFG, "steps": 1, "loss": "dpo", "train_text_encoder": True, "cond_dropout": 0.0})
    train_lora(load_pipeline("shapes")[0], _examples(rejected=True), cfg, tmp_path / "te", progress=False)
    model_w, model_l, ref_w, ref_l = seen[0]
    assert float((model_w - ref_w).abs().max()) > 1e-3 and float((model_l - ref_l).abs().max()) > 1e-3


def _dpo_margin(pipe, examples) -> tuple[float, float]:
    """(mean DPO margin, min reference gap) on fixed (t, noise) draws of the pairs:
    margin = (e_w - r_w) - (e_l - r_l) (< 0: chosen denoised better than rejected, relative to the
    reference), reference gap = r_l - r_w."""
    from rewardiff.algorithms.sft import _encode

    zw, zl, noise, t, prompts = _pair_batch(pipe, examples, repeat=8, seed=1)
    with torch.no_grad():
        err, ref = dpo_errors(pipe, zw, zl, noise, t, _encode(pipe, prompts))
    b = zw.shape[0]
    return float(((err[:b] - ref[:b]) - (err[b:] - ref[b:])).mean()), float((ref[b:] - ref[:b]).min())


def test_dpo_lowers_the_chosen_error_relative_to_the_rejected_one(tmp_path):
    """The direction of Diffusion-DPO (issue 13 audit): a few steps lower the chosen image's
    denoising error relative to the rejected one's, both measured against the reference.

    Mutants this catches (each checked by hand): chosen and rejected swapped at the call in
    train_lora moves the margin the wrong way (+0.15); a reference term of the wrong sign only
    reweights the gradient, so the data make that weight vanish: the rejected images are pixel
    noise, which the base model denoises much worse than the renders (reference gap
    r_l - r_w > 1, checked), and with beta = 2000 that loss starts at -log sigmoid(-1000), whose
    gradient is 0: its margin stays 0. The correct loss starts at log 2 and reaches about -0.14."""
    rng = np.random.default_rng(0)
    prompts = ["a red circle", "a blue square"]
    renders = [render(p, i).image for i, p in enumerate(prompts)]
    examples = [TrainExample(p, im, rng.integers(0, 256, im.shape, dtype=np.uint8)) for p, im in zip(prompts, renders)]
    pipe, _ = load_pipeline("shapes")
    before, gap = _dpo_margin(pipe, examples)
    assert before == 0.0 and gap > 1.0  # no LoRA yet: policy = reference; the reference clearly prefers the chosen
    cfg = SFTConfig(loss="dpo", steps=6, batch_size=2, lr=1e-3, rank=4, alpha=4.0, cond_dropout=0.0, dpo_beta=2000.0, checkpoint_every=100)
    train_lora(pipe, examples, cfg, tmp_path / "dpo", progress=False)
    after, _ = _dpo_margin(pipe, examples)
    assert after < -0.01, f"DPO margin {after:.3g}: the chosen image's error did not fall relative to the rejected one's"


@pytest.mark.parametrize("scope, text_encoder, prefixes", [("cross_attention", False, {"unet"}), ("none", True, {"text_encoder"})])
def test_unet_lora_scope_adapts_only_what_it_names(tmp_path, scope, text_encoder, prefixes):
    """cross_attention: only the attn2 (prompt-reading) projections carry a LoRA; none: the text
    encoder alone; both files open with load_lora_weights and change the images."""
    cfg = SFTConfig(**{**CFG, "unet_lora": scope, "train_text_encoder": text_encoder})
    path = train_lora(load_pipeline("shapes")[0], _examples(), cfg, tmp_path / scope, progress=False)
    state = load_file(path)
    assert {k.split(".")[0] for k in state} == prefixes
    if scope == "cross_attention":
        assert all(".attn2." in k for k in state)
    pipe, _ = load_pipeline("shapes")
    kwargs = dict(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    before = pipe("a red circle", **kwargs).images
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="s")
    kwargs["generator"] = torch.Generator().manual_seed(0)
    assert not np.array_equal(before, pipe("a red circle", **kwargs).images)


def test_unet_lora_scope_is_validated():
    from rewardiff.algorithms.sft import validate_sft_config

    with pytest.raises(RewardiffError, match="unet_lora must be one of"):
        validate_sft_config(SFTConfig(unet_lora="mlp"))
    with pytest.raises(RewardiffError, match="nothing would be trained"):
        validate_sft_config(SFTConfig(unet_lora="none"))


def test_guided_loss_trains_the_prediction_the_sampler_uses():
    """guided_loss = w: the loss is the MSE of u + w (c - u) (two separate U-Net calls here,
    one batched call in the trainer) with guidance rescale, not of the conditional prediction."""
    from rewardiff.diffusion.sampling import rescale_noise_cfg
    from rewardiff.diffusion.training_loss import denoising_loss

    pipe, _ = load_pipeline("shapes")
    unet, sched = pipe.unet, pipe.scheduler
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, unet.config.in_channels, 8, 8, generator=gen)
    with torch.no_grad():
        cond = pipe.encode_prompt(["a red circle", "two blue squares"], "cpu", 1, False)[0]
        uncond = pipe.encode_prompt(["", ""], "cpu", 1, False)[0]
        noise, t = torch.randn(z0.shape, generator=gen), torch.tensor([300, 800])
        noisy = sched.add_noise(z0, noise, t)
        c, u = unet(noisy, t, encoder_hidden_states=cond).sample, unet(noisy, t, encoder_hidden_states=uncond).sample
        target = diffusion_target(sched, z0, noise, t)
        want = ((rescale_noise_cfg(u + 5.0 * (c - u), c, 0.7) - target) ** 2).mean()
        got = denoising_loss(unet, sched, z0, cond, noise=(noise, t), uncond=uncond, guidance=5.0, guidance_rescale=0.7)
        plain = denoising_loss(unet, sched, z0, cond, noise=(noise, t))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, ((c - target) ** 2).mean(), rtol=1e-5, atol=1e-6)
    assert abs(float(got) - float(plain)) > 1e-3


def test_guided_loss_is_validated():
    from rewardiff.algorithms.sft import validate_sft_config

    with pytest.raises(RewardiffError, match="guided_loss applies to loss 'sft' only"):
        validate_sft_config(SFTConfig(loss="dpo", guided_loss=5.0))
    with pytest.raises(RewardiffError, match="guided_loss_rescale"):
        validate_sft_config(SFTConfig(guided_loss=5.0, guided_loss_rescale=1.5))
