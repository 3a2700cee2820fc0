"""Open-vocabulary detection confidence: is each object the prompt asks for visible?

For each image, the object classes come from `classes` (the same for every image) or from
`parse_classes(prompt)`. An open-vocabulary detector scores every (box, class) pair; a class's
confidence is its best box's probability, and

    score = mean over classes of  max over boxes  sigmoid(logit[box, class])      in [0, 1]

Detectors (chosen by the model folder's config `model_type`):
- OWLv2 (transformers Owlv2ForObjectDetection, default google/owlv2-base-patch16-ensemble): one
  text query per class; image padded to a square (bottom/right), resized, CLIP-normalised.
- Grounding DINO (GroundingDinoForObjectDetection, IDEA-Research/grounding-dino-base): classes
  joined as "c1. c2." in one text; a class's logit is the max over its own tokens (as
  post_process_grounded_object_detection scores a phrase), then over the 900 queries.
Both run on torch-only preprocessing, so the score is differentiable in the image (through the
best box only, as max passes gradients).

    >>> parse_object_phrases("A photo of two red cats and a dog on the sofa.")
    ['red cats', 'dog', 'sofa']
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.base import Reward, RewardOutput
from rewardiff.rewards.loading import ModelRef, load_config, load_image_processor, load_model, load_tokenizer, resolve_model_ref
from rewardiff.rewards.preprocess import ImageTransform

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
GROUNDING_DINO = "IDEA-Research/grounding-dino-base"

_PREFIX = re.compile(r"^(?:an?|the)\s+(?:photo|picture|image|painting|drawing|rendering|illustration|render)\s+of\s+")
_SEPARATORS = re.compile(
    r"\s*(?:,|;|\band\b|\bwith\b|\bnext to\b|\bbeside\b|\bnear\b|\bbehind\b|\bin front of\b|\bon top of\b|\bon\b"
    r"|\bunder\b|\babove\b|\bbelow\b|\b(?:to the )?(?:left|right) of\b|\binside\b|\bin\b|\bholding\b)\s*"
)
_LEADING = {"a", "an", "the", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "some", "several", "many"}


def parse_object_phrases(prompt: str) -> list[str]:
    """A simple, predictable parser: lower-case, drop "a photo of", split on commas, "and",
    "with" and spatial words, drop leading articles / count words. Distinct phrases, in order.
    Pass your own function (e.g. an LLM or a grammar) as `parse_classes` for richer prompts."""
    text = _PREFIX.sub("", prompt.lower().strip().rstrip(".!?"))
    phrases: list[str] = []
    for part in _SEPARATORS.split(text):
        words = part.split()
        while words and (words[0] in _LEADING or words[0].isdigit()):
            words = words[1:]
        phrase = " ".join(words)
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


class _Owlv2:
    """OWLv2: per-class text queries, logits (B, patches, queries)."""

    def __init__(self, ref: ModelRef, device: torch.device, dtype: torch.dtype):
        from transformers import Owlv2ForObjectDetection

        self.model = load_model(Owlv2ForObjectDetection, ref, "OWLv2 detector", dtype=dtype, device=device)
        self.tokenizer = load_tokenizer(ref, "OWLv2 detector")
        self.transform = ImageTransform.from_processor(load_image_processor(ref, "OWLv2 detector"), pad_square=True)
        positions = self.model.config.text_config.max_position_embeddings
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", positions)), positions)
        self.dtype = dtype

    def predictions(self, images: torch.Tensor, classes: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs (B, patches, queries), boxes (B, patches, 4) normalised cxcywh of the padded
        square image); queries past an image's own classes are padding."""
        per_image = max(len(c) for c in classes)
        queries = [c[i] if i < len(c) else "" for c in classes for i in range(per_image)]  # "" pads, ignored by callers
        tokens = self.tokenizer(queries, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt").to(images.device)
        out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=self.transform(images, dtype=self.dtype))
        return out.logits.float().sigmoid(), out.pred_boxes

    def confidences(self, images: torch.Tensor, classes: list[list[str]]) -> list[torch.Tensor]:
        best = self.predictions(images, classes)[0].amax(dim=1)  # (B, queries): best box per query
        return [best[b, : len(c)] for b, c in enumerate(classes)]


