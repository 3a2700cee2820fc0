"""GenEval-style scoring: GenEval's rules on hand-made detections (table), shapes prompts -> GenEval
metadata, and `eval geneval` with the shapes detector on rendered images for their own prompt and
for another prompt, against the oracle (evaluation only): they must agree on >= 90% of images."""

import json

import numpy as np
import pytest
import torch

from rewardiff.errors import RewardiffError
from rewardiff.eval.geneval import check_metadata, evaluate_geneval, evaluate_one, postprocess, relative_position, shapes_metadata, vocabulary
from rewardiff.io_utils import save_png
from rewardiff.shapes.prompts import CATEGORIES, split_prompts
from rewardiff.shapes.render import render

BOX_L, BOX_R, BOX_UP = (0, 10, 8, 18), (20, 10, 28, 18), (20, 0, 28, 6)


@pytest.mark.parametrize("objects, meta, ok", [
    ({"red circle": [(0.9, BOX_L)]}, shapes_metadata("a red circle"), True),
    ({}, shapes_metadata("a red circle"), False),
    ({"green circle": [(0.9, BOX_L), (0.8, BOX_R)]}, shapes_metadata("two green circles"), True),
    ({"green circle": [(0.9, BOX_L), (0.8, BOX_R), (0.7, BOX_UP)]}, shapes_metadata("two green circles"), False),  # exclude count + 1
    ({"red square": [(0.9, BOX_L)], "blue circle": [(0.9, BOX_R)]}, shapes_metadata("a red square left of a blue circle"), True),
    ({"red square": [(0.9, BOX_R)], "blue circle": [(0.9, BOX_L)]}, shapes_metadata("a red square left of a blue circle"), False),
    ({"red square": [(0.9, BOX_L)]}, shapes_metadata("a red square left of a blue circle"), False),  # no target
    ({"red square": [(0.9, BOX_L)], "blue circle": [(0.9, BOX_R)]}, shapes_metadata("a red square and a blue circle"), True),
    # the world's exact objects: an extra object of another class fails a pair, unless GenEval's own metadata is asked for
    ({"red square": [(0.9, BOX_L)], "blue circle": [(0.9, BOX_R)], "red circle": [(0.5, BOX_UP)]}, shapes_metadata("a red square and a blue circle"), False),
    ({"red square": [(0.9, BOX_L)], "blue circle": [(0.9, BOX_R)], "red circle": [(0.5, BOX_UP)]}, shapes_metadata("a red square and a blue circle", exact=False), True),
    ({"red square": [(0.9, BOX_L), (0.5, BOX_UP)], "blue circle": [(0.9, BOX_R)]}, shapes_metadata("a red square left of a blue circle"), False),  # a second red square
    ({"green circle": [(0.9, BOX_L), (0.8, BOX_R)], "red circle": [(0.4, BOX_UP)]}, shapes_metadata("two green circles"), False),
    ({"green circle": [(0.9, BOX_L), (0.8, BOX_R)], "red circle": [(0.4, BOX_UP)]}, shapes_metadata("two green circles", exact=False), True),
    ({"red car": [(0.9, BOX_L)]}, {"tag": "colors", "prompt": "a red car", "include": [{"class": "car", "count": 1, "color": "red"}]}, True),
    ({"car": [(0.9, BOX_L)]}, {"tag": "colors", "prompt": "a red car", "include": [{"class": "car", "count": 1, "color": "red"}]}, False),
])
def test_geneval_rules(objects, meta, ok):
    assert evaluate_one(objects, meta)[0] is ok


def test_relative_position_and_metadata_checks():
    assert relative_position(BOX_R, BOX_L) == {"right of"} and relative_position(BOX_L, BOX_L) == set()
    assert relative_position((0, 0, 4, 4), (20, 20, 24, 24)) == {"left of", "above"}  # diagonal: both directions
    assert shapes_metadata("a red square left of a blue circle")["include"][1] == {"class": "red square", "count": 1, "position": ["left of", 0]}
    with pytest.raises(RewardiffError, match="tag must be one of"):
        check_metadata({"tag": "vibes", "include": [{"class": "x", "count": 1}]}, "line 1")
    with pytest.raises(RewardiffError, match="position must be"):
        check_metadata({"tag": "position", "include": [{"class": "x", "count": 1, "position": ["left of", 0]}]}, "line 1")


def _boxes(*boxes):
    return torch.tensor(boxes, dtype=torch.float32)


