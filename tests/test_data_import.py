"""`rewardiff data import` on tiny files of each published layout, written here: ImageRewardDB's
metadata parquet + zip shards, Pick-a-Pic pair parquet, HPDv2 JSON -> the ranked layout that
load_preference_dataset reads, images byte-identical, unneeded zip members never extracted."""

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from rewardiff.data.importers import import_preferences, split_from_name  # noqa: E402
from rewardiff.data.preference import load_preference_dataset  # noqa: E402
from rewardiff.errors import RewardiffError  # noqa: E402


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _imagerewarddb(root):
    """Two train prompts (4 and 5 images) in a zip shard, one test prompt with loose files."""
    rows, shard = [], {}
    for pid, k in (("p1", 4), ("p2", 5)):
        for i in range(k):
            path = f"images/train/train_1/{pid}_{i}.png"
            shard[f"train_1/{pid}_{i}.png"] = _png(10 * i + (pid == "p2"))
            rows.append({"image_path": path, "prompt_id": pid, "prompt": f"prompt {pid}", "rank": [2, 1, 4, 3, 3][i],
                         "image_amount_in_total": k, "fidelity_rating": [1.0] * 3})
    shard["train_1/unused.png"] = _png(99)
    (root / "images" / "train").mkdir(parents=True)
    with zipfile.ZipFile(root / "images" / "train" / "train_1.zip", "w") as z:
        for name, data in shard.items():
            z.writestr(name, data)
    pq.write_table(pa.Table.from_pylist(rows), root / "metadata-train.parquet")
    test_rows = []
    (root / "images" / "test").mkdir(parents=True)
    for i in range(4):
        (root / "images" / "test" / f"t_{i}.png").write_bytes(_png(200 + i))
        test_rows.append({"image_path": f"images/test/t_{i}.png", "prompt_id": "t1", "prompt": "a test prompt", "rank": i + 1})
    pq.write_table(pa.Table.from_pylist(test_rows), root / "metadata-test.parquet")
    return shard


def test_imagerewarddb_as_published(tmp_path):
    src, out = tmp_path / "ImageRewardDB", tmp_path / "out"
    src.mkdir()
    shard = _imagerewarddb(src)
    rep = import_preferences("imagerewarddb", src, out)
    assert (rep.rows, rep.images, rep.per_split) == (3, 13, {"test": 1, "train": 2})
    data = load_preference_dataset(out)
    p2 = next(it for it in data.items if it.prompt_id == "p2")
    assert p2.ranking == (2, 1, 4, 3, 3) and p2.split == "train" and len(p2.pairs()) == 9  # the tie gives no pair
    assert (out / p2.images[3]).read_bytes() == shard["train_1/p2_3.png"]  # bytes as published
    assert not any("unused" in p.name for p in out.rglob("*")) and len(list(out.rglob("*.png"))) == 13
    with pytest.raises(RewardiffError, match="never overwritten"):
        import_preferences("imagerewarddb", src, out)
    assert load_preference_dataset(out).num_pairs() == 6 + 9 + 6  # the index written before is intact


def test_imagerewarddb_missing_pieces_are_named(tmp_path):
    src = tmp_path / "db"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist([{"image_path": "images/x/a.png", "prompt_id": "p", "prompt": "q"}]), src / "metadata-train.parquet")
    with pytest.raises(RewardiffError, match=r"missing column\(s\) \['rank'\]"):
        import_preferences("imagerewarddb", src, tmp_path / "o1")
    rows = [{"image_path": f"images/x/{i}.png", "prompt_id": "p", "prompt": "q", "rank": i + 1} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), src / "metadata-train.parquet")
    with pytest.raises(RewardiffError, match=r"prompt_id 'p'.*images/x/0.png.*not found"):
        import_preferences("imagerewarddb", src, tmp_path / "o2")
    assert not (tmp_path / "o2" / "index.jsonl").exists()


def test_pickapic_pairs_and_ties(tmp_path):
    src, out = tmp_path / "pap", tmp_path / "out"
    src.mkdir()
    rows = [{"caption": "a cat", "jpg_0": _png(1), "jpg_1": _png(2), "label_0": 1.0, "label_1": 0.0, "ranking_id": 7},
            {"caption": "a dog", "jpg_0": _png(3), "jpg_1": _png(4), "label_0": 0.0, "label_1": 1.0, "ranking_id": 8},
            {"caption": "a cow", "jpg_0": _png(5), "jpg_1": _png(6), "label_0": 0.5, "label_1": 0.5, "ranking_id": 9}]
    pq.write_table(pa.Table.from_pylist(rows), src / "validation_unique-00000.parquet")
    rep = import_preferences("pickapic", src, out)
    assert rep.rows == 2 and rep.skipped == {"tie": 1} and rep.per_split == {"validation": 2}
    data = load_preference_dataset(out, min_images=2)
    dog = next(it for it in data.items if it.prompt == "a dog")
    assert dog.ranking == (2, 1) and dog.pairs() == [(1, 0)]
    assert (out / dog.images[1]).read_bytes() == _png(4)


def test_hpdv2_json_and_cli(tmp_path):
    src = tmp_path / "hpd"
    (src / "test").mkdir(parents=True)
    for i in range(3):
        (src / "test" / f"{i}.png").write_bytes(_png(i))
    entries = [{"prompt": "a castle", "image_path": ["test/0.png", "test/1.png", "test/2.png"], "rank": [3, 1, 2]},
               {"prompt": "a boat", "image_path": ["test/0.png", "test/1.png"], "human_preference": [0, 1]},
               {"prompt": "a tie", "image_path": ["test/0.png", "test/1.png"], "human_preference": [1, 1]}]
    (src / "test.json").write_text(json.dumps(entries))
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "rewardiff.cli", "data", "import", "hpdv2", str(src / "test.json"), "--out", str(out)]
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = load_preference_dataset(out, min_images=2)
    assert [(it.prompt, it.ranking, it.split) for it in data.items] == [("a castle", (3, 1, 2), "test"), ("a boat", (2, 1), "test")]
    (src / "bad.json").write_text("{not json")
    done = subprocess.run(cli[:6] + [str(src / "bad.json"), "--out", str(tmp_path / "o2"), "--split", "train"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "not valid JSON" in done.stderr and len(done.stderr.splitlines()) == 1


def test_split_names():
    from pathlib import Path

    assert [split_from_name(Path(n)) for n in ("metadata-train.parquet", "validation_unique.parquet", "test.json", "shard.parquet")] == [
        "train", "validation", "test", None]
