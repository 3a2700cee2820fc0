"""Preference datasets: prompts, each with k ranked images (the ImageRewardDB layout).

On disk, a dataset is a folder DIR holding the images (any sub-folders) and one index:

    DIR/index.jsonl      one JSON object per line, one line per prompt, or
    DIR/index.parquet    the same columns (read only if pyarrow is installed; not a dependency)

Each row (one prompt):

    {"prompt_id": "000864-0061",            # unique string (ImageRewardDB: prompt_id)
     "prompt": "a red circle ...",          # non-empty text
     "images": ["images/a.png", ...],       # k paths relative to DIR (ImageRewardDB: image_path)
     "ranking": [1, 3, 2, 2],               # one int per image, 1 = best, equal ints = a tie
                                            #   (ImageRewardDB: rank, also 1-based with ties)
     "split": "train"}                      # "train" | "validation" | "test"

`image_path` and `rank` are accepted as aliases of `images` and `ranking`; the writer uses the
names above. k must lie in [4, 9] as in ImageRewardDB (`min_images` / `max_images` override
that). A ranking gives the ordered pairs (i, j) "image i is better than image j" for every
i, j with ranking[i] < ranking[j]; tied images give no pair. So k images without ties give
k (k - 1) / 2 pairs, and each pair appears once, better image first.

Every problem is a RewardiffError naming the index line and the prompt_id.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rewardiff.errors import RewardiffError
from rewardiff.io_utils import atomic_write_text, load_image, read_jsonl, save_png

INDEX_JSONL = "index.jsonl"
INDEX_PARQUET = "index.parquet"
SPLITS = ("train", "validation", "test")
MIN_IMAGES, MAX_IMAGES = 4, 9
"""ImageRewardDB: every prompt has between 4 and 9 ranked images (Xu et al. 2023)."""

_ALIASES = {"image_path": "images", "rank": "ranking"}


@dataclass(frozen=True)
class PreferenceItem:
    """One prompt with its ranked images."""

    prompt_id: str
    prompt: str
    images: tuple[str, ...]  # paths relative to the dataset folder
    ranking: tuple[int, ...]  # one per image; 1 = best; equal values = tie
    split: str  # one of SPLITS

    def pairs(self) -> list[tuple[int, int]]:
        return ordered_pairs(self.ranking)


def ordered_pairs(ranking: Sequence[int]) -> list[tuple[int, int]]:
    """All ordered non-tied pairs (i, j), image i ranked better (smaller number) than image j.

    >>> ordered_pairs([2, 1, 2, 3])
    [(0, 3), (1, 0), (1, 2), (1, 3), (2, 3)]
    """
    return [(i, j) for i, ri in enumerate(ranking) for j, rj in enumerate(ranking) if ri < rj]


@dataclass
class PreferenceDataset:
    root: Path  # the dataset folder; image paths are relative to it
    items: list[PreferenceItem]  # in index order

    def split(self, name: str) -> list[PreferenceItem]:
        if name not in SPLITS:
            raise RewardiffError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        return [it for it in self.items if it.split == name]

    def num_pairs(self, split: str | None = None) -> int:
        items = self.items if split is None else self.split(split)
        return sum(len(it.pairs()) for it in items)

    def load_image(self, item: PreferenceItem, index: int) -> np.ndarray:
        """Image `index` of `item` as RGB uint8 (H, W, 3); missing / corrupt -> error naming the item."""
        try:
            return load_image(self.root / item.images[index])
        except (FileNotFoundError, ValueError) as e:
            raise RewardiffError(f"prompt_id {item.prompt_id!r}: image {index} ({item.images[index]}): {e}") from None


def _read_rows(root: Path) -> tuple[Path, list[dict]]:
    jsonl, parquet = root / INDEX_JSONL, root / INDEX_PARQUET
    if jsonl.is_file():
        try:
            return jsonl, list(read_jsonl(jsonl))
        except ValueError as e:
            raise RewardiffError(str(e)) from None
    if parquet.is_file():
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise RewardiffError(f"{parquet}: reading Parquet needs pyarrow (pip install pyarrow), or write {INDEX_JSONL}") from None
        return parquet, pq.read_table(parquet).to_pylist()
    if not root.is_dir():
        raise RewardiffError(f"preference dataset folder not found: {root}")
    raise RewardiffError(f"{root}: no {INDEX_JSONL} or {INDEX_PARQUET} (see rewardiff.data.preference for the layout)")


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def _parse_row(row: dict, where: str, min_images: int, max_images: int) -> PreferenceItem:
    if not isinstance(row, dict):
        raise RewardiffError(f"{where}: expected a JSON object, got {type(row).__name__}")
    row = {_ALIASES.get(k, k): v for k, v in row.items()}
    pid = row.get("prompt_id")
    if pid is None or (isinstance(pid, str) and not pid.strip()):
        raise RewardiffError(f"{where}: missing prompt_id")
    pid = str(pid)
    where = f"{where} (prompt_id {pid!r})"
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RewardiffError(f"{where}: empty prompt")
    images, ranking = row.get("images"), row.get("ranking")
    if not isinstance(images, (list, tuple)) or not all(isinstance(p, str) and p for p in images):
        raise RewardiffError(f"{where}: 'images' must be a list of relative paths")
    if not isinstance(ranking, (list, tuple)):
        raise RewardiffError(f"{where}: 'ranking' must be a list of ints (1 = best)")
    if len(ranking) != len(images):
        raise RewardiffError(f"{where}: ranking has {len(ranking)} entries for {len(images)} images")
    if not min_images <= len(images) <= max_images:
        raise RewardiffError(f"{where}: {len(images)} images; each prompt needs between {min_images} and {max_images}")
    if len(set(images)) != len(images):
        raise RewardiffError(f"{where}: an image is listed twice")
    bad = [r for r in ranking if not _is_int(r) or r < 1]
    if bad:
        raise RewardiffError(f"{where}: ranking values must be ints >= 1 (1 = best), got {bad[0]!r}")
    split = row.get("split")
    if split not in SPLITS:
        raise RewardiffError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    return PreferenceItem(pid, prompt, tuple(images), tuple(int(r) for r in ranking), split)


def load_preference_dataset(
    root: str | Path,
    min_images: int = MIN_IMAGES,
    max_images: int = MAX_IMAGES,
    check_images: bool = False,
) -> PreferenceDataset:
    """Read and validate DIR/index.jsonl (or .parquet). Every image must exist; with
    `check_images` every image is also decoded (slow on a large set: the embedding pass
    decodes them anyway and names a corrupt one then)."""
    root = Path(root)
    index, rows = _read_rows(root)
    items, seen = [], set()
    for n, row in enumerate(rows, 1):
        item = _parse_row(row, f"{index}: row {n}", min_images, max_images)
        if item.prompt_id in seen:
            raise RewardiffError(f"{index}: row {n}: prompt_id {item.prompt_id!r} appears twice")
        seen.add(item.prompt_id)
        for k, rel in enumerate(item.images):
            if not (root / rel).is_file():
                raise RewardiffError(f"prompt_id {item.prompt_id!r}: image {k} not found: {root / rel}")
        items.append(item)
    if not items:
        raise RewardiffError(f"{index}: no prompts")
    dataset = PreferenceDataset(root, items)
    if check_images:
        for item in items:
            for k in range(len(item.images)):
                dataset.load_image(item, k)
    return dataset


def write_preference_dataset(
    root: str | Path,
    items: Iterable[tuple[str, str, Sequence[np.ndarray], Sequence[int], str]],
    image_dir: str = "images",
    min_images: int = MIN_IMAGES,
    max_images: int = MAX_IMAGES,
) -> Path:
    """Write a dataset: `items` yields (prompt_id, prompt, images as uint8 (H, W, 3), ranking,
    split); images go to DIR/image_dir/<prompt_id>_<k>.png and the index to DIR/index.jsonl.
    Each row is validated as the reader would. Returns the index path."""
    root = Path(root)
    rows = []
    for n, (pid, prompt, images, ranking, split) in enumerate(items, 1):
        rels = [f"{image_dir}/{pid}_{k}.png" for k in range(len(images))]
        row = {"prompt_id": str(pid), "prompt": prompt, "images": rels, "ranking": [int(r) for r in ranking], "split": split}
        _parse_row(row, f"item {n}", min_images, max_images)
        for rel, image in zip(rels, images):
            save_png(root / rel, np.asarray(image, dtype=np.uint8))
        rows.append(row)
    return write_preference_index(root, rows, min_images, max_images)


def write_preference_index(root: str | Path, rows: Sequence[dict], min_images: int = MIN_IMAGES, max_images: int = MAX_IMAGES) -> Path:
    """Validate rows (the layout above; images already inside `root`) and write DIR/index.jsonl
    atomically, so a reader never sees half an index."""
    root = Path(root)
    for n, row in enumerate(rows, 1):
        item = _parse_row(row, f"row {n}", min_images, max_images)
        for k, rel in enumerate(item.images):
            if not (root / rel).is_file():
                raise RewardiffError(f"prompt_id {item.prompt_id!r}: image {k} not found: {root / rel}")
    return atomic_write_text(root / INDEX_JSONL, "".join(json.dumps(row) + "\n" for row in rows))
