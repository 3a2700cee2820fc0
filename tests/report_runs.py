"""Small run folders in the layouts the commands write, built in seconds without a generator.

The sets are ground-truth renders (the oracle passes them) and a "tuned" copy with some images
blanked (the oracle fails those), so the protocol's tables (`compare_runs`, `evaluate_winrate`
with a model-free reward) hold real, non-trivial numbers. The training logs are written row by
row as the trainers write them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from rewardiff.eval.compare import compare_runs
from rewardiff.eval.oracle_eval import evaluate_with_oracle
from rewardiff.eval.winrate import evaluate_winrate
from rewardiff.io_utils import load_image, save_png
from rewardiff.shapes.dataset import render_dataset

PROMPTS = ["a red circle", "a blue square and a yellow triangle", "three green circles", "a red square left of a blue circle"]
REWARD = "jpeg_compressibility"  # needs no model: the win-rate column is real and fast


def write_prompts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def rendered_set(out: Path, num_images: int = 2) -> Path:
    return render_dataset(str(write_prompts(out.parent / f"{out.name}_prompts")), num_images, 0, out)


def blanked_copy(src: Path, out: Path, every: int = 3) -> Path:
    """`src` with every `every`-th image blanked to white (the oracle fails it): a worse 'tuned' set."""
    shutil.copytree(src, out)
    for n, row in enumerate(r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())):
        if n % every == 0:
            image = load_image(out / row["image"])
            save_png(out / row["image"], np.full_like(image, 255))
    for stale in ("oracle_eval.json", "oracle_eval.md", "oracle_verdicts.jsonl"):
        (out / stale).unlink(missing_ok=True)
    return out / "metadata.jsonl"


def evaluated(meta: Path, judge: float, base: Path | None = None) -> dict:
    """Oracle table, paired comparison and win rate against `base`, as `evaluate_model` writes eval.json."""
    rep, _ = evaluate_with_oracle(meta)
    result = {"lora": None, "metadata": str(meta), "oracle": rep.to_dict(), "judge": {"score": judge}}
    if base is not None:
        comparisons, _ = compare_runs(base, meta, rewards=[REWARD], out=meta.parent / "compare", progress=False)
        result["compare"] = comparisons[0].to_dict()
        wr, _ = evaluate_winrate(base, meta, REWARD, out=meta.parent / "winrate", progress=False)
        result["winrate"] = wr.to_dict()
    (meta.parent / "eval.json").write_text(json.dumps(result))
    return result


def generate_pair(root: Path) -> tuple[Path, Path]:
    """A `generate` base folder and a tuned folder holding compare/ and winrate/ against it."""
    base = rendered_set(root / "base")
    tuned = blanked_copy(base.parent, root / "tuned")
    compare_runs(base, tuned, rewards=[REWARD], progress=False)
    evaluate_winrate(base, tuned, REWARD, progress=False)
    return base.parent, tuned.parent


def train_run(root: Path, epochs: int = 4, logged: int = 4) -> Path:
    """A DDPO run folder (config.yaml, train_log.jsonl; lora.safetensors once every epoch is done)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"model": "shapes", "target": "unet", "epochs": epochs, "reward": ["clip@shapes"]}))
    rows = [{"stage": "ddpo", "epoch": e, "reward_mean": 60.0 + 3 * e, "reward_std": 10.0, "loss": 0.01 / e, "approx_kl": 0.5 * e, "clipfrac": 0.2}
            for e in range(1, logged + 1)]
    (root / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if logged >= epochs:
        (root / "lora.safetensors").write_bytes(b"")  # its presence marks the run finished
        (root / "summary.json").write_text(json.dumps({"target": "unet", "epochs": epochs, "reward_last_epoch": rows[-1]["reward_mean"]}))
    return root


def self_reward_run(root: Path, rounds: int = 2, base_dir: Path | None = None) -> Path:
    """A self-reward run: base_eval/, round_k/{train,eval/scale_1}, summary.json (all rounds done)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"model": "shapes", "rounds": rounds, "candidates": 2,
                                                      "eval": {"base_dir": str(base_dir) if base_dir else ""}}))
    if base_dir is None:
        base_dir = root / "base_eval"
        evaluated(rendered_set(base_dir), judge=2.0)
    base_meta = base_dir / "metadata.jsonl"
    for k in range(1, rounds + 1):
        rd = root / f"round_{k}"
        (rd / "train" / "lora").mkdir(parents=True)
        (rd / "train" / "lora" / "lora.safetensors").write_bytes(b"")
        rows = [{"stage": "sft", "step": s, "loss": 0.5 / s + 0.1 * k, "grad_norm": 0.2} for s in range(1, 4)]
        (rd / "train" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        tuned = blanked_copy(base_dir, rd / "eval" / "scale_1", every=4 - k)
        for stale in ("eval.json", "compare", "winrate"):
            p = tuned.parent / stale
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        evaluated(tuned, judge=2.0 + 0.1 * k, base=base_meta)  # the judge rises while the oracle falls: hacking
    (root / "summary.json").write_text(json.dumps({"rounds": rounds}))
    return root


def demo_run(root: Path) -> Path:
    """The demo layout: base/ (generated + oracle), self_reward/ sharing base/ as its base."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"out": str(root), "self_reward_round": True, "best_of": 1}))
    evaluated(rendered_set(root / "base"), judge=2.0)
    self_reward_run(root / "self_reward", rounds=1, base_dir=root / "base")
    return root


def assert_tables_hold_json(tables: list[dict]) -> int:
    """Every compare table ({"metric", "source", "rows": {category: {cell class: text}}}) shows its compare.json's numbers (3 decimals); returns how many cells were checked."""
    checked = 0
    for table in tables:
        data = json.loads(Path(table["source"]).read_text())
        comp = next(c for c in data["comparisons"] if c["metric"] == table["metric"])
        for cat, cell in [*comp["categories"].items(), ("overall", comp["overall"])]:
            row = table["rows"][cat]
            assert float(row["base"]) == pytest.approx(cell["base"], abs=5e-4)
            assert float(row["tuned"]) == pytest.approx(cell["tuned"], abs=5e-4)
            assert float(row["change"]) == pytest.approx(cell["change"], abs=5e-4)
            assert float(row["ci_low"]) == pytest.approx(cell["ci_low"], abs=5e-4)
            assert float(row["ci_high"]) == pytest.approx(cell["ci_high"], abs=5e-4)
            assert int(row["images"]) == cell["images"] and row["verdict"] == cell["verdict"]
            checked += 1
    return checked
