"""The shapes prompt language: parse, format, enumerate, and split into train / held-out.

A prompt is text; a `PromptSpec` is what it means. Every category's combinations are
enumerated once and split deterministically (by a hash of the text), so held-out prompts are
never seen in training, whoever asks.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from rewardiff.errors import RewardiffError
from rewardiff.shapes.palette import COLORS, COUNT_WORDS, RELATIONS, SHAPES

CATEGORIES: tuple[str, ...] = ("single", "pair", "counting", "position")

ObjectKind = tuple[str, str]
"""(colour, shape), e.g. ("red", "circle")."""


class UnsupportedPromptError(ValueError):
    """The prompt is not a sentence of the shapes language."""


@dataclass(frozen=True)
class PromptSpec:
    """What a shapes prompt asks for.

    `objects` lists every object the image must show (a counting prompt repeats its kind);
    `relation` is set only for position prompts and relates objects[0] to objects[1].
    """

    category: str
    objects: tuple[ObjectKind, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        return format_prompt(self)


_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_OBJ = rf"a ({_COLOR}) ({_SHAPE})"
_PATTERNS = {
    "single": re.compile(rf"^{_OBJ}$"),
    "pair": re.compile(rf"^{_OBJ} and {_OBJ}$"),
    "counting": re.compile(rf"^({'|'.join(COUNT_WORDS)}) ({_COLOR}) ({_SHAPE})s$"),
    "position": re.compile(rf"^{_OBJ} ({'|'.join(RELATIONS)}) {_OBJ}$"),
}


def parse_prompt(text: str) -> PromptSpec:
    """Parse a shapes-language prompt; raise UnsupportedPromptError naming the prompt otherwise."""
    norm = " ".join(str(text).strip().lower().split())
    if not norm:
        raise UnsupportedPromptError("empty prompt: the shapes world needs e.g. 'a red circle'")
    if m := _PATTERNS["single"].match(norm):
        return PromptSpec("single", ((m[1], m[2]),))
    if m := _PATTERNS["pair"].match(norm):
        if (m[1], m[2]) == (m[3], m[4]):
            raise UnsupportedPromptError(f"{text!r} names the same object twice; say 'two {m[1]} {m[2]}s'")
        return PromptSpec("pair", ((m[1], m[2]), (m[3], m[4])))
    if m := _PATTERNS["counting"].match(norm):
        return PromptSpec("counting", ((m[2], m[3]),) * COUNT_WORDS[m[1]])
    if m := _PATTERNS["position"].match(norm):
        if (m[1], m[2]) == (m[4], m[5]):
            raise UnsupportedPromptError(f"{text!r} relates an object to an identical one, which is ambiguous")
        return PromptSpec("position", ((m[1], m[2]), (m[4], m[5])), relation=m[3])
    raise UnsupportedPromptError(
        f"the shapes world cannot express {text!r}: expected one of 'a red circle', "
        "'a red circle and a blue square', 'three green triangles', "
        "'a red circle left of a blue square' (colours: "
        f"{', '.join(COLORS)}; shapes: {', '.join(SHAPES)})"
    )


def format_prompt(spec: PromptSpec) -> str:
    """The canonical text of a spec (inverse of parse_prompt)."""
    objs = spec.objects
    if spec.category == "single":
        return f"a {objs[0][0]} {objs[0][1]}"
    if spec.category == "pair":
        return f"a {objs[0][0]} {objs[0][1]} and a {objs[1][0]} {objs[1][1]}"
    if spec.category == "counting":
        word = {v: k for k, v in COUNT_WORDS.items()}[len(objs)]
        return f"{word} {objs[0][0]} {objs[0][1]}s"
    if spec.category == "position":
        return f"a {objs[0][0]} {objs[0][1]} {spec.relation} a {objs[1][0]} {objs[1][1]}"
    raise ValueError(f"unknown category {spec.category!r}")


def all_object_kinds() -> list[ObjectKind]:
    return [(c, s) for c in COLORS for s in SHAPES]


def enumerate_prompts(category: str) -> list[str]:
    """Every prompt of a category, in a fixed order.

    Pairs and positions use two *different* kinds: 'a red circle left of a red circle' is
    ambiguous, and 'a red circle and a red circle' is a counting prompt.
    """
    kinds = all_object_kinds()
    if category == "single":
        specs = [PromptSpec("single", (k,)) for k in kinds]
    elif category == "pair":
        specs = [PromptSpec("pair", (a, b)) for a in kinds for b in kinds if a != b]
    elif category == "counting":
        specs = [PromptSpec("counting", (k,) * n) for n in sorted(COUNT_WORDS.values()) for k in kinds]
    elif category == "position":
        specs = [
            PromptSpec("position", (a, b), relation=r)
            for a in kinds for b in kinds if a != b for r in RELATIONS
        ]
    else:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    return [format_prompt(s) for s in specs]


HELDOUT_FRACTION = 0.2
"""Share of each category's prompts held out from all training (a third for 'single')."""


