"""Best-of-N distillation (`train sft`): the judge filter drops images that do not show their
prompt, categories are balanced in the draws, the LoRA opens in diffusers, a rerun resumes, and
bad input is refused before anything is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rewardiff.config import load_config
from rewardiff.errors import RewardiffError
from rewardiff.io_utils import append_jsonl, read_jsonl
from rewardiff.loop.distill import DistillConfig, balanced_order, check_distill_config, load_distill_data, run_distill
from rewardiff.judges.self_judge import SelfJudge
from rewardiff.shapes.dataset import render_dataset

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "distill_shapes.yaml"
PROMPTS = ["a red circle", "a blue square and a green triangle", "three yellow circles", "a purple triangle left of a red square"]


def test_balanced_order_equalises_categories():
    order, replicas = balanced_order(["single"] * 6 + ["pair"] * 2 + ["position"] * 3)
    assert replicas == {"single": 1, "pair": 3, "position": 2}
    drawn = [["single"] * 6 + ["pair"] * 2 + ["position"] * 3][0]
    counts = {c: sum(drawn[i] == c for i in order) for c in replicas}
    assert counts == {"single": 6, "pair": 6, "position": 6}
    assert balanced_order([]) == ([], {})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """Ground-truth renders of four prompts, plus two rows whose image shows another prompt."""
    folder = tmp_path_factory.mktemp("data")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    meta = render_dataset(str(prompts), 2, 0, folder)
    rows = list(read_jsonl(meta))
    wrong = [dict(rows[0], prompt="three blue squares", prompt_index=9, index=0),  # a red circle, labelled three blue squares
             dict(rows[2], prompt="a green circle", prompt_index=9, index=1)]  # a pair, labelled a single object
    append_jsonl(meta, wrong)
    return folder


def _cfg(data: Path, out: Path, *overrides: str) -> DistillConfig:
    return load_config(DistillConfig, PRESET, [f"data=[{data}]", f"out={out}", *overrides])


def test_filter_drops_mislabelled_images_and_balances(rendered, tmp_path):
    cfg = _cfg(rendered, tmp_path / "run")
    data = load_distill_data(cfg, SelfJudge(cfg.judge), progress=False)
    prompts = [e.prompt for e in data.examples]
    assert "three blue squares" not in prompts and "a green circle" not in prompts  # the judge saw other objects
    assert data.counts["single"]["images"] == 3 and data.counts["counting"]["images"] == 3
    kept = {c: v["kept"] for c, v in data.counts.items()}
    assert all(1 <= k <= 2 for k in kept.values()), kept  # true renders kept (the judge errs at times), mislabelled ones dropped
    drawn = {c: sum(1 for e in data.examples if _cat(e.prompt) == c) for c in kept}
    assert drawn == {c: max(kept.values()) for c in kept}  # equal draws per category after balancing
    unfiltered = load_distill_data(_cfg(rendered, tmp_path / "run2", "filter=false", "balance=false"), None, progress=False)
    assert len(unfiltered.examples) == 10  # 8 renders + 2 mislabelled rows, nothing dropped


def _cat(prompt: str) -> str:
    from rewardiff.eval.compare import category_of

    return category_of(prompt)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "rewardiff.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_train_sft_cli_writes_a_lora_that_diffusers_opens_and_resumes(rendered, tmp_path):
    from rewardiff.models.pipeline import load_pipeline

    out = tmp_path / "sft"
    args = ["train", "sft", "--config", str(PRESET), "--data", str(rendered), "--out", str(out),
            "--set", "train.steps=3", "--set", "train.batch_size=4", "--set", "train.checkpoint_every=2"]
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    lora = out / "lora" / "lora.safetensors"
    assert lora.is_file() and json.loads((out / "data.json").read_text())["categories"]["pair"]["kept"] == 2
    pipe, _ = load_pipeline("shapes")
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)  # plain diffusers opens it
    before = lora.read_bytes()
    again = _cli(*args)
    assert again.returncode == 0 and lora.read_bytes() == before  # a finished run is kept, not retrained
    other = _cli(*args, "--set", "train.lr=2e-4")
    assert other.returncode != 0 and "train.lr" in other.stderr.strip().splitlines()[-1]
    assert lora.read_bytes() == before


@pytest.mark.parametrize("overrides, message", [
    (["train.lr=.nan"], "train.lr"),
    (["train.steps=0"], "train.steps"),
    (["train.loss=dpo"], "needs pairs"),
    (["judge.thresholds={count: .inf}"], "judge.thresholds"),
    (["data=[]"], "no data"),
    (["init_lora=missing.safetensors"], "init_lora"),
])
def test_bad_settings_are_refused_before_anything_is_written(rendered, tmp_path, overrides, message):
    out = tmp_path / "bad"
    with pytest.raises(RewardiffError, match=message):
        check_distill_config(_cfg(rendered, out, *overrides))
    assert not out.exists()


def test_out_inside_the_data_folder_and_foreign_prompts_are_refused(rendered, tmp_path):
    with pytest.raises(RewardiffError, match="inside the data folder"):
        check_distill_config(_cfg(rendered, rendered / "sft"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    append_jsonl(foreign / "metadata.jsonl", [{"prompt": "a photo of a cat", "image": "x.png"}])
    with pytest.raises((RewardiffError, ValueError), match="cat"):
        check_distill_config(_cfg(foreign, tmp_path / "o"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "train_log.jsonl").write_text("{}\n")
    with pytest.raises(RewardiffError, match="another run"):
        run_distill(_cfg(rendered, busy), pipe=None)  # refused before the pipeline is touched
    assert sorted(p.name for p in busy.iterdir()) == ["train_log.jsonl"] and (busy / "train_log.jsonl").read_text() == "{}\n"




def test_init_lora_continues_the_given_lora(rendered, tmp_path):
    """An online round starts from the previous round's LoRA, not from a fresh one: with a
    vanishing learning rate the result is the given LoRA, with the usual one it moves on from it."""
    from safetensors.torch import load_file

    from rewardiff.models.pipeline import load_pipeline

    short = ["train.steps=1", "train.batch_size=2", "filter=false"]
    first = run_distill(_cfg(rendered, tmp_path / "r1", *short), load_pipeline("shapes")[0], progress=False)
    start = load_file(str(first))
    frozen = run_distill(_cfg(rendered, tmp_path / "r2", *short, "train.lr=1e-12", "train.seed=5", f"init_lora={first}"),
                         load_pipeline("shapes")[0], progress=False)
    moved = run_distill(_cfg(rendered, tmp_path / "r3", *short, "train.seed=5", f"init_lora={first}"),
                        load_pipeline("shapes")[0], progress=False)
    kept, trained = load_file(str(frozen)), load_file(str(moved))
    assert kept.keys() == start.keys() == trained.keys()
    for k in start:
        assert torch.allclose(kept[k], start[k], atol=1e-8), k  # the fresh init of seed 5 would differ by far more
    assert any(not torch.allclose(trained[k], start[k]) for k in start)


def test_dpo_keeps_pairs_whose_pick_passes_and_beats_its_worst(rendered, tmp_path):
    """train.loss=dpo: each row's rejected_image is its worst candidate; a pair is kept only when
    the pick passes the filter and out-scores the worst by judge.min_pair_gap."""
    import shutil

    paired = tmp_path / "paired"
    shutil.copytree(rendered, paired)
    rows = list(read_jsonl(paired / "metadata.jsonl"))
    for n, r in enumerate(rows):  # the "worst": a render of the next prompt, which shows other objects
        other = next(o for o in rows[n + 1:] + rows[:n] if o["prompt"] != r["prompt"] and o["prompt"] in PROMPTS)
        r["rejected_image"] = other["image"]
    (paired / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(paired, tmp_path / "run", "train.loss=dpo")
    data = load_distill_data(cfg, SelfJudge(cfg.judge), progress=False)
    assert data.examples and all(e.rejected is not None for e in data.examples)
    assert not {"three blue squares", "a green circle"} & {e.prompt for e in data.examples}  # their picks fail the filter
    assert all(not (e.rejected == e.image).all() for e in data.examples)
    with pytest.raises(RewardiffError, match="kept no pair"):
        load_distill_data(_cfg(paired, tmp_path / "run2", "train.loss=dpo", "judge.min_pair_gap=100"), SelfJudge(cfg.judge), progress=False)
