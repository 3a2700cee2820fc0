"""Prompt writers: parsing/validation, the shapes grammar writer, a transformers causal LM built
offline (tiny random GPT-2 + a byte-level tokenizer written here), and an OpenAI-compatible
endpoint served by a local http.server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from rewardiff.errors import RewardiffError
from rewardiff.judges.prompt_writer import (PromptTemplate, PromptWriterConfig, build_writer, clean_line, names_class,
                                            parse_prompt_lines, shapes_validator, write_prompts)
from rewardiff.shapes.prompts import heldout_eval_prompts, train_prompts

TEMPLATE = "configs/prompt_writer_llm.yaml"


@pytest.mark.parametrize("line,clean", [("1. a red dog.", "a red dog"), ("- \"two cats\"", "two cats"), ("  3) a  bus ", "a bus"), ("Prompt 2: a car", "a car")])
def test_clean_line(line, clean):
    assert clean_line(line) == clean


@pytest.mark.parametrize("text,cls,hit", [("two dogs on grass", "dog", True), ("a hotdog", "dog", False), ("three red circles", "circle", True),
                                          ("a traffic light", "traffic light", True), ("a Bus", "bus", True), ("a buses stop", "bus", True)])
def test_names_class(text, cls, hit):
    assert names_class(text, cls) is hit


def test_parse_counts_every_rejection():
    lines = ["1. a dog on a sofa", "A dog on a sofa.", "a cat", "", "dog", "a " + "very " * 50 + "big dog", "a dog and a bus"]
    parsed = parse_prompt_lines(lines, ["dog", "bus"], min_words=2, max_words=20, validate=lambda t: "bad" if "bus" in t else None)
    assert parsed.prompts == ["a dog on a sofa"]
    assert dict(parsed.rejected) == {"duplicate": 1, "no_class": 1, "empty": 1, "too_short": 1, "too_long": 1, "bad": 1}
    assert parsed.num_rejected == 6


def test_shapes_writer_uses_train_prompts_only_and_is_seeded():
    cfg = PromptWriterConfig(backend="shapes")
    heldout = set(heldout_eval_prompts())
    validate = shapes_validator(heldout)
    a = write_prompts(build_writer(cfg), ["triangle"], 30, seed=3, cfg=cfg, validate=validate)
    b = write_prompts(build_writer(cfg), ["triangle"], 30, seed=3, cfg=cfg, validate=validate)
    assert a.prompts == b.prompts and len(a.prompts) == 30 and len(set(a.prompts)) == 30
    assert all("triangle" in p for p in a.prompts) and set(a.prompts) <= set(train_prompts())
    assert validate(sorted(heldout)[0]) == "heldout" and validate("a dog") == "not_shapes_language"
    with pytest.raises(RewardiffError, match="no training prompt"):
        build_writer(cfg).write(["dog"], 3, 0)
    with pytest.raises(RewardiffError, match="unknown prompt writer"):
        build_writer(PromptWriterConfig(backend="gpt"))


def test_template_messages_hold_few_shot_examples():
    t = PromptTemplate.load(TEMPLATE)
    msgs = t.messages(["dog", "cat"], 5)
    assert msgs[-1]["role"] == "user" and "dog, cat" in msgs[-1]["content"] and "5" in msgs[-1]["content"]
    assert sum(m["role"] == "assistant" for m in msgs) == len(t.examples) >= 1
    assert t.completion_text(["dog"], 3).endswith("Prompts:\n")


def _tiny_gpt2(path):
    """A random GPT-2 over a byte-level vocabulary (256 byte symbols, no merges), offline."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    from rewardiff.shapes.tokenizer import _bytes_to_unicode

    path.mkdir(parents=True)
    vocab = {s: i for i, s in enumerate(_bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = GPT2Tokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    tok.save_pretrained(path)
    import torch

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=2048,
                               bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 1)).save_pretrained(path)
    return path


def test_transformers_writer_offline_never_crashes(tmp_path):
    cfg = PromptWriterConfig(backend="transformers", model=str(_tiny_gpt2(tmp_path / "gpt2")), template=TEMPLATE, max_new_tokens=12, max_calls=1, per_call=3)
    writer = build_writer(cfg)
    lines = writer.write(["dog"], 3, seed=0)
    assert isinstance(lines, list) and all(isinstance(x, str) for x in lines) and lines == writer.write(["dog"], 3, seed=0)
    parsed = write_prompts(writer, ["dog"], 3, seed=0, cfg=cfg)  # a random LM writes junk: dropped and counted
    assert len(parsed.prompts) + parsed.num_rejected >= 1
    with pytest.raises(RewardiffError, match="writer.model"):
        build_writer(PromptWriterConfig(backend="transformers", template=TEMPLATE))


class _Chat(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Chat.requests.append((self.path, body))
        content = "1. a dog in the park\n2. A dog in the park.\n3. a red car\n4. two dogs and a bus"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_endpoint_writer(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Chat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = PromptWriterConfig(backend="openai", url=f"http://127.0.0.1:{server.server_port}/v1", model="m", template=TEMPLATE, max_calls=1)
        parsed = write_prompts(build_writer(cfg), ["dog"], 5, seed=1, cfg=cfg)
    finally:
        server.shutdown()
    assert parsed.prompts == ["a dog in the park", "two dogs and a bus"]
    assert dict(parsed.rejected) == {"duplicate": 1, "no_class": 1}
    path, body = _Chat.requests[-1]
    assert path == "/v1/chat/completions" and body["model"] == "m" and body["messages"][-1]["role"] == "user"
    bad = PromptWriterConfig(backend="openai", url="http://127.0.0.1:9/v1", template=TEMPLATE, timeout_s=2)
    with pytest.raises(RewardiffError, match="endpoint"):
        build_writer(bad).write(["dog"], 2, 0)
