"""`rewardiff data import`: the published preference sets, as users download them, into the
project's ranked layout (rewardiff.data.preference: DIR/index.jsonl + DIR/images/...).

| format | what is read | one output row |
| --- | --- | --- |
| imagerewarddb | `metadata-{train,validation,test}.parquet` (one row per image: `image_path`, `prompt_id`, `prompt`, `rank`, ...) + the images, loose or in the zip shards (`images/train/train_1.zip` ...) | a prompt with its 4-9 ranked images |
| pickapic | Pick-a-Pic-style parquet files (`caption`, `jpg_0`, `jpg_1` image bytes, `label_0`, `label_1`) | one pair (k = 2), better image ranked 1; ties skipped and counted |
| hpdv2 | HPDv2-style JSON (`prompt`, `image_path` list, and `rank` (1 = best) or `human_preference` (1 = preferred)) + image folder | a prompt with its ranked images |

Only the images the kept rows name are extracted (a zip shard's other members are not read), and
image bytes are copied as published (no re-encoding). The split comes from the file name
(`metadata-train.parquet`, `train.json`, `validation_unique.parquet` -> validation) or `split`.
An existing index in OUT is never overwritten; every missing column, image or zip member is a
RewardiffError naming the file and the row. Parquet needs pyarrow (`pip install rewardiff[data]`).
Pair sets have k = 2: train and evaluate them with `min_images: 2` (`--set min_images=2`).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rewardiff.data.preference import INDEX_JSONL, MAX_IMAGES, MIN_IMAGES, SPLITS, write_preference_index
from rewardiff.errors import RewardiffError
from rewardiff.io_utils import atomic_write_bytes, write_json

FORMATS = ("imagerewarddb", "pickapic", "hpdv2")
PAIR_IMAGES = 2
_SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation", "val": "validation", "valid": "validation",
                "dev": "validation", "test": "test"}


@dataclass
class ImportReport:
    format: str
    out: str
    rows: int = 0  # prompts (or pairs) written
    images: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows left out


def split_from_name(path: Path) -> str | None:
    """'metadata-train.parquet' -> train, 'validation_unique.parquet' -> validation, 'test.json' -> test."""
    for word in re.split(r"[^a-z]+", path.stem.lower()):
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return None


def _split_for(path: Path, split: str | None) -> str:
    chosen = split or split_from_name(path)
    if chosen not in SPLITS:
        raise RewardiffError(f"{path}: cannot tell the split from the file name; pass --split ({', '.join(SPLITS)})")
    return chosen


def _read_parquet(path: Path, columns: list[str]) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RewardiffError(f"{path}: reading Parquet needs pyarrow: pip install 'rewardiff[data]' (or pip install pyarrow)") from None
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several classes for a file that is not Parquet
        raise RewardiffError(f"{path}: not a Parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise RewardiffError(f"{path}: missing column(s) {missing}; it has {schema.names}")
    return pq.read_table(path, columns=columns).to_pylist()  # only the columns used: not every published field


class _ImageSource:
    """Images by their published relative path: a loose file under `root`, else a member of the zip
    shard named after one of its folders (images/train/train_1/x.webp in images/train/train_1.zip)."""

    def __init__(self, root: Path):
        self.root = root
        self.zips: dict[Path, zipfile.ZipFile] = {}

    def _zip(self, path: Path) -> zipfile.ZipFile | None:
        if path not in self.zips:
            try:
                self.zips[path] = zipfile.ZipFile(path) if path.is_file() else None
            except zipfile.BadZipFile:
                raise RewardiffError(f"{path}: not a zip file") from None
        return self.zips[path]

    def read(self, rel: str, where: str) -> bytes:
        loose = self.root / rel
        if loose.is_file():
            return loose.read_bytes()
        parts = PurePosixPath(rel).parts
        for cut in range(len(parts) - 1, 0, -1):  # deepest shard first
            shard = self._zip(self.root.joinpath(*parts[:cut]).with_suffix(".zip"))
            if shard is None:
                continue
            names = set(shard.namelist())
            for member in ("/".join(parts[cut - 1 :]), "/".join(parts[cut:]), rel):
                if member in names:
                    return shard.read(member)
            raise RewardiffError(f"{where}: image {rel!r} is not in {shard.filename}")
        raise RewardiffError(f"{where}: image {rel!r} not found under {self.root} (neither the file nor a zip shard holding it)")

    def close(self) -> None:
        for z in self.zips.values():
            if z is not None:
                z.close()


def _suffix(name: str, data: bytes) -> str:
    ext = PurePosixPath(name).suffix.lower()
    if ext in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        return ext
    return ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg"


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:120] or "item"


def _image_bytes(value, where: str) -> bytes:
    """Pick-a-Pic stores images as raw bytes (or a {'bytes': ...} struct, as HF datasets writes)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise RewardiffError(f"{where}: image bytes are missing")
    return bytes(value)


