"""PNG plots drawn with PIL only (matplotlib is not a dependency): line plots of per-step or
per-round scores, and win/tie/loss bars.

    >>> line_plot({"oracle": [0.35, 0.41, 0.44]}, "runs/x/rounds.png", "oracle overall", "round", "score")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from rewardiff.errors import RewardiffError
from rewardiff.io_utils import atomic_write_bytes

WIDTH, HEIGHT = 640, 400  # canvas, pixels
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 150, 36, 48  # room for ticks, legend, title
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127)]
"""Series colours (the 'tab10' cycle), reused in order."""
WIN_TIE_LOSS_COLORS = ((44, 160, 44), (160, 160, 160), (214, 39, 40))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (1-2-5 steps)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _canvas(title: str, xlabel: str, ylabel: str):
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((MARGIN_LEFT, 10), title, fill="black", font=font)
    draw.text((MARGIN_LEFT + (WIDTH - MARGIN_LEFT - MARGIN_RIGHT) // 2 - 3 * len(xlabel), HEIGHT - 18), xlabel, fill="black", font=font)
    draw.text((4, MARGIN_TOP - 14), ylabel, fill="black", font=font)
    return image, draw, font


def _save(image, path: str | Path) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())


def line_plot(series: dict[str, list[float]], path: str | Path, title: str = "", xlabel: str = "step", ylabel: str = "value") -> Path:
    """One line per series (x = 0, 1, 2, ... = index of the value) with axes, ticks and a legend.

    Non-finite values are skipped (the line breaks there). Returns the PNG path."""
    if not series or all(len(v) == 0 for v in series.values()):
        raise RewardiffError(f"line_plot {title!r}: no values to plot")
    values = [float(v) for vs in series.values() for v in vs if math.isfinite(float(v))]
    if not values:
        raise RewardiffError(f"line_plot {title!r}: every value is NaN or inf")
    n = max(len(v) for v in series.values())
    yt = _nice_ticks(min(values), max(values))
    ylo, yhi = yt[0], yt[-1] if yt[-1] > yt[0] else yt[0] + 1
    xhi = max(1, n - 1)
    image, draw, font = _canvas(title, xlabel, ylabel)
    x0, x1, y0, y1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP

    def px(i: float, v: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * i / xhi, y0 - (y0 - y1) * (v - ylo) / (yhi - ylo)

    for t in yt:
        _, yy = px(0, t)
        draw.line([(x0, yy), (x1, yy)], fill=(230, 230, 230))
        draw.text((4, yy - 6), _fmt(t), fill="black", font=font)
    for t in _nice_ticks(0, xhi, min(8, xhi)):
        if t > xhi:
            continue
        xx, _ = px(t, ylo)
        draw.line([(xx, y0), (xx, y0 + 4)], fill="black")
        draw.text((xx - 6, y0 + 6), _fmt(t), fill="black", font=font)
    draw.rectangle([x0, y1, x1, y0], outline="black")
    for k, (name, vs) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        segment: list[tuple[float, float]] = []
        for i, v in enumerate(vs):
            if not math.isfinite(float(v)):
                if len(segment) > 1:
                    draw.line(segment, fill=color, width=2)
                segment = []
                continue
            p = px(i, float(v))
            segment.append(p)
            if n <= 30:
                draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=color)
        if len(segment) > 1:
            draw.line(segment, fill=color, width=2)
        ly = y1 + 14 * k
        draw.line([(x1 + 10, ly + 6), (x1 + 28, ly + 6)], fill=color, width=3)
        draw.text((x1 + 32, ly), name[:18], fill="black", font=font)
    return _save(image, path)


def bar_plot(groups: dict[str, dict[str, float]], path: str | Path, title: str = "", ylabel: str = "share") -> Path:
    """Stacked bars, one per group, e.g. {"scale 0.4": {"win": 0.5, "tie": 0.2, "loss": 0.3}}.

    Each bar stacks its parts in the order given (win, tie, loss read green, grey, red), with the
    value printed inside each part; parts are drawn to the scale of the tallest bar."""
    if not groups or not any(parts for parts in groups.values()):
        raise RewardiffError(f"bar_plot {title!r}: no bars to plot")
    for name, parts in groups.items():
        bad = [k for k, v in parts.items() if not math.isfinite(float(v)) or float(v) < 0]
        if bad:
            raise RewardiffError(f"bar_plot {title!r}: bar {name!r} has negative or non-finite parts {bad}")
    part_names = list(dict.fromkeys(k for parts in groups.values() for k in parts))
    colors = {k: (WIN_TIE_LOSS_COLORS[i] if len(part_names) == 3 else PALETTE[i % len(PALETTE)]) for i, k in enumerate(part_names)}
    top = max(sum(float(v) for v in parts.values()) for parts in groups.values()) or 1.0
    image, draw, font = _canvas(title, "", ylabel)
    x0, x1, y0, y1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP
    slot = (x1 - x0) / len(groups)
    for t in _nice_ticks(0, top):
        yy = y0 - (y0 - y1) * t / top
        if yy < y1 - 1:
            continue
        draw.line([(x0, yy), (x1, yy)], fill=(230, 230, 230))
        draw.text((4, yy - 6), _fmt(t), fill="black", font=font)
    for g, (name, parts) in enumerate(groups.items()):
        left, right = x0 + slot * g + slot * 0.2, x0 + slot * (g + 1) - slot * 0.2
        base = 0.0
        for k in part_names:
            v = float(parts.get(k, 0.0))
            if v <= 0:
                continue
            ya, yb = y0 - (y0 - y1) * base / top, y0 - (y0 - y1) * (base + v) / top
            draw.rectangle([left, yb, right, ya], fill=colors[k], outline="black")
            if ya - yb >= 12:
                draw.text(((left + right) / 2 - 12, (ya + yb) / 2 - 6), _fmt(v), fill="black", font=font)
            base += v
        draw.text((left, y0 + 6), name[: max(4, int(slot / 6))], fill="black", font=font)
    draw.rectangle([x0, y1, x1, y0], outline="black")
    for k, name in enumerate(part_names):
        ly = y1 + 14 * k
        draw.rectangle([x1 + 10, ly + 2, x1 + 26, ly + 10], fill=colors[name], outline="black")
        draw.text((x1 + 32, ly), name[:18], fill="black", font=font)
    return _save(image, path)
