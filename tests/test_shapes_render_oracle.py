"""Renderer ground truth and the oracle: determinism, palette, geometry, >= 99% agreement."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from rewardiff.shapes.oracle import (
    OracleVerdict,
    classify_pixels,
    judge,
    report,
)
from rewardiff.shapes.palette import (
    BACKGROUND,
    COLORS,
    IMAGE_SIZE,
    MAX_OBJECT_SIZE,
    MIN_OBJECT_SIZE,
    POSITION_MARGIN_PX,
    RELATIONS,
)
from rewardiff.shapes.prompts import CATEGORIES, enumerate_prompts, parse_prompt
from rewardiff.shapes.render import render, shape_mask

SAMPLE_PROMPTS = [
    "a red circle",
    "a purple triangle",
    "a blue square and a yellow triangle",
    "three green circles",
    "four yellow triangles",
    "a red square left of a blue circle",
    "a green triangle below a purple circle",
]

_ALLOWED = {BACKGROUND, *COLORS.values()}


def _sample(n: int, seed: int) -> list[tuple[str, int]]:
    """(prompt, render seed) pairs drawn across all four categories, seeded."""
    rng = random.Random(seed)
    pools = {c: enumerate_prompts(c) for c in CATEGORIES}
    out = []
    for i in range(n):
        cat = CATEGORIES[i % len(CATEGORIES)]
        out.append((rng.choice(pools[cat]), rng.randrange(10**9)))
    return out


@pytest.fixture(scope="module")
def rendered_sample():
    return [(p, render(p, s)) for p, s in _sample(1000, seed=2024)]


# ---------------------------------------------------------------- render


@pytest.mark.parametrize("prompt", SAMPLE_PROMPTS)
def test_render_deterministic_per_seed(prompt):
    a, b = render(prompt, 17), render(prompt, 17)
    assert np.array_equal(a.image, b.image)
    assert a.objects == b.objects
    assert a.prompt == b.prompt == parse_prompt(prompt).text


@pytest.mark.parametrize("prompt", SAMPLE_PROMPTS)
def test_render_differs_across_seeds(prompt):
    imgs = [render(prompt, s).image for s in range(4)]
    distinct = {img.tobytes() for img in imgs}
    assert len(distinct) == 4


def test_render_accepts_spec_and_normalises_text():
    spec = parse_prompt("  A Red  Circle ")
    a = render(spec, 3)
    b = render("a red circle", 3)
    assert a.prompt == "a red circle"
    assert np.array_equal(a.image, b.image)


def test_image_format_background_and_palette(rendered_sample):
    for prompt, r in rendered_sample[:300]:
        img = r.image
        assert img.dtype == np.uint8
        assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) == (32, 32, 3)
        colours = {tuple(int(v) for v in px) for px in img.reshape(-1, 3)}
        assert colours <= _ALLOWED, (prompt, colours - _ALLOWED)
        assert BACKGROUND in colours
        # background is exactly white outside every object box
        outside = np.ones(img.shape[:2], dtype=bool)
        for o in r.objects:
            x0, y0, x1, y1 = o.box
            outside[y0:y1, x0:x1] = False
        assert (img[outside] == np.array(BACKGROUND, dtype=np.uint8)).all(), prompt


def test_ground_truth_matches_prompt_and_pixels(rendered_sample):
    for prompt, r in rendered_sample:
        spec = parse_prompt(prompt)
        assert len(r.objects) == len(spec.objects), prompt
        assert Counter((o.color, o.shape) for o in r.objects) == Counter(spec.objects), prompt
        # objects are in prompt order (position relations relate objects[0] to objects[1])
        assert [(o.color, o.shape) for o in r.objects] == list(spec.objects)
        for o in r.objects:
            x0, y0, x1, y1 = o.box
            mask = shape_mask(o.shape, x1 - x0, y1 - y0)
            patch = r.image[y0:y1, x0:x1]
            assert (patch[mask] == np.array(COLORS[o.color], dtype=np.uint8)).all(), prompt
            assert (patch[~mask] == np.array(BACKGROUND, dtype=np.uint8)).all(), prompt


def test_boxes_size_inside_and_apart(rendered_sample):
    for prompt, r in rendered_sample:
        for o in r.objects:
            x0, y0, x1, y1 = o.box
            assert MIN_OBJECT_SIZE <= x1 - x0 <= MAX_OBJECT_SIZE, (prompt, o.box)
            assert MIN_OBJECT_SIZE <= y1 - y0 <= MAX_OBJECT_SIZE, (prompt, o.box)
            assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE, (prompt, o.box)
        boxes = [o.box for o in r.objects]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                # at least one background pixel between them (x1/y1 are exclusive)
                apart = a[2] + 1 <= b[0] or b[2] + 1 <= a[0] or a[3] + 1 <= b[1] or b[3] + 1 <= a[1]
                assert apart, (prompt, a, b)


def test_position_relation_holds_for_centres(rendered_sample):
    seen = Counter()
    for prompt, r in rendered_sample:
        spec = parse_prompt(prompt)
        if spec.relation is None:
            continue
        seen[spec.relation] += 1
        (ax, ay), (bx, by) = r.objects[0].center, r.objects[1].center
        m = POSITION_MARGIN_PX
        ok = {
            "left of": ax <= bx - m,
            "right of": ax >= bx + m,
            "above": ay <= by - m,
            "below": ay >= by + m,
        }[spec.relation]
        assert ok, (prompt, r.objects)
    assert set(seen) == set(RELATIONS)


@pytest.mark.parametrize("relation", RELATIONS)
def test_position_each_relation_many_seeds(relation):
    prompt = f"a red circle {relation} a blue square"
    for seed in range(40):
        r = render(prompt, seed)
        (ax, ay), (bx, by) = r.objects[0].center, r.objects[1].center
        dx, dy = ax - bx, ay - by
        d = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[relation]
        assert d >= POSITION_MARGIN_PX, (seed, r.objects)


# ---------------------------------------------------------------- shape_mask / classify_pixels


@pytest.mark.parametrize("size", range(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE + 1))
def test_shape_mask_sanity(size):
    sq = shape_mask("square", size, size)
    assert sq.shape == (size, size) and sq.dtype == bool and sq.all()

    tri = shape_mask("triangle", size, size)
    assert tri.shape == (size, size)
    assert tri[0].sum() < tri[-1].sum()
    widths = tri.sum(1)
    assert (np.diff(widths) >= 0).all()  # apex up: never narrower going down
    assert tri[-1].sum() >= size - 1

    circ = shape_mask("circle", size, size)
    for y, x in [(0, 0), (0, size - 1), (size - 1, 0), (size - 1, size - 1)]:
        assert not circ[y, x]
    assert circ[size // 2, size // 2]
    assert 0.6 < circ.mean() < 0.9


def test_shape_mask_non_square_box_and_unknown():
    tri = shape_mask("triangle", 9, 7)
    assert tri.shape == (7, 9)
    with pytest.raises(ValueError, match="hexagon"):
        shape_mask("hexagon", 8, 8)


def test_classify_pixels_palette_and_far_colour():
    row = [BACKGROUND, *COLORS.values(), (128, 128, 128)]
    img = np.array([row], dtype=np.uint8)
    labels = classify_pixels(img)
    assert labels.shape == (1, len(row))
    assert labels.tolist() == [[0, 1, 2, 3, 4, 5, -1]]


def test_classify_pixels_near_colours_snap():
    near = np.array([[(225, 45, 35), (35, 75, 225), (250, 250, 250)]], dtype=np.uint8)
    names = ["background", *COLORS]
    assert [names[i] for i in classify_pixels(near)[0]] == ["red", "blue", "background"]


# ---------------------------------------------------------------- oracle agreement


def test_oracle_passes_rendered_ground_truth(rendered_sample):
    verdicts = [judge(r.image, p) for p, r in rendered_sample]
    assert {v.category for v in verdicts} == set(CATEGORIES)
    passed = sum(v.passed for v in verdicts)
    assert passed / len(verdicts) >= 0.99, [v.reason for v in verdicts if not v.passed][:10]
    for v in verdicts:
        assert isinstance(v.reason, str) and v.reason.strip()
    # per category too: no single category may fall under 99%
    rep = report(verdicts)
    for cat, rate in rep.rates.items():
        assert rate >= 0.99, (cat, rate)


def _mismatch(prompt: str, rng: random.Random) -> str:
    """Another prompt of a really different meaning: swapped relation for position,
    a different object multiset otherwise."""
    spec = parse_prompt(prompt)
    if spec.relation is not None:
        swap = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        a, b = spec.objects
        return f"a {a[0]} {a[1]} {swap[spec.relation]} a {b[0]} {b[1]}"
    pool = [p for c in ("single", "pair", "counting") for p in enumerate_prompts(c)]
    want = Counter(spec.objects)
    while True:
        other = rng.choice(pool)
        if Counter(parse_prompt(other).objects) != want:
            return other


def test_oracle_fails_mismatched_prompts(rendered_sample):
    rng = random.Random(77)
    verdicts = []
    n_position = 0
    for prompt, r in rendered_sample:
        other = _mismatch(prompt, rng)
        assert parse_prompt(other) != parse_prompt(prompt)
        n_position += parse_prompt(prompt).relation is not None
        verdicts.append(judge(r.image, other))
    assert n_position > 100
    failed = sum(not v.passed for v in verdicts)
    assert failed / len(verdicts) >= 0.99, [v for v in verdicts if v.passed][:5]
    for v in verdicts:
        assert v.reason.strip()
        if not v.passed:
            assert v.reason != "ok"


def test_oracle_swapped_relation_reason_mentions_relation():
    r = render("a red square left of a blue circle", 5)
    v = judge(r.image, "a red square right of a blue circle")
    assert not v.passed
    assert "right of" in v.reason


def test_blank_image_fails_missing():
    blank = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    v = judge(blank, "a red circle")
    assert isinstance(v, OracleVerdict)
    assert not v.passed
    assert "missing" in v.reason
    assert "red circle" in v.reason
    assert v.category == "single"
    assert v.objects == ()


def test_extra_object_fails_extra():
    r = render("a red circle and a blue square", 11)
    v = judge(r.image, "a red circle")
    assert not v.passed
    assert "extra" in v.reason
    assert "blue square" in v.reason
    assert "missing" not in v.reason


def test_counting_too_few_fails():
    r = render("two green triangles", 4)
    v = judge(r.image, "three green triangles")
    assert not v.passed
    assert "missing" in v.reason


@pytest.mark.parametrize("seed", range(5))
def test_noise_image_fails(seed):
    noise = np.random.default_rng(seed).integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for prompt in ("a red circle", "three green circles", "a red square left of a blue circle"):
        v = judge(noise, prompt)
        assert not v.passed, (seed, prompt)
        assert v.reason.strip()


def test_pass_verdict_fields():
    r = render("a yellow triangle above a green square", 0)
    v = judge(r.image, r.prompt)
    assert v.passed and v.reason == "ok"
    assert v.category == "position"
    assert v.prompt == "a yellow triangle above a green square"
    assert sorted((o.color, o.shape) for o in v.objects) == [("green", "square"), ("yellow", "triangle")]


# ---------------------------------------------------------------- report


def _v(cat: str, ok: bool) -> OracleVerdict:
    return OracleVerdict(prompt=f"p-{cat}", category=cat, passed=ok, reason="ok" if ok else "no")


def test_report_counts_and_overall():
    verdicts = (
        [_v("single", True)] * 3 + [_v("single", False)]
        + [_v("pair", True), _v("pair", False)]
        + [_v("counting", False)]
        + [_v("position", True)] * 2
    )
    rep = report(verdicts)
    assert rep.counts == {"single": (3, 4), "pair": (1, 2), "counting": (0, 1), "position": (2, 2)}
    assert rep.rates == pytest.approx({"single": 0.75, "pair": 0.5, "counting": 0.0, "position": 1.0})
    # mean of category rates (0.5625), not the pooled rate (6/9)
    assert rep.overall == pytest.approx((0.75 + 0.5 + 0.0 + 1.0) / 4)
    assert rep.overall != pytest.approx(6 / 9)
    md = rep.markdown()
    for cat in CATEGORIES:
        assert f"| {cat} |" in md
    assert "overall" in md
    assert "0.562" in md
    d = rep.to_dict()
    assert d["overall"] == pytest.approx(0.5625)
    assert d["categories"]["pair"] == {"passed": 1, "total": 2, "rate": 0.5}


def test_report_only_present_categories():
    rep = report([_v("single", True), _v("pair", False)])
    assert set(rep.counts) == {"single", "pair"}
    assert rep.overall == pytest.approx(0.5)


def test_report_of_real_verdicts():
    verdicts = []
    for cat in CATEGORIES:
        for p in enumerate_prompts(cat)[:5]:
            verdicts.append(judge(render(p, 0).image, p))
    rep = report(verdicts)
    assert {c: t for c, (_, t) in rep.counts.items()} == {c: 5 for c in CATEGORIES}
    md = rep.markdown()
    for cat in CATEGORIES:
        assert cat in md



_BOUNDARY_PLACES = {  # (red x, red y), (blue x, blue y) of two 8x8 squares, 12 px apart on the other axis
    "left of": lambda d: ((10, 2), (10 + d, 14)),
    "right of": lambda d: ((10 + d, 2), (10, 14)),
    "above": lambda d: ((2, 10), (14, 10 + d)),
    "below": lambda d: ((2, 10 + d), (14, 10)),
}


@pytest.mark.parametrize("rel", list(_BOUNDARY_PLACES))
@pytest.mark.parametrize("offset,passes", [(3, True), (2, False)])
def test_position_margin_boundary_is_exactly_three_pixels(rel, offset, passes):
    """Centres exactly 3 px apart along the axis pass (<=), 2 px fail: probes the margin's units and
    its comparison, which rendered images (drawn 2 px past the margin) never touch."""
    from rewardiff.shapes.oracle import judge

    image = np.full((32, 32, 3), 255, dtype=np.uint8)
    (rx, ry), (bx, by) = _BOUNDARY_PLACES[rel](offset)
    image[ry:ry + 8, rx:rx + 8] = (220, 40, 40)
    image[by:by + 8, bx:bx + 8] = (40, 80, 220)
    verdict = judge(image, f"a red square {rel} a blue square")
    assert verdict.passed is passes, verdict.reason
