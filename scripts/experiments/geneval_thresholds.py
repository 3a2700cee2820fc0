"""Choose `eval geneval`'s detection thresholds for the shapes detector on renders of TRAINING
prompts, scored against the renderer's own truth (the objects it drew), never the oracle.

Each training prompt is scored on its own render (truth: passes) and on the render of another
prompt (truth: passes only if that render shows exactly the prompt's objects in its relation).
Prints accuracy per (threshold, counting threshold).
    PYTHONPATH=src python scripts/experiments/geneval_thresholds.py [N_PROMPTS]
"""

from __future__ import annotations

import random
import sys
from collections import Counter

import numpy as np
import torch

from rewardiff.eval.geneval import detect_objects, evaluate_one, shapes_metadata
from rewardiff.rewards.by_spec import detection_from_spec
from rewardiff.shapes.judges.detector import NMS_IOU
from rewardiff.shapes.palette import POSITION_MARGIN_PX
from rewardiff.shapes.prompts import parse_prompt, train_prompts
from rewardiff.shapes.render import render


def truth(prompt: str, drawn) -> bool:
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
    return any(rule[spec.relation](x.center[0] - y.center[0], x.center[1] - y.center[1]) for x in a for y in b if x is not y)


def main(n: int = 200) -> None:
    rng = random.Random(0)
    prompts = rng.sample(train_prompts(), n)
    items = []
    for i, p in enumerate(prompts):
        own = render(p, 10_000 + i)
        other = render(prompts[(i + 1) % n], 20_000 + i)
        items += [(p, own, True), (p, other, truth(p, other))]
    reward = detection_from_spec("shapes", "cpu")
    images = torch.from_numpy(np.stack([r.image for _, r, _ in items])).permute(0, 3, 1, 2).float() / 255.0
    metas = [shapes_metadata(p) for p, _, _ in items]
    objects = detect_objects(reward.detector, images, metas, 0.1, NMS_IOU)
    for thr in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35):
        row = []
        for cthr in (0.3, 0.35, 0.4, 0.45, 0.5):
            ok = []
            for meta, objs, (_, _, t) in zip(metas, objects, items):
                cut = cthr if meta["tag"] == "counting" else thr
                ok.append(evaluate_one({k: [o for o in v if o[0] > cut] for k, v in objs.items()}, meta)[0] == t)
            row.append(f"{np.mean(ok):.3f}")
        print(f"threshold {thr}: counting {dict(zip((0.3, 0.35, 0.4, 0.45, 0.5), row))}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
