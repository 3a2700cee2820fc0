"""The training log every trainer writes: JSONL rows (readable by anything) + tensorboard scalars,
optionally mirrored to Weights & Biases; sample images every N steps; the learning-curve figure
(the one the HTML report shows) at the end.

Backends are chosen by `REWARDIFF_LOG` (comma-separated, e.g. `wandb`; tensorboard is always on
when installed), which the CLI's `--log wandb` sets, so every trainer (ReFL, DDPO, SFT, the
reward model, the shapes trainers) logs the same way without a config field of its own. wandb
honours its own variables (`WANDB_MODE=offline`, `WANDB_PROJECT`, ...). Images are logged at the
first step and every `REWARDIFF_LOG_IMAGES_EVERY` steps (epochs for DDPO; default 10).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rewardiff.io_utils import fault_point
from rewardiff.errors import RewardiffError

LOG_ENV = "REWARDIFF_LOG"
IMAGES_EVERY_ENV = "REWARDIFF_LOG_IMAGES_EVERY"
BACKENDS = ("tensorboard", "wandb")
DEFAULT_IMAGES_EVERY = 10  # steps (or epochs) between sample-image logs
MAX_LOGGED_IMAGES = 16  # per log call: enough to see the samples, small enough for SD-sized images
WANDB_PROJECT = "rewardiff"


def log_backends(spec: str | None = None) -> list[str]:
    """The backends named by `spec` (default: $REWARDIFF_LOG) plus tensorboard; refuses unknown names."""
    spec = os.environ.get(LOG_ENV, "") if spec is None else spec
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad:
        raise RewardiffError(f"--log: unknown backend {bad[0]!r} (choose from {', '.join(BACKENDS)})")
    return ["tensorboard", *[n for n in dict.fromkeys(names) if n != "tensorboard"]]


def check_wandb() -> None:
    """Refuse `--log wandb` before anything runs when the package is missing."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise RewardiffError("--log wandb needs the wandb package: pip install 'rewardiff[wandb]'") from None


def images_every() -> int:
    raw = os.environ.get(IMAGES_EVERY_ENV, str(DEFAULT_IMAGES_EVERY))
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise RewardiffError(f"{IMAGES_EVERY_ENV} must be a whole number >= 1, got {raw!r}")
    return n


class TrainLog:
    """Append `{"stage", step_key: step, **values}` rows to OUT/train_log.jsonl and mirror them to
    tensorboard under `stage/name` (tensorboard is optional at run time) and to wandb if asked."""

    def __init__(self, out: Path, backends: list[str] | None = None):
        self.out = Path(out)
        self.path = self.out / "train_log.jsonl"
        self.backends = log_backends() if backends is None else log_backends(",".join(backends))
        self.every = images_every()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        except Exception:  # pragma: no cover - tensorboard missing
            self.tb = None
        self.wandb = None
        if "wandb" in self.backends:
            check_wandb()
            import wandb

            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), name=self.out.name, dir=str(self.out),
                                    config=_config_of(self.out))

    def keep_until(self, stage: str, last: int, step_key: str = "step") -> None:
        """Resume: drop the rows of `stage` after step `last` (the checkpoint's), which the resumed
        run logs again; a row is never in the log twice. A torn last line (a kill mid-write) goes too."""
        from rewardiff.io_utils import atomic_write_text

        if not self.path.is_file():
            return
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("stage") == stage and row.get(step_key, 0) > last:
                continue
            rows.append(row)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def log(self, stage: str, step: int, step_key: str = "step", **values: float) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"stage": stage, step_key: step, **values}) + "\n")
        fault_point(f"log row {stage} {step}")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{stage}/{k}", v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({f"{stage}/{k}": v for k, v in values.items()} | {f"{stage}/{step_key}": step})

    def wants_images(self, step: int) -> bool:
        """Log samples at the first step and every N-th (N = $REWARDIFF_LOG_IMAGES_EVERY)."""
        return step == 1 or step % self.every == 0

    def images(self, tag: str, images, step: int, captions: list[str] | None = None) -> None:
        """Sample images (B, 3, H, W) in [0, 1] (at most MAX_LOGGED_IMAGES) to tensorboard and wandb."""
        import torch

        batch = torch.as_tensor(images).detach().float().cpu().clamp(0, 1)[:MAX_LOGGED_IMAGES]
        if self.tb is not None:
            self.tb.add_images(tag, batch, step, dataformats="NCHW")
            self.tb.flush()
        if self.wandb is not None:
            import wandb

            pics = (batch.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
            caps = list(captions or [])[: len(pics)] + [None] * len(pics)
            self.wandb.log({tag: [wandb.Image(p, caption=c) for p, c in zip(pics, caps)]})

    def close(self) -> None:
        """Send the learning-curve figure of the whole log (the report's figure) and close."""
        fig = None
        if self.path.is_file() and (self.tb is not None or self.wandb is not None):
            from rewardiff.eval.plots import curves_figure
            from rewardiff.io_utils import read_jsonl

            rows = list(read_jsonl(self.path))
            fig = curves_figure(rows, f"learning curves: {self.out.name}")
            step = max((int(r.get("epoch", r.get("step", 0))) for r in rows), default=0)
        if self.wandb is not None:
            if fig is not None:
                import wandb

                self.wandb.log({"curves": wandb.Image(_figure_array(fig))})
            self.wandb.finish()
        if self.tb is not None:
            if fig is not None:
                self.tb.add_figure("curves", fig, step)
            self.tb.close()


class RecordingReward:
    """Passes every call through to `reward` and keeps the last images it scored, so a trainer
    can log its own samples without sampling again (the images are detached copies on the CPU)."""

    def __init__(self, reward):
        self._reward = reward
        self.last_images = None
        self.last_prompts: list[str] = []

    def __call__(self, images, prompts, *args, **kwargs):
        self.last_images = images[:MAX_LOGGED_IMAGES].detach().float().cpu()
        self.last_prompts = list(prompts[:MAX_LOGGED_IMAGES])
        return self._reward(images, prompts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._reward, name)


def _figure_array(fig):
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _config_of(out: Path) -> dict:
    import yaml

    path = out / "config.yaml"
    try:
        return yaml.safe_load(path.read_text()) or {} if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}
