"""Multi-process SFT / Diffusion-DPO (and SFT's judge filter), ReFL, the reward model and its
embedding cache, `generate`, `score` and the self-reward loop on accelerate (issue 14): `accelerate
launch` with two gloo processes on the CPU gives what one process gives with the same global
batch: the LoRA or reward model within float tolerance, the images, scores, judgements and
selections byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from accelerate_launch import HERE, launch
from accelerate_runs import LR, run, write_preference_set

RUNS = HERE / "accelerate_runs.py"
PROMPTS = "a red circle\na blue square\n"


@pytest.fixture
def work(tiny_sd_dir, tmp_path) -> Path:
    (tmp_path / "model").write_text(str(tiny_sd_dir))
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    return tmp_path


def _assert_close_tensors(a: Path, b: Path, atol: float) -> dict[str, torch.Tensor]:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=atol, msg=k)
    return ta


def _assert_same_lora(a: Path, b: Path) -> dict[str, torch.Tensor]:
    # Adam's update is lr * m / sqrt(v): a weight whose gradient is near zero moves by up to lr
    # on float noise alone (measured after 2 steps: 2e-7 SFT, 6e-6 DPO, 1.3e-4 ReFL); 2 steps of
    # a broken split (half the batch, other noise) move the weights by ~lr each, other ways
    state = _assert_close_tensors(a, b, atol=LR / 4)
    assert any(float(v.abs().sum()) > 0 for k, v in state.items() if "lora_B" in k or "up" in k)  # it trained
    return state


def _tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's contents (its bytes are not comparable: the header's metadata order varies)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_and_dpo_two_processes_equal_one(work):
    from rewardiff.shapes.dataset import render_dataset

    render_dataset(str(work / "prompts.txt"), 2, 0, work / "data")
    launch(RUNS, ["sft", str(work), "two"], port=29521)
    run("sft", work, "one")
    _assert_same_lora(work / "two/sft/lora/lora.safetensors", work / "one/sft/lora/lora.safetensors")
    dpo = _assert_same_lora(work / "two/dpo/lora/lora.safetensors", work / "one/dpo/lora/lora.safetensors")
    assert any(k.startswith("text_encoder.") for k in dpo)
    for kind in ("sft", "dpo"):
        two, one = _log(work / "two" / kind / "train_log.jsonl"), _log(work / "one" / kind / "train_log.jsonl")
        assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]  # the main process alone logs
        assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)  # averaged over processes
    assert (work / "two/sft/report/index.html").is_file() and (work / "two/sft/data.json").is_file()


def test_refl_two_processes_equal_one(work):
    launch(RUNS, ["refl", str(work), "two"], port=29522)
    run("refl", work, "one")
    _assert_same_lora(work / "two/lora.safetensors", work / "one/lora.safetensors")
    two, one = _log(work / "two/train_log.jsonl"), _log(work / "one/train_log.jsonl")
    assert [r["step"] for r in two] == [1, 2]
    for key in ("reward", "kl", "loss"):  # averaged over both processes' images
        # the KL after one step is quadratic in the LoRA's tiny change: 2e-4 relative float noise measured
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-3, abs=1e-6)


def test_reward_model_two_processes_equal_one(tmp_path):
    from rewardiff.rewards.preference_model import load_preference_model

    work = tmp_path
    write_preference_set(work / "preference")
    launch(RUNS, ["reward", str(work), "two"], port=29523)
    cache = work / "preference/cache/test_pool2x2.safetensors"  # each process embedded its part, the main one wrote it
    two_cache = _tensors_and_metadata(cache)
    cache.unlink()
    run("reward", work, "one")
    one_cache = _tensors_and_metadata(cache)
    assert one_cache[1] == two_cache[1] and one_cache[0].keys() == two_cache[0].keys() == {"image", "text"}
    for k in one_cache[0]:
        assert torch.equal(one_cache[0][k], two_cache[0][k]), k  # the cache one process writes
    # every weight matrix agrees within float noise; a bias the Bradley-Terry loss hardly sees
    # (the output's: not at all, rewards are compared in pairs) takes Adam's ~lr steps on float
    # noise (3e-3 measured), so those are compared through the rewards, up to that constant
    for sub in ("best", "state"):
        a, b = (load_file(str(work / r / sub / "model.safetensors")) for r in ("two", "one"))
        assert a.keys() == b.keys()
        for k in (k for k in a if k.endswith("weight")):
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{sub}: {k}")
    (two, _, meta), (one, _, _) = load_preference_model(work / "two"), load_preference_model(work / "one")
    x = torch.randn(256, meta["in_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        r2, r1 = two(x), one(x)
    assert float((r1 - r1.mean()).abs().max()) > 0.1  # it learned something to compare
    torch.testing.assert_close(r2 - r2.mean(), r1 - r1.mean(), rtol=0, atol=2e-3)
    assert json.loads((work / "two/metrics.json").read_text()) == pytest.approx(json.loads((work / "one/metrics.json").read_text()))
    losses = [[r["train_loss"] for r in _log(work / run_ / "train_log.jsonl")] for run_ in ("two", "one")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_generate_two_processes_equal_one_and_resume(work):
    run("generate", work, "one")
    # a killed run for the two processes to resume: the first row kept, a torn last line
    partial = work / "two-resumed"
    shutil.copytree(work / "one", partial)
    rows = (partial / "metadata.jsonl").read_text().splitlines()
    (partial / "metadata.jsonl").write_text(rows[0] + "\n" + rows[1][:20])
    for row in rows[1:3]:
        (partial / json.loads(row)["image"]).unlink()
    launch(RUNS, ["generate", str(work), "two"], port=29524)
    one_meta = (work / "one/metadata.jsonl").read_text()
    assert len(one_meta.splitlines()) == 6
    images = sorted(p.name for p in (work / "one/images").iterdir())
    for two in (work / "two", partial):
        assert (two / "metadata.jsonl").read_text() == one_meta  # same rows, same order
        assert sorted(p.name for p in (two / "images").iterdir()) == images
        for name in images:
            assert (two / "images" / name).read_bytes() == (work / "one/images" / name).read_bytes(), (two, name)


def test_score_two_processes_equal_one(tmp_path):
    from rewardiff.shapes.dataset import render_dataset

    work = tmp_path
    (work / "prompts.txt").write_text(PROMPTS + "a green triangle\n")
    render_dataset(str(work / "prompts.txt"), 2, 0, work / "data")
    launch(RUNS, ["score", str(work), "two"], port=29525)
    run("score", work, "one")
    one = (work / "one/scores.jsonl").read_text()
    assert len(one.splitlines()) == 6 and "clip" in json.loads(one.splitlines()[0])
    assert (work / "two/scores.jsonl").read_text() == one  # each batch is one process's batch: the same floats, in order
    assert (work / "two/scores_summary.json").read_text() == (work / "one/scores_summary.json").read_text()


def test_sft_judge_filter_two_processes_equal_one(work):
    from rewardiff.io_utils import append_jsonl, read_jsonl
    from rewardiff.shapes.dataset import render_dataset

    (work / "prompts.txt").write_text("a red circle\nthree yellow circles\na purple triangle left of a red square\n")
    meta = render_dataset(str(work / "prompts.txt"), 2, 0, work / "data")
    rows = list(read_jsonl(meta))  # and two rows whose image shows another prompt, for the filter to drop
    append_jsonl(meta, [dict(rows[0], prompt="three blue squares", prompt_index=9, index=0),
                        dict(rows[2], prompt="a green circle", prompt_index=9, index=1)])
    launch(RUNS, ["sft_judged", str(work), "two"], port=29526)
    run("sft_judged", work, "one")
    kept = json.loads((work / "one/kept.json").read_text())
    assert 0 < len({tuple(e) for e in kept}) < 8 and not {"three blue squares", "a green circle"} & {p for p, _ in kept}
    assert json.loads((work / "two/kept.json").read_text()) == kept  # the same examples, in the same order
    assert (work / "two/sft/data.json").read_text() == (work / "one/sft/data.json").read_text()  # kept per category
    _assert_same_lora(work / "two/sft/lora/lora.safetensors", work / "one/sft/lora/lora.safetensors")


def _numbers(value, path: str = "") -> dict[str, object]:
    """A nested JSON value as {dotted path: leaf}, paths and timings left out (they name the run)."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            if k not in ("lora", "metadata", "timings"):
                out.update(_numbers(v, f"{path}.{k}"))
        return out
    if isinstance(value, list):
        return {k: v for n, item in enumerate(value) for k, v in _numbers(item, f"{path}[{n}]").items()}
    return {path: value}


