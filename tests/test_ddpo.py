"""DDPO / TexForce: the PPO loss, the update's gradients, resume to identical weights, LoRA output."""

import pytest
import torch
from safetensors.torch import load_file

from rewardiff.algorithms import ddpo as D  # noqa: N812
from rewardiff.algorithms.ddpo import DDPOConfig, ppo_loss, train_ddpo
from rewardiff.algorithms.lora_checkpoint import LORA_PARAMS
from rewardiff.cli import build_parser
from rewardiff.errors import RewardiffError
from rewardiff.models.pipeline import load_pipeline
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.jpeg import JpegIncompressibility


@pytest.mark.parametrize("adv,ratio,clip,expected", [
    ([1.0], [1.0], 0.2, -1.0),  # on-policy: -A
    ([1.0], [1.5], 0.2, -1.2),  # A > 0, ratio above 1 + eps: clipped, no gain past it
    ([1.0], [0.5], 0.2, -0.5),  # A > 0, ratio below 1 - eps: unclipped (the pessimistic max)
    ([-2.0], [0.5], 0.2, 1.6),  # A < 0, ratio below 1 - eps: clipped at 0.8
    ([-2.0], [1.5], 0.2, 3.0),  # A < 0, ratio above: unclipped
    ([1.0, -1.0], [1.5, 0.5], 0.2, -0.2),  # batch mean
    ([3.0], [1.00005], 1e-4, -3.00015),  # inside the clip range: plain -A r
])
def test_ppo_loss_exact(adv, ratio, clip, expected):
    assert ppo_loss(torch.tensor(adv), torch.tensor(ratio), clip).item() == pytest.approx(expected, rel=1e-6)


def test_ppo_loss_gradient_is_zero_when_clipped():
    ratio = torch.tensor([1.5, 1.1], requires_grad=True)
    ppo_loss(torch.tensor([1.0, 1.0]), ratio, 0.2).backward()
    torch.testing.assert_close(ratio.grad, torch.tensor([0.0, -0.5]))


def _cfg(tiny_sd_dir, out, **kw) -> DDPOConfig:
    base = dict(model=str(tiny_sd_dir), reward=["jpeg_incompressibility"], prompts="a red circle", target="both",
                lora_rank=2, lr=1e-2, epochs=3, sample_batch_size=2, sample_batches=1, train_batch_size=1,
                steps=3, guidance=3.0, guidance_rescale=0.0, advantages="batch", clip_range=0.2, out=str(out))
    base.update(kw)
    return DDPOConfig(**base)


def _lora(path):
    return load_file(str(path / "checkpoint" / LORA_PARAMS))


class _KilledAt(Reward):
    """JPEG reward that raises (as a kill would stop the run) on its n-th call."""

    name = "killed"

    def __init__(self, n):
        super().__init__()
        self.n, self.calls, self.inner = n, 0, JpegIncompressibility()

    def score(self, images, prompts):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.inner.score(images, prompts)


def test_resume_after_a_stop_or_a_kill_ends_with_identical_weights(tiny_sd_dir, tmp_path):
    def pipe():
        return load_pipeline(str(tiny_sd_dir))[0]

    straight = train_ddpo(_cfg(tiny_sd_dir, tmp_path / "a"), pipe(), JpegIncompressibility(), progress=False)
    ref = _lora(tmp_path / "a")
    assert any(k.startswith("text_encoder::") for k in ref) and any(k.startswith("unet::") for k in ref)
    assert any(v.abs().sum() > 0 for k, v in ref.items() if "lora_B" in k)  # it trained

    # stop after 2 epochs, then rerun asking for 3
    train_ddpo(_cfg(tiny_sd_dir, tmp_path / "b", epochs=2), pipe(), JpegIncompressibility(), progress=False)
    resumed = train_ddpo(_cfg(tiny_sd_dir, tmp_path / "b"), pipe(), JpegIncompressibility(), progress=False)
    # killed inside epoch 3 (its sampling), rerun with the same command
    with pytest.raises(KeyboardInterrupt):
        train_ddpo(_cfg(tiny_sd_dir, tmp_path / "c"), pipe(), _KilledAt(3), progress=False)
    train_ddpo(_cfg(tiny_sd_dir, tmp_path / "c"), pipe(), JpegIncompressibility(), progress=False)
    for run in ("b", "c"):
        got = _lora(tmp_path / run)
        assert set(got) == set(ref)
        for k in ref:
            assert torch.equal(got[k], ref[k]), f"{run}: {k} differs"
    assert [h["reward_mean"] for h in resumed.history] == [h["reward_mean"] for h in straight.history]
    rows = (tmp_path / "c" / "train_log.jsonl").read_text().splitlines()
    assert len(rows) == 3  # no duplicated epoch rows after the kill

    # a different run in the same folder is refused
    with pytest.raises(RewardiffError, match="lr"):
        train_ddpo(_cfg(tiny_sd_dir, tmp_path / "a", lr=1e-3), pipe(), JpegIncompressibility(), progress=False)

    # lora.safetensors is a diffusers LoRA: load_lora_weights opens it, and it changes the images
    from rewardiff.generation import SamplingSettings, sample_images
    from rewardiff.models.lora import LoraSpec, apply_loras

    settings = SamplingSettings(steps=3, guidance=3.0, height=32, width=32)
    base = sample_images(pipe(), ["a red circle"], [0], settings)
    tuned_pipe = pipe()
    apply_loras(tuned_pipe, [LoraSpec(str(straight.lora), 1.0)])
    assert (sample_images(tuned_pipe, ["a red circle"], [0], settings).astype(int) != base).any()


