"""Seeded renderer: a prompt (or spec) and a seed -> a 32x32 image and its exact ground truth."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from rewardiff.shapes.palette import (
    BACKGROUND,
    COLORS,
    IMAGE_SIZE,
    MAX_OBJECT_SIZE,
    MIN_OBJECT_SIZE,
    POSITION_MARGIN_PX,
)
from rewardiff.shapes.prompts import PromptSpec, parse_prompt

GAP_PX = 2
"""Rendered objects keep this many background pixels between their boxes (spec says >= 1)."""
RENDER_POSITION_MARGIN_PX = POSITION_MARGIN_PX + 2
"""Rendered relations overshoot the oracle's margin so ground truth is never borderline."""


@dataclass(frozen=True)
class ObjectTruth:
    color: str
    shape: str
    box: tuple[int, int, int, int]
    """(x0, y0, x1, y1), x1/y1 exclusive."""

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


@dataclass(frozen=True)
class RenderedImage:
    image: np.ndarray
    """uint8 array (H, W, 3)."""
    prompt: str
    objects: tuple[ObjectTruth, ...]


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of a shape filling its box, sampled at pixel centres."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    if shape == "square":
        return np.ones((height, width), dtype=bool)
    if shape == "circle":
        r = width / 2.0
        return (xs - width / 2.0) ** 2 + (ys - height / 2.0) ** 2 <= r * r
    if shape == "triangle":  # apex up: half-width grows linearly from top to bottom
        half = ys / height * (width / 2.0)
        return np.abs(xs - width / 2.0) <= half
    raise ValueError(f"unknown shape {shape!r}")


def _sample_size(shape: str, rng: random.Random, max_size: int) -> tuple[int, int]:
    w = rng.randint(MIN_OBJECT_SIZE, max_size)
    h = w if shape in ("circle", "square") else rng.randint(MIN_OBJECT_SIZE, max_size)
    return w, h


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return (
        a[2] + GAP_PX <= b[0] or b[2] + GAP_PX <= a[0] or a[3] + GAP_PX <= b[1] or b[3] + GAP_PX <= a[1]
    )


def _relation_holds(rel: str, a: tuple[float, float], b: tuple[float, float], margin: float) -> bool:
    dx, dy = a[0] - b[0], a[1] - b[1]
    return {
        "left of": dx <= -margin,
        "right of": dx >= margin,
        "above": dy <= -margin,
        "below": dy >= margin,
    }[rel]


def _place(spec: PromptSpec, rng: random.Random) -> list[tuple[int, int, int, int]]:
    for attempt in range(400):
        max_size = MAX_OBJECT_SIZE if attempt < 200 else MIN_OBJECT_SIZE + 1
        boxes: list[tuple[int, int, int, int]] = []
        for _, shape in spec.objects:
            w, h = _sample_size(shape, rng, max_size)
            for _ in range(50):
                x0 = rng.randint(1, IMAGE_SIZE - 1 - w)
                y0 = rng.randint(1, IMAGE_SIZE - 1 - h)
                box = (x0, y0, x0 + w, y0 + h)
                if all(_boxes_apart(box, other) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) != len(spec.objects):
            continue
        if spec.relation is not None:
            centers = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
            if not _relation_holds(spec.relation, centers[0], centers[1], RENDER_POSITION_MARGIN_PX):
                continue
        return boxes
    raise RuntimeError(f"could not place objects for {spec.text!r}")  # pragma: no cover


def render(prompt: str | PromptSpec, seed: int) -> RenderedImage:
    """Draw an image that shows exactly what the prompt asks (flat colours, no anti-aliasing)."""
    spec = prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)
    rng = random.Random(seed)
    boxes = _place(spec, rng)
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    truths = []
    for (color, shape), box in zip(spec.objects, boxes):
        x0, y0, x1, y1 = box
        mask = shape_mask(shape, x1 - x0, y1 - y0)
        image[y0:y1, x0:x1][mask] = COLORS[color]
        truths.append(ObjectTruth(color, shape, box))
    return RenderedImage(image=image, prompt=spec.text, objects=tuple(truths))
