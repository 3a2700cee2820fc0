"""A simulated, noisy human rater for the shapes world's synthetic preference set.

Real preference data (ImageRewardDB, Pick-a-Pic, HPD) comes from people who look at k images for a
prompt and rank them; they mostly reward prompt faithfulness and clean images, but they disagree
with each other and with themselves (ImageReward reports ~65% agreement between annotators). This
module stands in for those people when we build the shapes preference set, and only there: it
labels a dataset once, and the reward model never sees anything but that dataset.

It is NOT the oracle (`rewardiff.shapes.oracle`, evaluation only, never imported here): the rater
forms soft, coarse impressions instead of pass/fail checks -

- colour mass: how much of each asked-for colour is on the canvas, against what the asked objects
  would cover;
- count: blobs of each asked colour, compared with how many were asked for (a soft penalty);
- shape: the fill ratio of a colour's blobs in their boxes against the asked shape's typical fill
  (disc ~0.79, square ~1.0, triangle ~0.5), blurred;
- position: where the mass of one asked colour sits against the other, squashed by a sigmoid;
- extras: mass of colours nobody asked for;
- cleanliness: share of ink that is no palette colour (blends, smudges) and specks;

then adds Gaussian noise per judgement (rater inconsistency) and calls two images a tie when their
noisy utilities are within a margin. `rater_agreement` measures how often two independent raters
agree on the order of a pair, so the set's noise level is reported, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rewardiff.shapes.palette import BACKGROUND, COLORS
from rewardiff.shapes.pixels import connected_components
from rewardiff.shapes.prompts import parse_prompt

_COLOR_NAMES = list(COLORS)
_PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)
TYPICAL_FILL = {"circle": 0.79, "square": 1.0, "triangle": 0.5}
"""Share of its bounding box a drawn shape covers; what a rater's eye calls round, square, pointed."""
TYPICAL_OBJECT_PIXELS = 55.0
"""Roughly the pixels one drawn object covers (boxes are 7-11 px): how much colour an object 'should' show."""
SPECK_PIXELS = 6
"""Blobs smaller than this read as specks of dirt, not objects."""


@dataclass
class LabellerConfig:
    """How the simulated rater weighs what it sees, and how noisy it is."""

    faithfulness_weight: float = 1.0  # weight of prompt faithfulness in the utility
    cleanliness_weight: float = 0.5  # weight of image cleanliness in the utility
    noise_std: float = 0.15  # std of the Gaussian noise added per judgement (utility units)
    tie_margin: float = 0.03  # noisy utilities closer than this are ranked as a tie
    colour_tolerance: float = 70.0  # RGB distance within which the rater sees a palette colour
    fill_blur: float = 0.15  # tolerance of the shape impression (fill-ratio units)
    position_softness: float = 2.0  # pixels; sigmoid width of the position impression
    seed: int = 0  # the rater's noise stream


