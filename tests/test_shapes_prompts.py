"""The shapes prompt language: parse/format, errors, normalisation, train/held-out split."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rewardiff.shapes.palette import COLORS, SHAPES
from rewardiff.shapes.prompts import (
    CATEGORIES,
    PromptSpec,
    UnsupportedPromptError,
    enumerate_prompts,
    format_prompt,
    heldout_eval_prompts,
    parse_prompt,
    sample_train_prompt,
    split_prompts,
    train_prompts,
)

# Sizes of each category's full enumeration: 15 kinds; pair/position use two different kinds.
EXPECTED_SIZES = {"single": 15, "pair": 15 * 14, "counting": 3 * 15, "position": 15 * 14 * 4}


# ---------------------------------------------------------------- parse / format


@pytest.mark.parametrize("category", CATEGORIES)
def test_enumerate_sizes_and_uniqueness(category):
    prompts = enumerate_prompts(category)
    assert len(prompts) == EXPECTED_SIZES[category]
    assert len(set(prompts)) == len(prompts)


@pytest.mark.parametrize("category", CATEGORIES)
def test_round_trip_every_prompt(category):
    for text in enumerate_prompts(category):
        spec = parse_prompt(text)
        assert spec.category == category, text
        assert format_prompt(spec) == text
        assert spec.text == text
        assert parse_prompt(format_prompt(spec)) == spec


def test_enumerate_unknown_category():
    with pytest.raises(ValueError, match="bogus"):
        enumerate_prompts("bogus")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a red circle", PromptSpec("single", (("red", "circle"),))),
        ("a purple triangle", PromptSpec("single", (("purple", "triangle"),))),
        (
            "a blue square and a yellow triangle",
            PromptSpec("pair", (("blue", "square"), ("yellow", "triangle"))),
        ),
        (
            "a green circle and a red circle",
            PromptSpec("pair", (("green", "circle"), ("red", "circle"))),
        ),
        ("two red squares", PromptSpec("counting", (("red", "square"),) * 2)),
        ("three green circles", PromptSpec("counting", (("green", "circle"),) * 3)),
        ("four yellow triangles", PromptSpec("counting", (("yellow", "triangle"),) * 4)),
        (
            "a red square left of a blue circle",
            PromptSpec("position", (("red", "square"), ("blue", "circle")), relation="left of"),
        ),
        (
            "a blue circle right of a red square",
            PromptSpec("position", (("blue", "circle"), ("red", "square")), relation="right of"),
        ),
        (
            "a yellow triangle above a green square",
            PromptSpec("position", (("yellow", "triangle"), ("green", "square")), relation="above"),
        ),
        (
            "a purple circle below a purple square",
            PromptSpec("position", (("purple", "circle"), ("purple", "square")), relation="below"),
        ),
    ],
)
def test_parse_table(text, expected):
    spec = parse_prompt(text)
    assert spec == expected
    assert format_prompt(spec) == text


def test_counting_objects_repeat_kind():
    spec = parse_prompt("three blue triangles")
    assert len(spec.objects) == 3
    assert set(spec.objects) == {("blue", "triangle")}
    assert spec.relation is None


def test_relation_only_on_position():
    assert parse_prompt("a red circle and a blue square").relation is None
    assert parse_prompt("a red circle").relation is None
    assert parse_prompt("a red circle above a blue square").relation == "above"


# ---------------------------------------------------------------- errors / normalisation


@pytest.mark.parametrize("text", ["", "   ", "\t\n "])
def test_empty_prompt_rejected(text):
    with pytest.raises(UnsupportedPromptError, match="empty"):
        parse_prompt(text)


@pytest.mark.parametrize(
    "text",
    [
        "a dog",
        "five red circles",
        "a pink circle",
        "a red circle near a blue square",
        "two red circle",  # counting needs the plural
        "a red circles",
        "one red circle",
        "a red circle and",
        "a red circle, a blue square",
    ],
)
def test_unsupported_prompt_names_prompt(text):
    with pytest.raises(UnsupportedPromptError) as info:
        parse_prompt(text)
    assert repr(text) in str(info.value)


def test_unsupported_is_value_error():
    assert issubclass(UnsupportedPromptError, ValueError)
    with pytest.raises(ValueError):
        parse_prompt("a dog")


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("  A Red   Circle ", "a red circle"),
        ("A BLUE SQUARE AND A YELLOW TRIANGLE", "a blue square and a yellow triangle"),
        ("Three\tGreen  Circles\n", "three green circles"),
        ("a red square   LEFT   OF a blue circle", "a red square left of a blue circle"),
    ],
)
def test_case_and_whitespace_normalised(text, canonical):
    spec = parse_prompt(text)
    assert spec == parse_prompt(canonical)
    assert spec.text == canonical


# ---------------------------------------------------------------- split


@pytest.mark.parametrize("category", CATEGORIES)
def test_split_disjoint_and_covering(category):
    train, held = split_prompts(category)
    assert train and held
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(enumerate_prompts(category))
    assert len(set(train)) == len(train) and len(set(held)) == len(held)


@pytest.mark.parametrize("category", ["pair", "counting", "position"])
def test_split_fraction(category):
    n = len(enumerate_prompts(category))
    held = split_prompts(category)[1]
    assert len(held) == round(0.2 * n)


@pytest.mark.parametrize("category", CATEGORIES)
def test_split_deterministic(category):
    a = split_prompts(category)
    b = split_prompts(category)
    assert a == b


def test_single_split_holds_out_five_and_keeps_every_shape_and_colour():
    train, held = split_prompts("single")
    assert len(held) == 5
    assert len(train) == 10
    train_specs = [parse_prompt(p) for p in train]
    assert {s.objects[0][1] for s in train_specs} == set(SHAPES)
    assert {s.objects[0][0] for s in train_specs} == set(COLORS)
    # one kind per colour is held out
    held_colours = Counter(parse_prompt(p).objects[0][0] for p in held)
    assert held_colours == Counter({c: 1 for c in COLORS})


def test_heldout_eval_prompts_only_heldout_and_deterministic():
    evals = heldout_eval_prompts()
    assert evals == heldout_eval_prompts()
    assert len(set(evals)) == len(evals)
    held_all = {p for cat in CATEGORIES for p in split_prompts(cat)[1]}
    assert set(evals) <= held_all
    by_cat = Counter(parse_prompt(p).category for p in evals)
    assert set(by_cat) == set(CATEGORIES)
    for cat in CATEGORIES:
        assert by_cat[cat] == min(25, len(split_prompts(cat)[1]))


def test_heldout_eval_prompts_per_category_limit():
    evals = heldout_eval_prompts(per_category=3)
    by_cat = Counter(parse_prompt(p).category for p in evals)
    assert by_cat == Counter({c: 3 for c in CATEGORIES})
    # a smaller set is a prefix, per category, of the larger one (stable order)
    big = heldout_eval_prompts(per_category=10)
    for cat in CATEGORIES:
        small_c = [p for p in evals if parse_prompt(p).category == cat]
        big_c = [p for p in big if parse_prompt(p).category == cat]
        assert big_c[:3] == small_c


def test_train_prompts_exclude_heldout():
    train = train_prompts()
    held_all = {p for cat in CATEGORIES for p in split_prompts(cat)[1]}
    assert train
    assert not set(train) & held_all
    total = sum(len(enumerate_prompts(c)) for c in CATEGORIES)
    assert len(train) + len(held_all) == total


def test_sample_train_prompt_never_heldout():
    held_all = {p for cat in CATEGORIES for p in split_prompts(cat)[1]}
    rng = random.Random(1234)
    draws = [sample_train_prompt(rng) for _ in range(4000)]
    assert not set(draws) & held_all
    cats = Counter(parse_prompt(p).category for p in draws)
    # uniform over categories by default: each category gets roughly a quarter
    for cat in CATEGORIES:
        assert 800 < cats[cat] < 1200, cats


def test_sample_train_prompt_seeded_and_weighted():
    a = [sample_train_prompt(random.Random(7)) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same draw
    rng1, rng2 = random.Random(99), random.Random(99)
    assert [sample_train_prompt(rng1) for _ in range(50)] == [sample_train_prompt(rng2) for _ in range(50)]
    rng = random.Random(5)
    draws = [sample_train_prompt(rng, {"counting": 1.0}) for _ in range(300)]
    assert {parse_prompt(p).category for p in draws} == {"counting"}
    assert set(draws) <= set(split_prompts("counting")[0])


def test_category_weights_are_checked_in_one_place_for_writer_and_trainer():
    from rewardiff.errors import RewardiffError
    from rewardiff.judges.prompt_writer import PromptWriterConfig, build_writer
    from rewardiff.shapes.prompts import check_category_weights

    check_category_weights({}, "x")  # empty = uniform
    check_category_weights({"pair": 0.0, "position": 2.0}, "x")
    for bad, why in (({"pairs": 1.0}, "unknown categories"), ({"pair": -1.0}, ">= 0"), ({"pair": 0.0}, "not all 0"), ({"pair": float("nan")}, ">= 0")):
        with pytest.raises(RewardiffError, match=why):
            check_category_weights(bad, "x")
    with pytest.raises(RewardiffError, match="writer.category_weights: unknown"):
        build_writer(PromptWriterConfig(backend="shapes", category_weights={"pairs": 1.0}))
