"""VLM as judge (`vlm@MODEL_OR_URL`): ask a vision-language model about each image and score its answer.

    yesno   "Does this image show "{prompt}"? Answer yes or no."
            score = P(yes) / (P(yes) + P(no)) of the first answer token (VQAScore, Lin et al. 2024)
            when the back-end gives log-probabilities, else 1 / 0 from the parsed answer
    rating  "On a scale of 1 to 10, rate how well this image shows "{prompt}". Answer with a number."
            score = E[rating] / 10 from the digit tokens' probabilities, else the parsed number / 10

MODEL: 'shapes' (the shapes world's stand-in VLM), an http(s) URL of an OpenAI-compatible
endpoint (vLLM, Ollama, llama.cpp server; URL#MODEL names the served model, else the first of
/models), or a transformers image-text-to-text hub id / folder (LLaVA, Qwen2-VL, ...).

A malformed answer (neither yes nor no; no number in 1..10) or a missing one is a counted
failure, never a silent zero: `failures` keeps the running tally by reason, `details["failed"]`
flags the images, and by default (`on_failure="error"`) the batch raises a RewardiffError quoting
the answer. `on_failure="neutral"` (PPO on a flaky judge) gives failed images the mean score of
the batch's answered ones instead (0.5 if none), so they carry no advantage, and still counts them.
Answers are cached by image hash + model + question (VLMConfig.cache). Not differentiable.

    >>> from rewardiff.vlm.answers import Answer
    >>> class Says:
    ...     def ask(self, images, questions):
    ...         return [Answer("Yes"), Answer("maybe")][: len(questions)]
    >>> reward = VLMJudge(VLMConfig(backend="shapes"), backend=Says(), on_failure="neutral")
    >>> reward(torch.rand(2, 3, 8, 8), ["a cat", "a dog"]).scores, reward.failures.failed
    (tensor([1., 1.]), {'malformed': 1})
"""

from __future__ import annotations

import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.vlm.answers import FailureCount, check_kind, score_answer
from rewardiff.vlm.config import VLMConfig, vlm_config_from_spec

QUESTIONS = {
    "yesno": 'Does this image show "{prompt}"? Answer yes or no.',
    "rating": 'On a scale of 1 to 10, rate how well this image shows "{prompt}". Answer with a number.',
}
ON_FAILURE = ("error", "neutral")


class VLMJudge(Reward):
    name = "vlm"
    differentiable = False

    def __init__(self, cfg: VLMConfig, kind: str = "yesno", question: str = "", on_failure: str = "error", backend=None,
                 device: str | torch.device = "cpu"):
        from rewardiff.vlm.backends import AskingVLM

        super().__init__(device)
        check_kind(kind)
        if on_failure not in ON_FAILURE:
            raise RewardiffError(f"vlm on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
        self.kind, self.on_failure = kind, on_failure
        self.question = question or QUESTIONS[kind]
        if "{prompt}" not in self.question:
            raise RewardiffError("vlm question must contain {prompt} (where the image's prompt goes)")
        self.vlm = AskingVLM(cfg, backend)
        self.failures = FailureCount()

    @classmethod
    def from_spec(cls, model: str | None, device: str | torch.device = "cpu") -> "VLMJudge":
        return cls(vlm_config_from_spec(model, str(device)), device=device)

    def modules(self) -> list[torch.nn.Module]:
        model = getattr(self.vlm.backend, "model", None)
        return [model] if isinstance(model, torch.nn.Module) else []

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        answers = self.vlm.ask(images, [self.question.format(prompt=p) for p in prompts])
        scored = [score_answer(a, self.kind) for a in answers]
        self.failures.asked += len(answers)
        failed = [i for i, (s, _) in enumerate(scored) if s is None]
        for i in failed:
            self.failures.add(scored[i][1])
        if failed and self.on_failure == "error":
            i = failed[0]
            raise RewardiffError(f"vlm judge {self.vlm.model_id}: {len(failed)} of {len(answers)} answers unusable "
                                 f"(image {i}: {scored[i][1]}, answer {answers[i].text or answers[i].error!r}); "
                                 f"asked {self.question.format(prompt=prompts[i])!r}")
        valid = [s for s, _ in scored if s is not None]
        neutral = sum(valid) / len(valid) if valid else 0.5
        scores = torch.tensor([neutral if s is None else s for s, _ in scored], dtype=torch.float32)
        return RewardOutput(scores, {"answer": [a.text for a in answers], "failed": [s is None for s, _ in scored]})
