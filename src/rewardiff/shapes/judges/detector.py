"""The shapes world's open-vocabulary detector: a tiny transformers `Owlv2ForObjectDetection`
(OWLv2 itself, not OWL-ViT) trained on rendered images with their ground-truth boxes, loaded by
DetectionConfidence exactly like google/owlv2-base-patch16-ensemble.

Text queries are class names "{color} {shape}" (all 15 per image in training). Each image patch
predicts a box and a logit per query. Training targets, simpler than OWL's bipartite matching
(objects here are far apart and at most 4, so a fixed assignment is unambiguous):

- classification: sigmoid focal loss (Lin et al. 2017, alpha 0.25, gamma 2) on every
  (patch, query) logit; the one positive per object is the patch whose centre is nearest the
  object's centre (the patch containing it), for that object's class query; normalised by the
  number of objects;
- boxes: L1 on normalised (cx, cy, w, h) at the positive patches only, weight `box_weight`
  (DETR's 5). No GIoU term: boxes are axis-aligned squares-ish of 7-11 px, L1 is enough and
  keeps the loss one line.

Counting = boxes above a confidence threshold after non-maximum suppression per class (`nms`,
written in torch: no torchvision dependency); neighbouring patches of one object predict
overlapping boxes and are suppressed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rewardiff.rewards.preprocess import ImageTransform
from rewardiff.shapes.judges.common import LoopConfig, MODEL_DIR, TinyTransformerArch, augment, clip_style_configs, rendered_batch, save_folder, train_loop
from rewardiff.shapes.palette import COLORS, IMAGE_SIZE, SHAPES
from rewardiff.shapes.render import ObjectTruth

CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
"""The detector's vocabulary of text queries."""

SCORE_THRESHOLD = 0.3
"""A box counts as a detection above this confidence (chosen on rendered training-prompt images)."""
NMS_IOU = 0.3
"""Boxes of one class overlapping more than this are the same object (objects never overlap)."""
PRIOR_SCALE = 5.0
"""Initial logit scale: logits start in [-10, 0], confidences near sigmoid(-5) ~ 0.007."""


@dataclass
class DetectorArch(TinyTransformerArch):
    """One box per patch (4 x 4 pixels by default: 8 x 8 boxes)."""


@dataclass
class DetectorJudgeConfig:
    arch: DetectorArch = field(default_factory=DetectorArch)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=3000, batch_size=32, lr=1e-3, warmup_steps=150))
    focal_alpha: float = 0.25  # weight of positives in the focal loss
    focal_gamma: float = 2.0  # focusing exponent
    box_weight: float = 5.0  # L1 box loss weight (DETR's)


