"""A CLIP BPE tokenizer for the shapes language, written from scratch (no hub).

CLIP's tokenizer is byte-level BPE: every byte is in the vocabulary, words end in '</w>',
and merges build longer tokens. We keep all 256 byte symbols (so any text still tokenizes)
and add merges that build each word of the shapes language into one token.
"""

from __future__ import annotations

import json
from pathlib import Path

from rewardiff.shapes.palette import COLORS, COUNT_WORDS, RELATIONS, SHAPES

MAX_LENGTH = 16
"""Longest shapes prompt is 10 tokens with BOS/EOS; 16 leaves room and keeps attention cheap."""

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def shapes_words() -> list[str]:
    words = {"a", "and", *COUNT_WORDS, *COLORS}
    for s in SHAPES:
        words |= {s, s + "s"}
    for r in RELATIONS:
        words |= set(r.split())
    return sorted(words)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map (the standard construction)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _apply_bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the lowest-ranked adjacent pair until none applies (CLIP's BPE loop)."""
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def build_vocab_and_merges(words: list[str] | None = None) -> tuple[dict[str, int], list[str]]:
    """Byte symbols + merges that make each shapes word a single token.

    Each word's new merges join the pieces that the merges so far already produce, so a merge
    added for one word can never split a word added before it.
    """
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    ranks: dict[tuple[str, str], int] = {}
    for word in words or shapes_words():
        pieces = _apply_bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in ranks:
                ranks[(left, right)] = len(ranks)
                vocab_list.append(left + right)
            left = left + right
    vocab_list += [BOS, EOS]
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}, merges


def write_tokenizer_files(directory: str | Path) -> Path:
    """Write vocab.json and merges.txt that `CLIPTokenizer(vocab_file, merges_file)` reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def build_tokenizer(directory: str | Path):
    """A transformers CLIPTokenizer over our files, saved-able with save_pretrained."""
    from transformers import CLIPTokenizer

    directory = write_tokenizer_files(directory)
    return CLIPTokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        model_max_length=MAX_LENGTH,
    )
