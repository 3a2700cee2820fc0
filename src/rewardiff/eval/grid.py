"""A labelled PNG grid (rows = prompts, columns = seeds) for looking at a generated set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rewardiff.io_utils import load_image


def make_grid(rows: list[dict], root: Path, out: Path, scale: int = 3, max_prompts: int = 64) -> Path:
    from PIL import Image, ImageDraw

    by_prompt: dict[str, list[np.ndarray]] = {}
    for r in rows:
        if r["prompt"] in by_prompt or len(by_prompt) < max_prompts:
            by_prompt.setdefault(r["prompt"], []).append(load_image(root / r["image"]))
    ncols = max(len(v) for v in by_prompt.values())
    h, w = next(iter(by_prompt.values()))[0].shape[:2]
    cell_w, cell_h, label_w = w * scale + 4, h * scale + 4, 260
    canvas = Image.new("RGB", (label_w + ncols * cell_w, len(by_prompt) * cell_h), (235, 235, 235))
    draw = ImageDraw.Draw(canvas)
    for r, (prompt, images) in enumerate(by_prompt.items()):
        draw.text((4, r * cell_h + cell_h // 2 - 6), prompt, fill=(0, 0, 0))
        for c, im in enumerate(images):
            tile = Image.fromarray(im).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (label_w + c * cell_w + 2, r * cell_h + 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
