"""`rewardiff eval preference`: how often a reward orders a pair of images as people did.

Preference accuracy (ImageReward, Xu et al. 2023; Table 1 of the Quyen report): over every
non-tied pair (better, worse) of the same prompt in the split,

    accuracy = mean( 1[r(better) > r(worse)] + 0.5 * 1[r(better) == r(worse)] )

so a constant reward scores 50% (chance), not 0% or 100%. Every image is scored once per reward
and all its pairs are formed from that value. The table has the layout of the report's Table 1
(one row per reward, one column "Preference Acc." in percent), written as markdown and JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rewardiff.errors import RewardiffError

DISPLAY_NAMES = {
    "clip": "CLIP Score",
    "aesthetic": "Aesthetic Score",
    "caption": "BLIP Score",
    "imagereward": "ImageReward",
    "pickscore": "PickScore",
    "hpsv2": "HPS v2",
    "hpsv2.1": "HPS v2.1",
    "preference": "Ours (CLIP + MLP)",
}
"""Row names as in Table 1 ('caption' is our BLIP-based score; the report's "BLIP Score" is
ImageReward's BLIP baseline, so the two are close in spirit, not identical)."""

RESULT_JSON, RESULT_MD = "preference_accuracy.json", "preference_accuracy.md"


def preference_accuracy(scores: torch.Tensor, pairs: torch.Tensor) -> float:
    """scores (N,) for N images; pairs (M, 2) of indices into them, better first -> accuracy in [0, 1].

    >>> preference_accuracy(torch.tensor([3.0, 1.0, 1.0]), torch.tensor([[0, 1], [1, 2], [2, 0]]))
    0.5
    """
    if pairs.numel() == 0:
        raise RewardiffError("no non-tied pairs to measure preference accuracy on")
    better, worse = scores[pairs[:, 0]], scores[pairs[:, 1]]
    return float(((better > worse).double() + 0.5 * (better == worse).double()).mean())


@dataclass
class PreferenceRow:
    spec: str  # what the user typed
    name: str  # display name (Table 1 layout)
    accuracy: float  # in [0, 1]


@dataclass
class PreferenceTable:
    data: str
    split: str
    num_prompts: int
    num_images: int
    num_pairs: int
    rows: list[PreferenceRow]

    def markdown(self) -> str:
        lines = [
            f"Preference accuracy on the {self.split} split of {self.data} "
            f"({self.num_prompts:,} prompts, {self.num_pairs:,} comparisons; ties in the scores count half).",
            "",
            "| Model | Preference Acc. |",
            "|---|---:|",
        ]
        lines += [f"| {r.name} | {100 * r.accuracy:.2f} |" for r in self.rows]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "data": self.data, "split": self.split, "num_prompts": self.num_prompts, "num_images": self.num_images,
            "num_pairs": self.num_pairs,
            "rows": [{"reward": r.spec, "name": r.name, "accuracy": r.accuracy} for r in self.rows],
        }


def _display_name(spec, key: str, names: list[str]) -> str:
    base = DISPLAY_NAMES.get(spec.name, spec.name)
    return base if names.count(spec.name) == 1 else f"{base} ({key})"


def evaluate_preference(
    data: str | Path,
    reward_specs: Sequence[str],
    split: str = "test",
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    out: str | Path | None = None,
    progress: bool = True,
    min_images: int | None = None,
    max_images: int | None = None,
) -> tuple[PreferenceTable, Path]:
    """Score every image of `split` once with each reward; write preference_accuracy.{json,md}
    to `out` (default DATA/eval-preference-<split>). Rewards are built before any image is read,
    so an unknown reward name fails at once."""
    from tqdm.auto import tqdm

    from rewardiff.data.preference import MAX_IMAGES, MIN_IMAGES, load_preference_dataset
    from rewardiff.io_utils import atomic_write_text, write_json
    from rewardiff.rewards.registry import build_reward, parse_reward_spec, spec_keys

    if not reward_specs:
        raise RewardiffError("give at least one --reward")
    specs = [parse_reward_spec(s) for s in reward_specs]
    keys = spec_keys(specs)
    if len(set(keys)) != len(keys):
        raise RewardiffError(f"the same reward is listed twice: {list(reward_specs)}")
    dataset = load_preference_dataset(data, min_images or MIN_IMAGES, max_images or MAX_IMAGES)
    items = dataset.split(split)
    if not items:
        raise RewardiffError(f"{data}: no prompts in the {split!r} split")
    rewards = [build_reward(s, device) for s in specs]

    # Flat image list; pairs as indices into it.
    flat: list[tuple[int, int]] = []
    pairs: list[tuple[int, int]] = []
    for n, item in enumerate(items):
        start = len(flat)
        flat += [(n, k) for k in range(len(item.images))]
        pairs += [(start + i, start + j) for i, j in item.pairs()]
    pair_tensor = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    scores = torch.zeros(len(rewards), len(flat), dtype=torch.float64)
    bar = tqdm(total=len(flat), desc="score", unit="img", disable=not progress)
    for start in range(0, len(flat), batch_size):
        chunk = list(range(start, min(start + batch_size, len(flat))))
        arrays = {i: dataset.load_image(items[flat[i][0]], flat[i][1]) for i in chunk}
        by_shape: dict[tuple, list[int]] = {}  # one reward call per image size within the chunk
        for i in chunk:
            by_shape.setdefault(arrays[i].shape, []).append(i)
        for idx in by_shape.values():
            images = torch.from_numpy(np.stack([arrays[i] for i in idx])).permute(0, 3, 1, 2).float() / 255.0
            prompts = [items[flat[i][0]].prompt for i in idx]
            for r, reward in enumerate(rewards):
                try:
                    with torch.no_grad():
                        s = reward(images, prompts).scores
                except RewardiffError as e:  # name the item, not only the batch index
                    ids = sorted({items[flat[i][0]].prompt_id for i in idx})
                    raise RewardiffError(f"{e} (prompt_id {', '.join(map(repr, ids))})") from None
                scores[r, idx] = s.detach().double().cpu()
        bar.update(len(chunk))
    bar.close()

    names = [s.name for s in specs]
    rows = [
        PreferenceRow(str(reward_specs[r]), _display_name(specs[r], keys[r], names), preference_accuracy(scores[r], pair_tensor))
        for r in range(len(rewards))
    ]
    table = PreferenceTable(str(data), split, len(items), len(flat), len(pairs), rows)
    out_dir = Path(out) if out is not None else Path(data) / f"eval-preference-{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULT_JSON, table.to_dict())
    atomic_write_text(out_dir / RESULT_MD, table.markdown() + "\n")
    return table, out_dir
