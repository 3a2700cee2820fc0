"""How far `rewardiff eval geneval` (shapes detector) agrees with the oracle, and how its
post-processing was chosen: on base-generator images of TRAINING prompts, reported on HELD-OUT ones.

    PYTHONPATH=src python scripts/experiments/geneval_agreement.py CHOSEN_ON REPORTED
    # CHOSEN_ON: a generated set of training prompts   (rewardiff generate --prompts shapes:train-eval, e.g. runs/distil/base_te)
    # REPORTED:  the same generator on held-out prompts (rewardiff generate --prompts shapes:eval,       e.g. runs/protocol/base10)

1. The detector runs once per image (all 15 "{colour} {shape}" queries, every patch's box).
2. Every post-processing in a grid is scored on CHOSEN_ON against the oracle (EVALUATION ONLY:
   nothing here trains or feeds back): NMS per class or across classes, its IoU, the threshold
   (non-counting images) and the counting threshold (counting images: scored apart, as GenEval
   does), and the metadata: GenEval's own (excludes for counting only) or the world's exact
   objects (an exclude for every other class). The best agreement wins; ties go to GenEval's own
   metadata, per-class NMS, then the higher thresholds and IoU.
3. The chosen settings are applied once to REPORTED (per category, with the confusion against the
   oracle and the oracle's reasons on the disagreements) and to rendered images of training
   prompts scored against the renderer's own truth (no oracle): each prompt on its own render and
   on the render of another prompt.
The shipped defaults (rewardiff.eval.geneval) must equal the chosen settings; the script says so
or fails.
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections import Counter

import numpy as np
import torch

from rewardiff.eval import geneval as G
from rewardiff.generation import load_metadata
from rewardiff.io_utils import load_image
from rewardiff.rewards.by_spec import detection_from_spec
from rewardiff.shapes.judges.detector import CLASS_NAMES, cxcywh_to_xyxy
from rewardiff.shapes.oracle import judge
from rewardiff.shapes.palette import POSITION_MARGIN_PX
from rewardiff.shapes.prompts import CATEGORIES, parse_prompt, split_prompts
from rewardiff.shapes.render import render

THRESHOLDS = (0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35)
NMS_IOUS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
RENDERED_PER_CATEGORY = 160  # training prompts per category, each on its own render and another's
PREVIOUS = dict(exact=False, agnostic=False, iou=0.3, thr=0.15, cthr=0.35)  # the settings before this study


class Scored:
    """A set's raw detector outputs and its truth (the oracle's verdicts, or the renderer's)."""

    def __init__(self, prompts: list[str], images: np.ndarray, truth: list[bool], reasons: list[str], detector):
        self.prompts, self.truth, self.reasons = prompts, truth, reasons
        self.cats = [parse_prompt(p).category for p in prompts]
        self.counting = np.array([c == "counting" for c in self.cats])
        self.metas = {e: [G.shapes_metadata(p, exact=e) for p in prompts] for e in (False, True)}
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        probs, boxes = [], []
        for s in range(0, len(x), 64):
            p, b = detector.predictions(x[s : s + 64], [list(CLASS_NAMES)] * len(x[s : s + 64]))
            probs.append(p.float())
            boxes.append(cxcywh_to_xyxy(b.float()) * float(max(x.shape[-2:])))
        self.probs, self.boxes = torch.cat(probs), torch.cat(boxes)

    def verdicts(self, exact: bool, agnostic: bool, iou: float, thr: float) -> list[tuple[bool, str]]:
        """GenEval's verdict per image with every image at threshold `thr`."""
        return [G.evaluate_one(G.postprocess(self.probs[i], self.boxes[i], list(CLASS_NAMES), thr, iou, agnostic), meta)
                for i, meta in enumerate(self.metas[exact])]

    def agree(self, ok: list[bool], mask: np.ndarray | None = None) -> int:
        hits = np.array(ok) == np.array(self.truth)
        return int(hits[mask].sum() if mask is not None else hits.sum())


