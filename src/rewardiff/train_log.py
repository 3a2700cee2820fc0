"""The training log every trainer writes: JSONL rows (readable by anything) + tensorboard scalars."""

from __future__ import annotations

import json
from pathlib import Path


class TrainLog:
    """Append `{"stage", step_key: step, **values}` rows to OUT/train_log.jsonl and mirror them to
    tensorboard under `stage/name` (tensorboard is optional at run time)."""

    def __init__(self, out: Path):
        self.path = Path(out) / "train_log.jsonl"
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out) / "tensorboard"))
        except Exception:  # pragma: no cover - tensorboard missing
            self.tb = None

    def log(self, stage: str, step: int, step_key: str = "step", **values: float) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"stage": stage, step_key: step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{stage}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
