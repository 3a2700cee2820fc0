"""Choose the self-judge's weights, detection threshold and filter without the oracle (issue 13).

The shipped judge settings (`configs/distill_dpo_shapes.yaml`, `judge@shapes`: caption,
detection, count and relation weighted 1, detection threshold 0.3, filter count >= 1 and
relation >= 1) were first chosen by scoring generated candidates with the oracle. This script
chooses them again on the judges' own validation data: renders (the world's drawings, what the
judges were trained on; no generated image, no oracle call) of training prompts.

For each training prompt p it renders `--images` correct images of p and one image of each of
`--negatives` hard negatives of p (prompts one edit away: another count, colour, shape or
relation; `shapes.judges.negatives`), and judges every image *against p*. A setting is scored by
  - selection accuracy: P(score(correct image) > score(wrong image)) over the (correct, wrong)
    pairs of each prompt, ties counted half (what best-of-N and DPO pairs rely on);
  - filter balanced accuracy: (share of correct images kept + share of wrong images dropped) / 2.
Settings are ranked by selection accuracy, then filter accuracy; the table is printed as markdown.

Usage: python scripts/experiments/choose_judge_settings.py [--images 2] [--negatives 2] [--seed 9001] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rewardiff.config import load_config
from rewardiff.io_utils import load_image
from rewardiff.judges.self_judge import COMPONENTS, SelfJudge
from rewardiff.loop.distill import DistillConfig
from rewardiff.shapes.judges.negatives import hard_negatives
from rewardiff.shapes.render import render

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "distill_dpo_shapes.yaml"
PROMPTS = ROOT / "configs" / "shapes_train_balanced.txt"
WEIGHTED = ("caption", "detection", "count", "relation")
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
FILTERS = {"count+relation": {"count": 1.0, "relation": 1.0}, "count": {"count": 1.0}, "none": {}}


def validation_set(prompts: list[str], images: int, negatives: int, seed: int) -> list[tuple[str, np.ndarray, bool]]:
    """(prompt judged against, image, image shows the prompt) for every prompt."""
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(prompts):
        for k in range(images):
            out.append((p, render(p, seed * 1_000_003 + i * 1000 + k).image, True))
        negs = hard_negatives(p)
        for j, n in enumerate(rng.sample(negs, min(negatives, len(negs)))):
            out.append((p, render(n, seed * 1_000_003 + i * 1000 + 500 + j).image, False))
    return out


def components(judge: SelfJudge, items: list[tuple[str, np.ndarray, bool]], batch: int = 64) -> list[dict[str, float]]:
    out = []
    for s in range(0, len(items), batch):
        part = items[s:s + batch]
        images = torch.from_numpy(np.stack([im for _, im, _ in part])).permute(0, 3, 1, 2).float() / 255.0
        out += [j.components for j in judge.judge(images, [p for p, _, _ in part])]
    return out


def evaluate(items, comps, weights: dict[str, float], filt: dict[str, float]) -> tuple[float, float, list[float]]:
    """(selection accuracy, filter balanced accuracy, per-prompt selection accuracy) of one setting."""
    score = [sum(weights.get(k, 0.0) * c[k] for k in COMPONENTS) for c in comps]
    kept = [all(c[k] >= v for k, v in filt.items()) for c in comps]
    by_prompt: dict[str, tuple[list[float], list[float]]] = {}
    for (p, _, good), s in zip(items, score):
        by_prompt.setdefault(p, ([], []))[0 if good else 1].append(s)
    per_prompt = [float(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in good for b in bad])) for good, bad in by_prompt.values()]
    tpr = np.mean([k for (_, _, g), k in zip(items, kept) if g])
    tnr = np.mean([not k for (_, _, g), k in zip(items, kept) if not g])
    return float(np.mean(per_prompt)), float((tpr + tnr) / 2), per_prompt


def paired_ci(a: list[float], b: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap CI over prompts of mean(a) - mean(b) (the same prompts in both)."""
    rng = np.random.default_rng(seed)
    d = np.asarray(a) - np.asarray(b)
    means = d[rng.integers(0, len(d), (draws, len(d)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--negatives", type=int, default=2)
    ap.add_argument("--seed", type=int, default=9001)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "judge_settings")
    args = ap.parse_args()
    base = load_config(DistillConfig, PRESET, []).judge
    prompts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()]
    items = validation_set(prompts, args.images, args.negatives, args.seed)
    print(f"{len(prompts)} training prompts, {len(items)} rendered images judged against their prompt")
    rows = []
    for threshold in THRESHOLDS:
        comps = components(SelfJudge(replace(base, detection_threshold=threshold, weights={k: 1.0 for k in WEIGHTED})), items)
        for on in itertools.product((0.0, 1.0), repeat=len(WEIGHTED)):
            if not any(on):
                continue
            weights = dict(zip(WEIGHTED, on))
            for name, filt in FILTERS.items():
                sel, fil, per_prompt = evaluate(items, comps, weights, filt)
                rows.append({"detection_threshold": threshold, "weights": "+".join(k for k in WEIGHTED if weights[k]) or "-",
                             "filter": name, "selection": sel, "filter_accuracy": fil, "per_prompt": per_prompt})
    rows.sort(key=lambda r: (-round(r["selection"], 3), -round(r["filter_accuracy"], 3)))
    shipped = next(r for r in rows if r["detection_threshold"] == base.detection_threshold
                   and r["weights"] == "caption+detection+count+relation" and r["filter"] == "count+relation")
    lines = ["| rank | detection threshold | weighted components | filter | selection accuracy | minus shipped (95% CI over prompts) | filter balanced accuracy |",
             "| ---: | ---: | --- | --- | ---: | --- | ---: |"]
    for rank, r in enumerate(rows, 1):
        if rank <= 12 or r is shipped:
            mark = " (shipped)" if r is shipped else ""
            lo, hi = paired_ci(r["per_prompt"], shipped["per_prompt"])
            lines.append(f"| {rank} | {r['detection_threshold']:g} | {r['weights']}{mark} | {r['filter']} | {r['selection']:.3f} | "
                         f"{r['selection'] - shipped['selection']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['filter_accuracy']:.3f} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "settings.json").write_text(json.dumps(rows, indent=1))
    (args.out / "settings.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
