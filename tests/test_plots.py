"""PIL plots: a PNG of the right size whose pixels show the series (not a blank canvas)."""

import math

import numpy as np
import pytest
from PIL import Image

from rewardiff.errors import RewardiffError
from rewardiff.eval.plots import HEIGHT, PALETTE, WIDTH, WIN_TIE_LOSS_COLORS, _nice_ticks, bar_plot, line_plot


def _has_color(path, color) -> bool:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return bool((pixels == np.array(color)).all(axis=1).any())


def test_line_plot_draws_each_series(tmp_path):
    path = line_plot({"oracle": [0.35, 0.41, 0.44], "judge": [0.5, float("nan"), 0.7, 0.8]}, tmp_path / "a" / "p.png", "title", "round", "score")
    with Image.open(path) as im:
        assert im.size == (WIDTH, HEIGHT)
    assert _has_color(path, PALETTE[0]) and _has_color(path, PALETTE[1])
    assert not _has_color(path, PALETTE[2])


def test_line_plot_single_point_and_constant(tmp_path):
    assert line_plot({"x": [1.0]}, tmp_path / "one.png").is_file()
    assert line_plot({"x": [2.0, 2.0, 2.0]}, tmp_path / "flat.png").is_file()


@pytest.mark.parametrize("series", [{}, {"a": []}, {"a": [float("nan")]}])
def test_line_plot_rejects_nothing_to_plot(tmp_path, series):
    with pytest.raises(RewardiffError):
        line_plot(series, tmp_path / "x.png")


def test_bar_plot_win_tie_loss_colors(tmp_path):
    path = bar_plot({"0.4": {"win": 0.5, "tie": 0.2, "loss": 0.3}, "0.7": {"win": 0.6, "tie": 0.1, "loss": 0.3}}, tmp_path / "b.png", "win rate")
    for color in WIN_TIE_LOSS_COLORS:
        assert _has_color(path, color)
    with pytest.raises(RewardiffError):
        bar_plot({"x": {"win": -1.0}}, tmp_path / "c.png")


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (0.351, 0.44), (-3.0, 17.0), (5.0, 5.0)])
def test_nice_ticks_cover_range(lo, hi):
    ticks = _nice_ticks(lo, hi)
    assert ticks[0] <= lo + 1e-12 and ticks[-1] >= hi - 1e-12
    assert len(ticks) <= 12 and all(math.isfinite(t) for t in ticks)
