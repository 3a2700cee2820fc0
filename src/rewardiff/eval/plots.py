"""Figures drawn with matplotlib (Agg canvas, no pyplot state): line plots of per-step or per-round
scores, learning-curve panels, win/tie/loss bars and the proxy-reward vs oracle scatter.

Each figure is built once as a `matplotlib.figure.Figure` and then saved as a PNG (for the HTML
report and the run folder) and/or sent to tensorboard (`SummaryWriter.add_figure`), so the report
and tensorboard show the same picture.

    >>> line_plot({"oracle": [0.35, 0.41, 0.44]}, "runs/x/rounds.png", "oracle overall", "round", "score", ylim=(0, 1))  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

from rewardiff.errors import RewardiffError
from rewardiff.io_utils import atomic_write_bytes

FIGSIZE = (6.4, 4.0)  # inches; at DPI this is the 640 x 400 canvas the PIL plots had
DPI = 100
RATE = (0.0, 1.0)
"""y-limits of a pass rate or a share (oracle scores, win rates): the axis shows the whole scale."""
WIN_TIE_LOSS_COLORS = ("#2ca02c", "#a0a0a0", "#d62728")
PREFERRED_METRICS = ("reward", "oracle", "kl", "loss")
"""Learning-curve panels come in this order (a metric whose name contains the word), then the rest."""
MAX_PANELS = 6


def _figure(figsize: tuple[float, float] = FIGSIZE):
    """A figure on its own Agg canvas: no global pyplot state, works without a display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG atomically (a kill never leaves half a file); returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return atomic_write_bytes(Path(path), buf.getvalue())


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _xy(values) -> tuple[list[float], list[float]]:
    """A series given as values (x = 0, 1, 2, ...) or as (x, y) pairs; non-finite y become NaN (a break)."""
    xs, ys = [], []
    for i, v in enumerate(values):
        x, y = (v if isinstance(v, (tuple, list)) else (i, v))
        xs.append(float(x))
        ys.append(float(y) if y is not None and math.isfinite(float(y)) else float("nan"))
    return xs, ys


