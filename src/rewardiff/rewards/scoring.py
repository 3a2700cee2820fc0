"""Score a generated (or rendered) set: what backs `rewardiff score --reward NAME[:WEIGHT] ... METADATA`.

Reads metadata.jsonl (prompt + image path per row), scores every image with every reward and
writes, in the output folder (default: beside the metadata):
- scores.jsonl: one line per metadata row, in order: image, prompt, one column per reward,
  `total` (the weighted sum), and "key.detail" columns for per-image details (captions, ...);
- scores_summary.json: per reward (and total) the weight, mean and std (n - 1) over all images.
No row is ever dropped: a missing or corrupt image is an error naming the row and the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rewardiff.errors import RewardiffError
from rewardiff.generation import METADATA, load_metadata
from rewardiff.io_utils import atomic_write_text, load_image, write_json
from rewardiff.rewards.composite import WeightedSum
from rewardiff.runtime import Runtime

SCORES = "scores.jsonl"
SUMMARY = "scores_summary.json"


def _load(root: Path, row: dict, line: int, meta: Path) -> np.ndarray:
    try:
        return load_image(root / row["image"])
    except (FileNotFoundError, ValueError) as e:
        raise RewardiffError(f"{meta}: row {line}: {e}") from None


def _jsonable(value):
    """A per-image detail as JSON (tensors -> numbers / lists); None if it is not representable."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return None


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def score_metadata(
    metadata_path: str | Path,
    reward_specs: Sequence[str],
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    out: str | Path | None = None,
    progress: bool = True,
    reward: WeightedSum | None = None,
    runtime: Runtime | None = None,
) -> Path:
    """Score every row of a metadata.jsonl (or its folder); returns the path of scores.jsonl.

    reward_specs: 'NAME[@MODEL][:WEIGHT]' strings (see registry.py); `reward` may be given
    instead, already built (as run_generation takes a pipe). out: the output folder.
    Under `accelerate launch` (`runtime`, as `rewardiff score` passes it) each process scores its
    part of the batches on its own device and the main process writes both files: the batches
    are one process's, so the files are too. Without a runtime this process scores every row
    (`eval compare` and `eval winrate` call it so from the main process alone).
    """
    from rewardiff.rewards.registry import build_rewards

    if batch_size < 1:
        raise RewardiffError("--batch-size must be at least 1")
    rows, root = load_metadata(metadata_path)
    meta = Path(metadata_path) if not Path(metadata_path).is_dir() else Path(metadata_path) / METADATA
    for line, row in enumerate(rows, 1):
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise RewardiffError(f"{meta}: row {line}: empty prompt")
    main = runtime is None or runtime.is_main
    total_reward = reward if reward is not None else build_rewards(list(reward_specs), device=str(runtime.device) if runtime else device)
    numbered = list(enumerate(rows, 1))

    def score(part: list[tuple[int, dict]]) -> list[dict]:
        return _score_rows(total_reward, root, meta, part, batch_size, progress and main)

    results = runtime.map_parts(score, numbered, chunk=batch_size) if runtime is not None else score(numbered)
    scores_path = (Path(out) if out is not None else root) / SCORES
    if main:
        _write_scores(scores_path, results, total_reward, reward_specs, meta)
    if runtime is not None:
        runtime.wait()  # both files are written when any process returns
    return scores_path


def _score_rows(total_reward: WeightedSum, root: Path, meta: Path, numbered: list[tuple[int, dict]], batch_size: int,
                progress: bool) -> list[dict]:
    """One scores.jsonl row per (line number, metadata row), in order, in batches of batch_size."""
    from tqdm.auto import tqdm

    results: list[dict] = []
    bar = tqdm(total=len(numbered), desc="score", unit="img", disable=not progress)
    for start in range(0, len(numbered), batch_size):
        batch = numbered[start : start + batch_size]
        arrays = {line: _load(root, row, line, meta) for line, row in batch}
        by_line = dict(batch)
        by_shape: dict[tuple, list[int]] = {}  # one reward call per image size within the batch
        for line, _ in batch:
            by_shape.setdefault(arrays[line].shape, []).append(line)
        scored: dict[int, dict] = {}
        for lines in by_shape.values():
            images = torch.from_numpy(np.stack([arrays[n] for n in lines])).permute(0, 3, 1, 2).float() / 255.0
            with torch.no_grad():
                result = total_reward(images, [by_line[n]["prompt"] for n in lines])
            for i, n in enumerate(lines):
                cells = {key: float(result.details[key][i]) for key in total_reward.keys}
                cells["total"] = float(result.scores[i])
                for key, values in result.details.items():
                    if key not in cells:
                        value = _jsonable(values[i])
                        if value is not None:
                            cells[key] = value
                scored[n] = cells
        for line, row in batch:
            results.append({"image": row["image"], "prompt": row["prompt"], **scored[line]})
        bar.update(len(batch))
    bar.close()
    return results


def _write_scores(scores_path: Path, results: list[dict], total_reward: WeightedSum, reward_specs: Sequence[str], meta: Path) -> None:
    """scores.jsonl and, beside it, scores_summary.json (mean and std per reward and total)."""
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(scores_path, "".join(json.dumps(r) + "\n" for r in results))
    columns = {key: [r[key] for r in results] for key in [*total_reward.keys, "total"]}
    summary = {
        "metadata": str(meta),
        "specs": [str(s) for s in reward_specs],
        "num_images": len(results),
        "rewards": {
            key: {"weight": total_reward.weights[key], "mean": float(np.mean(columns[key])), "std": _std(columns[key])}
            for key in total_reward.keys
        },
        "total": {"mean": float(np.mean(columns["total"])), "std": _std(columns["total"])},
    }
    write_json(scores_path.parent / SUMMARY, summary)
