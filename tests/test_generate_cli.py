"""`rewardiff generate` and `rewardiff eval oracle`: outputs, resume after a kill, bad input."""

import json

import numpy as np
import pytest

import rewardiff.generation as generation
from rewardiff.cli import main
from rewardiff.io_utils import read_jsonl
from rewardiff.seeding import image_seed


def _gen_args(model, out, *extra):
    return ["generate", "--model", str(model), "--prompts", "a red circle", "--num-images", "3",
            "--steps", "2", "--batch-size", "2", "--out", str(out), "--set", "sampling.height=32",
            "--set", "sampling.width=32", *extra]


def test_generate_writes_pngs_metadata_and_config(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    assert main(_gen_args(tiny_sd_dir, out)) == 0
    rows = list(read_jsonl(out / "metadata.jsonl"))
    assert [r["seed"] for r in rows] == [image_seed(0, "a red circle", k) for k in range(3)]
    assert {r["prompt"] for r in rows} == {"a red circle"}
    assert all(r["model"] == str(tiny_sd_dir) and r["lora"] == [] for r in rows)
    assert all((out / r["image"]).is_file() for r in rows)
    assert (out / "config.yaml").is_file() and (out / "run.json").is_file()


def test_generate_resumes_after_a_kill(tiny_sd_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = generation.sample_images

    def dies_on_second_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(generation, "sample_images", dies_on_second_batch)
    assert main(_gen_args(tiny_sd_dir, out)) == 130
    first = list(read_jsonl(out / "metadata.jsonl"))
    assert len(first) == 2
    before = {r["image"]: (out / r["image"]).stat().st_mtime_ns for r in first}

    monkeypatch.setattr(generation, "sample_images", real)
    assert main(_gen_args(tiny_sd_dir, out)) == 0
    rows = list(read_jsonl(out / "metadata.jsonl"))
    assert sorted((r["prompt_index"], r["index"]) for r in rows) == [(0, 0), (0, 1), (0, 2)]
    assert all((out / img).stat().st_mtime_ns == t for img, t in before.items()), "finished images were redone"

    # the resumed set equals an uninterrupted one
    fresh = tmp_path / "fresh"
    assert main(_gen_args(tiny_sd_dir, fresh)) == 0
    from rewardiff.io_utils import load_image

    for r in rows:
        np.testing.assert_array_equal(load_image(out / r["image"]), load_image(fresh / r["image"]))


def test_output_dir_with_a_different_run_is_refused(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_gen_args(tiny_sd_dir, out)) == 0
    meta_before = (out / "metadata.jsonl").read_text()
    assert main(_gen_args(tiny_sd_dir, out, "--seed", "7")) == 2
    err = capsys.readouterr().err
    assert "already holds a different run" in err and "seed" in err
    assert (out / "metadata.jsonl").read_text() == meta_before, "nothing already written is lost"


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--model", "/no/such/model", "--out", "OUT"], "model directory not found"),
        (["generate", "--prompts", "missing.txt", "--out", "OUT"], "prompts file not found"),
        (["generate", "--model", "stabilityai/stable-diffusion-2-1", "--prompts", "a cat", "--out", "OUT"], "offline"),
        (["eval", "oracle", "nothing/metadata.jsonl"], "metadata file not found"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("OUT", str(tmp_path / "o")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error:")


def test_prompt_the_shapes_world_cannot_express(tmp_path, capsys):
    pytest.importorskip("rewardiff.shapes.generator")
    from rewardiff.models.pipeline import shipped_generator_dir

    if not (shipped_generator_dir() / "model_index.json").is_file():
        pytest.skip("shipped generator not present")
    assert main(["generate", "--model", "shapes", "--prompts", "a dog on a sofa", "--out", str(tmp_path / "o")]) == 2
    assert "cannot express 'a dog on a sofa'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metadata.jsonl").exists()


def test_eval_oracle_on_rendered_set_and_corrupt_png(tmp_path, capsys):
    out = tmp_path / "rendered"
    assert main(["shapes", "render", "--prompts", "shapes:heldout", "--num-images", "1", "--out", str(out)]) == 0
    assert main(["eval", "oracle", str(out / "metadata.jsonl")]) == 0
    result = json.loads((out / "oracle_eval.json").read_text())
    assert result["overall"] >= 0.99
    assert set(result["categories"]) == {"single", "pair", "counting", "position"}
    assert "| **overall** |" in (out / "oracle_eval.md").read_text()
    verdicts = list(read_jsonl(out / "oracle_verdicts.jsonl"))
    assert len(verdicts) == result["num_images"]

    rows = list(read_jsonl(out / "metadata.jsonl"))
    (out / rows[3]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    capsys.readouterr()
    assert main(["eval", "oracle", str(out / "metadata.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "corrupt image" in err and rows[3]["image"] in err
    # the earlier evaluation is still there
    assert json.loads((out / "oracle_eval.json").read_text())["overall"] >= 0.99


def test_generated_images_that_mismatch_their_prompt_fail_the_oracle(tmp_path, capsys):
    out = tmp_path / "rendered"
    assert main(["shapes", "render", "--prompts", "a red circle", "--num-images", "2", "--out", str(out)]) == 0
    meta = out / "metadata.jsonl"
    rows = [dict(r, prompt="three blue squares") for r in read_jsonl(meta)]
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "oracle", str(meta)]) == 0
    result = json.loads((out / "oracle_eval.json").read_text())
    assert result["categories"]["counting"]["passed"] == 0
