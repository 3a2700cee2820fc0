"""`rewardiff shapes eval-judges`: how good are the shapes world's judges, and how far do their
verdicts agree with the exact oracle?

1. Held-out rendered images (prompts never seen in judge training, fresh seeds):
   - CLIP: top-1 retrieval of the prompt among its language hard negatives (negatives.py);
   - captioner: exact match (same meaning as the prompt) and per-field accuracy (category,
     colours, shapes, object count, relation direction);
   - detector: precision / recall of boxes (class match, IoU >= 0.5) and count accuracy (every
     class's count right in the image).
2. Images from a generator (e.g. the base model on the held-out prompts): each judge's verdict
   (caption means the prompt; detector counts = the prompt's counts and the relation holds
   between box centres; CLIP ranks the prompt first among its hard negatives) against the
   oracle's pass / fail: agreement %, and the judge's pass rate beside the oracle's.

The oracle is used HERE only, to measure the judges; the judges never see it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rewardiff.io_utils import atomic_write_text, load_image, write_json
from rewardiff.shapes.judges.negatives import hard_negatives, semantic_key
from rewardiff.shapes.palette import POSITION_MARGIN_PX
from rewardiff.shapes.prompts import CATEGORIES, PromptSpec, UnsupportedPromptError, heldout_eval_prompts, parse_prompt
from rewardiff.shapes.render import render

JUDGE_NAMES = ("clip", "detector", "captioner")
EVAL_SEED = 900_000_000
"""Held-out rendered images use seeds from here (training draws 32-bit seeds from a seeded RNG)."""
MATCH_IOU = 0.5
"""A detection matches a ground-truth object of its class at IoU >= this (COCO's AP50 criterion)."""


@dataclass
class Judges:
    """The three judges as the rewards load them (any may be None: not evaluated)."""

    clip: object | None = None  # rewardiff.rewards.clip.ClipEmbedder
    detector: object | None = None  # rewardiff.rewards.detection.DetectionConfidence
    captioner: object | None = None  # rewardiff.rewards.caption.BlipCaptioner


def judge_folder(root: str | Path | None, name: str) -> Path | None:
    """root None -> the shipped judge; else root/name (a shipped-layout folder) or root/name/model
    (a train-judges run folder); None when absent."""
    from rewardiff.rewards.loading import shipped_judge_dir

    candidates = [shipped_judge_dir(name)] if root is None else [Path(root) / name, Path(root) / name / "model"]
    return next((p for p in candidates if (p / "config.json").is_file()), None)


def load_judges(root: str | Path | None = None, only: tuple[str, ...] = JUDGE_NAMES) -> Judges:
    from rewardiff.rewards.caption import BlipCaptioner
    from rewardiff.rewards.clip import ClipEmbedder
    from rewardiff.rewards.detection import DetectionConfidence
    from rewardiff.shapes.judges.detector import prompt_classes

    paths = {n: judge_folder(root, n) for n in only}
    return Judges(
        clip=ClipEmbedder(str(paths["clip"])) if paths.get("clip") else None,
        detector=DetectionConfidence(str(paths["detector"]), parse_classes=prompt_classes) if paths.get("detector") else None,
        captioner=BlipCaptioner(str(paths["captioner"])) if paths.get("captioner") else None,
    )


# ---- verdicts: does a judge say the image shows the prompt? ------------------------------------


def _parse(text: str) -> PromptSpec | None:
    try:
        return parse_prompt(text)
    except UnsupportedPromptError:
        return None


@torch.no_grad()
def clip_verdicts(embedder, images: torch.Tensor, prompts: list[str]) -> list[bool]:
    """True where the prompt scores above every one of its hard negatives."""
    img = embedder.image_embeds(images)
    out = []
    for i, p in enumerate(prompts):
        cands = [p, *hard_negatives(p)]
        sims = embedder.text_embeds(cands) @ img[i]
        out.append(int(sims.argmax()) == 0)
    return out


def caption_matches(caption: str, prompt: str) -> bool:
    cap = _parse(caption)
    return cap is not None and semantic_key(cap) == semantic_key(parse_prompt(prompt))


def caption_fields(caption: str, prompt: str) -> dict[str, bool]:
    """Per-field correctness of a caption; an unparseable caption gets every field wrong.
    'relation' (position prompts only) compares the direction after mirroring to left-of/above."""
    truth, cap = parse_prompt(prompt), _parse(caption)
    fields = {"category": False, "colors": False, "shapes": False, "count": False}
    if truth.category == "position":
        fields["relation"] = False
    if cap is None:
        return fields
    fields["category"] = cap.category == truth.category
    fields["colors"] = Counter(c for c, _ in cap.objects) == Counter(c for c, _ in truth.objects)
    fields["shapes"] = Counter(s for _, s in cap.objects) == Counter(s for _, s in truth.objects)
    fields["count"] = len(cap.objects) == len(truth.objects)
    if truth.category == "position":
        fields["relation"] = cap.category == "position" and semantic_key(cap)[3] == semantic_key(truth)[3]
    return fields


def detector_verdict(detections, prompt: str) -> bool:
    """Counts of every class equal the prompt's (nothing missing, nothing extra); for position
    prompts the relation must hold between the two boxes' centres (the oracle's margin)."""
    from rewardiff.shapes.judges.detector import counts

    spec = parse_prompt(prompt)
    if counts(detections) != dict(Counter(f"{c} {s}" for c, s in spec.objects)):
        return False
    if spec.relation is None:
        return True
    a = next(d for d in detections if d.name == " ".join(spec.objects[0]))
    b = next(d for d in detections if d.name == " ".join(spec.objects[1]))
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
    m = POSITION_MARGIN_PX
    return {"left of": dx <= -m, "right of": dx >= m, "above": dy <= -m, "below": dy >= m}[spec.relation]


def _detect(judges: Judges, images: torch.Tensor):
    from rewardiff.shapes.judges.detector import detect

    return detect(judges.detector.detector, images)


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


# ---- 1. held-out rendered images ----------------------------------------------------------------


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match(detections, objects) -> int:
    """True positives: greedy by score, each ground-truth object matched once (class + IoU)."""
    used: set[int] = set()
    tp = 0
    for d in sorted(detections, key=lambda d: -d.score):
        for j, o in enumerate(objects):
            if j not in used and d.name == f"{o.color} {o.shape}" and _iou(d.box, o.box) >= MATCH_IOU:
                used.add(j)
                tp += 1
                break
    return tp


def _rate(values: list[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def evaluate_rendered(judges: Judges, per_prompt: int = 4, batch_size: int = 64) -> dict:
    prompts = [p for p in heldout_eval_prompts() for _ in range(per_prompt)]
    renders = [render(p, EVAL_SEED + i) for i, p in enumerate(prompts)]
    images = torch.from_numpy(np.stack([r.image for r in renders])).permute(0, 3, 1, 2).float() / 255.0
    cats = [parse_prompt(p).category for p in prompts]
    result: dict = {"num_images": len(prompts), "prompts": "shapes:heldout", "images_per_prompt": per_prompt}

    def by_category(values: list[bool]) -> dict:
        return {"all": _rate(values), **{c: _rate([v for v, k in zip(values, cats) if k == c]) for c in CATEGORIES}}

    if judges.clip is not None:
        ok = [v for s in _batches(len(prompts), batch_size) for v in clip_verdicts(judges.clip, images[s], prompts[s])]
        result["clip_top1_among_hard_negatives"] = by_category(ok)
    if judges.captioner is not None:
        caps = [c for s in _batches(len(prompts), batch_size) for c in judges.captioner(images[s])]
        fields = [caption_fields(c, p) for c, p in zip(caps, prompts)]
        result["captioner"] = {
            "exact_match": by_category([caption_matches(c, p) for c, p in zip(caps, prompts)]),
            "fields": {k: _rate([f[k] for f in fields if k in f]) for k in ("category", "colors", "shapes", "count", "relation")},
            "examples": [{"prompt": p, "caption": c} for p, c in list(zip(prompts, caps))[::max(1, len(prompts) // 12)]],
        }
    if judges.detector is not None:
        dets = [d for s in _batches(len(prompts), batch_size) for d in _detect(judges, images[s])]
        from rewardiff.shapes.judges.detector import counts

        tp = sum(_match(d, r.objects) for d, r in zip(dets, renders))
        n_det = sum(len(d) for d in dets)
        n_gt = sum(len(r.objects) for r in renders)
        count_ok = [counts(d) == dict(Counter(f"{o.color} {o.shape}" for o in r.objects)) for d, r in zip(dets, renders)]
        result["detector"] = {
            "precision": tp / n_det if n_det else None,
            "recall": tp / n_gt,
            "count_accuracy": by_category(count_ok),
            "verdict_pass_rate": by_category([detector_verdict(d, p) for d, p in zip(dets, prompts)]),
        }
    return result


# ---- 2. agreement with the oracle on generated images -----------------------------------------


def evaluate_agreement(judges: Judges, metadata: str | Path, batch_size: int = 64) -> dict:
    from rewardiff.generation import load_metadata
    from rewardiff.shapes.oracle import judge as oracle_judge

    rows, root = load_metadata(metadata)
    arrays = [load_image(root / r["image"]) for r in rows]
    prompts = [r["prompt"] for r in rows]
    cats = [parse_prompt(p).category for p in prompts]
    oracle = [oracle_judge(a, p).passed for a, p in zip(arrays, prompts)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    verdicts: dict[str, list[bool]] = {}
    if judges.clip is not None:
        verdicts["clip"] = [v for s in _batches(len(rows), batch_size) for v in clip_verdicts(judges.clip, images[s], prompts[s])]
    if judges.detector is not None:
        dets = [d for s in _batches(len(rows), batch_size) for d in _detect(judges, images[s])]
        verdicts["detector"] = [detector_verdict(d, p) for d, p in zip(dets, prompts)]
    if judges.captioner is not None:
        caps = [c for s in _batches(len(rows), batch_size) for c in judges.captioner(images[s])]
        verdicts["captioner"] = [caption_matches(c, p) for c, p in zip(caps, prompts)]

    def summary(judge: list[bool], idx: list[int]) -> dict:
        j = [judge[i] for i in idx]
        o = [oracle[i] for i in idx]
        tp = sum(a and b for a, b in zip(j, o))
        return {
            "n": len(idx),
            "agreement": _rate([a == b for a, b in zip(j, o)]),
            "judge_pass_rate": _rate(j),
            "oracle_pass_rate": _rate(o),
            "judge_precision": tp / sum(j) if sum(j) else None,  # of the judge's passes, oracle passes too
            "judge_recall": tp / sum(o) if sum(o) else None,  # of the oracle's passes, judge passes too
        }

    out: dict = {"metadata": str(metadata), "num_images": len(rows), "oracle_pass_rate": _rate(oracle), "judges": {}}
    for name, v in verdicts.items():
        out["judges"][name] = {"all": summary(v, list(range(len(rows)))), **{c: summary(v, [i for i, k in enumerate(cats) if k == c]) for c in CATEGORIES if c in cats}}
    return out


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(rendered: dict | None, agreement: dict | None) -> str:
    lines = []
    if rendered:
        lines += [f"## Held-out rendered images ({rendered['num_images']})", ""]
        if "clip_top1_among_hard_negatives" in rendered:
            r = rendered["clip_top1_among_hard_negatives"]
            lines.append("CLIP top-1 among hard negatives: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r.items()))
        if "captioner" in rendered:
            r = rendered["captioner"]
            lines.append("Captioner exact match: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["exact_match"].items()))
            lines.append("Captioner fields: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["fields"].items()))
        if "detector" in rendered:
            r = rendered["detector"]
            lines.append(f"Detector precision {_fmt(r['precision'])}, recall {_fmt(r['recall'])}; count accuracy: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["count_accuracy"].items()))
        lines.append("")
    if agreement:
        lines += [f"## Agreement with the oracle on {agreement['num_images']} generated images (oracle pass rate {_fmt(agreement['oracle_pass_rate'])})", "",
                  "| judge | category | agreement | judge pass | oracle pass | judge precision | judge recall |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, cats in agreement["judges"].items():
            for cat, s in cats.items():
                lines.append(f"| {name} | {cat} | {_fmt(s['agreement'])} | {_fmt(s['judge_pass_rate'])} | {_fmt(s['oracle_pass_rate'])} | {_fmt(s['judge_precision'])} | {_fmt(s['judge_recall'])} |")
    return "\n".join(lines)


def evaluate_judges(judges_root: str | Path | None, out: str | Path, generated: str | Path | None = None, per_prompt: int = 4) -> tuple[dict, Path]:
    """Both evaluations; writes OUT/judges_eval.json and .md."""
    judges = load_judges(judges_root, tuple(n for n in JUDGE_NAMES if judge_folder(judges_root, n)))
    rendered = evaluate_rendered(judges, per_prompt)
    agreement = evaluate_agreement(judges, generated) if generated else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"judges": str(judges_root or "shipped"), "rendered_heldout": rendered, "oracle_agreement": agreement}
    write_json(out / "judges_eval.json", result)
    atomic_write_text(out / "judges_eval.md", markdown(rendered, agreement) + "\n")
    return result, out
