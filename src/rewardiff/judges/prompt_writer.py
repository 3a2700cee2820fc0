"""Class-conditioned prompt writers: the first step of the CCSR loop (the paper's Fig. 2).

A writer is asked for prompts that show some of the user's classes and returns raw text lines;
`parse_prompt_lines` is the one place that cleans and validates them (names a conditioned class,
length bounds, deduplicated, optional world check). Invalid lines are dropped and counted by
reason, never raised: an LLM's bad line must not stop a run.

Back-ends (`PromptWriterConfig.backend`):
- "transformers": a causal LM by hub id or folder (no remote code), prompted with an instruction
  and few-shot examples from a YAML template file (configs/prompt_writer_llm.yaml);
- "openai": any OpenAI-compatible chat endpoint by URL (vLLM, Ollama, llama.cpp server), through
  urllib (no client dependency), same template;
- "shapes": a seeded grammar writer that plays the LLM in the shapes world: it writes
  shapes-language prompts naming the classes, drawn from TRAINING prompts only.

    >>> parsed = parse_prompt_lines(["1. a red circle", "a red circle", "a dog", "circle"], ["circle"], min_words=2)
    >>> parsed.prompts, dict(parsed.rejected)
    (['a red circle'], {'duplicate': 1, 'no_class': 1, 'too_short': 1})
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from rewardiff.errors import RewardiffError


class PromptWriter(Protocol):
    """Writes raw candidate lines for prompts showing `classes`; parsing happens elsewhere."""

    def write(self, classes: list[str], n: int, seed: int) -> list[str]:
        """About n raw lines (may hold junk, numbering, duplicates) for the given classes."""
        ...


@dataclass
class PromptWriterConfig:
    backend: str = "shapes"  # shapes | transformers | openai
    model: str = ""  # transformers: hub id or folder; openai: the served model's name
    url: str = ""  # openai: endpoint base, e.g. http://localhost:8000/v1
    template: str = ""  # YAML with `instruction` and `examples` (transformers / openai)
    api_key_env: str = "OPENAI_API_KEY"  # openai: env var holding the key (sent only if set)
    timeout_s: float = 120.0  # openai: seconds per request
    max_new_tokens: int = 256  # tokens per LLM call
    temperature: float = 0.9  # sampling temperature (the paper samples diverse prompts)
    top_p: float = 0.95
    per_call: int = 10  # prompts asked for per LLM call
    max_calls: int = 20  # LLM calls per round at most (stops an LLM that writes only junk)
    min_words: int = 2  # shorter lines are rejected
    max_words: int = 40  # longer lines are rejected (CLIP's text encoder reads 77 tokens)
    category_weights: dict[str, float] = field(default_factory=dict)  # shapes: category -> weight (empty = uniform)
    device: str = "cpu"


@dataclass
class ParsedPrompts:
    prompts: list[str]  # valid, deduplicated, in order of writing
    rejected: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def num_rejected(self) -> int:
        return sum(self.rejected.values())


_NUMBERING = re.compile(r"^\s*(?:[-*\u2022]+|\d+\s*[.):]|\(\d+\)|prompt\s*\d*\s*:)\s*", re.IGNORECASE)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def clean_line(line: str) -> str:
    """Strip list numbering, bullets, quotes, a trailing full stop and repeated spaces."""
    text = _NUMBERING.sub("", line.strip())
    text = text.strip().strip(_QUOTES).strip()
    text = text.rstrip(".").strip()
    return " ".join(text.split())


def names_class(prompt: str, cls: str) -> bool:
    """Whole-word, case-insensitive match of the class or its plural ('circle' in 'two circles')."""
    words = re.escape(cls.lower().strip()).replace(r"\ ", r"\s+")
    return re.search(rf"(?<![a-z0-9]){words}(?:s|es)?(?![a-z0-9])", prompt.lower()) is not None


def parse_prompt_lines(
    lines: list[str],
    classes: list[str],
    min_words: int = 2,
    max_words: int = 40,
    seen: set[str] | None = None,
    validate: Callable[[str], str | None] | None = None,
) -> ParsedPrompts:
    """Keep lines that name a conditioned class, fit the length bounds, are new, and pass
    `validate` (which returns a rejection reason or None). `seen` (lower-cased prompts) is updated."""
    seen = seen if seen is not None else set()
    out = ParsedPrompts([])
    for raw in lines:
        text = clean_line(str(raw))
        n_words = len(text.split())
        reason = None
        if not text:
            reason = "empty"
        elif n_words < min_words:
            reason = "too_short"
        elif n_words > max_words:
            reason = "too_long"
        elif not any(names_class(text, c) for c in classes):
            reason = "no_class"
        elif text.lower() in seen:
            reason = "duplicate"
        elif validate is not None:
            reason = validate(text)
        if reason:
            out.rejected[reason] += 1
            continue
        seen.add(text.lower())
        out.prompts.append(text)
    return out


def write_prompts(writer: PromptWriter, classes: list[str], n: int, seed: int, cfg: PromptWriterConfig,
                  validate: Callable[[str], str | None] | None = None) -> ParsedPrompts:
    """Call the writer until n valid prompts (or cfg.max_calls calls); counts every rejection."""
    if not classes or not all(c.strip() for c in classes):
        raise RewardiffError("prompt writer: give at least one non-empty class (e.g. --classes circle,triangle)")
    result, seen = ParsedPrompts([]), set()
    for call in range(cfg.max_calls):
        need = n - len(result.prompts)
        if need <= 0:
            break
        lines = writer.write(classes, min(need, cfg.per_call) if cfg.backend != "shapes" else need, seed * 1000 + call)
        parsed = parse_prompt_lines(lines, classes, cfg.min_words, cfg.max_words, seen, validate)
        result.prompts += parsed.prompts[:need]
        result.rejected += parsed.rejected
        result.rejected["surplus"] += max(0, len(parsed.prompts) - need)
    if not result.rejected["surplus"]:
        del result.rejected["surplus"]
    return result


# ---- the LLM template -----------------------------------------------------------------------


@dataclass
class PromptTemplate:
    """An instruction with {n} and {classes} fields, and few-shot examples (classes -> prompts)."""

    instruction: str = ""  # the request; {n} = prompts asked for, {classes} = comma-separated classes
    examples: list[dict] = field(default_factory=list)  # each {"classes": [...], "prompts": [...]}

    @classmethod
    def load(cls, path: str | Path) -> "PromptTemplate":
        from rewardiff.config import ConfigError, load_config

        if not Path(path).is_file():
            raise RewardiffError(f"prompt writer template not found: {path}")
        try:
            t = load_config(cls, path)
        except ConfigError as e:
            raise RewardiffError(f"prompt writer template {path}: {e}") from None
        if not t.instruction.strip():
            raise RewardiffError(f"{path}: needs an 'instruction' string (with {{n}} and {{classes}})")
        for i, ex in enumerate(t.examples):
            if not isinstance(ex, dict) or not ex.get("classes") or not ex.get("prompts"):
                raise RewardiffError(f"{path}: example {i + 1} needs 'classes' and 'prompts' lists")
        return t

    def user_text(self, classes: list[str], n: int) -> str:
        return self.instruction.format(n=n, classes=", ".join(classes)).strip()

    def messages(self, classes: list[str], n: int) -> list[dict]:
        """Chat messages: each few-shot example as a user/assistant turn, then the request."""
        msgs = []
        for ex in self.examples:
            msgs.append({"role": "user", "content": self.user_text(list(ex["classes"]), len(ex["prompts"]))})
            msgs.append({"role": "assistant", "content": "\n".join(ex["prompts"])})
        msgs.append({"role": "user", "content": self.user_text(classes, n)})
        return msgs

    def completion_text(self, classes: list[str], n: int) -> str:
        """The same few-shot turns as plain text, for base (non-chat) causal LMs."""
        parts = []
        for m in self.messages(classes, n):
            parts.append(("Request: " if m["role"] == "user" else "Prompts:\n") + m["content"])
        return "\n\n".join(parts) + "\n\nPrompts:\n"


class TransformersWriter:
    """A causal LM by hub id or folder (AutoModelForCausalLM; remote code is never trusted).
    Uses the tokenizer's chat template when it has one, else the plain few-shot completion text."""

    def __init__(self, cfg: PromptWriterConfig):
        from transformers import AutoModelForCausalLM

        from rewardiff.rewards.loading import load_model, load_tokenizer, resolve_model_ref

        if not cfg.model:
            raise RewardiffError("prompt writer 'transformers' needs writer.model (a hub id or folder)")
        ref = resolve_model_ref(cfg.model, "prompt-writer LLM")
        self.model = load_model(AutoModelForCausalLM, ref, "prompt-writer LLM", device=cfg.device)
        self.tokenizer = load_tokenizer(ref, "prompt-writer LLM")
        self.template = PromptTemplate.load(cfg.template)
        self.cfg = cfg

    def _input_ids(self, classes: list[str], n: int):
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(self.template.messages(classes, n), add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tok(self.template.completion_text(classes, n), return_tensors="pt")["input_ids"]
        return ids.to(self.model.device)

    def write(self, classes: list[str], n: int, seed: int) -> list[str]:
        import torch

        ids = self._input_ids(classes, n)
        torch.manual_seed(seed)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.cfg.max_new_tokens,
                                      do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p, pad_token_id=pad)
        text = self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        return text.splitlines()


