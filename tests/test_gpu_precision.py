"""The DDIM log-prob step in reduced precision and on a zero-terminal-SNR schedule (issue 14).

fp16 / bf16 U-Nets hand the step fp16 / bf16 tensors; the schedule's arithmetic must stay in
float32 (casting the alphas to the sample's dtype gave sigma_t = 0.01804 instead of 0.02065 at
SD 1.5's last step in fp16 and NaN in bf16). On the shapes generator's zero-terminal-SNR schedule
with eta = 1 the first step's direction radicand rounds below 0 for some step counts (NaN images).
Everything here runs on CPU: no GPU is needed to check the arithmetic.
"""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from rewardiff.diffusion import ddim_step_with_logprob, sample_trajectories
from rewardiff.models.pipeline import load_pipeline

REDUCED = [torch.float16, torch.bfloat16]


def _sd15_scheduler() -> DDIMScheduler:
    """SD 1.5's DDIM schedule (its scheduler config: no alpha set to one, steps offset 1)."""
    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    s.set_timesteps(50)
    return s


def _inputs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and a model output already rounded to `dtype` (what a reduced-precision U-Net gives)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g).to(dtype), torch.randn(2, 4, 8, 8, generator=g).to(dtype)


def _std_float64(s: DDIMScheduler, t: int, eta: float = 1.0) -> float:
    """sigma_t of DDIM eq. 16 in float64, independently of the code under test."""
    a = s.alphas_cumprod.double()
    prev = t - s.config.num_train_timesteps // s.num_inference_steps
    a_t, a_prev = float(a[t]), float(a[prev]) if prev >= 0 else float(s.final_alpha_cumprod)
    return eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))


# float32 arithmetic (op for op diffusers' fp32 step) vs float64: 1 - alpha_t / alpha_prev cancels
# near t = 0, so sigma_t carries ~1e-5 relative rounding there; reduced precision gave 0.13 (fp16).
FLOAT32_REL = 2e-5


def test_sd15_last_step_std_is_the_float64_value():
    s = _sd15_scheduler()
    assert int(s.timesteps[-1]) == 1
    x, out = _inputs(torch.float32)
    step = ddim_step_with_logprob(s, out, 1, x, eta=1.0)
    assert step.std.item() == pytest.approx(_std_float64(s, 1), rel=FLOAT32_REL)
    assert step.std.item() == pytest.approx(0.02065, abs=1e-5)  # the value the issue reports for fp32


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("timestep", [1, 21, 481, 981])
def test_reduced_precision_step_equals_the_float32_step(dtype, timestep):
    """Given the same (rounded) x_t and model output, the fp16 / bf16 step is the fp32 step: same
    sigma_t, mean, x_0 and log-prob (all computed in float32); only x_{t-1} comes back in `dtype`."""
    s = _sd15_scheduler()
    x, out = _inputs(dtype)
    prev = (x.float() + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).to(dtype)
    low = ddim_step_with_logprob(s, out, timestep, x, eta=1.0, prev_sample=prev)
    ref = ddim_step_with_logprob(s, out.float(), timestep, x.float(), eta=1.0, prev_sample=prev.float())
    assert low.std.dtype == low.mean.dtype == low.log_prob.dtype == torch.float32
    assert low.std.item() == pytest.approx(_std_float64(s, timestep), rel=FLOAT32_REL)
    torch.testing.assert_close(low.std, ref.std, rtol=1e-6, atol=0)
    torch.testing.assert_close(low.mean, ref.mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(low.pred_original_sample, ref.pred_original_sample, rtol=1e-6, atol=1e-7)
    assert torch.isfinite(low.log_prob).all()
    torch.testing.assert_close(low.log_prob, ref.log_prob, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("dtype", REDUCED)
def test_reduced_precision_draw_is_in_the_sample_dtype_and_scored_as_stored(dtype):
    """A drawn x_{t-1} is returned in the sample's dtype, lies near mean + sigma z, and its log-prob
    is that of the stored (rounded) value: rescoring the stored sample gives the same number (PPO)."""
    s = _sd15_scheduler()
    x, out = _inputs(dtype, seed=2)
    for t in (1, 21, 981):
        step = ddim_step_with_logprob(s, out, t, x, eta=1.0, generator=torch.Generator().manual_seed(3))
        assert step.prev_sample.dtype == dtype and torch.isfinite(step.prev_sample.float()).all()
        assert torch.isfinite(step.log_prob).all()
        z = (step.prev_sample.float() - step.mean) / step.std
        assert 0.5 < float(z.std()) < 1.5  # a unit Gaussian draw, not NaN / collapsed / blown up
        again = ddim_step_with_logprob(s, out, t, x, eta=1.0, prev_sample=step.prev_sample)
        torch.testing.assert_close(again.log_prob, step.log_prob, rtol=0, atol=0)


def _zero_snr_scheduler(steps: int) -> DDIMScheduler:
    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                      prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=1)
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("steps", range(1, 9))
def test_zero_terminal_snr_first_step_is_finite(steps):
    """alpha_T = 0: sigma_T^2 = 1 - alpha_prev exactly, so the direction coefficient is 0 (float32
    rounds its radicand to -6e-8 for 3, 6 and 7 steps); the step must stay finite, the mean be x_0."""
    s = _zero_snr_scheduler(steps)
    assert float(s.alphas_cumprod[int(s.timesteps[0])]) == 0.0
    x, out = _inputs(torch.float32, seed=4)
    for t in s.timesteps:
        step = ddim_step_with_logprob(s, out, t, x, eta=1.0, generator=torch.Generator().manual_seed(5))
        assert torch.isfinite(step.mean).all() and torch.isfinite(step.prev_sample).all()
        assert torch.isfinite(step.log_prob).all() and step.std.item() > 0
    first = ddim_step_with_logprob(s, out, s.timesteps[0], x, eta=1.0, generator=torch.Generator().manual_seed(5))
    a_prev = s.alphas_cumprod[int(s.timesteps[0]) - 1000 // steps] if steps > 1 else s.final_alpha_cumprod
    torch.testing.assert_close(first.mean, a_prev.sqrt() * first.pred_original_sample, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def shapes_pipe():
    return load_pipeline("shapes")[0]


@pytest.mark.parametrize("steps", range(1, 9))
def test_shapes_generator_eta1_trajectories_are_finite_for_every_step_count(shapes_pipe, steps):
    with torch.no_grad():
        traj = sample_trajectories(shapes_pipe, ["a red circle", "two blue squares"], seeds=[0, 1], steps=steps, eta=1.0,
                                   guidance=5.0, guidance_rescale=0.7)
    assert torch.isfinite(traj.latents).all(), "latents contain NaN"
    assert torch.isfinite(traj.images).all(), "images contain NaN"
    assert torch.isfinite(traj.log_probs).all() and (traj.log_probs != 0).all()


@pytest.mark.parametrize("dtype", REDUCED)
def test_shapes_generator_reduced_precision_eta1_is_finite(dtype):
    """The whole sampler with a half-precision U-Net / text encoder (CPU): finite latents and log-probs,
    latents in the model's dtype, log-probs in float32."""
    pipe = load_pipeline("shapes")[0].to(dtype=dtype)
    with torch.no_grad():
        traj = sample_trajectories(pipe, ["a red circle", "two blue squares"], seeds=[0, 1], steps=6, eta=1.0, guidance=5.0,
                                   guidance_rescale=0.7, decode=False)
    assert traj.latents.dtype == dtype and traj.log_probs.dtype == torch.float32
    assert torch.isfinite(traj.latents.float()).all() and torch.isfinite(traj.log_probs).all()
