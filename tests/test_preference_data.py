"""Preference datasets (data/preference.py): layout, pair enumeration, validation errors."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
import torch

from rewardiff.data import preference
from rewardiff.data.preference import (
    load_preference_dataset,
    ordered_pairs,
    write_preference_dataset,
)
from rewardiff.errors import RewardiffError

torch.set_num_threads(1)


def test_doctests():
    assert doctest.testmod(preference).failed == 0


@pytest.mark.parametrize(
    "ranking, pairs",
    [
        ([1, 2, 3, 4], [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]),  # k (k - 1) / 2, better first
        ([4, 3, 2, 1], [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]),
        ([1, 1, 2, 2], [(0, 2), (0, 3), (1, 2), (1, 3)]),  # ties give no pair
        ([3, 3, 3, 3], []),
        ([1, 3, 3, 7], [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]),  # gaps in the ranks are fine
    ],
)
def test_ordered_pairs(ranking, pairs):
    assert ordered_pairs(ranking) == pairs


def _images(k, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(k)]


def _write_rows(root, rows, images=True):
    root.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if images:
            for rel, image in zip(row.get("images", row.get("image_path", [])), _images(9)):
                from rewardiff.io_utils import save_png

                save_png(root / rel, image)
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _row(pid="p1", k=4, **change):
    row = {"prompt_id": pid, "prompt": "a red circle", "images": [f"img/{pid}_{i}.png" for i in range(k)],
           "ranking": list(range(1, k + 1)), "split": "train"}
    row.update(change)
    return row


def test_write_then_load_round_trip(tmp_path):
    items = [("a", "one red circle", _images(4), [1, 2, 2, 3], "train"),
             ("b", "two blue squares", _images(9, seed=1), [1] * 8 + [2], "test")]
    index = write_preference_dataset(tmp_path / "set", items)
    assert index.name == "index.jsonl"
    ds = load_preference_dataset(tmp_path / "set", check_images=True)
    assert [it.prompt_id for it in ds.items] == ["a", "b"]
    assert ds.items[0].ranking == (1, 2, 2, 3) and len(ds.items[1].images) == 9
    assert [it.prompt_id for it in ds.split("test")] == ["b"]
    assert ds.num_pairs() == 5 + 8 and ds.num_pairs("train") == 5
    np.testing.assert_array_equal(ds.load_image(ds.items[0], 1), items[0][2][1])


def test_imagerewarddb_field_names_are_accepted(tmp_path):
    row = _row()
    row["image_path"], row["rank"] = row.pop("images"), row.pop("ranking")
    ds = load_preference_dataset(_write_rows(tmp_path / "s", [row]))
    assert ds.items[0].ranking == (1, 2, 3, 4)


@pytest.mark.parametrize(
    "row, message",
    [
        (_row(k=3), r"prompt_id 'p1'.*3 images; each prompt needs between 4 and 9"),
        (_row(k=10, ranking=list(range(1, 11))), r"prompt_id 'p1'.*10 images"),
        (_row(ranking=[1, 2, 3]), r"prompt_id 'p1'.*ranking has 3 entries for 4 images"),
        (_row(ranking=[1, 2, float("nan"), 3]), r"prompt_id 'p1'.*ranking values must be ints"),
        (_row(ranking=[0, 1, 2, 3]), r"prompt_id 'p1'.*ints >= 1"),
        (_row(ranking=[1, 2, "3", 4]), r"prompt_id 'p1'.*ranking values must be ints"),
        (_row(prompt="  "), r"prompt_id 'p1'.*empty prompt"),
        (_row(split="dev"), r"prompt_id 'p1'.*split must be one of"),
        (_row(images=["a.png", "a.png", "b.png", "c.png"]), r"prompt_id 'p1'.*listed twice"),
        ({"prompt": "x", "images": [], "ranking": []}, r"row 1: missing prompt_id"),
    ],
    ids=["k-too-small", "k-too-large", "ranking-length", "nan-rank", "zero-rank", "string-rank", "empty-prompt",
         "bad-split", "duplicate-image", "no-id"],
)
def test_bad_rows_name_the_item(tmp_path, row, message):
    with pytest.raises(RewardiffError, match=message):
        load_preference_dataset(_write_rows(tmp_path / "s", [row]))


def test_image_count_bounds_can_be_overridden(tmp_path):
    root = _write_rows(tmp_path / "s", [_row(k=2, ranking=[1, 2])])
    assert len(load_preference_dataset(root, min_images=2).items[0].images) == 2


def test_missing_image_names_the_item(tmp_path):
    root = _write_rows(tmp_path / "s", [_row("ok"), _row("lost")])
    (root / "img/lost_2.png").unlink()
    with pytest.raises(RewardiffError, match=r"prompt_id 'lost': image 2 not found"):
        load_preference_dataset(root)


def test_corrupt_image_names_the_item(tmp_path):
    root = _write_rows(tmp_path / "s", [_row("bad")])
    (root / "img/bad_1.png").write_bytes(b"not a png")
    ds = load_preference_dataset(root)  # existence only: decoding happens when it is embedded
    with pytest.raises(RewardiffError, match=r"prompt_id 'bad': image 1 \(img/bad_1.png\): corrupt image"):
        ds.load_image(ds.items[0], 1)
    with pytest.raises(RewardiffError, match=r"prompt_id 'bad'"):
        load_preference_dataset(root, check_images=True)


def test_duplicate_prompt_id(tmp_path):
    with pytest.raises(RewardiffError, match=r"prompt_id 'p1' appears twice"):
        load_preference_dataset(_write_rows(tmp_path / "s", [_row(), _row()]))


def test_missing_folder_index_and_parquet(tmp_path):
    with pytest.raises(RewardiffError, match="not found"):
        load_preference_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardiffError, match="no index.jsonl or index.parquet"):
        load_preference_dataset(tmp_path / "empty")
    (tmp_path / "empty" / "index.parquet").write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(RewardiffError, match="needs pyarrow"):
            load_preference_dataset(tmp_path / "empty")


def test_malformed_json_line(tmp_path):
    (tmp_path / "index.jsonl").write_text("{not json\n")
    with pytest.raises(RewardiffError, match=r"index.jsonl:1: not valid JSON"):
        load_preference_dataset(tmp_path)


def test_writer_validates(tmp_path):
    with pytest.raises(RewardiffError, match=r"prompt_id 'x'.*ranking has 2 entries for 4 images"):
        write_preference_dataset(tmp_path, [("x", "p", _images(4), [1, 2], "train")])
