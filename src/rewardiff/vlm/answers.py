"""What a vision-language model answered, and how an answer becomes a score.

Two question kinds (`kind`):
- "yesno": "Does the image show {prompt}? Answer yes or no." With the first answer token's
  log-probabilities (VQAScore, Lin et al. 2024) the score is P(yes) / (P(yes) + P(no)), the
  probabilities of every spelling of yes / no summed; without them the parsed answer gives 1 or 0.
- "rating": "Rate from 1 to 10 how well ...". With log-probabilities the score is the expected
  rating over the digit tokens 1-10, renormalised; else the first number in the answer. Ratings
  are divided by 10, so both kinds score in [0, 1].
An answer that says neither (or a number out of range) is *malformed*: `score_answer` returns
None with a reason, and the caller counts it; it is never read as 0.

    >>> score_answer(Answer("Yes, it does."), "yesno")
    (1.0, '')
    >>> score_answer(Answer("a cat"), "yesno")
    (None, 'malformed')
    >>> round(score_answer(Answer("Yes", {"Yes": -0.1054, "No": -2.3026}), "yesno")[0], 3)
    0.9
    >>> score_answer(Answer("7/10"), "rating")
    (0.7, '')
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from rewardiff.errors import RewardiffError

KINDS = ("yesno", "rating")
RATING_MAX = 10
"""Ratings are asked on 1..RATING_MAX and scored as rating / RATING_MAX."""

_YES = {"yes", "y", "true"}
_NO = {"no", "n", "false"}
_FIRST_WORD = re.compile(r"[a-z]+")
_NUMBER = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Answer:
    """One reply: its text, and the first generated token's top log-probabilities (token -> logprob)
    when the back-end reports them (None otherwise)."""

    text: str
    first_token_logprobs: dict[str, float] | None = None
    error: str = ""  # why there is no answer (an endpoint that failed after its retries); '' = answered

    def to_dict(self) -> dict:
        return {"text": self.text, "first_token_logprobs": self.first_token_logprobs, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict) -> "Answer":
        return cls(str(d.get("text", "")), d.get("first_token_logprobs"), str(d.get("error", "")))


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise RewardiffError(f"vlm question kind must be one of {KINDS}, got {kind!r}")


def _token_word(token: str) -> str:
    """'▁Yes', ' yes', 'Ġno', 'YES.' -> 'yes' / 'no' (sentencepiece / BPE prefixes stripped)."""
    return token.replace("</w>", "").replace("\u2581", " ").replace("\u0120", " ").strip().strip(".,!:;\"'").lower()


def yes_probability(logprobs: dict[str, float]) -> float | None:
    """P(yes) / (P(yes) + P(no)) from top log-probabilities; None if neither word is among them."""
    p_yes = sum(math.exp(v) for k, v in logprobs.items() if _token_word(k) in _YES)
    p_no = sum(math.exp(v) for k, v in logprobs.items() if _token_word(k) in _NO)
    return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else None


def expected_rating(logprobs: dict[str, float]) -> float | None:
    """E[rating] over the tokens that are a whole number 1..RATING_MAX, renormalised; None if none is."""
    mass: dict[int, float] = {}
    for k, v in logprobs.items():
        word = _token_word(k)
        if word.isdigit() and 1 <= int(word) <= RATING_MAX:
            mass[int(word)] = mass.get(int(word), 0.0) + math.exp(v)
    total = sum(mass.values())
    return sum(r * p for r, p in mass.items()) / total if total > 0 else None


def parse_yes_no(text: str) -> float | None:
    """1.0 / 0.0 from an answer's first word; None when it is neither."""
    m = _FIRST_WORD.search(text.lower())
    if m is None:
        return None
    return 1.0 if m[0] in _YES else 0.0 if m[0] in _NO else None


def parse_rating(text: str) -> float | None:
    """The first number in the answer if it lies in [1, RATING_MAX]; None otherwise."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    value = float(m[1])
    return value if 1 <= value <= RATING_MAX else None


def score_answer(answer: Answer, kind: str) -> tuple[float | None, str]:
    """(score in [0, 1] or None, failure reason: '' | 'no_answer' | 'malformed')."""
    if answer.error:
        return None, "no_answer"
    if answer.first_token_logprobs:
        value = yes_probability(answer.first_token_logprobs) if kind == "yesno" else expected_rating(answer.first_token_logprobs)
        if value is not None:
            return (value if kind == "yesno" else value / RATING_MAX), ""
    value = parse_yes_no(answer.text) if kind == "yesno" else parse_rating(answer.text)
    if value is None:
        return None, "malformed"
    return (value if kind == "yesno" else value / RATING_MAX), ""


@dataclass
class FailureCount:
    """Malformed or missing answers seen so far, by reason (a reward's running tally)."""

    asked: int = 0
    failed: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())
