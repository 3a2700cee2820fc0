"""The shared RL sampler: exact log-densities, diffusers-equal DDIM steps, pipeline-equal images."""

import pytest
import torch
from diffusers import DDIMScheduler
from torch.distributions import Normal, kl_divergence

from rewardiff.diffusion import (
    ddim_step_with_logprob,
    decode_latents,
    encode_prompts,
    gaussian_kl,
    gaussian_log_prob,
    guided_model_output,
    sample_trajectories,
)
from rewardiff.errors import RewardiffError
from rewardiff.models.pipeline import load_pipeline

PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a red square"]


@pytest.fixture(scope="module")
def shapes_pipe():
    return load_pipeline("shapes")[0]


@pytest.fixture(scope="module")
def tiny_pipe(tiny_sd_dir):
    return load_pipeline(str(tiny_sd_dir))[0]


def _pipeline_images(pipe, prompts, seeds, steps, guidance, rescale=0.0, eta=0.0):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.no_grad():
        return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, guidance_rescale=rescale,
                    generator=gens, eta=eta, output_type="pt", height=32, width=32).images


@pytest.mark.parametrize("std", [torch.tensor(0.37), torch.tensor([0.2, 1.5]).view(2, 1, 1, 1)])
def test_gaussian_log_prob_is_the_normal_density(std):
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g)
    expected = Normal(mean, std.expand_as(mean)).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected, rtol=1e-6, atol=1e-4)


def test_gaussian_kl_closed_form():
    g = torch.Generator().manual_seed(1)
    mp, mq = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    std = torch.tensor(0.5)
    expected = kl_divergence(Normal(mp, std.expand_as(mp)), Normal(mq, std.expand_as(mq))).sum(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_kl(mp, mq, std), expected)
    # exact value on a hand example: one dim differs by 1, std 0.5 -> 1 / (2 * 0.25) = 2
    a = torch.zeros(1, 1, 1, 2)
    b = torch.tensor([[[[1.0, 0.0]]]])
    assert gaussian_kl(a, b, std).item() == pytest.approx(2.0)
    assert gaussian_kl(a, a, std).item() == 0.0


def _scheduler(prediction_type: str, zero_snr: bool) -> DDIMScheduler:
    kwargs = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing") if zero_snr else dict(steps_offset=1)
    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      set_alpha_to_one=False, prediction_type=prediction_type, **kwargs)
    s.set_timesteps(10)
    return s


# epsilon prediction with a zero-terminal-SNR schedule is undefined at t = T (x_0 = inf in diffusers too)
@pytest.mark.parametrize("prediction_type,zero_snr", [("epsilon", False), ("v_prediction", False), ("v_prediction", True),
                                                      ("sample", False), ("sample", True)])
def test_step_eta0_equals_diffusers_and_mean_is_the_noise_free_step(prediction_type, zero_snr):
    s = _scheduler(prediction_type, zero_snr)
    g = torch.Generator().manual_seed(2)
    x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in s.timesteps:  # includes the first (terminal-SNR) and the last (prev < 0) step
        ours = ddim_step_with_logprob(s, out, t, x, eta=0.0)
        ref = s.step(out, t, x, eta=0.0)
        torch.testing.assert_close(ours.prev_sample, ref.prev_sample, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.pred_original_sample, ref.pred_original_sample, rtol=0, atol=1e-6)
        # eta > 0: the mean is diffusers' step with zero variance noise, and a drawn sample is
        # diffusers' step with the same generator
        ours = ddim_step_with_logprob(s, out, t, x, eta=1.0, generator=torch.Generator().manual_seed(5))
        noise_free = s.step(out, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        torch.testing.assert_close(ours.mean, noise_free, rtol=0, atol=1e-6)
        drawn = s.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(5)).prev_sample
        torch.testing.assert_close(ours.prev_sample, drawn, rtol=0, atol=1e-6)
        expected = Normal(ours.mean, ours.std.expand_as(ours.mean)).log_prob(ours.prev_sample).sum(dim=(1, 2, 3))
        torch.testing.assert_close(ours.log_prob, expected, rtol=1e-5, atol=1e-3)


def test_per_image_timesteps_equal_one_call_per_image():
    s = _scheduler("v_prediction", True)
    g = torch.Generator().manual_seed(3)
    x, out, prev = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    ts = s.timesteps[torch.tensor([0, 4, 9])]
    batched = ddim_step_with_logprob(s, out, ts, x, eta=0.7, prev_sample=prev)
    for i in range(3):
        one = ddim_step_with_logprob(s, out[i:i + 1], ts[i], x[i:i + 1], eta=0.7, prev_sample=prev[i:i + 1])
        torch.testing.assert_close(batched.mean[i:i + 1], one.mean)
        torch.testing.assert_close(batched.log_prob[i:i + 1], one.log_prob)
    assert batched.std.shape == (3, 1, 1, 1) and len(set(batched.std.flatten().tolist())) == 3


def test_scoring_a_given_sample_needs_no_noise_and_prev_sample_is_kept():
    s = _scheduler("epsilon", False)
    x, out, prev = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    step = ddim_step_with_logprob(s, out, s.timesteps[3], x, eta=1.0, prev_sample=prev)
    assert step.prev_sample is prev
    s2 = DDIMScheduler()
    with pytest.raises(RewardiffError, match="set_timesteps"):
        ddim_step_with_logprob(s2, out, 10, x)


