"""Rendered ground-truth sets in the same metadata.jsonl layout as generated ones.

Useful as a reference (the oracle's ceiling), and later as training data for the judges.
"""

from __future__ import annotations

from pathlib import Path

from rewardiff.generation import METADATA, read_prompts
from rewardiff.io_utils import append_jsonl, save_png
from rewardiff.shapes.render import render


def render_dataset(prompts: str, num_images: int, seed: int, out: Path) -> Path:
    texts = read_prompts(prompts)
    out.mkdir(parents=True, exist_ok=True)
    meta = out / METADATA
    if meta.exists():
        meta.unlink()
    rows = []
    for i, p in enumerate(texts):
        for k in range(num_images):
            rel = f"images/{i:05d}_{k:03d}.png"
            save_png(out / rel, render(p, seed * 1_000_003 + i * 1000 + k).image)
            rows.append({"prompt": p, "image": rel, "seed": seed + k, "model": "render", "lora": [], "prompt_index": i, "index": k})
    append_jsonl(meta, rows)
    return meta
