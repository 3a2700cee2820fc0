"""Logging: tensorboard gets scalars, sample images every N epochs and the learning-curve figure;
wandb (offline) gets the same when asked; `--log` refuses unknown backends in one line; the
phase line names the phase and estimates the time left."""

from __future__ import annotations

import json

import pytest
import torch

from rewardiff.algorithms.ddpo import DDPOConfig, train_ddpo
from rewardiff.cli import main
from rewardiff.errors import RewardiffError
from rewardiff.models.pipeline import load_pipeline
from rewardiff.progress import PhaseClock, format_duration
from rewardiff.rewards.jpeg import JpegIncompressibility
from rewardiff.train_log import IMAGES_EVERY_ENV, LOG_ENV, TrainLog, log_backends


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_ddpo_logs_samples_every_n_epochs_and_the_curves(tiny_sd_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(IMAGES_EVERY_ENV, "2")
    monkeypatch.delenv(LOG_ENV, raising=False)
    cfg = DDPOConfig(model=str(tiny_sd_dir), reward=["jpeg_incompressibility"], prompts="a red circle", target="unet", lora_rank=2,
                     epochs=3, sample_batch_size=2, sample_batches=1, train_batch_size=1, steps=2, guidance=3.0, guidance_rescale=0.0,
                     advantages="batch", clip_range=0.2, out=str(tmp_path / "run"))
    train_ddpo(cfg, load_pipeline(str(tiny_sd_dir))[0], JpegIncompressibility(), progress=False)
    acc = _events(tmp_path / "run" / "tensorboard")
    samples = acc.Images("ddpo/samples")
    assert [e.step for e in samples] == [1, 2]  # the first epoch, then every 2nd
    assert samples[0].width > 0 and samples[0].height > 0
    assert [e.step for e in acc.Scalars("ddpo/reward_mean")] == [1, 2, 3]
    (curves,) = acc.Images("curves")
    assert curves.step == 3 and curves.width > 300


def test_unknown_backend_is_one_line(tmp_path, capsys):
    with pytest.raises(RewardiffError):
        log_backends("mlflow")
    assert log_backends("wandb") == ["tensorboard", "wandb"] and log_backends("") == ["tensorboard"]
    assert main(["train", "ddpo", "--log", "mlflow", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --log: unknown backend 'mlflow' (choose from tensorboard, wandb)"]
    assert not (tmp_path / "x").exists()


def test_wandb_offline_gets_scalars_images_and_curves(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb not installed (pip install 'rewardiff[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = TrainLog(tmp_path, backends=["wandb"])
    for step in (1, 2):
        log.log("ddpo", step, step_key="epoch", reward_mean=1.0 * step, loss=0.5 / step)
    log.images("ddpo/samples", torch.rand(2, 3, 8, 8), 2, ["a", "b"])
    history = dict(log.wandb.summary)
    log.close()
    assert history["ddpo/reward_mean"] == 2.0 and "ddpo/samples" in history
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob("*.wandb"))
    rows = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert wandb.run is None  # finished


def test_phase_clock_names_the_phase_and_the_time_left():
    lines = []
    ticks = iter([0.0, 0.0, 100.0, 130.0, 230.0, 260.0])
    clock = PhaseClock("job", ["r1 candidates", "r1 train", "r2 candidates", "r2 train"], say=lines.append, now=ticks.__next__)
    for phase in clock.phases:
        clock.start(phase)
    clock.done()
    assert lines[0] == "[job] phase 1/4: r1 candidates (elapsed 0s, time left unknown)"
    assert lines[1] == "[job] phase 2/4: r1 train (elapsed 1m40s, about 5m00s left)"  # 3 phases x the only mean (100 s)
    assert lines[2] == "[job] phase 3/4: r2 candidates (elapsed 2m10s, about 2m10s left)"  # candidates 100 s + train 30 s
    assert lines[3] == "[job] phase 4/4: r2 train (elapsed 3m50s, about 30s left)"
    assert lines[4] == "[job] done in 4m20s"
    assert format_duration(3725) == "1h02m"
