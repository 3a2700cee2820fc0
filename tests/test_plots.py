"""matplotlib figures: axes that fit the data (a pass rate 0-1), PNGs whose pixels show the series,
learning-curve panels in the reward / oracle / KL / loss order, the same figure for tensorboard."""

import numpy as np
import pytest
from PIL import Image

from rewardiff.errors import RewardiffError
from rewardiff.eval.plots import (DPI, FIGSIZE, RATE, bar_plot, curves_figure, line_figure, line_plot, proxy_oracle_figure,
                                  save_figure)

TAB_BLUE, TAB_ORANGE, TAB_GREEN = (31, 119, 180), (255, 127, 14), (44, 160, 44)  # matplotlib's first colours
WIN, TIE, LOSS = (44, 160, 44), (160, 160, 160), (214, 39, 40)


def _has_color(path, color) -> bool:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return bool((pixels == np.array(color)).all(axis=1).any())


def test_line_plot_draws_each_series(tmp_path):
    path = line_plot({"oracle": [0.35, 0.41, 0.44], "judge": [0.5, float("nan"), 0.7, 0.8]}, tmp_path / "a" / "p.png", "title", "round", "score")
    with Image.open(path) as im:
        assert im.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    assert _has_color(path, TAB_BLUE) and _has_color(path, TAB_ORANGE)
    assert not _has_color(path, TAB_GREEN)


def test_axes_fit_the_data():
    """A pass rate gets the whole 0-1 scale; otherwise the axis hugs the values (not 0.4-1.6 for 0.5-1.0)."""
    rate = line_figure({"oracle": [0.48, 0.50, 0.51]}, ylim=RATE)
    assert rate.axes[0].get_ylim() == RATE
    lo, hi = line_figure({"reward": [72.0, 75.5, 81.0]}).axes[0].get_ylim()
    assert 70.0 < lo <= 72.0 and 81.0 <= hi < 83.0
    proxy = proxy_oracle_figure([("base", 2.0, 0.5), ("round 1", 2.3, 0.45)], "judge")
    assert proxy.axes[0].get_ylim() == RATE
    xlo, xhi = proxy.axes[0].get_xlim()
    assert 1.8 < xlo < 2.0 and 2.3 < xhi < 2.5


def test_line_plot_single_point_and_constant(tmp_path):
    assert line_plot({"x": [1.0]}, tmp_path / "one.png").is_file()
    assert line_plot({"x": [2.0, 2.0, 2.0]}, tmp_path / "flat.png").is_file()
    assert line_plot({"x": [(10, 1.0), (20, 2.0)]}, tmp_path / "xy.png").is_file()


@pytest.mark.parametrize("series", [{}, {"a": []}, {"a": [float("nan")]}])
def test_line_plot_rejects_nothing_to_plot(tmp_path, series):
    with pytest.raises(RewardiffError):
        line_plot(series, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_bar_plot_win_tie_loss_colors(tmp_path):
    path = bar_plot({"0.4": {"win": 5, "tie": 2, "loss": 3}, "0.7": {"win": 6, "tie": 1, "loss": 3}}, tmp_path / "b.png", "win rate")
    for color in (WIN, TIE, LOSS):
        assert _has_color(path, color)
    with pytest.raises(RewardiffError):
        bar_plot({"x": {"win": -1.0}}, tmp_path / "c.png")


def test_curves_panels_order_and_stages():
    rows = [{"stage": "ddpo", "epoch": e, "clipfrac": 0.1, "loss": 1.0 / e, "approx_kl": 0.1 * e, "reward_mean": 60.0 + e} for e in (1, 2, 3)]
    rows += [{"stage": "other", "epoch": e, "loss": 2.0 / e} for e in (1, 2)]
    fig = curves_figure(rows, "curves")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["reward_mean", "approx_kl", "loss", "clipfrac"]
    loss_ax = fig.axes[titles.index("loss")]
    assert len(loss_ax.get_lines()) == 2  # one line per stage
    assert list(loss_ax.get_lines()[0].get_ydata()) == [1.0, 0.5, pytest.approx(1 / 3)]
    assert curves_figure([{"stage": "x", "step": 1, "note": "text"}]) is None


def test_proxy_plot_refuses_no_points():
    with pytest.raises(RewardiffError):
        proxy_oracle_figure([("base", float("nan"), 0.5)])


def test_same_figure_goes_to_tensorboard(tmp_path):
    """The report's figure object is what SummaryWriter.add_figure receives (one image event)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    fig = line_figure({"oracle": [0.4, 0.5]}, ylim=RATE)
    png = save_figure(fig, tmp_path / "f.png")
    writer = SummaryWriter(str(tmp_path / "tb"))
    writer.add_figure("report/oracle", fig, 1)
    writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    (event,) = acc.Images("report/oracle")
    with Image.open(png) as im:
        assert (event.width, event.height) == im.size
