"""The self-judge: components from stub rewards (a known captioner, detector, CLIP), the
weighted score, thresholds, per-prompt selection, counts and relations from boxes, and the
shipped shapes judges end to end on rendered images."""

import numpy as np
import pytest
import torch

from rewardiff.errors import RewardiffError
from rewardiff.judges.self_judge import (JudgeConfig, SelfJudge, count_score, expected_counts, judge_rows, prompt_relation,
                                         relation_score, select)
from rewardiff.rewards.base import Reward, RewardOutput


@pytest.mark.parametrize("prompt,classes,expected", [
    ("three green circles", ["green circle"], {"green circle": 3}),
    ("a red circle and a blue square", ["red circle", "blue square"], {"red circle": 1, "blue square": 1}),
    ("two brown dogs and a cat", ["dog", "cat"], {"dog": 2, "cat": 1}),
    ("4 apples on a table", ["apples", "table"], {"apples": 4, "table": 1}),
])
def test_expected_counts(prompt, classes, expected):
    assert expected_counts(prompt, classes) == expected


def test_prompt_relation():
    assert prompt_relation("a red circle left of a blue square", ["red circle", "blue square"]) == ("red circle", "left of", "blue square")
    assert prompt_relation("a dog to the left of a cat", ["dog", "cat"]) == ("dog", "left of", "cat")
    assert prompt_relation("a dog and a cat", ["dog", "cat"]) is None


def test_count_and_relation_scores():
    assert count_score({"red circle": 3}, {"red circle": 3}, True) == 1.0
    assert count_score({"red circle": 2, "blue square": 1}, {"red circle": 3}, True) == 0.0
    assert count_score({"red circle": 3, "blue square": 1}, {"red circle": 3}, False) == 1.0  # extras ignored without a vocabulary
    a = {"name": "a", "score": 0.9, "box": [0, 0, 8, 8]}
    b = {"name": "b", "score": 0.9, "box": [20, 0, 28, 8]}
    assert relation_score([a, b], ("a", "left of", "b"), 32, 0.09) == 1.0
    assert relation_score([a, b], ("a", "right of", "b"), 32, 0.09) == 0.0
    assert relation_score([a], ("a", "left of", "b"), 32, 0.09) == 0.0
    assert relation_score([], None, 32, 0.09) == 1.0


class _Stub(Reward):
    """Scores from a per-prompt table: the first pixel's red value picks the candidate."""

    def __init__(self, name, details=None):
        super().__init__()
        self.name, self.details = name, details or {}

    def score(self, images, prompts):
        return RewardOutput(images[:, 0, 0, 0].clone(), {k: f(images, prompts) for k, f in self.details.items()})


def _images(values):
    x = torch.zeros(len(values), 3, 8, 8)
    x[:, 0, 0, 0] = torch.tensor(values)
    return x


def test_weighted_score_thresholds_and_selection():
    caption = _Stub("caption", {"caption": lambda im, p: [f"cap {float(v):.1f}" for v in im[:, 0, 0, 0]]})
    detection = _Stub("detection", {"classes": lambda im, p: [["red circle"]] * len(p)})
    cfg = JudgeConfig(weights={"caption": 2.0, "detection": 1.0}, thresholds={"detection": 0.25}, min_pair_gap=0.5)
    judge = SelfJudge(cfg, caption_reward=caption, detection_reward=detection)
    out = judge.judge(_images([0.1, 0.9, 0.5]), ["a red circle"] * 3)
    assert [j.score for j in out] == pytest.approx([0.3, 2.7, 1.5])
    assert [j.kept for j in out] == [False, True, True] and out[1].caption == "cap 0.9"
    rows = [{"prompt": "a red circle", "image": f"{i}.png", "seed": i, "score": j.score, "kept": j.kept} for i, j in enumerate(out)]
    rows.append({"prompt": "a blue square", "image": "x.png", "seed": 0, "score": 0.1, "kept": False})
    chosen, pairs = select(rows, keep_per_prompt=1, min_pair_gap=0.5)
    assert [c["image"] for c in chosen] == ["1.png"]  # the blue square's only candidate is not kept
    assert pairs == [{"prompt": "a red circle", "chosen": "1.png", "rejected": "0.png", "chosen_score": pytest.approx(2.7), "rejected_score": pytest.approx(0.3)}]
    with pytest.raises(RewardiffError, match="unknown components"):
        SelfJudge(JudgeConfig(weights={"beauty": 1.0}), caption_reward=caption, detection_reward=detection)