class OpenAIWriter:
    """POST {url}/chat/completions (the OpenAI chat API that vLLM, Ollama and llama.cpp serve)."""

    def __init__(self, cfg: PromptWriterConfig):
        if not cfg.url:
            raise RewardiffError("prompt writer 'openai' needs writer.url (e.g. http://localhost:8000/v1)")
        self.template = PromptTemplate.load(cfg.template)
        self.cfg = cfg

    def write(self, classes: list[str], n: int, seed: int) -> list[str]:
        import urllib.error
        import urllib.request

        body = {"model": self.cfg.model, "messages": self.template.messages(classes, n), "temperature": self.cfg.temperature,
                "top_p": self.cfg.top_p, "max_tokens": self.cfg.max_new_tokens, "seed": seed}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.cfg.url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
            raise RewardiffError(f"prompt writer endpoint {url}: {type(e).__name__}: {e}") from None
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RewardiffError(f"prompt writer endpoint {url}: reply is not an OpenAI chat completion: {str(reply)[:200]}") from None
        return str(content or "").splitlines()


def is_shapes_class(cls: str) -> bool:
    """A class of the shapes world: a shape ('circle'), a colour ('red') or a colour and a shape ('red circle')."""
    from rewardiff.shapes.palette import COLORS, SHAPES

    words = cls.lower().split()
    return (len(words) == 1 and (words[0] in SHAPES or words[0] in COLORS)) or (
        len(words) == 2 and words[0] in COLORS and words[1] in SHAPES)