def _colour_map(image: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: palette index (0 = background, 1.. = COLORS) and whether it is unclear ink."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    dist = np.linalg.norm(pixels[:, None, :] - _PALETTE[None], axis=-1)
    nearest = dist.argmin(1)
    unclear = dist.min(1) > tolerance
    nearest[unclear] = 0
    h, w = image.shape[:2]
    return nearest.reshape(h, w), unclear.reshape(h, w)


def _blobs(mask: np.ndarray) -> list[tuple[int, float]]:
    """4-connected blobs of a boolean mask: (pixels, fill ratio of the bounding box)."""
    out = []
    for pix in connected_components(mask, connectivity=4):
        ys, xs = pix[:, 0], pix[:, 1]
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        out.append((len(pix), len(pix) / box))
    return out


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def perceived_quality(image: np.ndarray, prompt: str, cfg: LabellerConfig) -> tuple[float, float]:
    """The rater's noiseless impression: (faithfulness, cleanliness), each roughly in [0, 1]."""
    spec = parse_prompt(prompt)
    labels, unclear = _colour_map(image, cfg.colour_tolerance)
    wanted: dict[str, list[str]] = {}
    for colour, shape in spec.objects:
        wanted.setdefault(colour, []).append(shape)

    terms, centres = [], {}
    for colour, shapes in wanted.items():
        mask = labels == 1 + _COLOR_NAMES.index(colour)
        mass = float(mask.sum())
        terms.append(min(1.0, mass / (0.6 * TYPICAL_OBJECT_PIXELS * len(shapes))))
        blobs = [b for b in _blobs(mask) if b[0] >= SPECK_PIXELS]
        terms.append(float(np.exp(-abs(len(blobs) - len(shapes)))))
        if blobs:
            fill = float(np.average([f for _, f in blobs], weights=[p for p, _ in blobs]))
            target = float(np.mean([TYPICAL_FILL[s] for s in shapes]))
            terms.append(float(np.exp(-(((fill - target) / cfg.fill_blur) ** 2))))
        else:
            terms.append(0.0)
        if mass:
            ys, xs = np.nonzero(mask)
            centres[colour] = (xs.mean(), ys.mean())

    if spec.relation is not None:
        (c1, _), (c2, _) = spec.objects
        if c1 in centres and c2 in centres and c1 != c2:
            (x1, y1), (x2, y2) = centres[c1], centres[c2]
            offset = {"left of": x2 - x1, "right of": x1 - x2, "above": y2 - y1, "below": y1 - y2}[spec.relation]
            terms.append(_sigmoid((offset - 3.0) / cfg.position_softness))
        else:
            terms.append(0.0)

    ink = labels > 0
    other = np.isin(labels, [1 + _COLOR_NAMES.index(c) for c in _COLOR_NAMES if c not in wanted])
    extra = float(other.sum()) / max(1.0, float(ink.sum()))
    faithfulness = float(np.mean(terms)) - extra

    all_ink = float(ink.sum() + unclear.sum())
    smudge = float(unclear.sum()) / max(1.0, all_ink)
    specks = sum(1 for c in range(1, len(_PALETTE)) for p, _ in _blobs(labels == c) if p < SPECK_PIXELS)
    cleanliness = 1.0 - smudge - 0.1 * specks
    return faithfulness, cleanliness


def rank_with_ties(utilities: np.ndarray, tie_margin: float) -> list[int]:
    """1-based ranks, 1 = best; images whose utility is within `tie_margin` of the previous
    image in sorted order share its rank (dense ranking, as ImageRewardDB's ranks).

    >>> rank_with_ties(np.array([0.5, 0.9, 0.52, 0.1]), 0.05)
    [2, 1, 2, 3]
    """
    order = np.argsort(-utilities, kind="stable")
    ranks = [0] * len(utilities)
    rank, previous = 0, None
    for i in order:
        if previous is None or previous - utilities[i] > tie_margin:
            rank += 1
        ranks[int(i)] = rank
        previous = utilities[i]
    return ranks


class NoisyLabeller:
    """Ranks the k images of a prompt like one noisy human rater (see the module docstring)."""

    def __init__(self, cfg: LabellerConfig | None = None):
        self.cfg = cfg or LabellerConfig()
        self.rng = np.random.default_rng(self.cfg.seed)

    def utilities(self, images: list[np.ndarray], prompt: str) -> np.ndarray:
        """Noiseless utilities of a prompt's images (weighted faithfulness + cleanliness)."""
        c = self.cfg
        return np.array([c.faithfulness_weight * f + c.cleanliness_weight * q
                         for f, q in (perceived_quality(im, prompt, c) for im in images)])

    def rank(self, images: list[np.ndarray], prompt: str, utilities: np.ndarray | None = None) -> list[int]:
        """One noisy judgement of the images; pass precomputed `utilities` to rank them again."""
        base = self.utilities(images, prompt) if utilities is None else utilities
        noisy = base + self.rng.normal(0.0, self.cfg.noise_std, size=len(base))
        return rank_with_ties(noisy, self.cfg.tie_margin)


def rater_agreement(rankings_a: list[list[int]], rankings_b: list[list[int]]) -> float:
    """Share of image pairs ordered the same way by two raters, over pairs neither calls a tie."""
    agree = total = 0
    for ra, rb in zip(rankings_a, rankings_b):
        for i in range(len(ra)):
            for j in range(i + 1, len(ra)):
                da, db = ra[i] - ra[j], rb[i] - rb[j]
                if da and db:
                    total += 1
                    agree += (da > 0) == (db > 0)
    return agree / total if total else float("nan")
