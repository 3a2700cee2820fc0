"""The self-judge's combined score as a reward, so PPO (DDPO / TexForce) can optimise what the
CCSR loop selects by: caption similarity + detection confidence + exact counts + spatial relation
(the components are in the table below). Counts and relations come from thresholded
boxes, so the score is not differentiable: PPO only (ReFL refuses it).

    judge@shapes        the shipped shapes captioner + detector, every shapes class queried
                        (an unasked object lowers `count`), all four components weighted 1
    judge@OWLV2_ID_OR_DIR  a real OWLv2 detector: detection + count + relation, the prompt's
                        own object phrases as classes (no captioner)

The scorer itself (JudgeConfig, SelfJudge and its components) lives here, below the registry,
so that `judge@...` can be built by name while rewards never import the judges package (data
flows rewards -> judges -> loop); `rewardiff.judges.self_judge` re-exports it and adds the CCSR
selection (thresholds, best-per-prompt, DPO pairs).

| key | what | from |
| --- | --- | --- |
| caption | cos(T(caption(image)), T(prompt)) | `caption` reward (BLIP captioner + CLIP text tower) |
| detection | mean over the prompt's classes of the best box's confidence | `detection` reward (OWLv2 / Grounding DINO) |
| count | share of classes (asked or seen) detected exactly as many times as the prompt asks | detector boxes (OWLv2) after NMS |
| relation | the prompt's spatial relation holds between the two best boxes' centres; 1 if the prompt has none | detector boxes |
| clip | cos(E_image, E_prompt) | `clip` reward |
| clip_margin | cos(prompt) - max cos(hard negative prompt), clamped to [-1, 1]; 0 if there are no negatives | `clip` reward + a negatives function (shapes: `hard_negatives`) |
| vlm | P(yes) to "Does this image show {prompt}?" (or the 1-10 rating / 10) | `vlm` reward (`JudgeConfig.vlm`: shapes, OpenAI-compatible URL, transformers VLM) |

    judged score = sum_k weights[k] * component[k]      (JudgeConfig.weights; 0 = not computed)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.captioners import CaptionerConfig
from rewardiff.vlm.config import VLMConfig

COMPONENTS = ("caption", "detection", "count", "relation", "clip", "clip_margin", "vlm")
_COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_RELATION = re.compile(r"\b(?:to the\s+)?(left of|right of|above|below)\b")


@dataclass
class JudgeConfig:
    captioner: str = "shapes"  # caption reward model: 'shapes', a BLIP hub id or folder
    detector: str = "shapes"  # 'shapes', an OWLv2 / Grounding DINO hub id or folder
    clip: str = "shapes"  # 'shapes', a CLIP hub id or folder
    weights: dict[str, float] = field(default_factory=lambda: {"caption": 1.0, "detection": 1.0, "count": 1.0, "relation": 0.0, "clip": 0.0, "clip_margin": 0.0})
    detection_threshold: float = 0.3  # a box counts as a detection above this confidence
    nms_iou: float = 0.3  # boxes of one class overlapping more are one object
    relation_margin: float = 0.09  # a relation holds past this fraction of the image side (shapes: 3 px of 32)
    vocabulary: list[str] = field(default_factory=list)  # classes always queried (extras lower 'count'); empty = the prompt's
    min_score: float = -1e9  # a candidate is kept only if its judged score is at least this ...
    thresholds: dict[str, float] = field(default_factory=dict)  # ... and each named component at least its value (e.g. count: 1.0)
    keep_per_prompt: int = 1  # best kept candidates per prompt in the SFT set (the paper: 1, the optimal pair)
    min_pair_gap: float = 0.05  # chosen - rejected judged score for a DPO pair
    pairing: str = "best_worst"  # DPO pairs per prompt: best_worst (one: best kept vs worst) | kept_vs_dropped (every kept vs every dropped candidate)
    max_pairs_per_prompt: int = 0  # kept_vs_dropped: keep the widest-gap pairs of each prompt (0 = all)
    batch_size: int = 64  # images per judge call
    caption_backend: CaptionerConfig = field(default_factory=CaptionerConfig)  # backend blip: `captioner` above; transformers / openai / shapes: a VLM asked for captions
    vlm: VLMConfig = field(default_factory=lambda: VLMConfig(backend="shapes"))  # the 'vlm' component's judge (built only when weighted or thresholded)
    vlm_kind: str = "yesno"  # vlm question: yesno (P(yes), VQAScore) | rating (1-10, / 10)
    vlm_on_failure: str = "error"  # a malformed / missing vlm answer: error | neutral (batch mean, counted)


@dataclass
class Judgement:
    score: float  # the weighted judged score
    components: dict[str, float]
    caption: str | None = None
    detections: list[dict] = field(default_factory=list)  # {"name", "score", "box"}
    expected: dict[str, int] = field(default_factory=dict)  # class -> count the prompt asks for
    kept: bool = True


def expected_counts(prompt: str, classes: list[str]) -> dict[str, int]:
    """How many of each class the prompt asks for: shapes prompts exactly, other prompts by a
    count word before the class name ('three red apples'), else 1."""
    from rewardiff.shapes.prompts import UnsupportedPromptError, parse_prompt

    try:
        spec = parse_prompt(prompt)
        return dict(Counter(f"{c} {s}" for c, s in spec.objects))
    except UnsupportedPromptError:
        pass
    text = prompt.lower()
    out = {}
    for cls in classes:
        m = re.search(rf"\b(\d+|{'|'.join(_COUNT_WORDS)})\s+(?:\w+\s+){{0,2}}?{re.escape(cls.lower())}", text)
        out[cls] = (int(m[1]) if m[1].isdigit() else _COUNT_WORDS[m[1]]) if m else 1
    return out


def prompt_relation(prompt: str, classes: list[str]) -> tuple[str, str, str] | None:
    """(first class, relation, second class) for 'A left of B'-style prompts with two classes."""
    from rewardiff.shapes.prompts import UnsupportedPromptError, parse_prompt

    try:
        spec = parse_prompt(prompt)
        if spec.relation is None:
            return None
        return " ".join(spec.objects[0]), spec.relation, " ".join(spec.objects[1])
    except UnsupportedPromptError:
        pass
    m = _RELATION.search(prompt.lower())
    if not m or len(classes) < 2:
        return None
    before = [c for c in classes if c.lower() in prompt.lower()[: m.start()]]
    after = [c for c in classes if c.lower() in prompt.lower()[m.end() :]]
    return (before[-1], m[1], after[0]) if before and after else None


def count_score(found: dict[str, int], expected: dict[str, int], vocabulary_used: bool) -> float:
    """Share of classes whose detected count equals the asked one; with a fixed vocabulary,
    classes detected but not asked for count too (an extra object is an error)."""
    classes = set(expected) | (set(found) if vocabulary_used else set())
    return float(np.mean([found.get(c, 0) == expected.get(c, 0) for c in classes])) if classes else 1.0


def relation_score(detections: list[dict], relation: tuple[str, str, str] | None, side: float, margin: float) -> float:
    if relation is None:
        return 1.0
    a_name, rel, b_name = relation
    best = {}
    for d in detections:
        if d["name"] in (a_name, b_name) and d["score"] > best.get(d["name"], {"score": -1})["score"]:
            best[d["name"]] = d
    if a_name not in best or b_name not in best:
        return 0.0
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = best[a_name]["box"], best[b_name]["box"]
    dx, dy = (ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2
    m = margin * side
    return float({"left of": dx <= -m, "right of": dx >= m, "above": dy <= -m, "below": dy >= m}[rel])


class SelfJudge:
    """The judges of one run, built once (rewards are injectable, for tests and reuse)."""

    def __init__(self, cfg: JudgeConfig, device: str = "cpu", caption_reward=None, detection_reward=None, clip_reward=None,
                 negatives: Callable[[str], list[str]] | None = None):
        from rewardiff.rewards.by_spec import caption_from_spec, clip_from_spec, detection_from_spec

        unknown = (set(cfg.weights) | set(cfg.thresholds)) - set(COMPONENTS)
        if unknown:
            raise RewardiffError(f"judge weights / thresholds: unknown components {sorted(unknown)}; known {list(COMPONENTS)}")
        self.cfg = cfg
        self.weights = {k: float(cfg.weights.get(k, 0.0)) for k in COMPONENTS}
        w = {k: self.weights[k] != 0 or k in cfg.thresholds for k in COMPONENTS}  # components to compute
        self.needed = w
        need_caption = w["caption"]
        need_detection = w["detection"] or w["count"] or w["relation"]
        need_clip = w["clip"] or w["clip_margin"]
        if caption_reward is None and need_caption and cfg.caption_backend.backend != "blip":
            from rewardiff.rewards.by_spec import caption_from_config

            caption_reward = caption_from_config(cfg.caption_backend, cfg.captioner, device)
        self.caption = caption_reward if caption_reward is not None else (caption_from_spec(cfg.captioner, device) if need_caption else None)
        self.vlm = None
        if w["vlm"]:
            from rewardiff.rewards.vlm_judge import VLMJudge

            self.vlm = VLMJudge(cfg.vlm, kind=cfg.vlm_kind, on_failure=cfg.vlm_on_failure, device=device)
        self.detection = detection_reward if detection_reward is not None else (detection_from_spec(cfg.detector, device) if need_detection else None)
        self.clip = clip_reward if clip_reward is not None else (clip_from_spec(cfg.clip, device) if need_clip else None)
        if negatives is None and cfg.clip == "shapes":
            from rewardiff.shapes.judges.negatives import hard_negatives

            negatives = hard_negatives
        self.negatives = negatives
        if (w["count"] or w["relation"]) and self.detection is not None and not hasattr(self.detection.detector, "predictions"):
            raise RewardiffError("judge weights 'count' / 'relation' need detector boxes (OWLv2); this detector gives confidences only: set them to 0")

    def _boxes(self, images: torch.Tensor, classes: list[list[str]]) -> list[list[dict]]:
        from rewardiff.shapes.judges.detector import detect

        out: list[list[dict]] = [[] for _ in classes]
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(classes):
            groups.setdefault(tuple(self.cfg.vocabulary) if self.cfg.vocabulary else tuple(c), []).append(i)
        for group, idx in groups.items():
            dets = detect(self.detection.detector, images[idx], list(group), self.cfg.detection_threshold, self.cfg.nms_iou)
            for i, d in zip(idx, dets):
                out[i] = [{"name": x.name, "score": round(x.score, 4), "box": [round(v, 2) for v in x.box]} for x in d]
        return out

    def _clip_margin(self, images: torch.Tensor, prompts: list[str]) -> list[float]:
        emb = self.clip.embedder
        img = emb.image_embeds(images.to(emb.device))
        out = []
        for i, p in enumerate(prompts):
            negs = self.negatives(p) if self.negatives else []
            if not negs:
                out.append(0.0)
                continue
            sims = emb.text_embeds([p, *negs]) @ img[i]
            out.append(float((sims[0] - sims[1:].max()).clamp(-1, 1)))
        return out

    @torch.no_grad()
    def judge(self, images: torch.Tensor, prompts: list[str]) -> list[Judgement]:
        """Images (B, 3, H, W) in [0, 1] -> one Judgement per image."""
        n = len(prompts)
        comp = {k: [0.0] * n for k in COMPONENTS}
        captions: list[str | None] = [None] * n
        boxes: list[list[dict]] = [[] for _ in range(n)]
        expected: list[dict[str, int]] = [{} for _ in range(n)]
        if self.caption is not None:
            out = self.caption(images, prompts)
            comp["caption"] = out.scores.tolist()
            captions = list(out.details["caption"])
        if self.detection is not None:
            out = self.detection(images, prompts)
            comp["detection"] = out.scores.tolist()
            classes = [list(c) for c in out.details["classes"]]
            expected = [expected_counts(p, c) for p, c in zip(prompts, classes)]
            if self.needed["count"] or self.needed["relation"]:
                boxes = self._boxes(images, classes)
                side = float(max(images.shape[-2:]))
                for i in range(n):
                    found = Counter(d["name"] for d in boxes[i])
                    comp["count"][i] = count_score(dict(found), expected[i], bool(self.cfg.vocabulary))
                    comp["relation"][i] = relation_score(boxes[i], prompt_relation(prompts[i], classes[i]), side, self.cfg.relation_margin)
        if self.vlm is not None:
            comp["vlm"] = self.vlm(images, prompts).scores.tolist()
        if self.clip is not None:
            comp["clip"] = (self.clip(images, prompts).details["cosine"]).tolist()
            if self.needed["clip_margin"]:
                comp["clip_margin"] = self._clip_margin(images, prompts)
        result = []
        for i in range(n):
            c = {k: round(float(comp[k][i]), 6) for k in COMPONENTS}
            score = sum(self.weights[k] * c[k] for k in COMPONENTS)
            kept = score >= self.cfg.min_score and all(c[k] >= v for k, v in self.cfg.thresholds.items())
            result.append(Judgement(round(score, 6), c, captions[i], boxes[i], expected[i], bool(kept)))
        return result


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