def generated_set(metadata: str, detector) -> Scored:
    rows, root = load_metadata(metadata)
    images = np.stack([load_image(root / r["image"]) for r in rows])
    verdicts = [judge(im, r["prompt"]) for im, r in zip(images, rows)]  # EVALUATION ONLY
    return Scored([r["prompt"] for r in rows], images, [v.passed for v in verdicts], [v.reason for v in verdicts], detector)


def shows(prompt: str, drawn) -> bool:
    """Does a render with objects `drawn` show exactly `prompt`'s objects (and its relation)?"""
    spec = parse_prompt(prompt)
    if Counter((o.color, o.shape) for o in drawn.objects) != Counter(spec.objects):
        return False
    if spec.relation is None:
        return True
    a = [o for o in drawn.objects if (o.color, o.shape) == spec.objects[0]]
    b = [o for o in drawn.objects if (o.color, o.shape) == spec.objects[1]]
    m = POSITION_MARGIN_PX
    rule = {"left of": lambda dx, dy: dx <= -m, "right of": lambda dx, dy: dx >= m, "above": lambda dx, dy: dy <= -m, "below": lambda dx, dy: dy >= m}
    return any(rule[spec.relation](x.center[0] - y.center[0], x.center[1] - y.center[1]) for x in a for y in b)


def rendered_set(detector, per_category: int = RENDERED_PER_CATEGORY) -> Scored:
    rng = random.Random(0)
    pools = {c: split_prompts(c)[0] for c in CATEGORIES}
    prompts, images, truth = [], [], []
    for c in CATEGORIES:
        for i in range(per_category):
            p, q = rng.choice(pools[c]), rng.choice(pools[rng.choice(CATEGORIES)])
            own, other = render(p, 30_000 + len(prompts)), render(q, 40_000 + len(prompts))
            prompts += [p, p]
            images += [own.image, other.image]
            truth += [True, shows(p, other)]
    return Scored(prompts, np.stack(images), truth, ["render truth"] * len(truth), detector)


def choose(data: Scored) -> tuple[dict, list]:
    """Every setting's agreement on `data` (counting images at cthr, the others at thr); the best."""
    table = {}
    for exact, agnostic, iou in itertools.product((False, True), (False, True), NMS_IOUS):
        for thr in THRESHOLDS:
            ok = [v[0] for v in data.verdicts(exact, agnostic, iou, thr)]
            table[(exact, agnostic, iou, thr)] = (data.agree(ok, ~data.counting), data.agree(ok, data.counting))
    rows = []
    for (exact, agnostic, iou, thr), (other, _) in table.items():
        for cthr in THRESHOLDS:
            hits = other + table[(exact, agnostic, iou, cthr)][1]
            rows.append((hits, dict(exact=exact, agnostic=agnostic, iou=iou, thr=thr, cthr=cthr)))
    key = lambda r: (r[0], not r[1]["exact"], not r[1]["agnostic"], r[1]["thr"], r[1]["cthr"], r[1]["iou"])
    rows.sort(key=key, reverse=True)
    return rows[0][1], rows


def apply(data: Scored, s: dict) -> list[tuple[bool, str]]:
    other = data.verdicts(s["exact"], s["agnostic"], s["iou"], s["thr"])
    counting = data.verdicts(s["exact"], s["agnostic"], s["iou"], s["cthr"]) if s["cthr"] != s["thr"] else other
    return [c if k else o for o, c, k in zip(other, counting, data.counting)]


def per_category(data: Scored, res: list[tuple[bool, str]]) -> str:
    ok = [r[0] for r in res]
    cells = []
    for c in CATEGORIES:
        m = np.array([x == c for x in data.cats])
        cells.append(f"{c} {data.agree(ok, m) / m.sum():.3f} ({m.sum()})")
    return " | ".join(cells) + f" | all {data.agree(ok) / len(ok):.3f} ({len(ok)})"


