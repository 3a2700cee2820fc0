"""`rewardiff eval compare`: paired per-category deltas with bootstrap CIs — the evaluation protocol.

Two generated sets of the same prompts and image indices (and so the same seeds: base and tuned
see the same noise) are paired image by image. Per category the change is the mean of
(tuned - base) over its images (oracle pass 0/1, or a reward); overall is the mean over
categories (as GenEval). The 95% interval comes from a two-level paired bootstrap: prompts are
resampled within each category, then images within each drawn prompt (images of one prompt
share the prompt's difficulty, so resampling images alone would overstate the precision).
A change whose interval contains 0 is reported as "no measurable change".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rewardiff.errors import RewardiffError
from rewardiff.generation import load_metadata
from rewardiff.io_utils import atomic_write_text, load_image, read_jsonl, write_json

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
RESULT_JSON, RESULT_MD = "compare.json", "compare.md"
ORACLE = "oracle"
NOT_SHAPES = "all"
"""The one category of prompts outside the shapes world (no oracle, no per-category split)."""


@dataclass
class Delta:
    """One paired change with its interval."""

    base: float
    tuned: float
    change: float
    ci_low: float
    ci_high: float
    images: int
    prompts: int

    @property
    def verdict(self) -> str:
        if self.ci_low > 0:
            return "gain"
        if self.ci_high < 0:
            return "loss"
        return "no measurable change"


@dataclass
class Comparison:
    metric: str  # 'oracle' (pass rate) or a reward spec
    categories: dict[str, Delta]
    overall: Delta
    samples: int = BOOTSTRAP_SAMPLES
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        cell = lambda d: {**asdict(d), "verdict": d.verdict}  # noqa: E731
        return {"metric": self.metric, "bootstrap_samples": self.samples, "confidence": CONFIDENCE,
                "categories": {c: cell(d) for c, d in self.categories.items()}, "overall": cell(self.overall)}

    @classmethod
    def from_dict(cls, data: dict) -> "Comparison":
        """The inverse of to_dict (a finished run's compare.json read back for printing)."""
        fields = ("base", "tuned", "change", "ci_low", "ci_high", "images", "prompts")
        cell = lambda d: Delta(**{k: d[k] for k in fields})  # noqa: E731
        return cls(data["metric"], {c: cell(d) for c, d in data["categories"].items()}, cell(data["overall"]),
                   data.get("bootstrap_samples", BOOTSTRAP_SAMPLES))

    def markdown(self) -> str:
        lines = [f"Paired change by {self.metric} (95% CI: bootstrap over prompts, then images within prompts):", "",
                 "| category | images | base | tuned | change | 95% CI | verdict |", "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
        rows = [*self.categories.items(), ("**overall**", self.overall)]
        for cat, d in rows:
            lines.append(f"| {cat} | {d.images} | {d.base:.3f} | {d.tuned:.3f} | {d.change:+.3f} | [{d.ci_low:+.3f}, {d.ci_high:+.3f}] | {d.verdict} |")
        return "\n".join(lines)


def pair_rows(rows_base: list[dict], rows_tuned: list[dict]) -> list[tuple[int, int]]:
    """(base row, tuned row) index pairs matched by (prompt, image index); refuses any mismatch.

    Both sets must hold the same (prompt, index) keys with the same seeds: otherwise the pairing
    (and so the interval) would be wrong, and the first mismatch is named.
    """
    def key(r: dict) -> tuple[str, int]:
        return (r["prompt"], int(r.get("index", 0)))

    tuned = {}
    for j, r in enumerate(rows_tuned):
        if key(r) in tuned:
            raise RewardiffError(f"tuned set: ({r['prompt']!r}, image {key(r)[1]}) appears twice")
        tuned[key(r)] = j
    pairs, seen = [], set()
    for i, r in enumerate(rows_base):
        k = key(r)
        if k in seen:
            raise RewardiffError(f"base set: ({r['prompt']!r}, image {k[1]}) appears twice")
        seen.add(k)
        if k not in tuned:
            raise RewardiffError(f"base image ({r['prompt']!r}, image {k[1]}) has no tuned twin; generate both sets with the same prompts and --num-images")
        t = rows_tuned[tuned[k]]
        if r.get("seed") != t.get("seed") and not (r.get("best_of", 1) > 1 or t.get("best_of", 1) > 1):
            raise RewardiffError(f"({r['prompt']!r}, image {k[1]}): seed {r.get('seed')} in base, {t.get('seed')} in tuned; generate both with the same --seed")
        pairs.append((i, tuned[k]))
    extra = set(tuned) - seen
    if extra:
        p, n = sorted(extra)[0]
        raise RewardiffError(f"tuned image ({p!r}, image {n}) has no base twin ({len(extra)} such images)")
    return pairs


def category_of(prompt: str) -> str:
    """The shapes category of a prompt, or NOT_SHAPES for prompts outside the shapes world."""
    from rewardiff.shapes.prompts import UnsupportedPromptError, parse_prompt

    try:
        return parse_prompt(prompt).category
    except UnsupportedPromptError:
        return NOT_SHAPES


def paired_delta(base: np.ndarray, tuned: np.ndarray, prompts: list[str], categories: list[str],
                 samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[dict[str, Delta], Delta]:
    """Per-category and overall (mean over categories) paired changes with two-level bootstrap CIs."""
    base, tuned = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if not (np.isfinite(base).all() and np.isfinite(tuned).all()):
        bad = int(np.flatnonzero(~(np.isfinite(base) & np.isfinite(tuned)))[0])
        raise RewardiffError(f"non-finite value for prompt {prompts[bad]!r}")
    rng = np.random.default_rng(seed)
    per_cat: dict[str, Delta] = {}
    boot = []
    for cat in dict.fromkeys(categories):
        idx = np.array([i for i, c in enumerate(categories) if c == cat])
        names = list(dict.fromkeys(prompts[i] for i in idx))
        groups = [idx[[prompts[i] == p for i in idx]] for p in names]
        width = max(len(g) for g in groups)
        diff = np.zeros((len(groups), width))
        count = np.array([len(g) for g in groups])
        for row, g in enumerate(groups):
            diff[row, : len(g)] = tuned[g] - base[g]
        pick = rng.integers(0, len(groups), size=(samples, len(groups)))  # prompts within the category
        within = (rng.random((samples, len(groups), width)) * count[pick][..., None]).astype(int)  # images within a prompt
        valid = np.arange(width)[None, None, :] < count[pick][..., None]
        values = np.take_along_axis(diff[pick], within, axis=2)
        means = (values * valid).sum(axis=(1, 2)) / valid.sum(axis=(1, 2))
        boot.append(means)
        lo, hi = _interval(means)
        per_cat[cat] = Delta(float(base[idx].mean()), float(tuned[idx].mean()), float((tuned[idx] - base[idx]).mean()),
                             lo, hi, len(idx), len(groups))
    overall_boot = np.mean(boot, axis=0)
    lo, hi = _interval(overall_boot)
    b = float(np.mean([d.base for d in per_cat.values()]))
    t = float(np.mean([d.tuned for d in per_cat.values()]))
    overall = Delta(b, t, t - b, lo, hi, len(base), len(set(prompts)))
    return per_cat, overall


def _interval(values: np.ndarray) -> tuple[float, float]:
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def oracle_passes(rows: list[dict], root: Path) -> np.ndarray:
    """0/1 oracle verdict per row (evaluation only)."""
    from rewardiff.shapes.oracle import judge

    out = np.zeros(len(rows))
    for n, row in enumerate(rows):
        try:
            out[n] = float(judge(load_image(root / row["image"]), row["prompt"]).passed)
        except (FileNotFoundError, ValueError) as e:
            raise RewardiffError(f"row {n + 1} ({row['image']}): {e}") from None
    return out


def compare_runs(base: str | Path, tuned: str | Path, rewards: list[str] | None = None, oracle: bool = True,
                 out: str | Path | None = None, device: str = "cpu", batch_size: int = 64, progress: bool = True) -> tuple[list[Comparison], Path]:
    """Compare two generated sets by the oracle (shapes prompts) and by each reward; write compare.{json,md}."""
    from rewardiff.rewards.scoring import score_metadata

    rows_b, root_b = load_metadata(base)
    rows_t, root_t = load_metadata(tuned)
    pairs = pair_rows(rows_b, rows_t)
    rb = [rows_b[i] for i, _ in pairs]
    rt = [rows_t[j] for _, j in pairs]
    prompts = [r["prompt"] for r in rb]
    categories = [category_of(p) for p in prompts]
    out_dir = Path(out) if out is not None else root_t / "compare"
    results: list[Comparison] = []
    if oracle and all(c != NOT_SHAPES for c in categories):
        cats, overall = paired_delta(oracle_passes(rb, root_b), oracle_passes(rt, root_t), prompts, categories)
        results.append(Comparison(ORACLE, cats, overall))
    for spec in rewards or []:
        values = []
        for name, meta, rows in (("base", base, rows_b), ("tuned", tuned, rows_t)):
            path = score_metadata(meta, [spec], device=device, batch_size=batch_size, out=out_dir / _safe(spec) / name, progress=progress)
            by_image = {r["image"]: float(r["total"]) for r in read_jsonl(path)}
            values.append(np.array([by_image[r["image"]] for r in (rb if name == "base" else rt)]))
        cats, overall = paired_delta(values[0], values[1], prompts, categories)
        results.append(Comparison(spec, cats, overall))
    if not results:
        raise RewardiffError("nothing to compare: the prompts are not shapes prompts (no oracle) and no --reward was given")
    write_json(out_dir / RESULT_JSON, {"base": str(base), "tuned": str(tuned), "comparisons": [c.to_dict() for c in results]})
    atomic_write_text(out_dir / RESULT_MD, "\n\n".join(c.markdown() for c in results) + "\n")
    return results, out_dir


def _safe(spec: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec)


def load_comparison(path: str | Path) -> dict:
    return json.loads((Path(path) / RESULT_JSON).read_text())
