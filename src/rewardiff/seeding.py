"""Per-image seeds: one independent, reproducible noise per (base seed, prompt, image index).

Reusing seed S+k for image k of *every* prompt correlates all prompts through one initial noise,
so an evaluation's effective sample size shrinks to about the number of seeds. Deriving the seed
from the prompt text as well keeps runs reproducible and paired (base and tuned models draw the
same noise for the same (prompt, k)) while making images of different prompts independent.
"""

from __future__ import annotations

import hashlib

SEED_SCHEME = "sha256(seed,prompt,index,candidate)"
"""Recorded in every run's signature so runs made with another scheme are never mixed."""


def image_seed(seed: int, prompt: str, index: int, candidate: int = 0) -> int:
    """A 31-bit seed for image `index` of `prompt` (candidate j of best-of-N; candidate 0 is the
    plain image, so a best-of-N run contains the base run's sample as one of its candidates)."""
    key = f"rewardiff-seed:{int(seed)}:{int(index)}:{int(candidate)}:{prompt}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % (2**31 - 1)
