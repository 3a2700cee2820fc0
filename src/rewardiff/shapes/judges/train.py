"""Train the shapes world's judges (CLIP-like dual encoder, detector, captioner) on CPU.

    rewardiff shapes train-judges --config configs/shapes_judges.yaml --out runs/judges
    rewardiff shapes train-judges --only clip --out runs/judges

Each judge trains in OUT/{clip,detector,captioner}/ (checkpoint/, train_log.jsonl, tensorboard/)
and ends as OUT/<judge>/model/, a transformers folder; the shipped weights in
rewardiff/shapes/weights/judges/<judge>/ are copies of those folders. Seeded and resumable:
rerun the same command after an interruption. No oracle, no generated images: rendered only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rewardiff.shapes.judges.captioner import CaptionerJudgeConfig, train_captioner_judge
from rewardiff.shapes.judges.clip import ClipJudgeConfig, train_clip_judge
from rewardiff.shapes.judges.detector import DetectorJudgeConfig, train_detector_judge

JUDGES: tuple[str, ...] = ("clip", "detector", "captioner")
"""Training order: the dual encoder first (other work needs it), then detector, captioner."""


@dataclass
class TrainJudgesConfig:
    out: str = "runs/shapes-judges"  # run directory; one sub-folder per judge
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    clip: ClipJudgeConfig = field(default_factory=ClipJudgeConfig)
    detector: DetectorJudgeConfig = field(default_factory=DetectorJudgeConfig)
    captioner: CaptionerJudgeConfig = field(default_factory=CaptionerJudgeConfig)


def train_judges(cfg: TrainJudgesConfig, only: str | None = None, progress: bool = True) -> dict[str, Path]:
    """Train the judges (or just `only`) one after another; returns judge -> model folder. The run
    folder is claimed first (rewardiff.run_folder: owner checked, one writer at a time)."""
    from rewardiff.run_folder import claim_run_folder, settings_of

    if only is not None and only not in JUDGES:
        raise ValueError(f"unknown judge {only!r}; expected one of {', '.join(JUDGES)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with claim_run_folder(cfg.out, "shapes train-judges", settings_of(cfg, ("out", "threads")), config=cfg) as folder:
        folder.commit()
        return _train_in(folder.path, cfg, only, progress)


def _train_in(out: Path, cfg: TrainJudgesConfig, only: str | None, progress: bool) -> dict[str, Path]:
    trainers = {
        "clip": lambda: train_clip_judge(cfg.clip, cfg.seed, out / "clip", progress),
        "detector": lambda: train_detector_judge(cfg.detector, cfg.seed, out / "detector", progress),
        "captioner": lambda: train_captioner_judge(cfg.captioner, cfg.seed, out / "captioner", progress),
    }
    return {name: trainers[name]() for name in JUDGES if only in (None, name)}
