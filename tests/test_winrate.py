"""Win rate: outcomes with the +-0.01 tie band, pairing by (prompt, seed), bootstrap interval,
and the CLI on two tiny generated sets scored by a stub reward."""

import json

import numpy as np
import pytest
import torch

from rewardiff.errors import RewardiffError
from rewardiff.eval.winrate import bootstrap_ci, compare, evaluate_winrate, outcomes
from rewardiff.io_utils import save_png
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.composite import WeightedSum


@pytest.mark.parametrize("base,tuned,expected", [
    (0.50, 0.52, 1), (0.50, 0.505, 0), (0.50, 0.49, 0), (0.50, 0.48, -1), (0.50, 0.5101, 1), (0.5, 0.4899, -1),
])
def test_outcomes_tie_band(base, tuned, expected):
    assert outcomes(np.array([base]), np.array([tuned]))[0] == expected


def test_compare_pairs_by_prompt_and_seed():
    base = [{"prompt": "a red circle", "seed": 0}, {"prompt": "a red circle", "seed": 1}, {"prompt": "two blue squares", "seed": 0}]
    tuned = list(reversed(base))  # order must not matter
    result = compare(base, [1.0, 1.0, 1.0], tuned, [0.5, 2.0, 1.005], "stub")
    # tuned scores by key: (two blue squares,0)=0.5 loss; (red,1)=2.0 win; (red,0)=1.005 tie
    assert (result.wins, result.ties, result.losses) == (1, 1, 1)
    assert result.win_rate == 0.5 and result.pairs == 3 and result.prompts == 2
    assert result.per_category["single"]["wins"] == 1 and result.per_category["counting"]["losses"] == 1
    with pytest.raises(RewardiffError, match="no tuned image"):
        compare(base, [1.0] * 3, tuned[:2], [1.0, 1.0], "stub")


def test_bootstrap_interval_brackets_rate():
    rng = np.random.default_rng(1)
    out = rng.choice([1, 1, 1, -1, 0], size=400)
    groups = np.repeat(np.arange(100), 4)
    lo, hi = bootstrap_ci(out, groups, samples=500)
    rate = (out == 1).sum() / (out != 0).sum()
    assert lo < rate < hi and 0.5 < lo and hi < 0.95
    assert bootstrap_ci(np.ones(8, int), np.repeat(np.arange(2), 4)) == (1.0, 1.0)


class _Red(Reward):
    """Mean red channel: a reward we can steer by drawing images."""
    name = "red"

    def score(self, images, prompts):
        return RewardOutput(images[:, 0].mean(dim=(1, 2)))


def _write_set(folder, reds):
    rows = []
    for i, red in enumerate(reds):
        img = np.zeros((8, 8, 3), np.uint8)
        img[..., 0] = red
        save_png(folder / f"images/{i}.png", img)
        rows.append({"prompt": f"a red circle", "image": f"images/{i}.png", "seed": i, "model": "shapes"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "metadata.jsonl"


def test_evaluate_winrate_writes_json_and_markdown(tmp_path):
    base = _write_set(tmp_path / "base", [100, 100, 100, 100])
    tuned = _write_set(tmp_path / "tuned", [150, 150, 100, 50])
    result, out = evaluate_winrate(base, tuned, "stub", out=tmp_path / "wr", progress=False, scorer=WeightedSum([("red", _Red(), 1.0)]))
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    saved = json.loads((out / "winrate.json").read_text())
    assert saved["win_rate"] == pytest.approx(2 / 3) and "| 2 | 1 | 1 |" in (out / "winrate.md").read_text()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from rewardiff.cli import main

    assert main(["eval", "winrate", "--base", str(tmp_path / "none.jsonl"), "--tuned", str(tmp_path / "none.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: metadata file not found")