def line_figure(series: dict[str, Sequence], title: str = "", xlabel: str = "step", ylabel: str = "value",
                ylim: tuple[float, float] | None = None):
    """One line per series: values (x = their index) or (x, y) pairs; NaN or inf break the line.

    `ylim` fixes the y-axis (RATE for a pass rate); otherwise matplotlib fits it to the data."""
    if not series or all(len(v) == 0 for v in series.values()):
        raise RewardiffError(f"line plot {title!r}: no values to plot")
    if not _finite(y for vs in series.values() for y in _xy(vs)[1]):
        raise RewardiffError(f"line plot {title!r}: every value is NaN or inf")
    fig = _figure()
    ax = fig.add_subplot()
    longest = max(len(v) for v in series.values())
    for name, values in series.items():
        xs, ys = _xy(values)
        ax.plot(xs, ys, marker="o" if longest <= 30 else None, markersize=4, linewidth=1.8, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if longest <= 30:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return fig


def line_plot(series: dict[str, Sequence], path: str | Path, title: str = "", xlabel: str = "step", ylabel: str = "value",
              ylim: tuple[float, float] | None = None) -> Path:
    """`line_figure` saved as a PNG; returns its path."""
    return save_figure(line_figure(series, title, xlabel, ylabel, ylim), path)


def bar_figure(groups: dict[str, dict[str, float]], title: str = "", ylabel: str = "share"):
    """Stacked bars, one per group, e.g. {"scale 0.4": {"win": 5, "tie": 2, "loss": 3}}.

    Parts stack in the order given (win, tie, loss read green, grey, red), each labelled with its value."""
    if not groups or not any(parts for parts in groups.values()):
        raise RewardiffError(f"bar plot {title!r}: no bars to plot")
    for name, parts in groups.items():
        bad = [k for k, v in parts.items() if not math.isfinite(float(v)) or float(v) < 0]
        if bad:
            raise RewardiffError(f"bar plot {title!r}: bar {name!r} has negative or non-finite parts {bad}")
    part_names = list(dict.fromkeys(k for parts in groups.values() for k in parts))
    colors = WIN_TIE_LOSS_COLORS if len(part_names) == 3 else [None] * len(part_names)
    fig = _figure()
    ax = fig.add_subplot()
    names = list(groups)
    bottom = [0.0] * len(names)
    for part, color in zip(part_names, colors):
        heights = [float(groups[g].get(part, 0.0)) for g in names]
        bars = ax.bar(names, heights, bottom=bottom, color=color, edgecolor="black", linewidth=0.6, label=part)
        ax.bar_label(bars, labels=[f"{h:g}" if h > 0 else "" for h in heights], label_type="center", fontsize=8)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set(title=title, ylabel=ylabel)
    ax.set_ylim(0, max(bottom) * 1.05 or 1.0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    return fig


def bar_plot(groups: dict[str, dict[str, float]], path: str | Path, title: str = "", ylabel: str = "share") -> Path:
    """`bar_figure` saved as a PNG; returns its path."""
    return save_figure(bar_figure(groups, title, ylabel), path)


def _panel_order(name: str) -> tuple[int, str]:
    low = name.lower()
    return next((i for i, word in enumerate(PREFERRED_METRICS) if word in low), len(PREFERRED_METRICS)), name


def curves_figure(rows: list[dict], title: str = "learning curves", step_keys: Sequence[str] = ("step", "epoch", "round")):
    """Learning curves from train-log rows (`{"stage", "step" | "epoch", **metrics}`): one panel per
    metric (reward, oracle, KL, loss first), one line per stage; each panel has its own y-axis
    (a loss and a reward differ by orders of magnitude). Returns None when no row has a number."""
    from matplotlib.ticker import MaxNLocator

    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in rows:
        step_key = next((k for k in step_keys if k in row), None)
        if step_key is None:
            continue
        for key, value in row.items():
            if key in step_keys or key == "stage" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            panels.setdefault(key, {}).setdefault(str(row.get("stage", "")), []).append((float(row[step_key]), float(value)))
    panels = {k: v for k, v in panels.items() if _finite(y for s in v.values() for _, y in s)}
    if not panels:
        return None
    names = sorted(panels, key=_panel_order)[:MAX_PANELS]
    cols = 1 if len(names) == 1 else 2
    nrows = math.ceil(len(names) / cols)
    fig = _figure((6.4 if cols == 1 else 9.6, 2.6 * nrows + 0.4))
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        for stage, points in panels[name].items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.5, label=stage or None)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(panels[name]) > 1:
            ax.legend(fontsize=7, loc="upper right")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def proxy_oracle_figure(points: list[tuple[str, float, float]], proxy: str = "proxy reward", title: str = ""):
    """Proxy reward (x) against the oracle's overall pass rate (y, 0-1), one point per model, in
    order (base first), joined by arrows: a path that moves right without moving up is the
    judges being pleased without the images getting better (reward hacking)."""
    pts = [(label, float(x), float(y)) for label, x, y in points if math.isfinite(float(x)) and math.isfinite(float(y))]
    if not pts:
        raise RewardiffError(f"proxy vs oracle plot {title!r}: no point has both a proxy reward and an oracle score")
    fig = _figure()
    ax = fig.add_subplot()
    xs, ys = [p[1] for p in pts], [p[2] for p in pts]
    ax.scatter(xs, ys, s=36, zorder=3)
    for (label, x, y) in pts:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for (_, x0, y0), (_, x1, y1) in zip(pts, pts[1:]):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "grey", "lw": 1})
    ax.set(title=title or "proxy reward vs oracle (right without up = reward hacking)", xlabel=proxy, ylabel="oracle overall pass rate")
    ax.set_ylim(*RATE)
    lo, hi = min(xs), max(xs)
    pad = (hi - lo) * 0.15 or max(abs(hi) * 0.05, 0.05)
    ax.set_xlim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)
    return fig
