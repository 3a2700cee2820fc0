"""`rewardiff eval oracle`: judge a generated set with the shapes oracle, write JSON + markdown."""

from __future__ import annotations

import json
from pathlib import Path

from rewardiff.errors import RewardiffError
from rewardiff.generation import load_metadata
from rewardiff.io_utils import atomic_write_text, load_image, write_json
from rewardiff.shapes.oracle import OracleReport, judge, report
from rewardiff.shapes.prompts import UnsupportedPromptError


def evaluate_with_oracle(metadata: str | Path, out: str | Path | None = None) -> tuple[OracleReport, Path]:
    """Judge every row; write oracle_eval.json / .md and per-image verdicts beside the metadata."""
    rows, root = load_metadata(metadata)
    verdicts, records = [], []
    for n, row in enumerate(rows, 1):
        try:
            image = load_image(root / row["image"])
            v = judge(image, row["prompt"])
        except (FileNotFoundError, ValueError) as e:
            kind = "unsupported prompt" if isinstance(e, UnsupportedPromptError) else "bad image"
            raise RewardiffError(f"row {n} ({row['image']}): {kind}: {e}") from None
        verdicts.append(v)
        records.append({"image": row["image"], "prompt": row["prompt"], "category": v.category, "passed": v.passed, "reason": v.reason})
    rep = report(verdicts)
    out_dir = Path(out) if out else root
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "oracle_eval.json", {"metadata": str(metadata), "num_images": len(rows), **rep.to_dict()})
    atomic_write_text(out_dir / "oracle_eval.md", rep.markdown() + "\n")
    atomic_write_text(out_dir / "oracle_verdicts.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return rep, out_dir
