"""The evaluation protocol: per-(prompt, image) seeds, the protocol prompt sets, the paired
bootstrap of `eval compare`, and best-of-N generation."""

import json

import numpy as np
import pytest

from rewardiff.cli import main
from rewardiff.errors import RewardiffError
from rewardiff.eval.compare import pair_rows, paired_delta
from rewardiff.config import load_config
from rewardiff.generation import GenerateConfig, images_per_prompt, read_prompts, run_generation
from rewardiff.io_utils import read_jsonl
from rewardiff.seeding import image_seed
from rewardiff.shapes.prompts import parse_prompt, protocol_prompts, split_prompts


def test_seeds_differ_across_prompts_and_are_reproducible():
    seeds = {image_seed(0, p, k) for p in ("a red circle", "a blue square") for k in range(50)}
    assert len(seeds) == 100  # no seed shared by two (prompt, image) pairs
    assert image_seed(3, "a red circle", 2) == image_seed(3, "a red circle", 2)
    assert image_seed(3, "a red circle", 2) != image_seed(4, "a red circle", 2)
    assert image_seed(0, "a red circle", 0, candidate=1) != image_seed(0, "a red circle", 0)
    assert all(0 <= s < 2**31 - 1 for s in seeds)


def test_protocol_sets_give_every_category_at_least_320_images():
    held = protocol_prompts("heldout")
    per_cat: dict[str, list[int]] = {}
    for prompt, n in held:
        per_cat.setdefault(parse_prompt(prompt).category, []).append(n)
    assert {c: (len(v), v[0]) for c, v in per_cat.items()} == {"single": (5, 64), "pair": (42, 8), "counting": (9, 36), "position": (168, 2)}
    assert all(sum(v) >= 320 for v in per_cat.values())
    held_prompts = {p for c in per_cat for p in split_prompts(c)[1]}
    assert {p for p, _ in held} == held_prompts  # all held-out prompts, nothing else
    train = protocol_prompts("train")
    assert not {p for p, _ in train} & held_prompts
    assert read_prompts("shapes:eval") == [p for p, _ in held]
    assert images_per_prompt("shapes:eval", read_prompts("shapes:eval"), 4) == [n for _, n in held]
    assert images_per_prompt("x.txt", ["a", "b"], 3) == [3, 3]
    with pytest.raises(RewardiffError):
        protocol_prompts("test")


def _rows(prompts, n, seed=0):
    return [{"prompt": p, "image": f"{i}_{k}.png", "index": k, "seed": image_seed(seed, p, k)} for i, p in enumerate(prompts) for k in range(n)]


def test_pairing_names_the_first_mismatch():
    base = _rows(["a red circle", "a blue square"], 2)
    assert pair_rows(base, list(reversed(base))) == [(0, 3), (1, 2), (2, 1), (3, 0)]
    with pytest.raises(RewardiffError, match="no tuned twin"):
        pair_rows(base, base[:3])
    with pytest.raises(RewardiffError, match="no base twin"):
        pair_rows(base[:3], base)
    with pytest.raises(RewardiffError, match="seed"):
        pair_rows(base, _rows(["a red circle", "a blue square"], 2, seed=1))
    with pytest.raises(RewardiffError, match="twice"):
        pair_rows(base + base[:1], base)


def test_paired_bootstrap_interval_covers_truth_and_sees_real_gains():
    rng = np.random.default_rng(0)
    prompts, cats = [], []
    for cat, n_prompts in (("single", 5), ("pair", 40)):
        for p in range(n_prompts):
            prompts += [f"{cat}{p}"] * 8
            cats += [cat] * 8
    base = rng.random(len(prompts)) < 0.5
    # no change: the interval contains 0
    per_cat, overall = paired_delta(base.astype(float), base.astype(float), prompts, cats, samples=500)
    assert overall.change == 0 and overall.ci_low <= 0 <= overall.ci_high and overall.verdict == "no measurable change"
    # a +30 point gain on pair only: seen there, and overall = mean over categories
    tuned = base.copy()
    flip = (np.array(cats) == "pair") & ~base & (rng.random(len(prompts)) < 0.6)
    tuned[flip] = True
    per_cat, overall = paired_delta(base.astype(float), tuned.astype(float), prompts, cats, samples=500)
    assert per_cat["pair"].verdict == "gain" and per_cat["single"].change == 0
    assert overall.change == pytest.approx((per_cat["pair"].change + per_cat["single"].change) / 2)
    assert overall.ci_low > 0 and per_cat["pair"].ci_low < per_cat["pair"].change < per_cat["pair"].ci_high
    # a loss is a loss
    _, worse = paired_delta(tuned.astype(float), base.astype(float), prompts, cats, samples=500)
    assert worse.verdict == "loss"


def test_interval_widens_when_images_of_a_prompt_are_correlated():
    """Resampling prompts (not only images): a change carried by a few prompts is uncertain."""
    prompts = [f"p{i}" for i in range(10) for _ in range(20)]
    cats = ["pair"] * len(prompts)
    base = np.zeros(len(prompts))
    tuned = np.zeros(len(prompts))
    tuned[:40] = 1.0  # two prompts improve on every image
    _, overall = paired_delta(base, tuned, prompts, cats, samples=1000)
    assert overall.change == pytest.approx(0.2)
    assert overall.ci_high - overall.ci_low > 0.2  # an image-level bootstrap would give about 0.11