class _RecordingOptimizer:
    """Stands in for AdamW: records the gradient of every step instead of moving the weights."""

    def __init__(self, params):
        self.params, self.grads = list(params), []

    def step(self):
        self.grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in self.params])

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


@pytest.mark.parametrize("target", ["unet", "text_encoder"])
def test_update_gradient_does_not_depend_on_timestep_batching(tiny_sd_dir, tmp_path, target):
    """All trained timesteps in one U-Net call == one call per timestep (TexForce: with the
    embedding gradient accumulated on a leaf and pushed through the text encoder once)."""
    pipe = load_pipeline(str(tiny_sd_dir))[0]
    cfg = _cfg(tiny_sd_dir, tmp_path, target=target, steps=4, sample_batch_size=4, train_batch_size=2, gradient_accumulation=2)
    policy = D.Policy(pipe, cfg)
    with torch.no_grad():  # a trained-looking LoRA, so every gradient path is non-zero
        for name, p in policy.named.items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    prompts = ["a red circle", "a red circle", "two blue squares", "two blue squares"]
    samples = D.sample_epoch(pipe, JpegIncompressibility(), prompts, [0, 1, 2, 3], cfg, 0.0)
    samples.advantages = torch.tensor([1.0, -0.5, 0.3, -0.8])
    grads = {}
    for tb in (1, 0):
        cfg.timestep_batch = tb
        opt = _RecordingOptimizer(policy.parameters())
        stats = D.ppo_update(pipe, policy, opt, samples, cfg, 0.0, epoch=0)
        grads[tb] = opt.grads
        # the weights never moved, so the recomputed log-probs equal the sampled ones: ratio 1
        assert stats["approx_kl"] < 1e-5 and stats["clipfrac"] == 0.0  # float noise of other batch shapes only
    assert len(grads[1]) == len(grads[0]) == 1  # 2 minibatches x accumulation 2 = one step
    norms = [g.norm() for g in grads[0][0]]
    assert sum(norms) > 0
    # equal up to float32 noise: the ratio itself carries ~1e-3 relative noise (a log-prob summed
    # over 1024 latent dims, recomputed with other batch shapes); a wrong scale would be >= 50%
    for a, b in zip(grads[1][0], grads[0][0]):
        assert (a - b).norm() <= 1e-2 * a.norm() + 1e-9


class _NaNReward(Reward):
    name = "nan"

    def score(self, images, prompts):
        return RewardOutput(torch.full((len(prompts),), float("nan")))


def test_bad_inputs_are_clear_errors(tiny_sd_dir, tmp_path):
    pipe = load_pipeline(str(tiny_sd_dir))[0]
    with pytest.raises(RewardiffError, match="NaN"):
        train_ddpo(_cfg(tiny_sd_dir, tmp_path / "nan", epochs=1), pipe, _NaNReward(), progress=False)
    for kw, match in [(dict(eta=0.0), "eta > 0"), (dict(target="vae"), "target"), (dict(samples_per_prompt=3), "multiple"),
                      (dict(timestep_fraction=0.0), "timestep_fraction"), (dict(advantages="ranked"), "advantages")]:
        with pytest.raises(RewardiffError, match=match):
            D.validate(_cfg(tiny_sd_dir, tmp_path, **kw))


