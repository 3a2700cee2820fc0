"""Reward-model training speed on an ImageRewardDB-sized synthetic set (CPU).

    python benchmarks/bench_reward_model.py              # full size (< 10 min on 2 CPU cores)
    python benchmarks/bench_reward_model.py --scale 0.01 # 1% size (what the test runs)

ImageRewardDB: 8,878 prompts (8k train / 412 validation / 466 test), 4-9 images each
(~62k images), 136,892 non-tied pairs; CLIP ViT-L/14 embeddings are 768-d for image and text.
The synthetic set has those sizes: k drawn from {4..9} (mean 6.9), ranks drawn iid from 1..4
(so ~29% of pairs are ties) and assigned in the order of a hidden linear utility of the
embeddings, so there is something to learn. Embeddings are random unit vectors.

Prints
(a) seconds for one training epoch done two ways on the same data in the same run: the naive
    form (a batch of 256 pairs, one MLP forward per pair member: 512 rows) and the grouped form
    of algorithms/reward_model.py (whole prompts packed up to 256 pairs, one forward per image,
    pairs gathered by index), and the ratio naive / grouped;
(b) the end-to-end job: cache written and read back (safetensors), flat index built, 20 epochs
    with validation, per-epoch checkpoints and the test accuracy of the best checkpoint.
The naive form exists only here, to measure against; the library has the grouped one only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rewardiff.algorithms.reward_model import (
    Embeddings,
    PreferenceMLP,
    PreferenceTensors,
    RewardModelConfig,
    bradley_terry_loss,
    fit,
    make_optimizer,
    run_epoch,
)

PROMPTS = {"train": 8000, "validation": 412, "test": 466}  # ImageRewardDB's split sizes
EMBED_DIM = 768  # CLIP ViT-L/14 projection width
K_CHOICES, K_PROBS = np.arange(4, 10), np.array([0.1, 0.1, 0.2, 0.2, 0.2, 0.2])  # mean 6.9 images
RANK_PROBS = np.array([0.38, 0.30, 0.20, 0.12])  # ranks 1..4 drawn iid: P(tie) = sum p^2 = 0.29,
# so ~15.4 non-tied pairs per prompt, as ImageRewardDB's 136,892 / 8,878


Groups = list[tuple[int, int, list[int]]]  # per prompt: (text row, first image row, ranking)


def synthetic_set(scale: float, seed: int = 0) -> tuple[Embeddings, dict[str, Groups]]:
    """Embeddings and, per split, the rows of the index (what a real job reads from disk)."""
    rng = np.random.default_rng(seed)
    counts = {s: max(2, round(n * scale)) for s, n in PROMPTS.items()}
    n_prompts = sum(counts.values())
    ks = rng.choice(K_CHOICES, size=n_prompts, p=K_PROBS)
    n_images = int(ks.sum())

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, EMBED_DIM), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    image, text = unit(n_images), unit(n_prompts)
    w_img, w_txt = rng.standard_normal(EMBED_DIM), rng.standard_normal(EMBED_DIM)
    utility = image @ w_img + np.repeat(text @ w_txt * 0.3, ks) * (image @ w_txt)  # prompt-dependent part
    groups, first = [], 0
    for p, k in enumerate(ks):
        levels = np.sort(rng.choice(np.arange(1, len(RANK_PROBS) + 1), size=k, p=RANK_PROBS))  # best first
        ranking = np.empty(k, dtype=np.int64)
        ranking[np.argsort(-utility[first : first + k])] = levels  # best utility gets the best level
        groups.append((p, first, ranking.tolist()))
        first += k
    splits, start = {}, 0
    for name, n in counts.items():
        splits[name] = groups[start : start + n]
        start += n
    return Embeddings(torch.from_numpy(image), torch.from_numpy(text)), splits


def run_epoch_naive(model: PreferenceMLP, optimizer, emb: Embeddings, t: PreferenceTensors, batch_pairs: int,
                    generator: torch.Generator) -> float:
    """The textbook form: shuffle pairs, batch 256 pairs, one forward per pair member."""
    model.train()
    pairs = t.global_pairs()[torch.randperm(t.num_pairs, generator=generator)]
    total = 0.0
    for start in range(0, len(pairs), batch_pairs):
        batch = pairs[start : start + batch_pairs]
        loss = bradley_terry_loss(model(t.features(emb, batch[:, 0])), model(t.features(emb, batch[:, 1])))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(pairs)


def time_epochs(emb: Embeddings, train: PreferenceTensors, cfg: RewardModelConfig) -> tuple[float, float]:
    times = {}
    for name, epoch_fn in (("naive", run_epoch_naive), ("grouped", run_epoch)):
        torch.manual_seed(0)
        model = PreferenceMLP(emb.image.shape[1] + emb.text.shape[1], cfg.hidden, cfg.dropout)
        opt = make_optimizer(model, cfg)
        t0 = time.perf_counter()
        epoch_fn(model, opt, emb, train, cfg.batch_pairs, torch.Generator().manual_seed(0))
        times[name] = time.perf_counter() - t0
    return times["naive"], times["grouped"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of ImageRewardDB's size (0.01 for a smoke test)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the end-to-end job")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0 = torch's default). 1 by default: ~110-row batches gain little from "
                             "a second thread, and on a busy 2-core machine two threads ran 9x slower than one")
    parser.add_argument("--skip-epoch-ratio", action="store_true", help="only the end-to-end job")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = RewardModelConfig(epochs=args.epochs)  # the report's hyper-parameters

    t0 = time.perf_counter()
    emb, index = synthetic_set(args.scale)
    splits = {name: PreferenceTensors.from_rankings(groups) for name, groups in index.items()}
    n_img = len(emb.image)
    n_pairs = sum(t.num_pairs for t in splits.values())
    print(f"synthetic set: {len(emb.text):,} prompts, {n_img:,} images, {n_pairs:,} pairs "
          f"(train {splits['train'].num_pairs:,}), {EMBED_DIM}-d embeddings, built in {time.perf_counter() - t0:.1f}s; "
          f"torch threads {torch.get_num_threads()}")
    result: dict = {"prompts": len(emb.text), "images": n_img, "pairs": n_pairs}

    if not args.skip_epoch_ratio:
        naive, grouped = time_epochs(emb, splits["train"], cfg)
        print(f"(a) one epoch: naive per-pair {naive:.2f}s, grouped per-image {grouped:.2f}s, ratio {naive / grouped:.2f}x")
        result.update(naive_epoch_s=naive, grouped_epoch_s=grouped, ratio=naive / grouped)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = Path(tmp) / "cache.safetensors"  # the embedding cache as train-reward writes / reads it
        save_file({"image": emb.image, "text": emb.text}, str(cache))
        loaded = load_file(str(cache))
        emb2 = Embeddings(loaded["image"], loaded["text"])
        train, val, test = (PreferenceTensors.from_rankings(index[s]) for s in ("train", "validation", "test"))
        cfg.out = str(Path(tmp) / "run")
        res = fit(cfg, emb2, train, val, test, embedder_key="synthetic", progress=False)
        total = time.perf_counter() - t0
    per_epoch = [round(h["seconds"], 2) for h in res.history]
    print(f"(b) end to end, {args.epochs} epochs: {total:.1f}s (epochs {min(per_epoch)}-{max(per_epoch)}s); "
          f"best epoch {res.best_epoch}, validation accuracy {100 * res.best_val_accuracy:.2f}%, "
          f"test accuracy {100 * (res.test_accuracy or 0):.2f}%")
    result.update(end_to_end_s=total, best_val_accuracy=res.best_val_accuracy, test_accuracy=res.test_accuracy)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
