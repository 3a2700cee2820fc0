"""`rewardiff eval geneval`: GenEval-style scoring (Ghosh et al. 2023) of a generated set by an
open-vocabulary detector, per task and overall, the way GenEval reports them.

Prompt metadata is GenEval's `evaluation_metadata.jsonl` format, one line per prompt:

    {"tag": "counting", "prompt": "three green circles",
     "include": [{"class": "green circle", "count": 3}], "exclude": [{"class": "green circle", "count": 4}]}

tags: single_object, two_object, counting, colors, position, color_attr. `position: [REL, i]` on
an include says where its objects lie relative to include i's. Shapes-world prompts get their
metadata from `shapes_metadata` (single -> colors, pair -> color_attr, counting, position), with
the detector's "{colour} {shape}" names as classes and, since the world's prompts mean exactly the
objects they name (SHAPES.md), an exclude for every other class of the world's vocabulary (GenEval
writes "exactly N" of counting the same way: exclude N + 1). Detection follows GenEval's
`evaluate_image`: the detector is asked for the whole vocabulary of the run (every class of the
metadata, as GenEval runs Mask2Former over all 80 COCO classes), boxes above the task's threshold
are kept (counting has its own, as in GenEval; the shapes detector's values: OBJECT_THRESHOLD),
duplicates are suppressed (NMS), and at most MAX_OBJECTS per class are kept, best first. A row's
check is GenEval's `evaluate`: each include needs at least `count` detections of its class (its
`color`, if any, is asked of the detector as "{color} {class}": an open-vocabulary stand-in for
GenEval's CLIP colour classifier),
each position relation must hold between every found object and every object of its target group
(GenEval's `relative_position`: centre offset beyond POSITION_THRESHOLD x the summed box sizes,
direction within 60 degrees of the axis), and each exclude fails the image at `count` detections.

Scores: a task's score is its share of correct images; overall is the mean over tasks (GenEval's
"overall score"). With `agreement` (shapes world only, EVALUATION ONLY) the oracle also judges
every image and the share of images where both agree is reported: how far the detector-based
score can be trusted where no oracle exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rewardiff.errors import RewardiffError
from rewardiff.generation import load_metadata
from rewardiff.io_utils import atomic_write_text, load_image, write_json

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
SHAPES_TASK = {"single": "colors", "pair": "color_attr", "counting": "counting", "position": "position"}
OBJECT_THRESHOLD = {"shapes": 0.125}
COUNTING_THRESHOLD = {"shapes": 0.075}
NMS_IOU = {"shapes": 0.1}
CLASS_AGNOSTIC_NMS = {"shapes": True}
"""The shapes detector's post-processing. GenEval's own values (0.3; 0.9 for counting; no NMS beyond
Mask2Former's) belong to Mask2Former, whose confidences sit near 1; the shapes detector's true
objects score 0.2-0.8 and one object's neighbouring patches predict near-duplicate boxes, often
under another shape's name. So each box keeps its best class only (one label per box, as OWLv2's
post-processing) and duplicates are suppressed across classes at IoU 0.1 (the world's objects never
touch, SHAPES.md). These four were chosen together with the world's exact-objects excludes on
base-generator images of TRAINING prompts (runs/distil/base_te, shapes:train-eval) and reported on
the held-out shapes:eval images (scripts/experiments/geneval_agreement.py); `--threshold` /
`--counting-threshold` override the thresholds. Other detectors: 0.3 for both, per-class NMS at the
detector's 0.3."""
MAX_OBJECTS = 16
"""GenEval's `max_objects`: detections kept per class, best first."""
POSITION_THRESHOLD = 0.1
"""GenEval: a relation needs the centres apart by more than 0.1 x the summed box sizes."""
RESULT_JSON, RESULT_MD, RESULT_ROWS = "geneval.json", "geneval.md", "geneval_results.jsonl"


