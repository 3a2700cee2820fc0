"""ReFL + KL: the loss, refusal of non-differentiable rewards, a tiny run that writes a loadable
LoRA, and a killed run that resumes to bit-identical weights."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rewardiff.algorithms.refl as refl
from rewardiff.algorithms.refl import MicroBatch, ReFLConfig, adapters_disabled, refl_loss, train_refl
from rewardiff.cli import main
from rewardiff.config import load_config
from rewardiff.errors import RewardiffError
from rewardiff.io_utils import read_jsonl
from rewardiff.models.pipeline import load_pipeline
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.composite import WeightedSum
from rewardiff.rewards.jpeg import JpegIncompressibility

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class Redness(Reward):
    """A differentiable toy reward: red minus the other channels."""

    name = "redness"
    differentiable = True

    def score(self, images, prompts):
        return RewardOutput(images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3)))


def _tiny_cfg(out, **kw) -> ReFLConfig:
    base = dict(prompts="a red circle", steps=4, last_k=2, batch_size=2, grad_accum=2, train_steps=3, save_every=1,
                guidance=3.0, lr=1e-2, alpha=10.0, beta=0.1, lora_rank=2, seed=3, out=str(out))
    return ReFLConfig(**{**base, **kw})


def test_refl_loss_exact():
    r, kl = torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.5])
    assert refl_loss(r, kl, alpha=2.0, beta=0.1).item() == pytest.approx(((-2 + 0.05) + (-6 + 0.15)) / 2)
    assert refl_loss(r, kl, alpha=1.0, beta=0.0).item() == pytest.approx(-2.0)
    assert refl_loss(r, kl, alpha=0.0, beta=1.0).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        refl_loss(r, kl[:1], 1.0, 1.0)


def test_non_differentiable_reward_is_refused(tiny_sd_dir, tmp_path):
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    with pytest.raises(RewardiffError, match="differentiable.*'jpeg_incompressibility'"):
        train_refl(_tiny_cfg(tmp_path / "a"), pipe, JpegIncompressibility())
    mixed = WeightedSum([("red", Redness(), 1.0), ("jpeg", JpegIncompressibility(), 0.5)])
    with pytest.raises(RewardiffError, match="'jpeg' is not"):
        train_refl(_tiny_cfg(tmp_path / "b"), pipe, mixed)


def test_cli_refuses_non_differentiable_reward(tiny_sd_dir, tmp_path, capsys):
    code = main(["train", "refl", "--set", f"model={tiny_sd_dir}", "--set", "prompts=a red circle",
                 "--reward", "jpeg_incompressibility", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "jpeg_incompressibility" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [{"kl_eta": 0.0}, {"last_k": 5}, {"batch_size": 0}])
def test_bad_config_is_a_clear_error(tiny_sd_dir, tmp_path, bad):
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    with pytest.raises(RewardiffError):
        train_refl(_tiny_cfg(tmp_path / "run", **bad), pipe, Redness())


def test_shapes_clip_reward_is_differentiable():
    from rewardiff.rewards.registry import build_reward

    reward = build_reward("clip@shapes")
    assert reward.differentiable
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    reward(images, ["a red circle", "two blue squares"]).scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_microbatch_draw_is_seeded_and_late():
    cfg = ReFLConfig(steps=40, last_k=10, batch_size=3)
    prompts = ["a", "b", "c", "d"]
    draws = [MicroBatch.draw(cfg, prompts, s, m) for s in range(20) for m in range(2)]
    assert all(30 <= d.stop < 40 for d in draws) and len({d.stop for d in draws}) > 3
    assert MicroBatch.draw(cfg, prompts, 7, 1) == MicroBatch.draw(cfg, prompts, 7, 1)
    assert MicroBatch.draw(cfg, prompts, 7, 1) != MicroBatch.draw(cfg, prompts, 7, 0)


def test_tiny_run_learns_writes_lora_and_resumes_bit_identical(tiny_sd_dir, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    lora = train_refl(_tiny_cfg(straight), pipe, Redness(), progress=False)
    rows = list(read_jsonl(straight / "train_log.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["kl"] == 0.0  # B = 0 at init: the LoRA model IS the frozen model
    assert rows[-1]["kl"] > 0.0
    assert all(r["loss"] == pytest.approx(-10.0 * r["reward"] + 0.1 * r["kl"], rel=1e-4, abs=1e-6) for r in rows)
    assert (straight / "config.yaml").is_file() and (straight / "checkpoint" / "state.json").is_file()

    # adapters disabled = the frozen pre-trained U-Net (the KL's reference)
    base, _ = load_pipeline(str(tiny_sd_dir))
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
    with torch.no_grad(), adapters_disabled(pipe.unet):
        frozen = pipe.unet(x, 10, encoder_hidden_states=ctx).sample
    with torch.no_grad():
        torch.testing.assert_close(frozen, base.unet(x, 10, encoder_hidden_states=ctx).sample, rtol=0, atol=0)
        assert (pipe.unet(x, 10, encoder_hidden_states=ctx).sample - frozen).abs().max() > 0

    # the written file is a diffusers LoRA that changes the model
    fresh, _ = load_pipeline(str(tiny_sd_dir))
    fresh.load_lora_weights(str(lora.parent), weight_name=lora.name)
    with torch.no_grad():
        torch.testing.assert_close(fresh.unet(x, 10, encoder_hidden_states=ctx).sample, pipe.unet(x, 10, encoder_hidden_states=ctx).sample)

    # killed in the middle of step 3 (after step 2's checkpoint), then resumed
    resumed = tmp_path / "resumed"
    calls = {"n": 0}
    real = refl.refl_loss

    def dies_in_step_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # 2 micro-batches per step
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(refl, "refl_loss", dies_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_refl(_tiny_cfg(resumed), load_pipeline(str(tiny_sd_dir))[0], Redness(), progress=False)
    assert not (resumed / "lora.safetensors").exists()
    monkeypatch.setattr(refl, "refl_loss", real)
    train_refl(_tiny_cfg(resumed), load_pipeline(str(tiny_sd_dir))[0], Redness(), progress=False)

    a, b = load_file(str(lora)), load_file(str(resumed / "lora.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in read_jsonl(resumed / "train_log.jsonl")] == [r["loss"] for r in rows]

    # a different run in the same folder is refused, not mixed in
    with pytest.raises(RewardiffError, match="different run.*lr"):
        train_refl(_tiny_cfg(resumed, lr=1e-3), load_pipeline(str(tiny_sd_dir))[0], Redness(), progress=False)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("refl_*.yaml")), ids=lambda p: p.name)
def test_refl_presets_load(path):
    cfg = load_config(ReFLConfig, path)
    assert cfg.steps >= cfg.last_k >= 1 and cfg.lora_rank == 4


def test_gradient_checkpointing_gives_the_same_update(tiny_sd_dir, tmp_path):
    runs = []
    for gc in (False, True):
        cfg = _tiny_cfg(tmp_path / f"gc{gc}", train_steps=1, grad_accum=1, gradient_checkpointing=gc)
        pipe = load_pipeline(str(tiny_sd_dir))[0]
        runs.append(load_file(str(train_refl(cfg, pipe, Redness(), progress=False))))
        assert pipe.unet.is_gradient_checkpointing == gc
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=1e-5, atol=1e-6)
