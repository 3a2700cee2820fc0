"""`rewardiff eval winrate`: the CCSR paper's Fig. 3 protocol, with a bootstrap confidence interval.

Two generated sets of the same prompts and seeds (base and tuned) are scored by one reward (CLIP
score by default). Per (prompt, seed):

    d = score(tuned) - score(base);   win if d > +TIE_MARGIN, loss if d < -TIE_MARGIN, else tie

Win rate = wins / (wins + losses) (the share of non-tied pairs the tuned model wins). Its 95%
interval comes from a bootstrap over prompts (resampling whole prompts keeps the seeds of one
prompt together, since they are not independent).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rewardiff.errors import RewardiffError
from rewardiff.eval.compare import NOT_SHAPES, category_of
from rewardiff.generation import load_metadata
from rewardiff.io_utils import atomic_write_text, read_jsonl, write_json

TIE_MARGIN = 0.01
"""|d| <= this is a tie (the paper's +-0.01 on the CLIP score)."""
BOOTSTRAP_SAMPLES = 2000  # resamples of the prompt set for the interval
CONFIDENCE = 0.95  # two-sided interval level
RESULT_JSON, RESULT_MD, RESULT_PNG = "winrate.json", "winrate.md", "winrate.png"


@dataclass
class WinRate:
    """Counts, shares and the bootstrap interval of one tuned-vs-base comparison."""

    reward: str  # the reward spec that scored both sets
    pairs: int  # matched (prompt, seed) pairs
    prompts: int
    wins: int
    ties: int
    losses: int
    win_rate: float  # wins / (wins + losses); nan when every pair is a tie
    ci_low: float  # bootstrap interval of win_rate over prompts
    ci_high: float
    mean_base: float  # mean reward of each set over the matched pairs
    mean_tuned: float
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)  # shapes prompts only

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        lines = [
            f"Win rate of tuned vs base by {self.reward} ({self.pairs} (prompt, seed) pairs over {self.prompts} prompts; tie if |d| <= {TIE_MARGIN}):",
            "",
            "| wins | ties | losses | win rate (non-tied) | 95% CI | mean base | mean tuned |",
            "| ---: | ---: | ---: | ---: | --- | ---: | ---: |",
            f"| {self.wins} | {self.ties} | {self.losses} | {self.win_rate:.3f} | [{self.ci_low:.3f}, {self.ci_high:.3f}] | {self.mean_base:.3f} | {self.mean_tuned:.3f} |",
        ]
        if self.per_category:
            lines += ["", "| category | wins | ties | losses | win rate |", "| --- | ---: | ---: | ---: | ---: |"]
            for cat, c in self.per_category.items():
                lines.append(f"| {cat} | {int(c['wins'])} | {int(c['ties'])} | {int(c['losses'])} | {c['win_rate']:.3f} |")
        return "\n".join(lines)


def outcomes(base: np.ndarray, tuned: np.ndarray, margin: float = TIE_MARGIN) -> np.ndarray:
    """+1 win, 0 tie, -1 loss per pair (|d| == margin up to float rounding is a tie)."""
    d = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    edge = margin + 1e-9
    return np.where(d > edge, 1, np.where(d < -edge, -1, 0))


def _rate(out: np.ndarray) -> float:
    wins, losses = int((out == 1).sum()), int((out == -1).sum())
    return wins / (wins + losses) if wins + losses else float("nan")