def _hash01(text: str) -> float:
    digest = hashlib.sha256(f"rewardiff-split:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_prompts(category: str) -> tuple[list[str], list[str]]:
    """Fixed (train, held_out) split of a category's prompts.

    'single' holds out one kind per colour (5 of 15), each shape still seen in training;
    the others hold out HELDOUT_FRACTION of their prompts, chosen by a hash of the text.
    """
    prompts = enumerate_prompts(category)
    if category == "single":
        held = {f"a {c} {SHAPES[i % len(SHAPES)]}" for i, c in enumerate(COLORS)}
    else:
        ranked = sorted(prompts, key=_hash01)
        held = set(ranked[: round(HELDOUT_FRACTION * len(prompts))])
    return [p for p in prompts if p not in held], [p for p in prompts if p in held]


EVAL_PROMPTS_PER_CATEGORY = 25


def heldout_eval_prompts(per_category: int = EVAL_PROMPTS_PER_CATEGORY) -> list[str]:
    """The fixed held-out evaluation set: up to `per_category` held-out prompts per category."""
    out: list[str] = []
    for cat in CATEGORIES:
        held = split_prompts(cat)[1]
        out.extend(sorted(held, key=_hash01)[:per_category])
    return out


EVAL_MIN_IMAGES = 320
"""Images per category of the evaluation protocol: a pass rate's standard error <= 2.8 points."""
EVAL_MAX_PROMPTS = 168
"""Prompts per category in a protocol set (all held-out position prompts; train sets are sampled)."""


def protocol_prompts(split: str, min_images: int = EVAL_MIN_IMAGES, max_prompts: int = EVAL_MAX_PROMPTS) -> list[tuple[str, int]]:
    """(prompt, images) of the evaluation protocol on a split ('heldout' or 'train').

    Every category gets at least `min_images` images, spread over up to `max_prompts` of its
    prompts (chosen by hash), so each category's pass rate has the same precision although
    categories have 5 to 672 prompts (held out: single 5 x 64, counting 9 x 36, pair 42 x 8,
    position 168 x 2). The 'train' set measures on training prompts with fresh seeds: what
    recipes and checkpoints are chosen on, never on the held-out numbers that are reported.
    """
    if split not in ("heldout", "train"):
        raise RewardiffError(f"protocol split must be 'heldout' or 'train', got {split!r}")
    out: list[tuple[str, int]] = []
    for cat in CATEGORIES:
        pool = split_prompts(cat)[1 if split == "heldout" else 0]
        chosen = sorted(pool, key=_hash01)[:max_prompts]
        per_prompt = -(-min_images // len(chosen))
        out.extend((p, per_prompt) for p in chosen)
    return out


def train_prompts() -> list[str]:
    return [p for cat in CATEGORIES for p in split_prompts(cat)[0]]


def check_category_weights(weights: dict[str, float], where: str) -> None:
    """Refuse a category mix that names an unknown category, or has weights < 0 (or NaN) or all 0;
    empty means uniform. One check for every config that carries a mix."""
    unknown = set(weights) - set(CATEGORIES)
    if unknown:
        raise RewardiffError(f"{where}: unknown categories {sorted(unknown)}; known {list(CATEGORIES)}")
    if any(not w >= 0 for w in weights.values()) or (weights and sum(weights.values()) <= 0):
        raise RewardiffError(f"{where}: weights must be >= 0 and not all 0; got {weights}")


def sample_train_prompt(rng: random.Random, category_weights: dict[str, float] | None = None) -> str:
    """Draw a training prompt: a category (uniform by default), then a prompt within it."""
    weights = category_weights or {c: 1.0 for c in CATEGORIES}
    cats = list(weights)
    cat = rng.choices(cats, weights=[weights[c] for c in cats])[0]
    return rng.choice(_train_cache(cat))


_TRAIN_CACHE: dict[str, list[str]] = {}


def _train_cache(category: str) -> list[str]:
    if category not in _TRAIN_CACHE:
        _TRAIN_CACHE[category] = split_prompts(category)[0]
    return _TRAIN_CACHE[category]
