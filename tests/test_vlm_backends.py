"""Captioners and the VLM judge on every back-end, offline: the shapes captioner behind the
transformers interface, a tiny random LLaVA built from configs, and the OpenAI-compatible client
against the local stub server (tests/../shapes/vlm_server.py on 127.0.0.1), including the ways
a real endpoint fails; the answer cache; VQAScore-style scoring; malformed answers counted."""

import math
import socket

import numpy as np
import pytest
import torch

from rewardiff.errors import RewardiffError
from rewardiff.rewards.captioners import CaptionerConfig, VLMCaptioner, build_captioner
from rewardiff.rewards.registry import build_reward
from rewardiff.rewards.vlm_judge import VLMJudge
from rewardiff.shapes.render import render
from rewardiff.shapes.vlm import ShapesVLM, asked_prompt
from rewardiff.shapes.vlm_server import ShapesVLMServer
from rewardiff.vlm.answers import Answer, expected_rating, score_answer, yes_probability
from rewardiff.vlm.backends import AskingVLM
from rewardiff.vlm.cache import AnswerCache, answer_key, image_hash
from rewardiff.vlm.config import VLMConfig, vlm_config_from_spec

PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a yellow circle", "three purple squares"]
CAPTIONER_DIR = "src/rewardiff/shapes/weights/judges/captioner"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.from_numpy(np.stack([render(p, 3).image for p in PROMPTS])).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def shapes_vlm() -> ShapesVLM:
    return ShapesVLM()


@pytest.mark.parametrize("answer, kind, expected", [
    (Answer("Yes."), "yesno", 1.0),
    (Answer("no, it shows a square"), "yesno", 0.0),
    (Answer("It is a circle"), "yesno", None),
    (Answer(""), "yesno", None),
    (Answer("", error="timeout"), "yesno", None),
    (Answer("x", {"\u2581Yes": math.log(0.3), "\u2581yes": math.log(0.1), "No": math.log(0.4), "cat": math.log(0.2)}), "yesno", 0.5),
    (Answer("No", {"cat": -0.1}), "yesno", 0.0),  # logprobs without yes/no: the parsed answer decides
    (Answer("8"), "rating", 0.8),
    (Answer("I rate it 11"), "rating", None),
    (Answer("x", {"2": math.log(0.5), "4</w>": math.log(0.5), "dog": -1.0}), "rating", 0.3),
])
def test_score_answer_table(answer, kind, expected):
    score, reason = score_answer(answer, kind)
    if expected is None:
        assert score is None and reason in ("malformed", "no_answer")
    else:
        assert reason == "" and score == pytest.approx(expected)
    assert yes_probability({"Yes": 0.0}) == 1.0 and expected_rating({"cat": 0.0}) is None


def test_cache_keys_and_resume_from_file(tmp_path, images):
    a = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert image_hash(a) == image_hash(a.copy()) != image_hash(b)
    assert answer_key("h", "m1", "q") != answer_key("h", "m2", "q") != answer_key("h", "m1", "q2")
    path = tmp_path / "answers.jsonl"
    AnswerCache(path).put([("k1", Answer("Yes", {"Yes": -0.1})), ("k2", Answer("", error="down"))])  # failures never cached
    path.write_text(path.read_text() + '{"key": "k3", "ans')  # a line cut by a kill
    cache = AnswerCache(path)
    assert len(cache) == 1 and cache.get("k1") == Answer("Yes", {"Yes": -0.1}) and cache.get("k2") is None


def test_shapes_captioner_behind_the_transformers_interface(images):
    blip = build_captioner(CaptionerConfig(backend="blip", model="shapes"))
    auto = build_captioner(CaptionerConfig(backend="transformers", model=CAPTIONER_DIR, instruction=""))
    assert type(auto.vlm.backend.model).__name__ == "BlipForConditionalGeneration"  # via AutoModelForImageTextToText
    blip.num_beams = 1  # the transformers back-end decodes greedily
    assert auto(images) == blip(images)