def bootstrap_ci(data: Scored, ok: list[bool], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the agreement by a bootstrap over prompts (a prompt's images resampled together)."""
    hits = np.array(ok) == np.array(data.truth)
    groups = {}
    for i, p in enumerate(data.prompts):
        groups.setdefault(p, []).append(i)
    sums = np.array([hits[g].sum() for g in groups.values()])
    sizes = np.array([len(g) for g in groups.values()])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    rates = sums[draws].sum(1) / sizes[draws].sum(1)
    return float(np.quantile(rates, 0.025)), float(np.quantile(rates, 0.975))


def reason_kind(reason: str) -> str:
    if reason.startswith("unrecognisable shape"):
        return "blob (merged or misshapen)"
    if " is not " in reason:
        return "relation"
    return {(True, True): "missing + extra", (True, False): "missing", (False, True): "extra"}.get(("missing" in reason, "extra" in reason), reason)


def confusion(data: Scored, res: list[tuple[bool, str]]) -> None:
    for c in CATEGORIES:
        idx = [i for i, x in enumerate(data.cats) if x == c]
        conf = Counter((res[i][0], data.truth[i]) for i in idx)
        print(f"  {c}: geneval pass & oracle pass {conf[(True, True)]}, fail & fail {conf[(False, False)]}, "
              f"pass & fail {conf[(True, False)]}, fail & pass {conf[(False, True)]}")
        why = Counter()
        for i in idx:
            if res[i][0] and not data.truth[i]:
                why["geneval passes; oracle: " + reason_kind(data.reasons[i])] += 1
            elif not res[i][0] and data.truth[i]:
                first = res[i][1].split(";")[0]
                why["oracle passes; geneval: " + ("an extra detection" if "<" in first else "an object not found" if ">=" in first else "relation")] += 1
        for k, n in why.most_common():
            print(f"      {n:4d}  {k}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chosen_on", help="generated set of training prompts (shapes:train-eval)")
    ap.add_argument("reported", help="generated set of held-out prompts (shapes:eval)")
    args = ap.parse_args()
    detector = detection_from_spec("shapes", "cpu").detector
    chosen_on, reported = generated_set(args.chosen_on, detector), generated_set(args.reported, detector)
    best, rows = choose(chosen_on)
    print(f"chosen on {args.chosen_on} ({len(chosen_on.truth)} images): {best}")
    print("  runners-up:")
    for hits, s in rows[1:6]:
        print(f"    {hits / len(chosen_on.truth):.3f} {s}")
    shipped = dict(exact=True, agnostic=G.CLASS_AGNOSTIC_NMS["shapes"], iou=G.NMS_IOU["shapes"], thr=G.OBJECT_THRESHOLD["shapes"],
                   cthr=G.COUNTING_THRESHOLD["shapes"])
    print("shipped defaults of rewardiff.eval.geneval", "EQUAL the chosen settings" if shipped == best else f"DIFFER: {shipped}")
    rendered = rendered_set(detector)
    print("\nagreement per category (images)")
    for label, s in (("chosen", best), ("previous", PREVIOUS)):
        for name, data in (("chosen-on", chosen_on), ("reported", reported), ("rendered", rendered)):
            print(f"  {label:8s} {name:9s} {per_category(data, apply(data, s))}")
    geneval_own = next(s for _, s in rows if not s["exact"])
    print(f"  best with GenEval's own metadata on the chosen-on set {geneval_own}:")
    for name, data in (("chosen-on", chosen_on), ("reported", reported)):
        print(f"           {name:9s} {per_category(data, apply(data, geneval_own))}")
    res = apply(reported, best)
    lo, hi = bootstrap_ci(reported, [r[0] for r in res])
    print(f"\nreported set, chosen settings: agreement {reported.agree([r[0] for r in res]) / len(res):.3f}, "
          f"95% interval [{lo:.3f}, {hi:.3f}] (bootstrap over prompts); confusion against the oracle and the oracle's reasons")
    confusion(reported, res)
    if shipped != best:
        raise SystemExit("the shipped defaults are not the chosen settings")


if __name__ == "__main__":
    main()