def test_nan_values_are_refused_naming_the_prompt():
    with pytest.raises(RewardiffError, match="'b'"):
        paired_delta(np.array([0.0, np.nan]), np.array([0.0, 1.0]), ["a", "b"], ["all", "all"])


def test_generate_best_of_and_compare_end_to_end(tmp_path, capsys):
    common = ["--prompts", "a red circle", "--num-images", "2", "--steps", "2", "--batch-size", "8"]
    assert main(["generate", *common, "--out", str(tmp_path / "base")]) == 0
    assert main(["generate", *common, "--best-of", "3", "--out", str(tmp_path / "best")]) == 0
    base = list(read_jsonl(tmp_path / "base" / "metadata.jsonl"))
    best = list(read_jsonl(tmp_path / "best" / "metadata.jsonl"))
    assert [r["seed"] for r in base] == [image_seed(0, "a red circle", k) for k in range(2)]
    for row in best:
        assert row["best_of"] == 3 and 0 <= row["candidate"] < 3
        assert row["seed"] == image_seed(0, "a red circle", row["index"], row["candidate"])
    capsys.readouterr()
    assert main(["eval", "compare", "--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "best"), "--reward", "judge@shapes"]) == 0
    result = json.loads((tmp_path / "best" / "compare" / "compare.json").read_text())
    metrics = [c["metric"] for c in result["comparisons"]]
    assert metrics == ["oracle", "judge@shapes"]
    judged = result["comparisons"][1]["overall"]
    assert judged["change"] >= 0  # the best of 3 (candidate 0 is the base image) never scores below it
    assert "| **overall** |" in capsys.readouterr().out


def test_best_of_with_plain_run_reuses_candidate_zero_and_is_identical(tmp_path):
    common = ["--prompts", "a red circle", "--num-images", "3", "--steps", "2", "--batch-size", "8"]
    assert main(["generate", *common, "--out", str(tmp_path / "base")]) == 0
    assert main(["generate", *common, "--best-of", "2", "--out", str(tmp_path / "fresh")]) == 0
    assert main(["generate", *common, "--best-of", "2", "--plain", str(tmp_path / "base"), "--out", str(tmp_path / "reused")]) == 0
    fresh = list(read_jsonl(tmp_path / "fresh" / "metadata.jsonl"))
    reused = list(read_jsonl(tmp_path / "reused" / "metadata.jsonl"))
    assert [(r["seed"], r["candidate"]) for r in fresh] == [(r["seed"], r["candidate"]) for r in reused]
    for a, b in zip(fresh, reused):
        assert (tmp_path / "fresh" / a["image"]).read_bytes() == (tmp_path / "reused" / b["image"]).read_bytes()
    with pytest.raises(RewardiffError, match="steps"):  # a plain run of other settings is not candidate 0
        run_generation(load_config(GenerateConfig, None, [], values={"prompts": "a red circle", "num_images": 3, "sampling.steps": 3,
                                                                    "best_of": 2, "plain": str(tmp_path / "base"), "out": str(tmp_path / "x")}))
    assert not (tmp_path / "x").exists()


def test_keep_worst_writes_the_lowest_candidate_beside_an_unchanged_pick(tmp_path, capsys):
    """--keep-worst (DPO pairs for train sft): the picks are byte-identical to a run without it, and
    each row names its lowest-scored candidate's image, seed and score."""
    common = ["--prompts", "a red circle", "--num-images", "2", "--steps", "2", "--batch-size", "8", "--best-of", "3"]
    assert main(["generate", *common, "--out", str(tmp_path / "best")]) == 0
    assert main(["generate", *common, "--keep-worst", "--out", str(tmp_path / "pairs")]) == 0
    best = list(read_jsonl(tmp_path / "best" / "metadata.jsonl"))
    pairs = list(read_jsonl(tmp_path / "pairs" / "metadata.jsonl"))
    for a, b in zip(best, pairs):
        assert (tmp_path / "best" / a["image"]).read_bytes() == (tmp_path / "pairs" / b["image"]).read_bytes()
        assert b["rejected_score"] <= b["judge_score"] and (tmp_path / "pairs" / b["rejected_image"]).is_file()
        assert b["rejected_seed"] == image_seed(0, "a red circle", b["index"], b["rejected_candidate"])
    capsys.readouterr()
    assert main(["generate", "--prompts", "a red circle", "--keep-worst", "--out", str(tmp_path / "one")]) == 2
    assert "--best-of 2" in capsys.readouterr().err and not (tmp_path / "one").exists()


def test_compare_refuses_mismatched_runs(tmp_path, capsys):
    common = ["--steps", "1", "--batch-size", "8"]
    assert main(["generate", "--prompts", "a red circle", "--num-images", "2", *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["generate", "--prompts", "a red circle", "--num-images", "1", *common, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", "--base", str(tmp_path / "a"), "--tuned", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no tuned twin" in err and len(err.strip().splitlines()) == 1


def test_comparison_round_trips_through_its_json():
    from rewardiff.eval.compare import Comparison

    prompts = ["a"] * 4 + ["b"] * 4
    per_cat, overall = paired_delta(np.zeros(8), np.ones(8), prompts, ["pair"] * 8, samples=100)
    c = Comparison("oracle", per_cat, overall, samples=100)
    back = Comparison.from_dict(c.to_dict())
    assert back.to_dict() == c.to_dict() and back.markdown() == c.markdown()
