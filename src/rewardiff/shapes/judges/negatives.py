"""Hard negatives from the shapes language: prompts one edit away that mean something else.

An image made for "a red circle left of a blue square" does NOT show "a blue circle left of a red
square" (colours swapped between objects: binding), "a red circle above a blue square" (relation),
"a blue square left of a red circle" (order), "a red square left of a blue square" (one attribute),
... A judge that tells these apart has learned binding, counting and position, not a bag of words.

Prompts that mean the same thing are never negatives: "a A and a B" = "a B and a A", and
"a A left of a B" = "a B right of a A" (see `semantic_key`). Category changes are kept only
where the meaning surely differs: other counts (single <-> counting) and a pair's single objects.
A position prompt's pair ("a A and a B") is true of its image and is not a negative.
"""

from __future__ import annotations

from rewardiff.shapes.palette import COLORS, COUNT_WORDS, RELATIONS, SHAPES
from rewardiff.shapes.prompts import PromptSpec, UnsupportedPromptError, format_prompt, parse_prompt

_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def semantic_key(spec: PromptSpec) -> tuple:
    """Equal for prompts that mean the same (order of a pair; mirrored relations)."""
    if spec.category == "pair":
        return ("pair", tuple(sorted(spec.objects)))
    if spec.category == "position":
        a, b = spec.objects
        rel = spec.relation
        if rel in ("right of", "below"):
            a, b, rel = b, a, _OPPOSITE[rel]
        return ("position", a, b, rel)
    return (spec.category, spec.objects)


def _edits(spec: PromptSpec) -> list[PromptSpec]:
    objs = list(spec.objects)
    kinds = sorted(set(objs), key=objs.index)
    out: list[PromptSpec] = []

    def with_objects(new: list[tuple[str, str]]) -> PromptSpec:
        return PromptSpec(spec.category, tuple(new), spec.relation)

    if spec.category in ("single", "counting"):
        (color, shape), n = kinds[0], len(objs)
        for c in COLORS:
            if c != color:
                out.append(with_objects([(c, shape)] * n))
        for s in SHAPES:
            if s != shape:
                out.append(with_objects([(color, s)] * n))
        for m in [1, *sorted(COUNT_WORDS.values())]:
            if m != n:
                out.append(PromptSpec("single" if m == 1 else "counting", ((color, shape),) * m))
        return out
    # pair / position: two different objects
    for i in range(2):
        for c in COLORS:
            if c != objs[i][0]:
                new = list(objs)
                new[i] = (c, objs[i][1])
                out.append(with_objects(new))
        for s in SHAPES:
            if s != objs[i][1]:
                new = list(objs)
                new[i] = (objs[i][0], s)
                out.append(with_objects(new))
    (c0, s0), (c1, s1) = objs
    out.append(with_objects([(c1, s0), (c0, s1)]))  # colours swapped between the objects (binding)
    out.append(with_objects([(c0, s1), (c1, s0)]))  # shapes swapped
    if spec.category == "pair":
        out += [PromptSpec("single", (o,)) for o in objs]
    else:
        out += [PromptSpec("position", tuple(objs), r) for r in RELATIONS if r != spec.relation]
        out.append(PromptSpec("position", (objs[1], objs[0]), spec.relation))  # order swapped
    return out


def hard_negatives(prompt: str | PromptSpec) -> list[str]:
    """Every valid prompt one edit away whose meaning differs, canonical text, fixed order."""
    spec = prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)
    key = semantic_key(spec)
    seen: dict[str, None] = {}
    for cand in _edits(spec):
        try:
            cand = parse_prompt(format_prompt(cand))  # drops invalid ones (a pair of identical objects)
        except UnsupportedPromptError:
            continue
        if semantic_key(cand) != key:
            seen.setdefault(cand.text, None)
    return list(seen)
