"""LoRA SFT / Diffusion-DPO: the exact DPO loss, the v-prediction target, training lowers the
loss on its data, the file opens with pipe.load_lora_weights, and a killed run resumes to the
same weights."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rewardiff.algorithms.sft import SFTConfig, TrainExample, diffusion_dpo_loss, diffusion_target, train_lora
from rewardiff.errors import RewardiffError
from rewardiff.models.pipeline import load_pipeline
from rewardiff.shapes.render import render


def test_dpo_loss_exact_values():
    mw, ml, rw, rl = torch.tensor([0.2, 0.5]), torch.tensor([0.4, 0.1]), torch.tensor([0.3, 0.3]), torch.tensor([0.3, 0.3])
    loss, m = diffusion_dpo_loss(mw, ml, rw, rl, beta=10.0)
    # inside = -0.5 * 10 * ((mw - ml) - (rw - rl)) = [1.0, -2.0]
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(2.0)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["implicit_acc"] == 0.5
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
            text = _encode(pipe, [e.prompt for e in ex] * 8)
            pred = pipe.unet(pipe.scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=text).sample
        per_example = ((pred - diffusion_target(pipe.scheduler, z0, noise, t)) ** 2).mean(dim=(1, 2, 3))
        return float((per_example * min_snr_weight(pipe.scheduler, t, snr_gamma)).mean())

    pipe, _ = load_pipeline("shapes")
    before = eval_loss(pipe)
    train_lora(pipe, ex, SFTConfig(steps=15, batch_size=4, lr=3e-3, rank=4, alpha=4.0, cond_dropout=0.0, snr_gamma=snr_gamma), tmp_path / "t", progress=False)
    assert eval_loss(pipe) < before
