"""The shapes world's vision-language model: plays LLaVA / a VLM judge with the shipped shapes judges,
so every VLM back-end (in process, and over HTTP through `shapes.vlm_server`) runs here.

How it answers a question about an image:
- "... show {shapes prompt}?" (the `vlm` reward's yes/no question) or "... rate ... {prompt} ..."
  (the rating question): the shapes detector's boxes decide it: yes when it sees exactly the
  prompt's objects (counts, no extras) in the prompt's relation. P(yes) = the detection reward's
  confidence when yes, a tenth of it when no, reported as the first token's log-probabilities
  ("Yes" / "No"), as a real VLM server reports them; a rating is 1 + round(9 P(yes)).
- anything else: the shapes captioner's caption (a captioning instruction).
It never calls the oracle: these are the same learned judges `judge@shapes` uses.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import torch

from rewardiff.shapes.palette import POSITION_MARGIN_PX

_SHOW = re.compile(r"\bshows?\s+(.+?)\s*[?\"]", re.IGNORECASE)
_RATE = re.compile(r"\brate\b", re.IGNORECASE)
_QUOTED = re.compile(r"[\"\u201c](.+?)[\"\u201d]")
NO_FACTOR = 0.1
"""P(yes) when the detector finds the wrong objects: a tenth of its confidence."""


def asked_prompt(question: str) -> str | None:
    """The shapes prompt a judging question asks about, or None (a captioning instruction)."""
    from rewardiff.shapes.prompts import UnsupportedPromptError, format_prompt, parse_prompt

    for pattern in (_QUOTED, _SHOW):
        for m in pattern.finditer(question):
            text = m[1].strip().rstrip(".")
            text = re.sub(r"^(?:an? )?(?:image|picture|photo) of ", "", text)
            try:
                return format_prompt(parse_prompt(text))
            except UnsupportedPromptError:
                continue
    return None


def _holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """The world's position rule: A's centre on that side of B's by POSITION_MARGIN_PX."""
    dx, dy, m = a[0] - b[0], a[1] - b[1], POSITION_MARGIN_PX
    return {"left of": dx <= -m, "right of": dx >= m, "above": dy <= -m, "below": dy >= m}[relation]


class ShapesVLM:
    """Answers from the shipped shapes captioner and detector (see the module docstring)."""

    def __init__(self, device: str | torch.device = "cpu"):
        from rewardiff.rewards.caption import BlipCaptioner
        from rewardiff.rewards.detection import DetectionConfidence
        from rewardiff.rewards.loading import SHAPES_JUDGES, shapes_judge
        from rewardiff.shapes.judges.detector import prompt_classes

        self.captioner = BlipCaptioner(shapes_judge(SHAPES_JUDGES, "captioner"), device=device)
        self.detection = DetectionConfidence(shapes_judge(SHAPES_JUDGES, "detector"), device=device, parse_classes=prompt_classes)

    def p_yes(self, images: torch.Tensor, prompts: list[str]) -> list[float]:
        from rewardiff.shapes.judges.detector import counts, detect
        from rewardiff.shapes.prompts import parse_prompt

        confidence = self.detection(images, prompts).scores.tolist()
        out = []
        for b, (prompt, found) in enumerate(zip(prompts, detect(self.detection.detector, images))):
            spec = parse_prompt(prompt)
            right = counts(found) == dict(Counter(f"{c} {s}" for c, s in spec.objects))
            if right and spec.relation is not None:
                firsts, seconds = ([d for d in found if d.name == " ".join(o)] for o in spec.objects)
                right = any(_holds(spec.relation, a.center, c.center) for a in firsts for c in seconds if a is not c)
            p = confidence[b] if right else NO_FACTOR * confidence[b]
            out.append(min(max(p, 1e-4), 1 - 1e-4))
        return out

    def ask(self, images: list[np.ndarray], questions: list[str]):
        from rewardiff.vlm.answers import Answer

        tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        prompts = [asked_prompt(q) for q in questions]
        answers: list[Answer | None] = [None] * len(questions)
        judged = [i for i, p in enumerate(prompts) if p is not None]
        if judged:
            for i, p in zip(judged, self.p_yes(tensor[judged], [prompts[i] for i in judged])):
                if _RATE.search(questions[i]):
                    answers[i] = Answer(str(1 + round(9 * p)))
                else:
                    answers[i] = Answer("Yes" if p >= 0.5 else "No", {"Yes": math.log(p), "No": math.log(1 - p)})
        captioned = [i for i, p in enumerate(prompts) if p is None]
        if captioned:
            for i, text in zip(captioned, self.captioner(tensor[captioned])):
                answers[i] = Answer(text)
        return answers
