"""Train one LoRA on the judgements of finished CCSR rounds, with another selection or recipe than
the run used: how much of a round's judged data helps, and with which loss. The loop's own
pieces (`select`, `training_examples`, `train_lora`); no new candidates, no oracle. Evaluate with
`rewardiff generate --lora OUT/lora/lora.safetensors` + `rewardiff eval oracle` (docs/self_reward.md).

    .venv/bin/python scripts/experiments/train_on_judgements.py --rounds RUN/round_1 RUN/round_2 \\
        --keep-per-prompt 10 --pairing kept_vs_dropped --set loss=dpo --set lr=5e-4 --set steps=300 --out runs/x
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rewardiff.algorithms.sft import SFTConfig, train_lora
from rewardiff.config import load_config
from rewardiff.io_utils import read_jsonl
from rewardiff.judges.self_judge import PAIRINGS, select
from rewardiff.loop.self_reward import training_examples
from rewardiff.models.pipeline import load_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", nargs="+", required=True, help="round folders holding judgements.jsonl and candidates/")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="shapes")
    p.add_argument("--keep-per-prompt", type=int, default=1)
    p.add_argument("--min-pair-gap", type=float, default=0.05)
    p.add_argument("--pairing", choices=PAIRINGS, default="best_worst")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="SFTConfig field, e.g. loss=dpo, lr=5e-4, timesteps=[0.6,1.0]")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(SFTConfig, overrides=a.set)
    examples = []
    for folder in map(Path, a.rounds):
        selected, pairs = select(list(read_jsonl(folder / "judgements.jsonl")), a.keep_per_prompt, a.min_pair_gap, a.pairing)
        examples += training_examples(cfg.loss, pairs if cfg.loss == "dpo" else selected, folder / "candidates")
    print(json.dumps({"examples": len(examples), "loss": cfg.loss}))
    pipe, _ = load_pipeline(a.model)
    print(train_lora(pipe, examples, cfg, a.out))


if __name__ == "__main__":
    main()
