"""Shapes tokenizer, typed configs (YAML presets + dotted overrides), and io_utils."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from rewardiff import io_utils
from rewardiff.config import ConfigError, load_config, save_config
from rewardiff.io_utils import atomic_write_text, load_image, read_jsonl, save_png, write_json
from rewardiff.shapes.prompts import CATEGORIES, enumerate_prompts
from rewardiff.shapes.tokenizer import BOS, EOS, MAX_LENGTH, build_tokenizer, shapes_words

# ================================================================ tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def test_tokenizer_files_written(tmp_path):
    build_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert BOS in vocab and EOS in vocab
    assert (tmp_path / "merges.txt").read_text().startswith("#version")
    for w in shapes_words():
        assert w + "</w>" in vocab, w


def test_one_token_per_shapes_word(tok):
    words = shapes_words()
    assert {"a", "and", "red", "circle", "circles", "left", "of", "above", "four"} <= set(words)
    for w in words:
        assert tok.tokenize(w) == [w + "</w>"], w
        ids = tok(w, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (w, ids)
        assert ids[0] != tok.unk_token_id


def test_bos_eos_and_word_count(tok):
    assert tok.bos_token == BOS and tok.eos_token == EOS
    for cat in CATEGORIES:
        for p in enumerate_prompts(cat)[:20]:
            ids = tok(p)["input_ids"]
            assert ids[0] == tok.bos_token_id
            assert ids[-1] == tok.eos_token_id
            assert len(ids) == len(p.split()) + 2, p
            assert len(ids) <= MAX_LENGTH
            assert tok.eos_token_id not in ids[1:-1]


def test_longest_prompt_fits(tok):
    longest = max((p for c in CATEGORIES for p in enumerate_prompts(c)), key=lambda p: len(tok(p)["input_ids"]))
    assert len(tok(longest)["input_ids"]) <= MAX_LENGTH


def test_padding_to_max_length(tok):
    assert tok.model_max_length == MAX_LENGTH
    enc = tok(["a red circle", "a red square left of a blue circle"], padding="max_length", max_length=MAX_LENGTH)
    for ids, mask in zip(enc["input_ids"], enc["attention_mask"]):
        assert len(ids) == MAX_LENGTH
        assert len(mask) == MAX_LENGTH
    assert sum(enc["attention_mask"][0]) == 5
    assert sum(enc["attention_mask"][1]) == 10
    # padded positions carry the pad id
    assert enc["input_ids"][0][5:] == [tok.pad_token_id] * (MAX_LENGTH - 5)


def test_unknown_text_byte_fallback(tok):
    enc = tok("a dog", padding="max_length", max_length=MAX_LENGTH)
    ids = enc["input_ids"]
    assert len(ids) == MAX_LENGTH
    n = sum(enc["attention_mask"])
    inner = ids[1 : n - 1]
    # 'a' is one token, 'dog' falls back to byte symbols (more than one token, none unknown)
    assert len(inner) >= 3
    assert tok.unk_token_id not in inner
    assert tok.decode(ids, skip_special_tokens=True).strip() == "a dog"


def test_truncation_of_long_text(tok):
    enc = tok("a red circle " * 20, padding="max_length", truncation=True, max_length=MAX_LENGTH)
    assert len(enc["input_ids"]) == MAX_LENGTH
    assert enc["input_ids"][-1] == tok.eos_token_id


# ================================================================ config


@dataclass
class Inner:
    b: int = 1
    name: str = "inner"
    scale: float = 0.5


@dataclass
class Cfg:
    a: Inner = field(default_factory=Inner)
    lr: float = 1e-3
    sizes: tuple[int, ...] = (1, 2)
    seed: int | None = None
    use_ema: bool = False


def _preset(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "preset.yaml"
    p.write_text(text)
    return p


def test_defaults():
    cfg = load_config(Cfg)
    assert cfg == Cfg()
    assert cfg.sizes == (1, 2) and isinstance(cfg.sizes, tuple)


def test_preset_and_overrides(tmp_path):
    p = _preset(tmp_path, "a:\n  name: from-yaml\n  scale: 2\nlr: 0.002\nsizes: [3, 4, 5]\nseed: 7\n")
    cfg = load_config(Cfg, p, ["a.b=3", "use_ema=true"])
    assert cfg.a.b == 3
    assert cfg.a.name == "from-yaml"
    assert cfg.a.scale == 2.0 and isinstance(cfg.a.scale, float)
    assert cfg.lr == pytest.approx(0.002)
    assert cfg.sizes == (3, 4, 5) and isinstance(cfg.sizes, tuple)
    assert cfg.seed == 7
    assert cfg.use_ema is True


def test_override_beats_preset(tmp_path):
    p = _preset(tmp_path, "a:\n  b: 10\n")
    assert load_config(Cfg, p).a.b == 10
    assert load_config(Cfg, p, ["a.b=11"]).a.b == 11
    # a partial nested section keeps the other defaults
    assert load_config(Cfg, p).a.name == "inner"


def test_override_float_exponent_parsed_to_float():
    # 'lr=1e-4' is how people type learning rates; it must become a float, not a string.
    cfg = load_config(Cfg, None, ["lr=1e-4"])
    assert isinstance(cfg.lr, float), f"lr parsed as {type(cfg.lr).__name__}: {cfg.lr!r}"
    assert cfg.lr == pytest.approx(1e-4)


def test_preset_float_exponent_parsed_to_float(tmp_path):
    p = _preset(tmp_path, "lr: 3e-5\n")
    cfg = load_config(Cfg, p)
    assert isinstance(cfg.lr, float), f"lr parsed as {type(cfg.lr).__name__}: {cfg.lr!r}"
    assert cfg.lr == pytest.approx(3e-5)


def test_override_float_int_and_decimal():
    assert load_config(Cfg, None, ["lr=1"]).lr == 1.0
    assert isinstance(load_config(Cfg, None, ["lr=1"]).lr, float)
    assert load_config(Cfg, None, ["lr=0.25"]).lr == 0.25


def test_optional_and_tuple_overrides():
    assert load_config(Cfg, None, ["seed=5"]).seed == 5
    assert load_config(Cfg, None, ["seed=5", "seed=null"]).seed is None
    assert load_config(Cfg, None, ["sizes=[8, 9]"]).sizes == (8, 9)


@pytest.mark.parametrize("override, key", [("nope=1", "nope"), ("a.zz=1", "zz")])
def test_unknown_override_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(Cfg, None, [override])


@pytest.mark.parametrize("text, key", [("bogus: 1\n", "bogus"), ("a:\n  missing_field: 2\n", "missing_field")])
def test_unknown_preset_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_config(Cfg, _preset(tmp_path, text))


@pytest.mark.parametrize(
    "override",
    [
        "a.b=hello",  # str for int
        "a.b=true",  # bool for int
        "a.b=1.5",  # float for int
        "a.name=3",  # int for str
        "use_ema=3",  # int for bool
        "seed=abc",  # str for int | None
        "sizes=5",  # scalar for tuple
        "sizes=[1, x]",  # bad item in tuple
        "a=3",  # scalar for a section
    ],
)
def test_wrong_type_raises(override):
    with pytest.raises(ConfigError):
        load_config(Cfg, None, [override])


def test_wrong_type_for_float_raises():
    with pytest.raises(ConfigError):
        load_config(Cfg, None, ["lr=abc"])


def test_wrong_type_in_preset(tmp_path):
    with pytest.raises(ConfigError, match="b"):
        load_config(Cfg, _preset(tmp_path, "a:\n  b: [1, 2]\n"))


def test_malformed_override():
    with pytest.raises(ConfigError, match="novalue"):
        load_config(Cfg, None, ["novalue"])


def test_missing_preset_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(Cfg, missing)


def test_preset_top_level_not_mapping(tmp_path):
    with pytest.raises(ConfigError):
        load_config(Cfg, _preset(tmp_path, "- 1\n- 2\n"))


def test_save_then_load_round_trip(tmp_path):
    p = _preset(tmp_path, "a:\n  name: rt\nsizes: [4, 5]\n")
    cfg = load_config(Cfg, p, ["a.b=42", "lr=0.0003", "seed=9", "use_ema=true", "a.scale=1.25"])
    out = tmp_path / "out" / "config.yaml"
    save_config(cfg, out)
    assert out.is_file()
    again = load_config(Cfg, out)
    assert again == cfg
    assert isinstance(again.sizes, tuple)
    assert [f.name for f in out.parent.iterdir()] == ["config.yaml"]


# ================================================================ io_utils


def test_atomic_write_text_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "dir" / "note.txt"
    atomic_write_text(target, "hello\n")
    atomic_write_text(target, "héllo again\n")
    assert target.read_text(encoding="utf-8") == "héllo again\n"
    assert sorted(os.listdir(target.parent)) == ["note.txt"]


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    """mkstemp creates 0600 files; outputs must be readable like any file the user writes."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io_utils.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_write_json_and_read_jsonl(tmp_path):
    write_json(tmp_path / "x.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2]}
    p = tmp_path / "rows.jsonl"
    io_utils.append_jsonl(p, [{"i": 1}, {"i": 2}])
    with open(p, "a") as f:
        f.write("\n")
    io_utils.append_jsonl(p, [{"i": 3}])
    assert list(read_jsonl(p)) == [{"i": 1}, {"i": 2}, {"i": 3}]


def test_read_jsonl_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"ok": 1}\n{"ok": 2}\n{not json\n{"ok": 4}\n')
    rows = read_jsonl(p)
    assert next(rows) == {"ok": 1}
    with pytest.raises(ValueError) as info:
        list(rows)
    msg = str(info.value)
    assert str(p) in msg
    assert ":3:" in msg


def test_load_image_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_image(tmp_path / "absent.png")


def test_load_image_corrupt(tmp_path):
    p = tmp_path / "garbage.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png" + bytes(range(256)))
    with pytest.raises(ValueError, match="garbage.png"):
        load_image(p)
    q = tmp_path / "text.png"
    q.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="text.png"):
        load_image(q)


def test_save_png_load_image_round_trip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    p = save_png(tmp_path / "a" / "img.png", img)
    back = load_image(p)
    assert back.dtype == np.uint8 and back.shape == (32, 32, 3)
    assert np.array_equal(back, img)
    assert sorted(os.listdir(p.parent)) == ["img.png"]