def build_detector(arch: DetectorArch, tokenizer_dir: Path, seed: int = 0):
    """(Owlv2ForObjectDetection, CLIPTokenizer, Owlv2ImageProcessor), seeded."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor

    from rewardiff.shapes.tokenizer import build_tokenizer

    tok = build_tokenizer(tokenizer_dir)
    text, vision = clip_style_configs(arch, tok)
    torch.manual_seed(seed)
    # OWLv2's class head maps image features to the text width, so projection_dim = text width.
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=arch.text_width))
    with torch.no_grad():
        # Random heads saturate the sigmoid (logits ~20) and predict degenerate boxes. Start as
        # detectors do: logits = PRIOR_SCALE * (cosine - 1), i.e. a low prior for every class
        # (focal-loss practice), and boxes equal to the head's grid bias (each patch's own box).
        head = model.class_head
        head.logit_shift.weight.zero_()
        head.logit_shift.bias.fill_(-1.0)
        head.logit_scale.weight.zero_()
        head.logit_scale.bias.fill_(PRIOR_SCALE - 1.0)  # elu(x) + 1 = x + 1 for x > 0
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    processor = Owlv2ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return model, tok, processor


def patch_targets(objects: list[tuple[ObjectTruth, ...]], patch_size: int, classes: tuple[str, ...] = CLASS_NAMES):
    """(labels (B, P, Q) 0/1, boxes (B, P, 4) normalised cxcywh, positive mask (B, P))."""
    grid = IMAGE_SIZE // patch_size
    b = len(objects)
    labels = torch.zeros(b, grid * grid, len(classes))
    boxes = torch.zeros(b, grid * grid, 4)
    pos = torch.zeros(b, grid * grid, dtype=torch.bool)
    index = {c: i for i, c in enumerate(classes)}
    for i, objs in enumerate(objects):
        for o in objs:
            cx, cy = o.center
            p = min(int(cy // patch_size), grid - 1) * grid + min(int(cx // patch_size), grid - 1)
            labels[i, p, index[f"{o.color} {o.shape}"]] = 1.0
            x0, y0, x1, y1 = o.box
            boxes[i, p] = torch.tensor([cx, cy, x1 - x0, y1 - y0]) / IMAGE_SIZE
            pos[i, p] = True
    return labels, boxes, pos


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Sigmoid focal loss summed over all elements (Lin et al. 2017, as torchvision's)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = p * labels + (1 - p) * (1 - labels)
    loss = ce * (1 - p_t) ** gamma
    return ((alpha * labels + (1 - alpha) * (1 - labels)) * loss).sum()


def query_tokens(tok, classes: list[str], batch: int) -> dict[str, torch.Tensor]:
    """The same tokenisation the detection reward uses (padding to the model length)."""
    return tok(list(classes) * batch, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="pt")


def detector_loss(model, tok, transform: ImageTransform, images: torch.Tensor, objects, cfg: DetectorJudgeConfig) -> tuple[torch.Tensor, dict[str, float]]:
    tokens = query_tokens(tok, list(CLASS_NAMES), images.shape[0])
    out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=transform(images))
    labels, boxes, pos = patch_targets(objects, cfg.arch.patch_size)
    n_obj = max(1.0, float(pos.sum()))
    cls = focal_loss(out.logits, labels, cfg.focal_alpha, cfg.focal_gamma) / n_obj
    box = F.l1_loss(out.pred_boxes[pos], boxes[pos], reduction="sum") / n_obj
    return cls + cfg.box_weight * box, {"cls": cls.item(), "box": box.item()}


def train_detector_judge(cfg: DetectorJudgeConfig, seed: int, out: Path, progress: bool = True) -> Path:
    """Train (resuming) and write OUT/model: an Owlv2ForObjectDetection folder DetectionConfidence loads."""
    model, tok, processor = build_detector(cfg.arch, out / "tokenizer_src", seed)
    transform = ImageTransform.from_processor(processor, pad_square=True)

    def loss_fn(rng: random.Random, gen: torch.Generator):
        batch = rendered_batch(rng, cfg.loop.batch_size)
        return detector_loss(model, tok, transform, augment(batch.images, gen, cfg.loop.noise_std), batch.objects, cfg)

    train_loop("detector", model, loss_fn, cfg.loop, seed, out, progress)
    return save_folder(out / MODEL_DIR, [model, tok, processor])


# ---- inference: boxes -> detections -> counts ------------------------------------------------


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) boxes in (x0, y0, x1, y1) -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression (as torchvision.ops.nms): indices of the kept boxes in
    decreasing score order; a box is dropped when its IoU with a kept, higher-scored box is
    strictly greater than `iou_threshold`. Ties in score keep the lower index first."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    if not order:
        return torch.zeros(0, dtype=torch.long)
    iou = box_iou(boxes, boxes)
    keep: list[int] = []
    suppressed = torch.zeros(len(scores), dtype=torch.bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


@dataclass(frozen=True)
class Detection:
    name: str  # class query, e.g. "red circle"
    score: float  # sigmoid confidence
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in input-image pixels

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


@torch.no_grad()
def detect(detector, images: torch.Tensor, classes: list[str] = list(CLASS_NAMES), threshold: float = SCORE_THRESHOLD, iou: float = NMS_IOU) -> list[list[Detection]]:
    """Detections per image: per class, boxes above `threshold` after NMS.

    `detector` is the adapter a DetectionConfidence reward holds (`reward.detector`, OWLv2), so
    counting runs on exactly the model the reward loaded. Images (B, 3, H, W) in [0, 1], square.
    """
    probs, boxes = detector.predictions(images, [list(classes)] * images.shape[0])
    side = float(max(images.shape[-2:]))  # OWLv2 pads to a square; boxes are relative to it
    results = []
    for b in range(images.shape[0]):
        xyxy = cxcywh_to_xyxy(boxes[b].float()) * side
        found: list[Detection] = []
        for q, name in enumerate(classes):
            score = probs[b, :, q]
            idx = (score > threshold).nonzero().flatten()
            for k in idx[nms(xyxy[idx], score[idx], iou)].tolist():
                found.append(Detection(name, float(score[k]), tuple(float(v) for v in xyxy[k])))
        results.append(found)
    return results


def prompt_classes(prompt: str) -> list[str]:
    """The detector's class names a shapes prompt asks for ("two red circles" -> ["red circle"]);
    other text falls back to the generic phrase parser."""
    from rewardiff.rewards.detection import parse_object_phrases
    from rewardiff.shapes.prompts import UnsupportedPromptError, parse_prompt

    try:
        spec = parse_prompt(prompt)
    except UnsupportedPromptError:
        return parse_object_phrases(prompt)
    return list(dict.fromkeys(f"{c} {s}" for c, s in spec.objects))


def counts(detections: list[Detection]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in detections:
        out[d.name] = out.get(d.name, 0) + 1
    return out
