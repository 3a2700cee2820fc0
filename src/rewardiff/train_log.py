"""The training log every trainer writes: JSONL rows (readable by anything) + tensorboard scalars."""

from __future__ import annotations

import json
from pathlib import Path

from rewardiff.io_utils import fault_point


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

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