def test_self_reward_loop_two_processes_equal_one(tmp_path):
    work = tmp_path
    (work / "eval.txt").write_text("a red triangle\na blue triangle above a green circle\n")
    launch(RUNS, ["self_reward", str(work), "two"], port=29527)
    run("self_reward", work, "one")
    two, one = work / "two/round_1", work / "one/round_1"
    for name in ("prompts.txt", "candidates/metadata.jsonl", "judgements.jsonl", "selected.jsonl", "pairs.jsonl", "judge.json"):
        assert (two / name).read_text() == (one / name).read_text(), name  # the same candidates, judgements, selection and pairs
    assert len((one / "judgements.jsonl").read_text().splitlines()) == 6 and (one / "selected.jsonl").read_text()
    _assert_same_lora(two / "train/lora/lora.safetensors", one / "train/lora/lora.safetensors")
    assert [r["step"] for r in _log(two / "train/train_log.jsonl")] == [1, 2]  # the main process alone logs
    summaries = [_numbers(json.loads((work / r / "summary.json").read_text())) for r in ("two", "one")]
    assert summaries[0].keys() == summaries[1].keys() and any(".winrate." in k for k in summaries[1])
    for key, value in summaries[1].items():  # base and round 1: oracle, judge, comparison and win rate
        assert summaries[0][key] == (pytest.approx(value, rel=1e-4, abs=1e-4) if isinstance(value, float) else value), key
    assert (work / "two/base_eval/metadata.jsonl").read_text() == (work / "one/base_eval/metadata.jsonl").read_text()
    assert (work / "two/round_1/eval/scale_0.7/eval.json").is_file() and (work / "two/report/index.html").is_file()
