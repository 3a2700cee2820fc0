"""Self-judging (CCSR step 3): caption + detect each candidate, combine into one judged score,
filter by thresholds, select the best candidate per prompt and the best-vs-worst pairs.

The judged score and its components (caption, detection, count, relation, clip, clip_margin;
table in `rewardiff.rewards.judged`) come from `SelfJudge`, which is defined there, below the
reward registry, so the `judge` reward is built by name without rewards importing this
package; it is re-exported here.

A candidate is *kept* when its score >= min_score and every component named in `thresholds` is
at least its value (count: 1.0 and relation: 1.0 = the detector sees exactly the asked objects in
the asked relation; the paper's image-filtering step). Per prompt: the best kept candidates (keep_per_prompt) form the SFT set; the best
and the worst candidate form a preference pair (Diffusion-DPO) when their scores differ by at
least min_pair_gap (`pairing: kept_vs_dropped`: every kept candidate against every dropped one). Every judgement (components, caption, detections) is written to
judgements.jsonl so a person can audit why an image was chosen. No oracle is ever called here.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rewardiff.errors import RewardiffError
from rewardiff.runtime import Runtime
from rewardiff.rewards.judged import (  # noqa: F401  (re-exported: the scorer's public names)
    COMPONENTS,
    JudgeConfig,
    Judgement,
    SelfJudge,
    count_score,
    expected_counts,
    prompt_relation,
    relation_score,
)


def judge_rows(judge: SelfJudge, rows: list[dict], root: Path, batch_size: int, progress: bool = True, desc: str = "judge",
               runtime: Runtime | None = None) -> list[dict]:
    """Judge every metadata row's image; returns judgement rows (metadata fields + judgement).
    With a `runtime` (accelerate launch) each process judges its part in whole batches and every
    process gets every judgement, in the rows' order; without one, this process judges all."""
    if runtime is not None:
        return runtime.map_parts(lambda part: judge_rows(judge, part, root, batch_size, progress, desc), rows, chunk=batch_size)
    from tqdm.auto import tqdm

    from rewardiff.io_utils import load_image

    out = []
    bar = tqdm(total=len(rows), desc=desc, unit="img", disable=not progress)
    for s in range(0, len(rows), batch_size):
        batch = rows[s : s + batch_size]
        images = torch.from_numpy(np.stack([load_image(root / r["image"]) for r in batch])).permute(0, 3, 1, 2).float() / 255.0
        for r, j in zip(batch, judge.judge(images, [r["prompt"] for r in batch])):
            out.append({"prompt": r["prompt"], "image": r["image"], "seed": r.get("seed"), "prompt_index": r.get("prompt_index"), **asdict(j)})
        bar.update(len(batch))
    bar.close()
    return out


PAIRINGS = ("best_worst", "kept_vs_dropped")


def check_pairing(pairing: str, max_pairs_per_prompt: int) -> None:
    """Refuse an unknown pairing or a negative cap (the loop calls it before any candidate exists)."""
    if pairing not in PAIRINGS:
        raise RewardiffError(f"judge.pairing must be one of {PAIRINGS}, got {pairing!r}")
    if max_pairs_per_prompt < 0:
        raise RewardiffError(f"judge.max_pairs_per_prompt must be >= 0 (0 = all), got {max_pairs_per_prompt}")


def select(judgements: list[dict], keep_per_prompt: int = 1, min_pair_gap: float = 0.05, pairing: str = "best_worst",
           max_pairs_per_prompt: int = 0) -> tuple[list[dict], list[dict]]:
    """(SFT set: the best kept candidates of each prompt, DPO pairs).

    best_worst gives at most one pair per prompt, the paper's optimal image against the worst.
    kept_vs_dropped pairs every candidate the thresholds kept with every one they dropped: the
    same judgements give several times the preference signal, and each pair contrasts a
    judged-correct image with a judged-wrong one rather than two near-equal images."""
    check_pairing(pairing, max_pairs_per_prompt)
    by_prompt: dict[str, list[dict]] = {}
    for j in judgements:
        by_prompt.setdefault(j["prompt"], []).append(j)
    chosen, pairs = [], []
    for prompt, cands in by_prompt.items():
        ranked = sorted(cands, key=lambda j: (-j["score"], j.get("seed") or 0))
        chosen += [j for j in ranked if j["kept"]][:keep_per_prompt]
        if pairing == "best_worst":
            won_lost = [(ranked[0], ranked[-1])] if len(ranked) > 1 and ranked[0]["kept"] else []
        else:
            won_lost = [(w, l) for w in ranked if w["kept"] for l in ranked if not l["kept"]]
            won_lost.sort(key=lambda wl: -(wl[0]["score"] - wl[1]["score"]))  # stable: ties keep rank order
            if max_pairs_per_prompt:
                won_lost = won_lost[:max_pairs_per_prompt]
        pairs += [{"prompt": prompt, "chosen": w["image"], "rejected": l["image"], "chosen_score": w["score"], "rejected_score": l["score"]}
                  for w, l in won_lost if w["score"] - l["score"] >= min_pair_gap]
    return chosen, pairs


def mean_components(judgements: list[dict]) -> dict[str, float]:
    """Mean judged score and components (a round's 'judge says' line)."""
    if not judgements:
        return {}
    out = {"score": float(np.mean([j["score"] for j in judgements]))}
    for k in COMPONENTS:
        out[k] = float(np.mean([j["components"][k] for j in judgements]))
    return {k: v for k, v in out.items() if not math.isnan(v)}