class _Writer:
    """Copies image bytes into OUT/images/<split>/ and collects index rows."""

    def __init__(self, out: Path, report: ImportReport):
        self.out, self.report, self.rows = out, report, []

    def add(self, pid: str, prompt: str, split: str, images: list[tuple[str, bytes]], ranking: list[int]) -> None:
        rels = []
        for k, (name, data) in enumerate(images):
            rel = f"images/{split}/{_safe_id(pid)}_{k}{_suffix(name, data)}"
            atomic_write_bytes(self.out / rel, data)
            rels.append(rel)
        self.rows.append({"prompt_id": pid, "prompt": prompt, "images": rels, "ranking": ranking, "split": split})
        self.report.rows += 1
        self.report.images += len(rels)
        self.report.per_split[split] = self.report.per_split.get(split, 0) + 1


def _imagerewarddb(src: Path, writer: _Writer, split: str | None, limit: int, skipped: Counter) -> None:
    files = sorted(src.glob("metadata-*.parquet")) if src.is_dir() else [src]
    if not files:
        raise RewardiffError(f"{src}: no metadata-{{train,validation,test}}.parquet (ImageRewardDB as published)")
    images = _ImageSource(src if src.is_dir() else src.parent)
    try:
        for path in files:
            sp = _split_for(path, split)
            groups: dict[str, list[dict]] = {}
            for n, row in enumerate(_read_parquet(path, ["image_path", "prompt_id", "prompt", "rank"]), 1):
                row["_n"] = n
                groups.setdefault(str(row["prompt_id"]), []).append(row)
            for count, (pid, rows) in enumerate(groups.items()):
                if limit and count >= limit:
                    break
                where = f"{path}: prompt_id {pid!r} (row {rows[0]['_n']})"
                if len({r["prompt"] for r in rows}) != 1:
                    raise RewardiffError(f"{where}: its rows disagree on the prompt")
                if not MIN_IMAGES <= len(rows) <= MAX_IMAGES:
                    skipped[f"{len(rows)}_images"] += 1
                    continue
                writer.add(pid, str(rows[0]["prompt"]), sp, [(r["image_path"], images.read(str(r["image_path"]), where)) for r in rows],
                           [r["rank"] for r in rows])
    finally:
        images.close()


def _pickapic(src: Path, writer: _Writer, split: str | None, limit: int, skipped: Counter) -> None:
    files = sorted(src.glob("*.parquet")) if src.is_dir() else [src]
    if not files:
        raise RewardiffError(f"{src}: no .parquet files (Pick-a-Pic pair files)")
    for path in files:
        sp = _split_for(path, split)
        rows = _read_parquet(path, ["caption", "jpg_0", "jpg_1", "label_0", "label_1"])
        for n, row in enumerate(rows, 1):
            if limit and writer.report.per_split.get(sp, 0) >= limit:
                break
            where = f"{path}: row {n}"
            l0, l1 = row["label_0"], row["label_1"]
            if l0 is None or l1 is None:
                skipped["unlabelled"] += 1
                continue
            if l0 == l1:
                skipped["tie"] += 1
                continue
            if not isinstance(row["caption"], str) or not row["caption"].strip():
                skipped["empty_prompt"] += 1
                continue
            pair = [("jpg_0.jpg", _image_bytes(row["jpg_0"], where)), ("jpg_1.jpg", _image_bytes(row["jpg_1"], where))]
            writer.add(f"{path.stem}-{n}", row["caption"], sp, pair, [1, 2] if l0 > l1 else [2, 1])