class _GroundingDino:
    """Grounding DINO: one "c1. c2." text per image, logits (B, queries, text tokens)."""

    def __init__(self, ref: ModelRef, device: torch.device, dtype: torch.dtype):
        from transformers import GroundingDinoForObjectDetection

        self.model = load_model(GroundingDinoForObjectDetection, ref, "Grounding DINO detector", dtype=dtype, device=device)
        self.tokenizer = load_tokenizer(ref, "Grounding DINO detector")
        self.transform = ImageTransform.from_processor(load_image_processor(ref, "Grounding DINO detector"))
        self.max_length = int(self.model.config.max_text_len)
        self.dtype = dtype

    def _text(self, classes: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
        tok = self.tokenizer
        ids, spans = [tok.cls_token_id], []
        for name in classes:
            piece = tok(name.lower(), add_special_tokens=False)["input_ids"]
            if not piece:
                raise RewardiffError(f"detection: class {name!r} has no tokens")
            spans.append((len(ids), len(ids) + len(piece)))
            ids += piece + [tok.convert_tokens_to_ids(".")]
        ids.append(tok.sep_token_id)
        if len(ids) > self.max_length:
            raise RewardiffError(f"detection: classes {classes} need {len(ids)} text tokens; Grounding DINO takes {self.max_length}")
        return ids, spans

    def confidences(self, images: torch.Tensor, classes: list[list[str]]) -> list[torch.Tensor]:
        texts = [self._text(c) for c in classes]
        length = max(len(ids) for ids, _ in texts)
        input_ids = torch.full((len(texts), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for b, (ids, _) in enumerate(texts):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention[b, : len(ids)] = 1
        pixels = self.transform(images, dtype=self.dtype)
        pixel_mask = torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=torch.long, device=images.device)
        out = self.model(
            pixel_values=pixels, input_ids=input_ids.to(images.device), token_type_ids=torch.zeros_like(input_ids).to(images.device),
            attention_mask=attention.to(images.device), pixel_mask=pixel_mask,
        )
        probs = out.logits.float().sigmoid()  # (B, queries, max_text_len)
        return [torch.stack([probs[b, :, s:e].amax() for s, e in spans]) for b, (_, spans) in enumerate(texts)]


DETECTORS: dict[str, type] = {"owlv2": _Owlv2, "grounding-dino": _GroundingDino}
"""config.json `model_type` -> detector adapter."""


class DetectionConfidence(Reward):
    """Mean best-box confidence of the prompt's object classes.

    >>> reward = DetectionConfidence(device="cuda")                                   # doctest: +SKIP
    >>> out = reward(torch.rand(1, 3, 512, 512), ["a photo of a cat and a dog"])      # doctest: +SKIP
    >>> out.details["classes"], out.details["confidences"]                            # doctest: +SKIP
    ([['cat', 'dog']], [[0.41, 0.03]])
    """

    name = "detection"
    differentiable = True

    def __init__(
        self,
        model: str = DEFAULT_DETECTOR,
        device: str | torch.device = "cpu",
        classes: Sequence[str] | None = None,
        parse_classes: Callable[[str], list[str]] = parse_object_phrases,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(device)
        ref = resolve_model_ref(model, "detector")
        model_type = load_config(ref, "detector").model_type
        if model_type not in DETECTORS:
            raise RewardiffError(f"{model}: detector type {model_type!r} is not supported; expected one of {sorted(DETECTORS)}")
        self.detector = DETECTORS[model_type](ref, self.device, dtype)
        self.classes = [c.strip() for c in classes] if classes is not None else None
        if self.classes is not None and (not self.classes or not all(self.classes)):
            raise RewardiffError("detection: classes must be a non-empty list of non-empty names")
        self.parse_classes = parse_classes

    def modules(self) -> list[torch.nn.Module]:
        return [self.detector.model]

    def classes_for(self, prompt: str) -> list[str]:
        classes = self.classes if self.classes is not None else list(self.parse_classes(prompt))
        if not classes:
            raise RewardiffError(f"detection: no object classes found in prompt {prompt!r}; pass classes= or a parse_classes function")
        return classes

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        classes = [self.classes_for(p) for p in prompts]
        confidences = self.detector.confidences(images, classes)
        scores = torch.stack([c.mean() for c in confidences])
        return RewardOutput(scores, {"classes": classes, "confidences": [c.detach().cpu().tolist() for c in confidences]})