def test_postprocess_labels_each_box_once_and_suppresses_duplicates_across_classes():
    names = ["red circle", "red square", "blue circle"]
    # patches 0 and 1: one red object seen twice (boxes overlap, IoU 0.67), patch 1 calls it a square;
    # patch 2: a blue circle far away; patch 3: below every threshold
    boxes = _boxes((0, 0, 10, 10), (0, 2, 10, 12), (20, 20, 28, 28), (0, 20, 8, 28))
    probs = torch.tensor([[0.5, 0.3, 0.0], [0.2, 0.4, 0.0], [0.0, 0.1, 0.6], [0.05, 0.0, 0.0]])
    agnostic = postprocess(probs, boxes, names, 0.1, 0.1, class_agnostic=True)
    assert {k: [round(s, 2) for s, _ in v] for k, v in agnostic.items()} == {"red circle": [0.5], "blue circle": [0.6]}
    assert agnostic["red circle"][0][1] == (0.0, 0.0, 10.0, 10.0)
    per_class = postprocess(probs, boxes, names, 0.1, 0.1, class_agnostic=False)  # the duplicate survives as a square
    assert {k: [round(s, 2) for s, _ in v] for k, v in per_class.items()} == {"red circle": [0.5], "red square": [0.4], "blue circle": [0.6]}
    assert postprocess(probs, boxes, names, 0.1, 0.7, class_agnostic=True).keys() == {"red circle", "red square", "blue circle"}  # IoU 0.67 kept at 0.7
    assert postprocess(probs, boxes, names, 0.45, 0.1, class_agnostic=True).keys() == {"red circle", "blue circle"}
    assert postprocess(probs, boxes, names, 0.01, 0.1, class_agnostic=True)["red circle"][-1][0] == pytest.approx(0.05)  # far from the others
    many = postprocess(torch.full((20, 1), 0.9), _boxes(*[(3 * i, 0, 3 * i + 2, 2) for i in range(20)]), ["dot"], 0.5, 0.1, True, max_objects=16)
    assert len(many["dot"]) == 16  # GenEval's max_objects per class


def test_shapes_metadata_excludes_every_other_class_of_the_world():
    meta = shapes_metadata("a red circle and a red square")
    ex = {e["class"]: e["count"] for e in meta["exclude"]}
    assert len(ex) == 15 and ex["red circle"] == 2 and ex["red square"] == 2 and ex["blue triangle"] == 1
    assert {e["class"]: e["count"] for e in shapes_metadata("three green circles")["exclude"]}["green circle"] == 4
    assert shapes_metadata("three green circles", exact=False)["exclude"] == [{"class": "green circle", "count": 4}]
    assert "exclude" not in shapes_metadata("a red circle", exact=False)
    assert vocabulary([shapes_metadata("a red circle", exact=False), shapes_metadata("a red circle and a blue square", exact=False)]) == ["red circle", "blue square"]
    assert len(vocabulary([shapes_metadata("a red circle")])) == 15  # the detector is asked for the whole vocabulary


def _write_set(root, pairs):
    rows = []
    for n, (prompt, image) in enumerate(pairs):
        save_png(root / f"{n}.png", image)
        rows.append({"prompt": prompt, "image": f"{n}.png"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "metadata.jsonl"


def test_eval_geneval_agrees_with_the_oracle_on_shapes(tmp_path):
    prompts = [p for c in CATEGORIES for p in split_prompts(c)[1][:10]]  # held-out prompts, up to 10 per category
    pairs = []
    for i, p in enumerate(prompts):
        pairs.append((p, render(p, i).image))  # the image made for the prompt
        pairs.append((p, render(prompts[(i + 7) % len(prompts)], i).image))  # an image made for another prompt
    meta = _write_set(tmp_path, pairs)
    result, out = evaluate_geneval(meta, agreement=True)
    assert set(result.tasks) == {"colors", "color_attr", "counting", "position"} and result.images == 2 * len(prompts)
    assert result.agreement >= 0.9, result.markdown()
    assert 0.3 <= result.oracle_overall <= 0.7  # half the images show their prompt
    assert result.overall == pytest.approx(np.mean([t["score"] for t in result.tasks.values()]))
    rows = [json.loads(line) for line in (out / "geneval_results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(prompts) and (out / "geneval.md").read_text().startswith("| task |")
    geneval = tmp_path / "evaluation_metadata.jsonl"
    geneval.write_text(json.dumps({"tag": "single_object", "prompt": "a dog", "include": [{"class": "dog", "count": 1}]}) + "\n")
    with pytest.raises(RewardiffError, match="no GenEval metadata"):
        evaluate_geneval(_write_set(tmp_path / "x", [("a photo of a cat", pairs[0][1])]), geneval=geneval)