def shapes_metadata(prompt: str, exact: bool = True) -> dict:
    """GenEval metadata for a shapes prompt, classes named as the shapes detector's ("red circle").

    `exact` (the world's meaning, SHAPES.md: an image shows exactly the objects its prompt names,
    nothing else): exclude every class of the detector's vocabulary beyond the prompt's counts, as
    GenEval's counting metadata excludes count + 1. exact=False is GenEval's own metadata (excludes
    for counting only)."""
    from rewardiff.shapes.judges.detector import CLASS_NAMES
    from rewardiff.shapes.palette import POSITION_MARGIN_PX
    from rewardiff.shapes.prompts import parse_prompt

    spec = parse_prompt(prompt)
    names = [f"{c} {s}" for c, s in spec.objects]
    tag = SHAPES_TASK[spec.category]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    if spec.category == "counting":
        meta = {"tag": tag, "prompt": prompt, "include": [{"class": names[0], "count": len(names)}],
                "exclude": [{"class": names[0], "count": len(names) + 1}]}
    elif spec.category == "position":  # GenEval: the second include lies REL of the first ("A left of B" -> B, then A)
        meta = {"tag": tag, "prompt": prompt, "include": [{"class": names[1], "count": 1},
                                                          {"class": names[0], "count": 1, "position": [spec.relation, 0]}],
                "position_margin_px": POSITION_MARGIN_PX}  # what the world's position words mean (SHAPES.md)
    else:
        meta = {"tag": tag, "prompt": prompt, "include": [{"class": n, "count": k} for n, k in counts.items()]}
    if exact:
        meta["exclude"] = [{"class": n, "count": counts.get(n, 0) + 1} for n in CLASS_NAMES]
    return meta


def query_name(req: dict) -> str:
    return f"{req['color']} {req['class']}" if req.get("color") else str(req["class"])


def check_metadata(meta: dict, where: str) -> None:
    if meta.get("tag") not in TASKS:
        raise RewardiffError(f"{where}: tag must be one of {TASKS}, got {meta.get('tag')!r}")
    reqs = list(meta.get("include", [])) + list(meta.get("exclude", []))
    if not meta.get("include") or not all(isinstance(r, dict) and isinstance(r.get("class"), str) and isinstance(r.get("count"), int)
                                          and r["count"] >= 1 for r in reqs):
        raise RewardiffError(f"{where}: needs 'include' entries of {{'class': str, 'count': int >= 1}}")
    for r in meta["include"]:
        pos = r.get("position")
        if pos is not None and not (isinstance(pos, list) and len(pos) == 2 and pos[0] in ("left of", "right of", "above", "below")
                                    and isinstance(pos[1], int) and 0 <= pos[1] < meta["include"].index(r)):
            raise RewardiffError(f"{where}: position must be [left of|right of|above|below, index of an earlier include], got {pos!r}")