def check_shapes_classes(classes: list[str]) -> None:
    """Refuse a class the shapes world never draws, naming it and listing the world's classes."""
    from rewardiff.shapes.palette import COLORS, SHAPES

    unknown = [c for c in classes if not is_shapes_class(c)]
    if unknown:
        raise RewardiffError(f"shapes writer: no training prompt names any of {unknown}; the shapes world's classes are the shapes "
                             f"{', '.join(SHAPES)}, the colours {', '.join(COLORS)}, or a colour and a shape (e.g. 'blue square')")


class ShapesGrammarWriter:
    """Plays the LLM in the shapes world: seeded draws of TRAINING prompts that name a class.

    A category is drawn (cfg.category_weights, uniform by default), then a training prompt of it
    naming one of the classes; repeats happen (as with an LLM) and are dropped as duplicates."""

    def __init__(self, cfg: PromptWriterConfig):
        from rewardiff.shapes.prompts import CATEGORIES, check_category_weights, split_prompts

        check_category_weights(cfg.category_weights, "writer.category_weights")
        self.weights = {c: float(cfg.category_weights.get(c, 0.0 if cfg.category_weights else 1.0)) for c in CATEGORIES}
        self.train = {c: split_prompts(c)[0] for c in CATEGORIES}

    def write(self, classes: list[str], n: int, seed: int) -> list[str]:
        check_shapes_classes(classes)
        rng = random.Random(seed)
        pools = {c: [p for p in ps if any(names_class(p, k) for k in classes)] for c, ps in self.train.items()}
        cats = [c for c in pools if pools[c] and self.weights[c] > 0]
        if not cats:
            raise RewardiffError(f"shapes writer: no training prompt names any of {classes}; the shapes classes are colours/shapes, e.g. circle, red, 'blue square'")
        return [rng.choice(pools[rng.choices(cats, weights=[self.weights[c] for c in cats])[0]]) for _ in range(n)]


WRITERS: dict[str, Callable[[PromptWriterConfig], PromptWriter]] = {
    "shapes": ShapesGrammarWriter,
    "transformers": TransformersWriter,
    "openai": OpenAIWriter,
}


def build_writer(cfg: PromptWriterConfig) -> PromptWriter:
    if cfg.backend not in WRITERS:
        raise RewardiffError(f"unknown prompt writer backend {cfg.backend!r}; known: {', '.join(WRITERS)}")
    return WRITERS[cfg.backend](cfg)


def shapes_validator(exclude: set[str]) -> Callable[[str], str | None]:
    """Shapes world: the prompt must parse, and must not be one of `exclude` (the held-out set)."""
    from rewardiff.shapes.prompts import UnsupportedPromptError, format_prompt, parse_prompt

    def validate(text: str) -> str | None:
        try:
            canonical = format_prompt(parse_prompt(text))
        except UnsupportedPromptError:
            return "not_shapes_language"
        return "heldout" if canonical in exclude else None

    return validate