def test_eta0_reproduces_the_tiny_sd_pipeline(tiny_pipe):
    seeds = [0, 7, 3]
    ours = sample_trajectories(tiny_pipe, PROMPTS, seeds=seeds, steps=4, guidance=4.0, eta=0.0)
    ref = _pipeline_images(tiny_pipe, PROMPTS, seeds, 4, 4.0)
    assert ours.images.shape == ref.shape == (3, 3, 32, 32)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-5)
    assert ours.latents.shape == (3, 5, 4, 16, 16) and ours.log_probs.shape == (3, 4)


def test_eta0_reproduces_the_shapes_pipeline_with_guidance_rescale(shapes_pipe):
    seeds = [0, 1, 2]
    with torch.no_grad():
        ours = sample_trajectories(shapes_pipe, PROMPTS, seeds=seeds, steps=6, guidance=5.0, guidance_rescale=0.7, eta=0.0)
    ref = _pipeline_images(shapes_pipe, PROMPTS, seeds, 6, 5.0, rescale=0.7)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-5)
    # and the eta > 0 chain draws the same step noise as the pipeline from the same seeds
    with torch.no_grad():
        ours = sample_trajectories(shapes_pipe, PROMPTS[:2], seeds=seeds[:2], steps=4, guidance=5.0, guidance_rescale=0.7, eta=1.0)
    ref = _pipeline_images(shapes_pipe, PROMPTS[:2], seeds[:2], 4, 5.0, rescale=0.7, eta=1.0)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-5)


def test_log_probs_recomputed_from_the_stored_trajectory_match(shapes_pipe):
    with torch.no_grad():
        traj = sample_trajectories(shapes_pipe, PROMPTS, seeds=[4, 5, 6], steps=5, guidance=5.0, guidance_rescale=0.7, eta=1.0)
        assert torch.isfinite(traj.log_probs).all() and (traj.log_probs != 0).all()
        sched = shapes_pipe.scheduler
        for i, t in enumerate(traj.timesteps):
            out = guided_model_output(shapes_pipe.unet, traj.latents[:, i], t, traj.prompt_embeds, traj.negative_prompt_embeds, 5.0, 0.7)
            step = ddim_step_with_logprob(sched, out, t, traj.latents[:, i], eta=1.0, prev_sample=traj.latents[:, i + 1])
            torch.testing.assert_close(step.log_prob, traj.log_probs[:, i], rtol=1e-5, atol=1e-3)
            # a different x_{t-1} has a lower density than the one drawn near the mean
            other = ddim_step_with_logprob(sched, out, t, traj.latents[:, i], eta=1.0, prev_sample=step.mean + 3 * step.std)
            assert (other.log_prob < step.log_prob).all()


def test_stop_at_step_is_a_prefix_and_decode_is_differentiable(shapes_pipe):
    with torch.no_grad():
        full = sample_trajectories(shapes_pipe, PROMPTS[:2], seeds=[0, 1], steps=5, guidance=5.0, eta=1.0)
        part = sample_trajectories(shapes_pipe, PROMPTS[:2], seeds=[0, 1], steps=5, guidance=5.0, eta=1.0, stop_at_step=3)
    assert part.images is None and part.latents.shape[1] == 4 and part.log_probs.shape == (2, 3)
    torch.testing.assert_close(part.latents, full.latents[:, :4])
    torch.testing.assert_close(part.timesteps, full.timesteps[:3])
    x0 = full.latents[:, -1].clone().requires_grad_()
    images = decode_latents(shapes_pipe, x0)
    assert images.min() >= 0 and images.max() <= 1
    images.mean().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    with pytest.raises(RewardiffError, match="stop_at_step"):
        sample_trajectories(shapes_pipe, PROMPTS[:1], seeds=[0], steps=3, stop_at_step=4)
    with pytest.raises(RewardiffError, match="seeds"):
        sample_trajectories(shapes_pipe, PROMPTS[:2], seeds=[0], steps=3)


def test_encode_prompts_matches_the_pipeline_and_keeps_grad(tiny_pipe):
    cond, uncond = (c.embeds for c in encode_prompts(tiny_pipe, PROMPTS))
    ref_c, ref_u = tiny_pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    torch.testing.assert_close(cond, ref_c, rtol=0, atol=1e-5)
    torch.testing.assert_close(uncond, ref_u, rtol=0, atol=1e-5)
    assert not cond.requires_grad  # frozen encoder
    enc = tiny_pipe.text_encoder
    weight = enc.get_input_embeddings().weight
    weight.requires_grad_(True)
    try:
        cond = encode_prompts(tiny_pipe, PROMPTS[:1])[0].embeds
        cond.sum().backward()
        assert weight.grad is not None and weight.grad.abs().sum() > 0
        with torch.no_grad():
            assert not encode_prompts(tiny_pipe, PROMPTS[:1])[0].embeds.requires_grad
    finally:
        weight.requires_grad_(False)
        weight.grad = None