def test_epoch_prompts_are_grouped_and_reproducible(tiny_sd_dir, tmp_path):
    cfg = _cfg(tiny_sd_dir, tmp_path, sample_batch_size=4, sample_batches=2, samples_per_prompt=4)
    pool = [f"p{i}" for i in range(10)]
    prompts, seeds = D.epoch_prompts(pool, cfg, 5)
    assert prompts == D.epoch_prompts(pool, cfg, 5)[0] and seeds == D.epoch_prompts(pool, cfg, 5)[1]
    assert prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4 and prompts[0] != prompts[4]
    assert len(set(seeds)) == 8 and D.epoch_prompts(pool, cfg, 6) != (prompts, seeds)


def test_cli_has_train_ddpo():
    args = build_parser().parse_args(["train", "ddpo", "--config", "configs/ddpo_shapes.yaml", "--target", "text_encoder",
                                      "--reward", "jpeg_incompressibility", "--out", "runs/x"])
    assert args.func.__name__ == "_cmd_train_ddpo" and args.target == "text_encoder" and args.reward == ["jpeg_incompressibility"]


@pytest.mark.parametrize("target", ["unet", "both"])
def test_reusing_the_sampling_forward_gives_the_recomputed_gradient(tiny_sd_dir, tmp_path, target):
    """One optimiser step per epoch: the gradient taken through the sampling graph equals the one
    from recomputing every log-prob (ratio 1), so the second forward can be skipped."""
    pipe = load_pipeline(str(tiny_sd_dir))[0]
    cfg = _cfg(tiny_sd_dir, tmp_path, target=target, steps=4, sample_batch_size=2, sample_batches=2, train_batch_size=2,
               gradient_accumulation=2, reuse_sampling_forward=True)
    D.validate(cfg)
    policy = D.Policy(pipe, cfg)
    with torch.no_grad():
        for name, p in policy.named.items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    prompts, seeds = ["a red circle", "two blue squares", "a green triangle", "a red circle"], [0, 1, 2, 3]
    fused = _RecordingOptimizer(policy.parameters())
    rewards, stats = D.fused_epoch(pipe, policy, fused, JpegIncompressibility(), prompts, seeds, cfg, 0.0, None)
    samples = D.sample_epoch(pipe, JpegIncompressibility(), prompts, seeds, cfg, 0.0)
    torch.testing.assert_close(rewards, samples.rewards)
    samples.advantages = D.compute_advantages("batch", prompts, samples.rewards).clamp(-5, 5)
    recomputed = _RecordingOptimizer(policy.parameters())
    ref_stats = D.ppo_update(pipe, policy, recomputed, samples, cfg, 0.0, epoch=0)
    assert len(fused.grads) == len(recomputed.grads) == 1
    assert stats["loss"] == pytest.approx(ref_stats["loss"], abs=1e-4)
    for a, b in zip(fused.grads[0], recomputed.grads[0]):
        assert (a - b).norm() <= 1e-2 * b.norm() + 1e-9
    with pytest.raises(RewardiffError, match="one optimiser step per epoch"):
        D.validate(_cfg(tiny_sd_dir, tmp_path, reuse_sampling_forward=True, inner_epochs=2))