def test_kept_vs_dropped_pairs_every_kept_with_every_dropped_candidate():
    rows = [{"prompt": "p", "image": f"{i}.png", "seed": i, "score": s, "kept": k}
            for i, (s, k) in enumerate([(3.0, True), (2.5, True), (2.0, False), (1.0, False), (2.49, False)])]
    _, pairs = select(rows, min_pair_gap=0.05, pairing="kept_vs_dropped")
    got = [(p["chosen"], p["rejected"]) for p in pairs]
    # widest gap first; 1.png vs 4.png (gap 0.01) is below min_pair_gap
    assert got == [("0.png", "3.png"), ("1.png", "3.png"), ("0.png", "2.png"), ("0.png", "4.png"), ("1.png", "2.png")]
    _, capped = select(rows, min_pair_gap=0.05, pairing="kept_vs_dropped", max_pairs_per_prompt=2)
    assert [(p["chosen"], p["rejected"]) for p in capped] == got[:2]
    _, best_worst = select(rows, min_pair_gap=0.05)
    assert [(p["chosen"], p["rejected"]) for p in best_worst] == [("0.png", "3.png")]
    assert select([dict(r, kept=False) for r in rows], pairing="kept_vs_dropped")[1] == []  # nothing judged correct: no pair
    with pytest.raises(RewardiffError, match="judge.pairing"):
        select(rows, pairing="all")
    with pytest.raises(RewardiffError, match="max_pairs_per_prompt"):
        select(rows, pairing="kept_vs_dropped", max_pairs_per_prompt=-1)


def test_shipped_shapes_judges_prefer_the_right_render(tmp_path):
    """Rendered ground truth for the prompt scores above a render of another prompt."""
    from rewardiff.generation import load_metadata
    from rewardiff.shapes.dataset import render_dataset
    from rewardiff.shapes.judges.detector import CLASS_NAMES

    cfg = JudgeConfig(weights={"caption": 1.0, "detection": 1.0, "count": 1.0, "relation": 1.0, "clip": 1.0, "clip_margin": 1.0},
                      vocabulary=list(CLASS_NAMES))
    judge = SelfJudge(cfg)
    prompts = ["a red circle", "three blue squares", "a green triangle above a yellow circle", "a purple square and a red triangle"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    meta = render_dataset(str(tmp_path / "p.txt"), 2, 5, tmp_path / "r")
    rows, root = load_metadata(meta)
    right = judge_rows(judge, rows, root, 8, progress=False)
    wrong_rows = [{**r, "prompt": prompts[(prompts.index(r["prompt"]) + 1) % 4]} for r in rows]
    wrong = judge_rows(judge, wrong_rows, root, 8, progress=False)
    assert {"caption", "detections", "components", "expected"} <= set(right[0])
    assert np.mean([r["score"] for r in right]) > np.mean([w["score"] for w in wrong]) + 0.5


def test_judge_reward_scores_like_the_judge_and_is_ppo_only(tmp_path):
    """`judge@shapes` is the self-judge's score as a reward: right renders beat wrong prompts,
    per-image components in the details, and it declares itself non-differentiable (ReFL refuses)."""
    from rewardiff.rewards.registry import build_reward
    from rewardiff.shapes.render import render

    reward = build_reward("judge@shapes")
    assert not reward.differentiable
    prompts = ["three blue squares", "a green triangle above a yellow circle", "a purple square and a red triangle"]
    images = torch.from_numpy(np.stack([render(p, s).image for p in prompts for s in range(3)])).permute(0, 3, 1, 2).float() / 255
    asked = [p for p in prompts for _ in range(3)]
    right = reward(images, asked)
    wrong = reward(images, asked[3:] + asked[:3])
    assert set(right.details) >= {"caption", "detection", "count", "relation"}
    assert right.scores.shape == (9,) and right.scores.mean() > wrong.scores.mean() + 0.5
    np.testing.assert_allclose(right.scores.numpy(), sum(right.details[k] for k in ("caption", "detection", "count", "relation")).numpy(), atol=1e-5)
