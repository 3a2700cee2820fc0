"""The simulated noisy rater and the shapes preference set it labels."""

import subprocess
import sys

import numpy as np
import pytest

from rewardiff.data.preference import load_preference_dataset
from rewardiff.errors import RewardiffError
from rewardiff.generation import SamplingSettings
from rewardiff.io_utils import read_jsonl
from rewardiff.shapes.labeller import LabellerConfig, NoisyLabeller, perceived_quality, rank_with_ties, rater_agreement
from rewardiff.shapes.preference_set import ShapesPreferenceConfig, build_shapes_preference_set, choose_prompts
from rewardiff.shapes.render import render

CFG = LabellerConfig()


@pytest.mark.parametrize("utilities,margin,expected", [
    ([0.5, 0.9, 0.52, 0.1], 0.05, [2, 1, 2, 3]),
    ([0.5, 0.9, 0.52, 0.1], 0.0, [3, 1, 2, 4]),
    ([1.0, 1.0, 1.0, 1.0], 0.0, [1, 1, 1, 1]),
    ([0.0, 0.1, 0.2, 0.3], 0.15, [1, 1, 1, 1]),  # ties chain along the sorted order
    ([0.0, 0.1, 0.5], 0.15, [2, 2, 1]),
])
def test_rank_with_ties(utilities, margin, expected):
    assert rank_with_ties(np.array(utilities), margin) == expected


def test_rater_agreement_by_hand():
    a = [[1, 2, 3, 4]]
    b = [[2, 1, 3, 3]]  # pairs: (0,1) disagree, (0,2) agree, (0,3) agree, (1,2) agree, (1,3) agree, (2,3) tie in b
    assert rater_agreement(a, b) == pytest.approx(4 / 5)


@pytest.mark.parametrize("prompt,other", [
    ("a red circle", "a blue square"),
    ("a green square and a yellow triangle", "a green square and a purple triangle"),
    ("three blue circles", "four red squares"),
    ("a red circle left of a blue square", "a red circle right of a blue square"),
])
def test_rendered_image_is_more_faithful_to_its_own_prompt(prompt, other):
    for seed in range(5):
        image = render(prompt, seed).image
        own, _ = perceived_quality(image, prompt, CFG)
        wrong, _ = perceived_quality(image, other, CFG)
        assert own > wrong + 0.05, (prompt, seed, own, wrong)
        assert own > 0.8


def test_smudges_lower_cleanliness():
    image = render("a red circle", 0).image
    _, clean = perceived_quality(image, "a red circle", CFG)
    smudged = image.copy()
    smudged[2:8, 2:8] = (160, 160, 160)  # grey: no palette colour
    _, dirty = perceived_quality(smudged, "a red circle", CFG)
    assert clean == pytest.approx(1.0) and dirty < clean - 0.2


def test_noiseless_raters_agree_and_noisy_ones_do_not():
    images = [render("two red squares", s).image for s in range(3)] + [render("a blue circle", 0).image]
    quiet = [NoisyLabeller(LabellerConfig(noise_std=0.0, seed=s)).rank(images, "two red squares") for s in (0, 1)]
    assert quiet[0] == quiet[1] and quiet[0][3] > max(quiet[0][:3])  # the off-prompt image ranks last
    noisy = [NoisyLabeller(LabellerConfig(noise_std=5.0, seed=s)).rank(images, "two red squares") for s in (0, 1)]
    assert noisy[0] != noisy[1]


def test_labeller_never_imports_the_oracle():
    code = ("import sys, rewardiff.shapes.labeller, rewardiff.shapes.preference_set;"
            "assert 'rewardiff.shapes.oracle' not in sys.modules, 'oracle imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_choose_prompts_is_deterministic_and_uses_training_prompts_only():
    from rewardiff.shapes.prompts import train_prompts

    cfg = ShapesPreferenceConfig(prompts_per_category={"pair": 5, "counting": 3})
    chosen = choose_prompts(cfg)
    assert chosen == choose_prompts(cfg) and len(chosen) == 8
    assert {p for p, _ in chosen} <= set(train_prompts())
    assert all(4 <= k <= 9 for _, k in chosen)
    with pytest.raises(RewardiffError, match="unknown categories"):
        choose_prompts(ShapesPreferenceConfig(prompts_per_category={"colours": 1}))


def test_build_small_set_end_to_end(tmp_path):
    cfg = ShapesPreferenceConfig(out=str(tmp_path / "pref"), prompts_per_category={"single": 2, "pair": 2},
                                 min_images=4, max_images=5, batch_size=16, sampling=SamplingSettings(steps=2))
    index = build_shapes_preference_set(cfg, progress=False)
    data = load_preference_dataset(index.parent, check_images=True)
    assert len(data.items) == 4
    assert all(len(it.images) == len(it.ranking) for it in data.items)
    report = (index.parent / "labeller_report.json").read_text()
    assert '"rater_agreement"' in report
    # rebuilding reuses the generated images and gives the same index
    first = list(read_jsonl(index))
    build_shapes_preference_set(cfg, progress=False)
    assert list(read_jsonl(index)) == first


def test_shipped_reward_model_prefers_the_image_of_its_prompt():
    import torch

    from rewardiff.rewards import build_reward

    reward = build_reward("preference@shapes")
    assert reward.differentiable and reward.features == "concat_product"
    pairs = [("two red squares", "a blue circle"), ("a green triangle", "three yellow circles"),
             ("a purple circle and a blue square", "a red triangle")]
    wins = 0
    for prompt, other in pairs:
        images = torch.stack([torch.from_numpy(render(p, 0).image).permute(2, 0, 1).float() / 255 for p in (prompt, other)])
        scores = reward(images, [prompt, prompt]).scores
        wins += int(scores[0] > scores[1])
    assert wins == len(pairs)


def test_pixels_doctests():
    import doctest

    from rewardiff.shapes import pixels

    assert doctest.testmod(pixels).attempted == 2 and doctest.testmod(pixels).failed == 0
