"""One CCSR round on the shapes world judged through an OpenAI-compatible endpoint (the local stub
server): captions from the endpoint's captioner and a VLM-judge component, tiny settings; a round
judged again after a kill asks the endpoint nothing twice (the answer caches)."""

import json
import shutil

import pytest

from rewardiff.config import load_config
from rewardiff.loop.self_reward import SelfRewardConfig, run_self_reward
from rewardiff.shapes.vlm_server import ShapesVLMServer
from test_self_reward_loop import CONFIG


@pytest.fixture(scope="module")
def server():
    with ShapesVLMServer() as s:
        yield s


def _cfg(run, server, eval_prompts) -> SelfRewardConfig:
    return load_config(SelfRewardConfig, CONFIG, values={
        "out": str(run), "rounds": 1, "prompts_per_round": 2, "candidates": 2, "batch_size": 8,
        "sampling.steps": 2, "train.steps": 1, "train.batch_size": 2, "train.checkpoint_every": 1,
        "eval.prompts": str(eval_prompts), "eval.num_images": 1, "eval.scales": [1.0], "eval.round_scales": [],
        "eval.judge": False, "eval.winrate_reward": "", "classes": ["circle"], "judge.thresholds": {},
        "judge.weights": {"caption": 1.0, "detection": 0.0, "count": 0.0, "relation": 0.0, "vlm": 1.0},
        "judge.caption_backend": {"backend": "openai", "url": server.url, "text_encoder": "shapes", "cache": str(run / "captions.jsonl")},
        "judge.vlm": {"backend": "openai", "url": server.url, "cache": str(run / "vlm_answers.jsonl")},
    })


def test_one_round_with_the_endpoint_captioner_and_vlm_judge(tmp_path, server):
    eval_prompts = tmp_path / "eval.txt"
    eval_prompts.write_text("a red circle\n")
    run = tmp_path / "run"
    summary = run_self_reward(_cfg(run, server, eval_prompts), progress=False)
    assert [r["round"] for r in summary["rounds"]] == [1]
    judged = [json.loads(line) for line in (run / "round_1" / "judgements.jsonl").read_text().splitlines()]
    assert len(judged) == 4 and server.requests == 8  # 4 captions + 4 yes/no questions
    for j in judged:
        assert 0.0 < j["components"]["vlm"] < 1.0 and j["caption"]  # P(yes) from the endpoint's logprobs
        assert j["score"] == pytest.approx(j["components"]["caption"] + j["components"]["vlm"], abs=1e-5)
    assert (run / "round_1" / "train" / "lora" / "lora.safetensors").is_file()
    # the judge phase killed and run again: every answer comes from the caches
    for name in ("judge.json", "judgements.jsonl", "selected.jsonl", "pairs.jsonl"):
        (run / "round_1" / name).unlink()
    shutil.rmtree(run / "round_1" / "train")
    run_self_reward(_cfg(run, server, eval_prompts), progress=False)
    again = [json.loads(line) for line in (run / "round_1" / "judgements.jsonl").read_text().splitlines()]
    assert again == judged and server.requests == 8
