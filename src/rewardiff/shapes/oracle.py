"""The exact programmatic judge of the shapes world. EVALUATION ONLY.

No reward, judge, data filter or training step may call this module: it exists to tell whether
AI feedback made a model better or only taught it to please its judges.

Pipeline: pixel -> nearest palette colour (or background, or 'unclear' past a cut-off) ->
connected components per colour -> drop specks -> classify each component's shape from its box
fill ratio and top/bottom symmetry -> check the prompt (objects, counts, relation, no extras).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from rewardiff.shapes.palette import BACKGROUND, COLORS, POSITION_MARGIN_PX
from rewardiff.shapes.pixels import connected_components
from rewardiff.shapes.prompts import CATEGORIES, PromptSpec, parse_prompt

COLOR_CUTOFF = 90.0
"""RGB distance past which a pixel is 'unclear' rather than a palette colour or background."""
MIN_COMPONENT_PIXELS = 10
"""Components smaller than this are specks (the smallest drawn object has ~28 pixels)."""
SQUARE_MIN_FILL = 0.88
CIRCLE_MIN_FILL = 0.66
"""Box fill ratios: a square fills ~1.0 of its box, a disc ~0.79, a triangle ~0.5."""
MAX_ASPECT_DIFF = 3
"""Circles and squares have (nearly) equal box width and height."""
MAX_OBJECT_EXTENT = 15
"""Blobs wider or taller than this are not objects of this world (the largest is 11)."""

_PALETTE_NAMES = ["background", *COLORS]
_PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)


@dataclass(frozen=True)
class DetectedObject:
    color: str
    shape: str | None
    """None when the blob has no recognisable shape."""
    box: tuple[int, int, int, int]
    pixels: int

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape or 'blob'}"


@dataclass(frozen=True)
class OracleVerdict:
    prompt: str
    category: str
    passed: bool
    reason: str
    objects: tuple[DetectedObject, ...] = field(default_factory=tuple)


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W) int labels: 0 background, 1..5 palette colours, -1 unclear."""
    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    dist = np.linalg.norm(rgb[:, :, None, :] - _PALETTE[None, None], axis=-1)
    labels = dist.argmin(-1)
    labels[dist.min(-1) > COLOR_CUTOFF] = -1
    return labels


def classify_shape(comp_mask: np.ndarray) -> str | None:
    """Shape of a component given its (h, w) mask cropped to its box, or None."""
    h, w = comp_mask.shape
    if max(h, w) > MAX_OBJECT_EXTENT or min(h, w) < 4:
        return None
    fill = comp_mask.sum() / float(h * w)
    if fill >= SQUARE_MIN_FILL:
        return "square" if abs(h - w) <= MAX_ASPECT_DIFF else None
    if fill >= CIRCLE_MIN_FILL:
        return "circle" if abs(h - w) <= MAX_ASPECT_DIFF else None
    widths = comp_mask.sum(1)
    third = max(1, h // 3)
    top, bottom = widths[:third].mean(), widths[-third:].mean()
    if fill >= 0.35 and top < 0.6 * bottom:
        return "triangle"
    return None


def detect_objects(image: np.ndarray) -> list[DetectedObject]:
    """Every non-speck single-colour blob in the image, in reading order."""
    labels = classify_pixels(image)
    found = []
    for idx, color in enumerate(_PALETTE_NAMES[1:], start=1):
        for pix in connected_components(labels == idx, connectivity=8):
            if len(pix) < MIN_COMPONENT_PIXELS:
                continue
            y0, x0 = pix.min(0)
            y1, x1 = pix.max(0) + 1
            crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            crop[pix[:, 0] - y0, pix[:, 1] - x0] = True
            found.append(DetectedObject(color, classify_shape(crop), (int(x0), int(y0), int(x1), int(y1)), len(pix)))
    return sorted(found, key=lambda o: (o.box[1], o.box[0]))


def _relation_ok(rel: str, a: DetectedObject, b: DetectedObject) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    m = POSITION_MARGIN_PX
    return {"left of": ax <= bx - m, "right of": ax >= bx + m, "above": ay <= by - m, "below": ay >= by + m}[rel]


def _describe(objs: list[DetectedObject]) -> str:
    return ", ".join(o.name for o in objs) if objs else "nothing"


def judge(image: np.ndarray, prompt: str | PromptSpec) -> OracleVerdict:
    """Pass/fail with a reason for one image against one prompt."""
    spec = prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)
    objs = detect_objects(image)

    def verdict(ok: bool, reason: str) -> OracleVerdict:
        return OracleVerdict(spec.text, spec.category, ok, reason, tuple(objs))

    blobs = [o for o in objs if o.shape is None]
    if blobs:
        return verdict(False, f"unrecognisable shape: {_describe(blobs)}")
    want = Counter(spec.objects)
    have = Counter((o.color, o.shape) for o in objs)
    if have != want:
        missing = want - have
        extra = have - want
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"{n} x {c} {s}" for (c, s), n in missing.items()))
        if extra:
            parts.append("extra " + ", ".join(f"{n} x {c} {s}" for (c, s), n in extra.items()))
        return verdict(False, f"expected {len(spec.objects)} object(s), found {len(objs)} ({_describe(objs)}): " + "; ".join(parts))
    if spec.relation is not None:
        a = next(o for o in objs if (o.color, o.shape) == spec.objects[0])
        b = next(o for o in objs if (o.color, o.shape) == spec.objects[1])
        if not _relation_ok(spec.relation, a, b):
            return verdict(False, f"{a.name} at {a.center} is not {spec.relation} {b.name} at {b.center}")
    return verdict(True, "ok")


@dataclass(frozen=True)
class OracleReport:
    """Per-category pass rates and the overall score (mean over categories present, as GenEval)."""

    counts: dict[str, tuple[int, int]]
    """category -> (passed, total)"""

    @property
    def rates(self) -> dict[str, float]:
        return {c: p / t for c, (p, t) in self.counts.items() if t}

    @property
    def overall(self) -> float:
        rates = self.rates
        return sum(rates.values()) / len(rates) if rates else float("nan")

    def to_dict(self) -> dict:
        return {
            "categories": {c: {"passed": p, "total": t, "rate": p / t if t else None} for c, (p, t) in self.counts.items()},
            "overall": self.overall,
        }

    def markdown(self) -> str:
        lines = ["| category | passed | total | rate |", "| --- | ---: | ---: | ---: |"]
        for c, (p, t) in self.counts.items():
            lines.append(f"| {c} | {p} | {t} | {p / t:.3f} |" if t else f"| {c} | 0 | 0 | - |")
        lines.append(f"| **overall** | | | **{self.overall:.3f}** |")
        return "\n".join(lines)


def report(verdicts: list[OracleVerdict]) -> OracleReport:
    counts: dict[str, tuple[int, int]] = {}
    for cat in CATEGORIES:
        vs = [v for v in verdicts if v.category == cat]
        if vs:
            counts[cat] = (sum(v.passed for v in vs), len(vs))
    return OracleReport(counts)