def relative_position(a: tuple[float, ...], b: tuple[float, ...], threshold: float = POSITION_THRESHOLD) -> set[str]:
    """GenEval's rule: relations of box a (x0, y0, x1, y1) to box b.

    >>> sorted(relative_position((0, 0, 4, 4), (10, 0, 14, 4)))
    ['left of']
    """
    ca, cb = np.array([(a[0] + a[2]) / 2, (a[1] + a[3]) / 2]), np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
    da, db = np.array([a[2] - a[0], a[3] - a[1]]), np.array([b[2] - b[0], b[3] - b[1]])
    offset = ca - cb
    revised = np.maximum(np.abs(offset) - threshold * (da + db), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def axis_relations(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> set[str]:
    """The shapes world's rule: A's centre on that side of B's by at least `margin` pixels along the axis."""
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    rels = {"left of": dx <= -margin, "right of": dx >= margin, "above": dy <= -margin, "below": dy >= margin}
    return {r for r, holds in rels.items() if holds}


def evaluate_one(objects: dict[str, list[tuple[float, tuple[float, ...]]]], meta: dict, threshold: float = POSITION_THRESHOLD) -> tuple[bool, str]:
    """GenEval's `evaluate` on detections: class -> [(score, box)] sorted by score. Metadata with
    `position_margin_px` (the shapes world's) uses the world's axis rule instead of GenEval's."""
    margin = meta.get("position_margin_px")

    def relations(a, b) -> set[str]:  # the rule this metadata means
        return axis_relations(a, b, float(margin)) if margin is not None else relative_position(a, b, threshold)

    correct, reasons, groups = True, [], []
    for req in meta["include"]:
        name, matched = query_name(req), True
        found = objects.get(name, [])[: req["count"]]
        if len(found) < req["count"]:
            correct = matched = False
            reasons.append(f"expected {name}>={req['count']}, found {len(found)}")
        elif "position" in req:
            rel, target = req["position"]
            if groups[target] is None:
                correct = matched = False
                reasons.append(f"no target for {name} {rel}")
            else:
                for _, box in found:
                    for _, tbox in groups[target]:
                        if rel not in relations(box, tbox):
                            correct = matched = False
                            reasons.append(f"expected {name} {rel} target, found {sorted(relations(box, tbox)) or 'no relation'}")
                            break
                    if not matched:
                        break
        groups.append(found if matched else None)
    for req in meta.get("exclude", []):
        name = query_name(req)
        if len(objects.get(name, [])) >= req["count"]:
            correct = False
            reasons.append(f"expected {name}<{req['count']}, found {len(objects[name])}")
    return correct, "; ".join(reasons)


@dataclass
class GenevalResult:
    tasks: dict[str, dict] = field(default_factory=dict)  # tag -> {"images", "score", "agreement"?}
    overall: float = 0.0  # mean over tasks of the task scores (GenEval's overall)
    images: int = 0
    agreement: float | None = None  # share of images where GenEval's verdict equals the oracle's
    oracle_overall: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def markdown(self) -> str:
        agree = self.agreement is not None
        head = "| task | images | score |" + (" oracle | agreement |" if agree else "")
        lines = [head, "| --- | ---: | ---: |" + (" ---: | ---: |" if agree else "")]
        for tag, t in self.tasks.items():
            extra = f" {t['oracle']:.3f} | {t['agreement']:.3f} |" if agree else ""
            lines.append(f"| {tag} | {t['images']} | {t['score']:.3f} |{extra}")
        extra = f" {self.oracle_overall:.3f} | {self.agreement:.3f} |" if agree else ""
        lines.append(f"| **overall** | {self.images} | **{self.overall:.3f}** |{extra}")
        return "\n".join(lines)


def _read_geneval(path: Path) -> dict[str, dict]:
    from rewardiff.io_utils import read_jsonl

    if not path.is_file():
        raise RewardiffError(f"GenEval metadata not found: {path}")
    try:
        rows = list(read_jsonl(path))
    except ValueError as e:
        raise RewardiffError(str(e)) from None
    out = {}
    for n, meta in enumerate(rows, 1):
        check_metadata(meta, f"{path}: line {n}")
        out[str(meta["prompt"])] = meta
    return out


def vocabulary(metas: list[dict]) -> list[str]:
    """Every class the run's metadata names, in order of first use: what the detector is asked for
    on every image (GenEval runs its detector over all its classes, not only the prompt's)."""
    return list(dict.fromkeys(query_name(r) for m in metas for r in m["include"] + m.get("exclude", [])))


def postprocess(probs: torch.Tensor, boxes: torch.Tensor, names: list[str], threshold: float, nms_iou: float,
                class_agnostic: bool, max_objects: int = MAX_OBJECTS) -> dict[str, list[tuple[float, tuple[float, ...]]]]:
    """One image's detections: query name -> [(score, box)] best first.

    probs (P, Q): each predicted box's confidence per query; boxes (P, 4) x0, y0, x1, y1. Boxes above
    `threshold`; NMS per class, or across classes (`class_agnostic`: a box then keeps only its best
    class, as OWLv2's post-processing labels each box with its best query); at most `max_objects`
    per class (GenEval's max_objects).
    """
    from rewardiff.shapes.judges.detector import nms

    patch, query = (probs > threshold).nonzero(as_tuple=True)
    scores, cand = probs[patch, query], boxes[patch]
    if class_agnostic:
        keep = nms(cand, scores, nms_iou).tolist()
    else:
        keep = [int(i) for q in query.unique().tolist() for i in (query == q).nonzero().flatten()[nms(cand[query == q], scores[query == q], nms_iou)]]
        keep.sort(key=lambda i: (-float(scores[i]), i))
    out: dict[str, list] = {}
    for i in keep:
        found = out.setdefault(names[int(query[i])], [])
        if len(found) < max_objects:
            found.append((float(scores[i]), tuple(float(v) for v in cand[i])))
    return out


def detect_objects(detector, images: torch.Tensor, names: list[str], thresholds: list[float], nms_iou: float,
                   class_agnostic: bool) -> list[dict[str, list]]:
    """Per image: query name -> [(score, box)] best first, at that image's threshold; `detector` is
    the adapter a DetectionConfidence reward holds (OWLv2: boxes for every patch and query)."""
    from rewardiff.shapes.judges.detector import cxcywh_to_xyxy

    probs, boxes = detector.predictions(images, [list(names)] * images.shape[0])
    side = float(max(images.shape[-2:]))  # OWLv2 pads to a square; boxes are relative to it
    return [postprocess(probs[b].float(), cxcywh_to_xyxy(boxes[b].float()) * side, names, thresholds[b], nms_iou, class_agnostic)
            for b in range(images.shape[0])]


def evaluate_geneval(metadata: str | Path, geneval: str | Path | None = None, detector: str = "shapes", threshold: float | None = None,
                     counting_threshold: float | None = None,
                     out: str | Path | None = None, device: str = "cpu", agreement: bool = False, batch_size: int = 32,
                     position_threshold: float = POSITION_THRESHOLD) -> tuple[GenevalResult, Path]:
    """Score every row of a generated set; write geneval.{json,md} and per-image results."""
    from rewardiff.rewards.by_spec import detection_from_spec
    from rewardiff.shapes.judges import detector as shapes_detector
    from rewardiff.shapes.prompts import UnsupportedPromptError

    rows, root = load_metadata(metadata)
    table = _read_geneval(Path(geneval)) if geneval else {}
    metas = []
    for n, row in enumerate(rows, 1):
        if row["prompt"] in table:
            metas.append(table[row["prompt"]])
            continue
        try:
            metas.append(shapes_metadata(row["prompt"]))
        except UnsupportedPromptError:
            raise RewardiffError(f"row {n}: prompt {row['prompt']!r} has no GenEval metadata (pass --geneval evaluation_metadata.jsonl)") from None
    names = vocabulary(metas)
    thr = float(threshold) if threshold is not None else OBJECT_THRESHOLD.get(detector, shapes_detector.SCORE_THRESHOLD)
    count_thr = float(counting_threshold) if counting_threshold is not None else COUNTING_THRESHOLD.get(detector, thr)
    if not (0.0 < thr < 1.0 and 0.0 < count_thr < 1.0):
        raise RewardiffError(f"--threshold and --counting-threshold must lie in (0, 1), got {thr}, {count_thr}")
    iou, agnostic = NMS_IOU.get(detector, shapes_detector.NMS_IOU), CLASS_AGNOSTIC_NMS.get(detector, False)
    reward = detection_from_spec(detector, device)
    if not hasattr(reward.detector, "predictions"):
        raise RewardiffError(f"{detector}: GenEval needs a detector with boxes (OWLv2)")
    results = []
    for s in range(0, len(rows), batch_size):
        batch = rows[s : s + batch_size]
        try:
            arrays = [load_image(root / r["image"]) for r in batch]
        except (FileNotFoundError, ValueError) as e:
            raise RewardiffError(f"geneval: {e}") from None
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0).to(device)
        bmetas = metas[s : s + batch_size]
        cuts = [count_thr if m["tag"] == "counting" else thr for m in bmetas]  # GenEval: counting has its own threshold
        for r, meta, objs, image in zip(batch, bmetas, detect_objects(reward.detector, images, names, cuts, iou, agnostic), arrays):
            ok, reason = evaluate_one(objs, meta, position_threshold)
            rec = {"image": r["image"], "prompt": r["prompt"], "tag": meta["tag"], "correct": ok, "reason": reason}
            if agreement:
                from rewardiff.shapes.oracle import judge  # EVALUATION ONLY: compares, never feeds back

                try:
                    rec["oracle"] = judge(image, r["prompt"]).passed
                except UnsupportedPromptError:
                    raise RewardiffError(f"--agreement needs shapes prompts (the oracle's language); {r['prompt']!r} is not one") from None
            results.append(rec)
    result = summarise(results, agreement)
    out_dir = Path(out) if out else root
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULT_JSON, {"metadata": str(metadata), "detector": detector, "threshold": thr, "counting_threshold": count_thr,
                                       "nms_iou": iou, "class_agnostic_nms": agnostic, **result.to_dict()})
    atomic_write_text(out_dir / RESULT_MD, result.markdown() + "\n")
    atomic_write_text(out_dir / RESULT_ROWS, "".join(json.dumps(r) + "\n" for r in results))
    return result, out_dir


def summarise(results: list[dict], agreement: bool) -> GenevalResult:
    res = GenevalResult(images=len(results))
    for tag in TASKS:
        rs = [r for r in results if r["tag"] == tag]
        if not rs:
            continue
        t = {"images": len(rs), "score": float(np.mean([r["correct"] for r in rs]))}
        if agreement:
            t["oracle"] = float(np.mean([r["oracle"] for r in rs]))
            t["agreement"] = float(np.mean([r["correct"] == r["oracle"] for r in rs]))
        res.tasks[tag] = t
    res.overall = float(np.mean([t["score"] for t in res.tasks.values()]))
    if agreement:
        res.agreement = float(np.mean([r["correct"] == r["oracle"] for r in results]))
        res.oracle_overall = float(np.mean([t["oracle"] for t in res.tasks.values()]))
    return res
