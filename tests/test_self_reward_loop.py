"""The CCSR loop end to end on the shipped shapes generator (few steps, tiny sets): folders per
round, counts, a kill between phases resumes to the same result, round 2 starts from round 1."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rewardiff.config import load_config
from rewardiff.seeding import image_seed
from rewardiff.errors import RewardiffError
from rewardiff.loop.self_reward import SelfRewardConfig, run_self_reward

CONFIG = Path(__file__).parent.parent / "configs" / "self_reward_shapes.yaml"


def _cfg(out: Path, eval_prompts: Path, **extra) -> SelfRewardConfig:
    overrides = {
        "out": str(out), "rounds": 2, "prompts_per_round": 2, "candidates": 2, "batch_size": 8,
        "sampling.steps": 2, "train.steps": 2, "train.batch_size": 2, "train.checkpoint_every": 1,
        "eval.prompts": str(eval_prompts), "eval.num_images": 1, "eval.scales": [0.7], "eval.round_scales": [],
        "classes": ["triangle"], "judge.thresholds": {}, **extra,
    }
    return load_config(SelfRewardConfig, CONFIG, values=overrides)


def _state(run: Path) -> dict:
    """Everything a run produced that must not depend on interruptions (not timings)."""
    out = {}
    for k in (1, 2):
        r = run / f"round_{k}"
        out[f"prompts{k}"] = (r / "prompts.txt").read_text()
        out[f"judgements{k}"] = (r / "judgements.jsonl").read_text()
        out[f"selected{k}"] = (r / "selected.jsonl").read_text()
        out[f"lora{k}"] = {n: t.tolist() for n, t in load_file(r / "train" / "lora" / "lora.safetensors").items()}
    ev = json.loads((run / "round_2" / "eval" / "scale_0.7" / "eval.json").read_text())
    out["eval"] = {k: ev[k] for k in ("oracle", "judge", "winrate")}
    return out


@pytest.fixture(scope="module")
def eval_prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("p") / "eval.txt"
    path.write_text("a red triangle\n")
    return path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, eval_prompts) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    run_self_reward(_cfg(run, eval_prompts), progress=False)
    return run


def test_run_layout_counts_and_prompts(full_run):
    summary = json.loads((full_run / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for k in (1, 2):
        r = full_run / f"round_{k}"
        prompts = (r / "prompts.txt").read_text().split("\n")[:-1]
        assert len(prompts) == 2 and all("triangle" in p for p in prompts)
        judged = [json.loads(line) for line in (r / "judgements.jsonl").read_text().splitlines()]
        assert len(judged) == 4 and {"score", "components", "caption", "detections"} <= set(judged[0])
        selected = [json.loads(line) for line in (r / "selected.jsonl").read_text().splitlines()]
        assert len(selected) == 2  # the best candidate of each prompt
        for s in selected:
            assert s["score"] == max(j["score"] for j in judged if j["prompt"] == s["prompt"])
        meta = [json.loads(line) for line in (r / "candidates" / "metadata.jsonl").read_text().splitlines()]
        assert [m["seed"] for m in meta] == [image_seed(1000 * k, m["prompt"], m["index"]) for m in meta]
        assert len({m["seed"] for m in meta}) == len(meta)  # independent noise per (prompt, image)
        assert (meta[0]["lora"] == []) == (k == 1)  # round 2 generates with round 1's LoRA
    assert "round 2" in (full_run / "summary.md").read_text()
    assert (full_run / "plots" / "rounds.png").is_file() and (full_run / "plots" / "winrate.png").is_file()
    assert summary["rounds"][1]["eval"]["0.7"]["winrate"]["pairs"] == 1


@pytest.mark.parametrize("stop_after", ["1:judge"])
def test_interrupted_run_resumes_identically(tmp_path, full_run, eval_prompts, stop_after):
    run = tmp_path / "run"
    assert run_self_reward(_cfg(run, eval_prompts), progress=False, stop_after=stop_after) == {}
    assert not (run / "summary.json").exists()
    mtime = (run / "round_1" / "judgements.jsonl").stat().st_mtime_ns
    run_self_reward(_cfg(run, eval_prompts), progress=False)
    assert (run / "round_1" / "judgements.jsonl").stat().st_mtime_ns == mtime  # finished work not redone
    assert _state(run) == _state(full_run)


def test_dpo_switch_trains_on_pairs(tmp_path, eval_prompts):
    run = tmp_path / "dpo"
    cfg = _cfg(run, eval_prompts, **{"rounds": 1, "train.loss": "dpo", "judge.min_pair_gap": 0.0, "eval.scales": [], "candidate_guidance": 2.0})
    run_self_reward(cfg, progress=False)
    import yaml

    assert yaml.safe_load((run / "round_1" / "candidates" / "config.yaml").read_text())["sampling"]["guidance"] == 2.0
    assert cfg.sampling.guidance != 2.0  # evaluation keeps the run's guidance
    log = [json.loads(line) for line in (run / "round_1" / "train" / "train_log.jsonl").read_text().splitlines()]
    assert log and all(row["stage"] == "dpo" and "implicit_acc" in row for row in log)
    assert (run / "round_1" / "train" / "lora" / "lora.safetensors").is_file()


def test_bad_settings_are_clear_errors(tmp_path, eval_prompts):
    with pytest.raises(RewardiffError, match="at least 1"):
        run_self_reward(_cfg(tmp_path / "x", eval_prompts, rounds=0), progress=False)
    with pytest.raises(RewardiffError, match="no training prompt names"):
        run_self_reward(_cfg(tmp_path / "y", eval_prompts, classes=["dog"]), progress=False)
    with pytest.raises(RewardiffError, match="judge.pairing"):  # refused before any candidate is generated
        run_self_reward(_cfg(tmp_path / "z", eval_prompts, **{"judge.pairing": "every"}), progress=False)
    assert not (tmp_path / "z" / "round_1").exists()


def test_cli_names_bad_classes(tmp_path, capsys):
    from rewardiff.cli import main

    assert main(["self-reward", "--config", str(CONFIG), "--classes", "dog,cat", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shapes writer: no training prompt names any of ['dog', 'cat']")