def test_tiny_llava_answers_with_first_token_logprobs(tmp_path, images):
    from tiny_vlm import build_tiny_llava

    folder = build_tiny_llava(tmp_path)
    vlm = AskingVLM(VLMConfig(backend="transformers", model=str(folder), max_new_tokens=3, top_logprobs=5))
    question = 'Does this image show "a red circle"? Answer yes or no.'
    answers = vlm.ask(images[:2], [question] * 2)
    assert all(len(a.first_token_logprobs) == 5 for a in answers)
    backend = vlm.backend  # the reported log-probabilities are the model's own next-token distribution
    inputs = backend._inputs(list((images[:1].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()), [question])
    with torch.no_grad():
        logp = torch.log_softmax(backend.model(**inputs).logits[0, -1].float(), -1)
    top = logp.topk(5)
    want = {backend.tokenizer.convert_ids_to_tokens(i): v for v, i in zip(top.values.tolist(), top.indices.tolist())}
    assert answers[0].first_token_logprobs == pytest.approx(want, abs=1e-4)
    # a random model's answer is neither yes nor no: a counted failure, not a zero
    judge = VLMJudge(vlm.cfg, backend=backend, on_failure="neutral")
    out = judge(images[:2], ["a red circle", "two blue squares"])
    assert judge.failures.failed.get("malformed", 0) == sum(out.details["failed"]) == 2 and out.scores.tolist() == [0.5, 0.5]
    with pytest.raises(RewardiffError, match="answers unusable"):
        VLMJudge(vlm.cfg, backend=backend)(images[:1], ["a red circle"])


def test_openai_captioner_and_judge_match_the_shapes_vlm_and_cache_resumes(tmp_path, images, shapes_vlm):
    cache = tmp_path / "captions.jsonl"
    with ShapesVLMServer(vlm=shapes_vlm) as server:
        cfg = CaptionerConfig(backend="openai", url=server.url, cache=str(cache), batch_size=2)
        captions = build_captioner(cfg)(images)
        assert server.requests == 4 and server.images_seen == 4
        assert captions == shapes_vlm.captioner(images)
        again = build_captioner(cfg)  # a resumed round: every answer comes from the cache
        assert again(images) == captions and server.requests == 4 and again.vlm.asked == 0
        judge = build_reward(f"vlm@{server.url}#shapes-vlm")
        prompts = PROMPTS[1:] + PROMPTS[:1]  # every image against a prompt it does not show
        local = VLMJudge(VLMConfig(backend="shapes"), backend=shapes_vlm)
        for ps in (PROMPTS, prompts):
            assert judge(images, ps).scores.tolist() == pytest.approx(local(images, ps).scores.tolist(), abs=1e-6)
        assert judge(images, PROMPTS).scores.mean() > judge(images, prompts).scores.mean()  # VQAScore from logprobs
        rating = VLMJudge(vlm_config_from_spec(server.url), kind="rating")
        assert all(0.1 <= s <= 1.0 for s in rating(images, PROMPTS).scores.tolist())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_failures_are_clear_after_retries(images, shapes_vlm):
    down = VLMConfig(backend="openai", url=f"http://127.0.0.1:{_closed_port()}/v1", model="m", retries=1, retry_wait_s=0.01)
    with pytest.raises(RewardiffError, match="no usable reply after 2 attempts"):
        AskingVLM(down).ask(images[:1], ["Describe."])
    with ShapesVLMServer("slow", delay_s=1.0, vlm=shapes_vlm) as server:
        with pytest.raises(RewardiffError, match="after 1 attempts.*timed out"):
            AskingVLM(VLMConfig(backend="openai", url=server.url, timeout_s=0.2, retries=0)).ask(images[:1], ["Describe."])
    with ShapesVLMServer("garbage", vlm=shapes_vlm) as server:
        with pytest.raises(RewardiffError, match="not JSON"):
            AskingVLM(VLMConfig(backend="openai", url=server.url, retries=1, retry_wait_s=0.01)).ask(images[:1], ["Describe."])
        assert server.requests == 2
    with ShapesVLMServer("no_images", vlm=shapes_vlm) as server:
        with pytest.raises(RewardiffError, match="refuses images"):
            AskingVLM(VLMConfig(backend="openai", url=server.url, retries=3)).ask(images[:1], ["Describe."])
        assert server.requests == 1  # a refusal is not retried
    with ShapesVLMServer("flaky", failures=2, vlm=shapes_vlm) as server:
        answer = AskingVLM(VLMConfig(backend="openai", url=server.url, retries=2, retry_wait_s=0.01)).ask(images[:1], ["Describe."])
        assert answer[0].text == shapes_vlm.captioner(images[:1])[0] and server.requests == 3
    with ShapesVLMServer("no_logprobs", vlm=shapes_vlm) as server:
        judge = build_reward(f"vlm@{server.url}")
        assert judge(images[:2], PROMPTS[:2]).scores.tolist() in ([0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0])  # parsed answers
    with ShapesVLMServer("empty", vlm=shapes_vlm) as server:
        judge = VLMJudge(vlm_config_from_spec(server.url), on_failure="neutral")
        out = judge(images[:2], PROMPTS[:2])
        assert judge.failures.failed == {"no_answer": 2} and out.details["failed"] == [True, True]
        with pytest.raises(RewardiffError, match="no caption for image"):
            VLMCaptioner(CaptionerConfig(backend="openai", url=server.url))(images[:1])


def test_bad_specs_and_offline_model_ids():
    with pytest.raises(RewardiffError, match="vlm needs a model"):
        build_reward("vlm")
    with pytest.raises(RewardiffError, match="offline"):
        build_reward("vlm@llava-hf/llava-1.5-7b-hf")
    with pytest.raises(RewardiffError, match="backend must be one of"):
        build_captioner(CaptionerConfig(backend="gpt"))
    assert asked_prompt('Does this image show "two red circles"? Answer yes or no.') == "two red circles"
    assert asked_prompt("Describe this image.") is None