@pytest.mark.parametrize("name", ["ddpo_shapes", "texforce_shapes", "ddpo_jpeg_shapes", "texforce_sd15"])
def test_presets_load_and_validate(name):
    from pathlib import Path

    from rewardiff.config import load_config

    cfg = load_config(DDPOConfig, Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml")
    D.validate(cfg)
    assert cfg.target == ("text_encoder" if name.startswith("texforce") else "unet")


def test_one_ppo_step_moves_probability_towards_positive_advantages(tiny_sd_dir, tmp_path):
    """The sign check: after a small SGD step on the PPO loss, sum_i A_i (log p_new - log p_old) > 0."""
    pipe = load_pipeline(str(tiny_sd_dir))[0]
    cfg = _cfg(tiny_sd_dir, tmp_path, target="both", steps=3, sample_batch_size=4, train_batch_size=4, clip_range=10.0)
    policy = D.Policy(pipe, cfg)
    prompts, seeds = ["a red circle", "two blue squares", "a green triangle", "a red circle"], [0, 1, 2, 3]
    samples = D.sample_epoch(pipe, JpegIncompressibility(), prompts, seeds, cfg, 0.0)
    samples.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    D.ppo_update(pipe, policy, torch.optim.SGD(policy.parameters(), lr=1e-3), samples, cfg, 0.0, epoch=0)
    new = torch.zeros_like(samples.log_probs)
    with torch.no_grad():
        cond, uncond = D.encode_prompts(pipe, prompts)
        for i, t in enumerate(samples.timesteps):
            out = D.guided_model_output(pipe.unet, samples.latents[:, i], t, cond, uncond, cfg.guidance, 0.0)
            new[:, i] = D.ddim_step_with_logprob(pipe.scheduler, out, t, samples.latents[:, i], eta=1.0, prev_sample=samples.latents[:, i + 1]).log_prob
    gain = (samples.advantages[:, None] * (new - samples.log_probs)).sum()
    assert gain > 0


def test_trust_region_is_per_dimension_and_independent_of_latent_size():
    """The same per-dimension change gives the same ratio, whatever the latent's size (issue 14)."""
    for dims in (1024, 16384, 65536):
        log_ratio = torch.tensor([1e-4 * dims])  # each dimension's density 1e-4 nats higher
        assert D.per_dim_ratio(log_ratio, dims).item() == pytest.approx(1.0001, rel=1e-7)
    # a summed log-ratio that would be clipped hard by a summed-density clip of 1e-4 is inside the region
    ratio = D.per_dim_ratio(torch.tensor([0.05]), 1024)
    assert ppo_loss(torch.tensor([1.0]), ratio, 1e-4).requires_grad is False
    assert abs(ratio.item() - 1) < 1e-4


def test_train_window_picks_the_high_noise_steps():
    assert D.window_positions(10, [0.0, 0.5]).tolist() == [0, 1, 2, 3, 4]
    assert D.window_positions(10, [0.0, 1.0]).tolist() == list(range(10))
    assert D.window_positions(3, [0.9, 1.0]).tolist() == [2]  # never empty
    with pytest.raises(RewardiffError, match="train_window"):
        D.validate(DDPOConfig(train_window=[0.5, 0.5]))


def test_text_encoder_target_trains_without_guidance(tiny_sd_dir, tmp_path):
    """guidance <= 1 (SD-Turbo-like models): the unused uncond embedding has no gradient (issue 14 bug 4)."""
    pipe = load_pipeline(str(tiny_sd_dir))[0]
    result = train_ddpo(_cfg(tiny_sd_dir, tmp_path, target="text_encoder", guidance=1.0, epochs=1), pipe, JpegIncompressibility(), progress=False)
    assert result.lora.is_file()


class _Redness(Reward):
    name = "redness"

    def score(self, images, prompts):
        return RewardOutput(images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("advantages", ["group", "group_batch_std"])
def test_ddpo_raises_its_own_reward(tmp_path, advantages):
    """Direction, on the shipped shapes generator: PPO on an easy reward (redness) raises it on
    fresh seeds; a sign flip of the advantages or of the log-ratio would lower it."""
    from rewardiff.diffusion import sample_trajectories
    from rewardiff.models.lora import apply_loras, parse_lora_spec

    prompts = ["a blue square", "three green circles"]
    cfg = DDPOConfig(model="shapes", prompts="a blue square", target="unet", lora_rank=4, lr=1e-2, epochs=4, sample_batch_size=16,
                     sample_batches=1, samples_per_prompt=8, train_batch_size=8, steps=4, guidance=5.0, advantages=advantages,
                     clip_range=1e-4, train_window=[0.0, 0.5], out=str(tmp_path / "run"))
    cfg.prompts = str(tmp_path / "prompts.txt")
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")

    def mean_reward(lora=None) -> float:
        p = load_pipeline("shapes")[0]
        if lora is not None:
            apply_loras(p, [parse_lora_spec(str(lora))])
        batch = [q for q in prompts for _ in range(16)]
        with torch.no_grad():
            traj = sample_trajectories(p, batch, seeds=list(range(1000, 1000 + len(batch))), steps=4, guidance=5.0, guidance_rescale=0.7, eta=1.0)
        return float(_Redness()(traj.images, batch).scores.mean())

    before = mean_reward()
    result = train_ddpo(cfg, load_pipeline("shapes")[0], _Redness(), progress=False)
    after = mean_reward(result.lora)
    assert after > before + 0.01, (before, after)