def bootstrap_ci(out: np.ndarray, groups: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the win rate when whole groups (prompts) are resampled."""
    ids = np.unique(groups)
    by_group = [out[groups == g] for g in ids]
    wins = np.array([(o == 1).sum() for o in by_group])
    losses = np.array([(o == -1).sum() for o in by_group])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(samples, len(ids)))
    w, l = wins[pick].sum(axis=1), losses[pick].sum(axis=1)
    rates = w[w + l > 0] / (w + l)[w + l > 0]
    if len(rates) == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(rates, alpha)), float(np.quantile(rates, 1 - alpha))


def compare(rows_base: list[dict], scores_base: list[float], rows_tuned: list[dict], scores_tuned: list[float], reward: str) -> WinRate:
    """Pair rows by (prompt, seed) and count outcomes; every base pair must have a tuned twin."""
    tuned = {(r["prompt"], r.get("seed")): s for r, s in zip(rows_tuned, scores_tuned)}
    keys, b, t = [], [], []
    for r, s in zip(rows_base, scores_base):
        key = (r["prompt"], r.get("seed"))
        if key in tuned:
            keys.append(key)
            b.append(s)
            t.append(tuned[key])
    if not keys:
        raise RewardiffError("win rate: no (prompt, seed) pair appears in both sets; generate both with the same prompts and --seed")
    if len(keys) < len(rows_base):
        missing = len(rows_base) - len(keys)
        raise RewardiffError(f"win rate: {missing} of {len(rows_base)} base images have no tuned image with the same (prompt, seed)")
    out = outcomes(np.array(b), np.array(t))
    prompts = sorted({k[0] for k in keys})
    groups = np.array([prompts.index(k[0]) for k in keys])
    lo, hi = bootstrap_ci(out, groups)
    per_cat: dict[str, dict[str, float]] = {}
    cats = [category_of(k[0]) for k in keys]
    if all(c != NOT_SHAPES for c in cats):
        for cat in dict.fromkeys(cats):
            o = out[np.array([c == cat for c in cats])]
            per_cat[cat] = {"wins": int((o == 1).sum()), "ties": int((o == 0).sum()), "losses": int((o == -1).sum()), "win_rate": _rate(o)}
    return WinRate(reward, len(keys), len(prompts), int((out == 1).sum()), int((out == 0).sum()), int((out == -1).sum()),
                   _rate(out), lo, hi, float(np.mean(b)), float(np.mean(t)), per_cat)


def default_reward(rows: list[dict]) -> str:
    """clip@shapes for the shapes generator's images, the hub CLIP otherwise."""
    return "clip@shapes" if all(r.get("model") == "shapes" for r in rows) else "clip"


def evaluate_winrate(base: str | Path, tuned: str | Path, reward: str | None = None, out: str | Path | None = None,
                     device: str = "cpu", batch_size: int = 64, progress: bool = True, scorer=None) -> tuple[WinRate, Path]:
    """Score both sets (scores.jsonl in OUT/base and OUT/tuned), compare, write winrate.{json,md}.

    out defaults to TUNED_DIR/winrate. `scorer` may be an already-built reward (WeightedSum)."""
    from rewardiff.rewards.registry import build_rewards
    from rewardiff.rewards.scoring import score_metadata

    rows_b, root_b = load_metadata(base)
    rows_t, root_t = load_metadata(tuned)
    spec = reward or default_reward(rows_b)
    out_dir = Path(out) if out is not None else root_t / "winrate"
    scorer = scorer if scorer is not None else build_rewards([spec], device=device)
    scores = {}
    for name, meta in (("base", base), ("tuned", tuned)):
        path = score_metadata(meta, [spec], device=device, batch_size=batch_size, out=out_dir / name, progress=progress, reward=scorer)
        scores[name] = [float(r["total"]) for r in read_jsonl(path)]
    result = compare(rows_b, scores["base"], rows_t, scores["tuned"], spec)
    write_json(out_dir / RESULT_JSON, {"base": str(base), "tuned": str(tuned), "tie_margin": TIE_MARGIN,
                                       "bootstrap_samples": BOOTSTRAP_SAMPLES, **result.to_dict()})
    atomic_write_text(out_dir / RESULT_MD, result.markdown() + "\n")
    write_winrate_plot(result, out_dir / RESULT_PNG)
    return result, out_dir


def write_winrate_plot(result: WinRate, path: Path) -> Path:
    """Win / tie / loss bars, overall and per category (the README's PNG of `eval winrate`)."""
    from rewardiff.eval.plots import bar_plot

    bars = {"overall": {"win": result.wins, "tie": result.ties, "loss": result.losses}}
    bars.update({c: {"win": v["wins"], "tie": v["ties"], "loss": v["losses"]} for c, v in result.per_category.items()})
    return bar_plot(bars, path, f"tuned vs base by {result.reward}: wins / ties / losses", "pairs")


def load_winrate(path: str | Path) -> dict:
    return json.loads((Path(path) / RESULT_JSON).read_text())
