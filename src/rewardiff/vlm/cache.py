"""Answers already given, keyed by (image hash, model, question, settings), kept in a JSONL file,
so a resumed round or a second reward call asks nothing twice.

The image hash is SHA-256 of the uint8 RGB pixels and their shape: the same image saved again or
reloaded hashes alike. Each answer is appended (and fsync'ed) as soon as it arrives, so a run
killed mid-batch keeps what it was told. Failed requests are never cached (the next run asks again).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from rewardiff.errors import RewardiffError
from rewardiff.io_utils import append_jsonl
from rewardiff.vlm.answers import Answer


def image_hash(image: np.ndarray) -> str:
    """SHA-256 of a uint8 (H, W, 3) image's shape and pixels."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def answer_key(image_sha: str, model_id: str, question: str, settings: str = "") -> str:
    return hashlib.sha256(json.dumps([image_sha, model_id, question, settings]).encode()).hexdigest()


class AnswerCache:
    """In memory, and appended to `path` when one is given."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.answers: dict[str, Answer] = {}
        if self.path is not None and self.path.is_file():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self.answers[row["key"]] = Answer.from_dict(row["answer"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    if n == len(self.path.read_text(encoding="utf-8").splitlines()):
                        continue  # a last line cut by a kill mid-write: drop it, ask again
                    raise RewardiffError(f"{self.path}:{n}: not an answer-cache line; delete the file to start the cache afresh") from None

    def get(self, key: str) -> Answer | None:
        return self.answers.get(key)

    def put(self, items: list[tuple[str, Answer]]) -> None:
        fresh = [(k, a) for k, a in items if not a.error]
        for k, a in fresh:
            self.answers[k] = a
        if self.path is not None and fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, [{"key": k, "answer": a.to_dict()} for k, a in fresh])

    def __len__(self) -> int:
        return len(self.answers)
