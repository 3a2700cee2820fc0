"""The shared RL sampler: DDIM steps with log-probabilities and whole trajectories (ReFL, DDPO, CCSR)."""

from rewardiff.diffusion.conditioning import Conditioning, encode_text
from rewardiff.diffusion.logprob import StepOutput, ddim_step_with_logprob, gaussian_kl, gaussian_log_prob
from rewardiff.diffusion.sampling import (
    Trajectory,
    decode_latents,
    encode_prompts,
    ensure_ddim,
    guided_model_output,
    sample_trajectories,
)

__all__ = [
    "Conditioning", "encode_text", "StepOutput", "Trajectory", "ddim_step_with_logprob", "decode_latents", "encode_prompts", "ensure_ddim",
    "gaussian_kl", "gaussian_log_prob", "guided_model_output", "sample_trajectories",
]