def _hpd_ranking(entry: dict, k: int, where: str) -> list[int]:
    if "rank" in entry:
        rank = [int(r) for r in entry["rank"]]
        if min(rank, default=0) == 0:  # 0-based ranks as in some HPDv2 releases
            rank = [r + 1 for r in rank]
    elif "human_preference" in entry:
        rank = [1 if int(p) == 1 else 2 for p in entry["human_preference"]]
    else:
        raise RewardiffError(f"{where}: needs 'rank' (1 = best) or 'human_preference' (1 = preferred)")
    if len(rank) != k:
        raise RewardiffError(f"{where}: {len(rank)} ranks for {k} images")
    return rank


def _hpdv2(src: Path, writer: _Writer, split: str | None, limit: int, skipped: Counter, images_dir: Path | None) -> None:
    files = sorted(src.glob("*.json")) if src.is_dir() else [src]
    if not files:
        raise RewardiffError(f"{src}: no .json files (HPDv2 train.json / test.json)")
    for path in files:
        sp = _split_for(path, split)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RewardiffError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(entries, list):
            raise RewardiffError(f"{path}: expected a JSON list of entries")
        source = _ImageSource(images_dir or path.parent)
        try:
            for n, entry in enumerate(entries, 1):
                if limit and writer.report.per_split.get(sp, 0) >= limit:
                    break
                where = f"{path}: entry {n}"
                if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
                    raise RewardiffError(f"{where}: needs a 'prompt' string")
                paths = entry.get("image_path", entry.get("file_path"))
                if not isinstance(paths, list) or len(paths) < PAIR_IMAGES:
                    raise RewardiffError(f"{where}: needs an 'image_path' list of at least {PAIR_IMAGES} images")
                ranking = _hpd_ranking(entry, len(paths), where)
                if len(set(ranking)) == 1:
                    skipped["all_tied"] += 1
                    continue
                writer.add(str(entry.get("id", f"{path.stem}-{n}")), entry["prompt"], sp,
                           [(p, source.read(str(p), where)) for p in paths], ranking)
        finally:
            source.close()


def import_preferences(fmt: str, src: str | Path, out: str | Path, split: str | None = None, limit: int = 0,
                       images_dir: str | Path | None = None) -> ImportReport:
    """Convert a published set (FORMATS) at `src` (a file or its folder) into OUT; returns the counts.
    `limit` caps the rows per file/split (0 = all): a quick subset without reading more images."""
    if fmt not in FORMATS:
        raise RewardiffError(f"unknown preference format {fmt!r}; known: {', '.join(FORMATS)}")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise RewardiffError(f"{fmt}: source not found: {src}")
    if (out / INDEX_JSONL).exists():
        raise RewardiffError(f"{out / INDEX_JSONL} exists; choose a new --out (an imported set is never overwritten)")
    if split is not None and split not in SPLITS:
        raise RewardiffError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit < 0:
        raise RewardiffError(f"--limit must be >= 0 (0 = all), got {limit}")
    report = ImportReport(fmt, str(out))
    writer, skipped = _Writer(out, report), Counter()
    if fmt == "imagerewarddb":
        _imagerewarddb(src, writer, split, limit, skipped)
    elif fmt == "pickapic":
        _pickapic(src, writer, split, limit, skipped)
    else:
        _hpdv2(src, writer, split, limit, skipped, Path(images_dir) if images_dir else None)
    if not writer.rows:
        raise RewardiffError(f"{src}: no usable rows to import (skipped: {dict(skipped)})")
    sizes = [len(r["images"]) for r in writer.rows]
    write_preference_index(out, writer.rows, min(min(sizes), MIN_IMAGES), max(max(sizes), MAX_IMAGES))
    report.skipped = dict(skipped)
    write_json(out / "import.json", report.__dict__)
    return report
