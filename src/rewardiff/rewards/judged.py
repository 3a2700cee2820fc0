"""The self-judge's combined score as a reward, so PPO (DDPO / TexForce) can optimise what the
CCSR loop selects by: caption similarity + detection confidence + exact counts + spatial relation
(see `rewardiff.judges.self_judge` for the components). Counts and relations come from thresholded
boxes, so the score is not differentiable: PPO only (ReFL refuses it).

    judge@shapes        the shipped shapes captioner + detector, every shapes class queried
                        (an unasked object lowers `count`), all four components weighted 1
    judge@OWLV2_ID_OR_DIR  a real OWLv2 detector: detection + count + relation, the prompt's
                        own object phrases as classes (no captioner)
"""

from __future__ import annotations

import torch

from rewardiff.rewards.base import Reward, RewardOutput

SHAPES_WEIGHTS = {"caption": 1.0, "detection": 1.0, "count": 1.0, "relation": 1.0}
DETECTOR_WEIGHTS = {"caption": 0.0, "detection": 1.0, "count": 1.0, "relation": 1.0}


class JudgedReward(Reward):
    """Score = SelfJudge's weighted sum; details carry every component per image."""

    name = "judge"
    differentiable = False

    def __init__(self, judge, device: str | torch.device = "cpu"):
        super().__init__(device)
        self.judge = judge

    @classmethod
    def build(cls, model: str | None, device: str | torch.device = "cpu") -> "JudgedReward":
        from rewardiff.judges.self_judge import JudgeConfig, SelfJudge
        from rewardiff.rewards.loading import SHAPES_JUDGES

        if model in (None, SHAPES_JUDGES):
            from rewardiff.shapes.judges.detector import CLASS_NAMES

            cfg = JudgeConfig(weights=dict(SHAPES_WEIGHTS), vocabulary=list(CLASS_NAMES))
        else:
            cfg = JudgeConfig(detector=model, weights=dict(DETECTOR_WEIGHTS))
        return cls(SelfJudge(cfg, device=str(device)), device)

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        judgements = self.judge.judge(images, prompts)
        scores = torch.tensor([j.score for j in judgements], dtype=torch.float32)
        details = {k: torch.tensor([j.components[k] for j in judgements]) for k in judgements[0].components} if judgements else {}
        return RewardOutput(scores, details)
