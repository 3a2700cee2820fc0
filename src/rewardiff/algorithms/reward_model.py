"""Learn a reward from ranked images: an MLP on frozen CLIP embeddings, Bradley-Terry loss.

The Quyen report, section IV.1 and V.1 (after ImageReward, Xu et al. 2023, and the RLHF reward
models of Stiennon et al. 2020 / Ouyang et al. 2022):

    r_phi(x, z) = MLP([E_img(x), E_txt(z)])          E = frozen CLIP ViT-L/14 embeddings
    loss(phi)   = -E_{(z, x_i, x_j)} log sigmoid(r_phi(x_i, z) - r_phi(x_j, z))   (eq. 4)

over every ordered non-tied pair (x_i ranked better than x_j) of a prompt's k in [4, 9] images.
The report feeds "image and text features, combined into embeddings" to the MLP without saying
how they are combined; we concatenate them (image first), so the input width is D_img + D_txt
(1536 for ViT-L/14). `features: concat_product` also appends the elementwise product
E_img * E_txt (whose sum is CLIP's cosine): with little data the MLP then need not discover the
image-text interaction itself (the shapes world's small preference set needs it; see README). MLP: hidden 1024, 256, 128, 32, ReLU, dropout 0.2 on the input and 0.2,
0.1 after the first two hidden layers, linear output. Adam (0.9, 0.99, 1e-8), lr 1e-5,
20 epochs, batch 256, best validation checkpoint kept.

Efficiency (why the training loop looks the way it does):
1. CLIP is frozen, so embeddings are computed once per dataset and cached
   (DIR/cache/<embedder key>.safetensors) and reused by every later run.
2. A batch is a set of whole prompts; each image of the batch goes through the MLP once and
   every pair is gathered from those values with index_select. A prompt with k images has up
   to k (k - 1) / 2 pairs, so this is ~2 x pairs / images (4.4 on ImageRewardDB) fewer
   forwards than one forward per pair member. "Batch 256" means 256 pairs: whole prompts are
   packed into a batch while it holds at most 256 pairs (~16 prompts, ~110 images), so the
   number of optimiser steps matches a per-pair batch of 256.
   A side effect: an image gets one dropout mask per step, shared by all its pairs.

Resume: after every epoch the run folder gets state/ (model, optimiser, epoch, best so far).
Shuffling and dropout draw from RNGs seeded by (seed, epoch), so no RNG state needs saving and
a run killed at any point and rerun continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rewardiff.config import save_config, to_dict
from rewardiff.data.preference import PreferenceDataset, load_preference_dataset, ordered_pairs
from rewardiff.errors import RewardiffError
from rewardiff.eval.preference_accuracy import preference_accuracy
from rewardiff.io_utils import safetensors_intact, save_safetensors, write_folder_atomically, write_json
from rewardiff.rewards.preference_model import (  # noqa: F401  (the saved model's format, re-exported)
    BEST,
    CONFIG_FILE,
    FEATURES,
    META_FILE,
    WEIGHTS_FILE,
    PreferenceMLP,
    RewardModelConfig,
    feature_width,
    load_preference_model,
    pair_features,
)
from rewardiff.runtime import Runtime
from rewardiff.train_log import TrainLog

STATE, CACHE = "state", "cache"
RESUME_FREE = ("out", "epochs", "device", "threads", "embed_batch", "data")
"""Config fields a resumed run may change (train longer, move the folder or the data); any other
change would silently mix two recipes in one run, so it is refused."""


def bradley_terry_loss(r_better: torch.Tensor, r_worse: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(r_better - r_worse) (report eq. 4); logsigmoid is stable.

    >>> round(float(bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0]))), 6)  # log 2
    0.693147
    """
    return -torch.nn.functional.logsigmoid(r_better - r_worse).mean()


# ---------------------------------------------------------------------------------------------
# Embeddings, computed once


class Embedder(Protocol):
    """Anything that embeds images and texts; ClipEmbedder (rewards/clip.py) is one."""

    key: str  # names the cache file: different models must have different keys

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] -> (B, D_img)."""

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """N texts -> (N, D_txt)."""


@dataclass
class Embeddings:
    image: torch.Tensor  # (total images in the dataset, D_img), rows in index order
    text: torch.Tensor  # (prompts in the dataset, D_txt), one row per index row


def _fingerprint(dataset: PreferenceDataset, key: str) -> str:
    h = hashlib.sha256(key.encode())
    for it in dataset.items:
        h.update(json.dumps([it.prompt_id, it.prompt, list(it.images)]).encode())
    return h.hexdigest()


class EmbeddingCache:
    """Frozen-embedder features of every image and prompt of a dataset, in
    DIR/cache/<embedder key>.safetensors; recomputed only if the index (ids, prompts, image
    paths) or the embedder key changed."""

    def __init__(self, dataset: PreferenceDataset, embedder: Embedder, batch_size: int = 32, progress: bool = True):
        self.dataset, self.embedder, self.batch_size, self.progress = dataset, embedder, batch_size, progress
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(embedder.key)).strip("_") or "embedder"
        self.path = dataset.root / CACHE / f"{safe}.safetensors"

    def load(self, runtime: Runtime | None = None) -> Embeddings:
        """The cached embeddings, or computed and cached. With a `runtime` (accelerate launch)
        each process embeds its part of the batches, every process gets them all, and the main
        process writes the cache: the batches are one process's, so the file is too."""
        fingerprint = _fingerprint(self.dataset, str(self.embedder.key))
        if self.path.is_file():  # every process looks before the main one can write it (after the shared embedding)
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") == fingerprint:
                    return Embeddings(f.get_tensor("image"), f.get_tensor("text"))
        emb = Embeddings(torch.cat(self._map(runtime, self._embed_images, [(it, k) for it in self.dataset.items for k in range(len(it.images))])),
                         torch.cat(self._map(runtime, self._embed_texts, list(self.dataset.items))))
        if runtime is None or runtime.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_safetensors({"image": emb.image.contiguous(), "text": emb.text.contiguous()}, self.path,
                             metadata={"fingerprint": fingerprint, "embedder": str(self.embedder.key)})
        if runtime is not None:
            runtime.wait()  # the cache is written
        return emb

    def _map(self, runtime: Runtime | None, fn, items: list) -> list[torch.Tensor]:
        """fn's batch tensors over items, shared out over the processes in whole batches."""
        return runtime.map_parts(fn, items, chunk=self.batch_size) if runtime is not None else fn(items)

    def _embed_images(self, flat: list) -> list[torch.Tensor]:
        """(item, image index) pairs -> one (batch, D_img) tensor per batch of batch_size."""
        from tqdm.auto import tqdm

        out_batches = []
        bar = tqdm(total=len(flat), desc="embed images", unit="img", disable=not self.progress)
        with torch.no_grad():
            for start in range(0, len(flat), self.batch_size):
                chunk = range(start, min(start + self.batch_size, len(flat)))
                arrays = {i: self.dataset.load_image(*flat[i]) for i in chunk}
                by_shape: dict[tuple, list[int]] = {}
                for i in chunk:
                    by_shape.setdefault(arrays[i].shape, []).append(i)
                rows: dict[int, torch.Tensor] = {}
                for idx in by_shape.values():
                    images = torch.from_numpy(np.stack([arrays[i] for i in idx])).permute(0, 3, 1, 2).float() / 255.0
                    out = self.embedder.embed_images(images).float().cpu()
                    for n, i in enumerate(idx):
                        if not bool(torch.isfinite(out[n]).all()):
                            it, k = flat[i]
                            raise RewardiffError(f"prompt_id {it.prompt_id!r}: image {k} ({it.images[k]}) has a NaN/inf embedding")
                        rows[i] = out[n]
                out_batches.append(torch.stack([rows[i] for i in chunk]))
                bar.update(len(chunk))
        bar.close()
        return out_batches

    def _embed_texts(self, items: list) -> list[torch.Tensor]:
        """Dataset items -> one (batch, D_txt) tensor of their prompts per batch of batch_size."""
        out_batches = []
        with torch.no_grad():
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                out = self.embedder.embed_texts([it.prompt for it in batch]).float().cpu()
                bad = [it.prompt_id for it, ok in zip(batch, torch.isfinite(out).all(dim=1).tolist()) if not ok]
                if bad:
                    raise RewardiffError(f"prompt_id {bad[0]!r}: the prompt has a NaN/inf embedding")
                out_batches.append(out)
        return out_batches


# ---------------------------------------------------------------------------------------------
# Flat index of a split, and the grouped batches


@dataclass
class PreferenceTensors:
    """A split as flat tensors: images of prompt g are positions group_ptr[g]:group_ptr[g+1],
    its pairs are pair_ptr[g]:pair_ptr[g+1], stored as within-prompt indices (better, worse)."""

    image_rows: torch.Tensor  # (N,) long: row of each image in Embeddings.image
    prompt_rows: torch.Tensor  # (N,) long: row of its prompt in Embeddings.text
    group_ptr: torch.Tensor  # (G + 1,) long
    pair_ptr: torch.Tensor  # (G + 1,) long
    pairs_local: torch.Tensor  # (M, 2) long, indices within the prompt, better first

    @classmethod
    def from_dataset(cls, dataset: PreferenceDataset, split: str) -> "PreferenceTensors":
        return cls.from_rankings([(n, off, it.ranking) for n, off, it in _offsets(dataset) if it.split == split])

    @classmethod
    def from_rankings(cls, groups: Sequence[tuple[int, int, Sequence[int]]]) -> "PreferenceTensors":
        """groups: (text row, first image row, ranking) per prompt (images rows consecutive)."""
        image_rows, prompt_rows, gptr, pptr, pairs = [], [], [0], [0], []
        for text_row, first, ranking in groups:
            k = len(ranking)
            image_rows.append(np.arange(first, first + k))
            prompt_rows.append(np.full(k, text_row))
            p = ordered_pairs(ranking)
            pairs += p
            gptr.append(gptr[-1] + k)
            pptr.append(pptr[-1] + len(p))
        cat = lambda xs: torch.from_numpy(np.concatenate(xs).astype(np.int64)) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
        return cls(cat(image_rows), cat(prompt_rows), torch.tensor(gptr), torch.tensor(pptr),
                   torch.tensor(pairs, dtype=torch.long).reshape(-1, 2))

    @property
    def num_groups(self) -> int:
        return len(self.group_ptr) - 1

    @property
    def num_pairs(self) -> int:
        return len(self.pairs_local)

    def global_pairs(self) -> torch.Tensor:
        """(M, 2) pairs as positions into image_rows."""
        counts = self.pair_ptr[1:] - self.pair_ptr[:-1]
        return self.pairs_local + torch.repeat_interleave(self.group_ptr[:-1], counts)[:, None]

    def features(self, emb: Embeddings, positions: torch.Tensor, kind: str = "concat") -> torch.Tensor:
        """MLP inputs of the images at `positions` (see `pair_features`)."""
        return pair_features(emb.image[self.image_rows[positions]], emb.text[self.prompt_rows[positions]], kind)

    def batches(self, batch_pairs: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Shuffled prompts packed into batches of at most `batch_pairs` pairs (a prompt with
        more pairs goes alone); prompts without pairs (all tied) are left out."""
        counts = (self.pair_ptr[1:] - self.pair_ptr[:-1])
        order = torch.randperm(self.num_groups, generator=generator)
        order = order[counts[order] > 0]
        out, current, n = [], [], 0
        for g, c in zip(order.tolist(), counts[order].tolist()):
            if current and n + c > batch_pairs:
                out.append(torch.tensor(current))
                current, n = [], 0
            current.append(g)
            n += c
        if current:
            out.append(torch.tensor(current))
        return out

    def gather(self, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image positions of these prompts, and their pairs as indices into that list."""
        sizes = self.group_ptr[groups + 1] - self.group_ptr[groups]
        starts = self.group_ptr[groups]
        local_start = torch.cumsum(sizes, 0) - sizes  # where each prompt starts in the batch
        positions = torch.repeat_interleave(starts - local_start, sizes) + torch.arange(int(sizes.sum()))
        npairs = self.pair_ptr[groups + 1] - self.pair_ptr[groups]
        pstart = self.pair_ptr[groups] - (torch.cumsum(npairs, 0) - npairs)
        pair_ids = torch.repeat_interleave(pstart, npairs) + torch.arange(int(npairs.sum()))
        return positions, self.pairs_local[pair_ids] + torch.repeat_interleave(local_start, npairs)[:, None]


def _offsets(dataset: PreferenceDataset):
    first = 0
    for n, it in enumerate(dataset.items):
        yield n, first, it
        first += len(it.images)


# ---------------------------------------------------------------------------------------------
# Training


def grouped_step_loss(model: PreferenceMLP, emb: Embeddings, t: PreferenceTensors, groups: torch.Tensor, kind: str = "concat") -> torch.Tensor:
    """BT loss of a batch of prompts: one forward per image, pairs gathered by index."""
    positions, pairs = t.gather(groups)
    r = model(t.features(emb, positions, kind))
    return bradley_terry_loss(r.index_select(0, pairs[:, 0]), r.index_select(0, pairs[:, 1]))


def dropout_masks(model: PreferenceMLP, rows: int, device: torch.device | str) -> list[torch.Tensor]:
    """The masks (scaled by 1 / (1 - p)) every Dropout layer of `model` applies to `rows` inputs,
    drawn from torch's RNG in layer order with nn.Dropout's own CPU arithmetic (one process's
    training step is bit-identical to nn.Dropout's). Drawn for a whole batch on every process,
    then sliced, they make a sharded step the one-process step."""
    masks, width = [], model.in_dim
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            width = layer.out_features
        elif isinstance(layer, nn.Dropout):
            keep = 1.0 - layer.p
            mask = torch.empty(rows, width, device=device)
            masks.append(mask.bernoulli_(keep).div_(keep) if keep > 0 else mask.zero_())
    return masks


def masked_forward(model: PreferenceMLP, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """model(x) in training mode with the given dropout masks (`dropout_masks` rows of x)."""
    it = iter(masks)
    for layer in model.layers:
        x = x * next(it) if isinstance(layer, nn.Dropout) else layer(x)
    return x.squeeze(-1)


def run_epoch(model: PreferenceMLP, optimizer: torch.optim.Optimizer, emb: Embeddings, t: PreferenceTensors,
              batch_pairs: int, generator: torch.Generator, bar=None, kind: str = "concat", runtime: Runtime | None = None) -> float:
    """One pass over the training pairs (grouped form); returns the pair-weighted mean loss.

    Under `accelerate launch` (`runtime`) each process scores its contiguous share of every
    batch's prompts; the batches and dropout masks are drawn for the whole batch on every
    process, each shard's loss is weighted by its share of the batch's pairs and the gradients
    are summed, so every process takes the one-process step."""
    runtime = runtime or Runtime(str(emb.image.device))
    model.train()
    params = list(model.parameters())
    total, count = 0.0, 0
    for step, groups in enumerate(t.batches(batch_pairs, generator)):
        sizes = t.group_ptr[groups + 1] - t.group_ptr[groups]
        npairs = t.pair_ptr[groups + 1] - t.pair_ptr[groups]
        masks = dropout_masks(model, int(sizes.sum()), emb.image.device)
        mine = runtime.part(len(groups))
        lo, hi = mine.start, mine.stop
        rows = slice(int(sizes[:lo].sum()), int(sizes[:hi].sum()))  # this shard's images within the batch
        n_all, n_mine = int(npairs.sum()), int(npairs[lo:hi].sum())
        local = 0.0
        if n_mine:
            positions, pairs = t.gather(groups[lo:hi])
            r = masked_forward(model, t.features(emb, positions, kind), [m[rows] for m in masks])
            loss = bradley_terry_loss(r.index_select(0, pairs[:, 0]), r.index_select(0, pairs[:, 1])) * (n_mine / n_all)
            loss.backward()
            local = loss.item()
        batch_loss = runtime.sum([local])[0]
        if not math.isfinite(batch_loss):
            raise RewardiffError(f"loss became {batch_loss} at step {step} of the epoch (learning rate too high?)")
        runtime.step(params, optimizer, 0.0, reduce="sum")
        total, count = total + batch_loss * n_all, count + n_all
        if bar is not None:
            bar.update(1)
    return total / max(count, 1)


@torch.no_grad()
def score_split(model: PreferenceMLP, emb: Embeddings, t: PreferenceTensors, chunk: int = 8192, kind: str = "concat") -> torch.Tensor:
    """Reward of every image of the split (eval mode), (N,)."""
    model.eval()
    n = len(t.image_rows)
    return torch.cat([model(t.features(emb, torch.arange(s, min(s + chunk, n)), kind)) for s in range(0, n, chunk)]) if n else torch.zeros(0)


def split_accuracy(model: PreferenceMLP, emb: Embeddings, t: PreferenceTensors, kind: str = "concat") -> float:
    return preference_accuracy(score_split(model, emb, t, kind=kind).cpu(), t.global_pairs())


def make_optimizer(model: nn.Module, cfg: RewardModelConfig) -> torch.optim.Optimizer:
    """Adam with the config's settings; the fused kernel where this torch has it (~20% faster
    epochs on CPU: the MLP is small, so the per-step optimiser update is a large share)."""
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    try:
        return torch.optim.Adam(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch, or no fused kernel for this device
        return torch.optim.Adam(model.parameters(), **kwargs)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


@dataclass
class TrainResult:
    run: Path  # the run folder
    best_epoch: int  # 1-based epoch of the best validation accuracy
    best_val_accuracy: float
    test_accuracy: float | None  # of the best checkpoint; None without a test split
    seconds: float  # wall time of this call
    history: list[dict] = field(default_factory=list)  # per-epoch log rows of this call


def fit(cfg: RewardModelConfig, emb: Embeddings, train: PreferenceTensors, val: PreferenceTensors,
        test: PreferenceTensors | None = None, embedder_key: str = "", progress: bool = True, folder=None,
        runtime: Runtime | None = None) -> TrainResult:
    """Train on cached embeddings; write cfg.out/{config.yaml, best/, state/, train_log.jsonl,
    tensorboard/, metrics.json}. Resumes from cfg.out/state if it is there. `folder`: cfg.out
    already claimed (rewardiff.run_folder) by the caller; else fit claims it. Under `accelerate
    launch` (`runtime`, default from cfg.device) every process trains on its shard of each batch
    (`run_epoch`) and holds the same model; the main process owns the folder and writes."""
    runtime = runtime or Runtime(cfg.device)
    if folder is None:
        from rewardiff.run_folder import claim_run_folder_main

        with claim_run_folder_main(cfg.out, "train-reward", reward_run_settings(cfg), cfg, runtime.is_main) as claimed:
            return _fit_in(claimed, cfg, emb, train, val, test, embedder_key, progress, runtime)
    return _fit_in(folder, cfg, emb, train, val, test, embedder_key, progress, runtime)


def reward_run_settings(cfg: RewardModelConfig) -> dict:
    """What makes two train-reward runs the same run (resumable into one folder)."""
    from rewardiff.run_folder import settings_of

    return settings_of(cfg, RESUME_FREE)


def _fit_in(folder, cfg: RewardModelConfig, emb: Embeddings, train: PreferenceTensors, val: PreferenceTensors,
            test: PreferenceTensors | None, embedder_key: str, progress: bool, runtime: Runtime) -> TrainResult:
    from tqdm.auto import tqdm

    t0 = time.time()
    if train.num_pairs == 0:
        raise RewardiffError("the training split has no non-tied pairs")
    if val.num_pairs == 0:
        raise RewardiffError("the validation split has no non-tied pairs (the best checkpoint is chosen on it)")
    if cfg.batch_pairs < 1 or cfg.epochs < 1:
        raise RewardiffError("batch_pairs and epochs must be at least 1")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = folder.path
    device = runtime.device
    main = runtime.is_main
    emb = Embeddings(emb.image.to(device), emb.text.to(device))
    in_dim = feature_width(emb.image.shape[1], emb.text.shape[1], cfg.features)
    meta = {"features": cfg.features, "in_dim": in_dim, "image_dim": emb.image.shape[1], "text_dim": emb.text.shape[1], "embedder": embedder_key}

    torch.manual_seed(cfg.seed)
    model = PreferenceMLP(in_dim, cfg.hidden, cfg.dropout).to(device)
    optimizer = make_optimizer(model, cfg)
    state = {"epoch": 0, "best_val_accuracy": -1.0, "best_epoch": 0}
    state_dir = out / STATE
    runtime.wait()  # the main process has checked the folder and recovered interrupted writes
    if (state_dir / "state.json").is_file() and not _state_intact(state_dir):
        if main:
            print(f"warning: {state_dir} is broken; training starts over", file=sys.stderr)
    elif (state_dir / "state.json").is_file():
        saved = json.loads((state_dir / "state.json").read_text())
        if saved.get("meta", {}).get("in_dim") != in_dim:
            raise RewardiffError(f"{out}: the saved state has input width {saved.get('meta', {}).get('in_dim')}, these embeddings {in_dim}; use a new --out")
        recipe = {k: v for k, v in to_dict(cfg).items() if k not in RESUME_FREE}
        changed = sorted(k for k, v in saved.get("recipe", {}).items() if recipe.get(k) != v)
        if changed:
            raise RewardiffError(f"{out} was trained with other settings ({', '.join(changed)}); resume with the same ones or use a new --out")
        model.load_state_dict(load_file(str(state_dir / WEIGHTS_FILE), device=str(device)))
        optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True, map_location=device))
        state = {k: saved[k] for k in state}
    folder.commit()

    logger = TrainLog(out) if main else None
    if logger is not None:
        logger.keep_until("reward_model", state["epoch"], step_key="epoch")
    history = []
    remaining = max(cfg.epochs - state["epoch"], 0)
    steps_per_epoch = len(train.batches(cfg.batch_pairs, torch.Generator().manual_seed(0)))
    bar = tqdm(total=remaining * steps_per_epoch, desc="train reward", unit="step", disable=not (progress and main))
    try:
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            e0 = time.time()
            seed = _epoch_seed(cfg.seed, epoch)
            torch.manual_seed(seed)  # dropout masks
            loss = run_epoch(model, optimizer, emb, train, cfg.batch_pairs, torch.Generator().manual_seed(seed), bar, cfg.features, runtime)
            val_acc = split_accuracy(model, emb, val, cfg.features)
            row = {"train_loss": loss, "val_accuracy": val_acc, "seconds": time.time() - e0}
            if val_acc > state["best_val_accuracy"]:
                state.update(best_val_accuracy=val_acc, best_epoch=epoch)
                weights = _weights(model)

                def write_best(tmp: Path) -> None:
                    save_file(weights, str(tmp / WEIGHTS_FILE))
                    save_config(cfg, tmp / CONFIG_FILE)
                    write_json(tmp / META_FILE, {**meta, "epoch": epoch, "val_accuracy": val_acc})

                if main:
                    write_folder_atomically(out / BEST, write_best)
            state["epoch"] = epoch
            recipe = {k: v for k, v in to_dict(cfg).items() if k not in RESUME_FREE}
            weights, opt_state, saved = _weights(model), optimizer.state_dict(), {**state, "meta": meta, "recipe": recipe}

            def write_state(tmp: Path) -> None:
                save_file(weights, str(tmp / WEIGHTS_FILE))
                torch.save(opt_state, tmp / "optimizer.pt")
                (tmp / "state.json").write_text(json.dumps(saved))

            if main:
                logger.log("reward_model", epoch, step_key="epoch", **row)  # before the state: a kill between drops the row on resume
                write_folder_atomically(state_dir, write_state)
            history.append({"epoch": epoch, **row})
            bar.set_postfix(loss=f"{loss:.4f}", val=f"{val_acc:.4f}")
    finally:
        bar.close()
        if logger is not None:
            logger.close()

    runtime.wait()  # best/ is written
    best = PreferenceMLP(in_dim, cfg.hidden, cfg.dropout).to(device)
    best.load_state_dict(load_file(str(out / BEST / WEIGHTS_FILE), device=str(device)))
    test_acc = split_accuracy(best, emb, test, cfg.features) if test is not None and test.num_pairs else None
    if main:
        write_json(out / "metrics.json", {"best_epoch": state["best_epoch"], "best_val_accuracy": state["best_val_accuracy"],
                                          "test_accuracy": test_acc, "train_pairs": train.num_pairs, "val_pairs": val.num_pairs,
                                          "test_pairs": test.num_pairs if test is not None else 0})
    runtime.wait()
    return TrainResult(out, state["best_epoch"], state["best_val_accuracy"], test_acc, time.time() - t0, history)


def _state_intact(state_dir: Path) -> bool:
    """Whether a saved training state reads back completely (resume trusts nothing)."""
    try:
        json.loads((state_dir / "state.json").read_text())
        torch.load(state_dir / "optimizer.pt", weights_only=True)
    except Exception:  # a truncated or foreign file, whatever the reader raises
        return False
    return safetensors_intact(state_dir / WEIGHTS_FILE)


def train_reward_model(cfg: RewardModelConfig, embedder: Embedder | None = None, progress: bool = True,
                       runtime: Runtime | None = None) -> TrainResult:
    """`rewardiff train-reward`: load + validate the dataset, embed it once (cached), fit.

    `embedder` is injected (tests, other feature extractors); by default the frozen CLIP named
    by cfg.clip, which is also what the `preference@RUN` reward rebuilds at scoring time. Under
    `accelerate launch` each process embeds its part of the data and the main process writes the
    embedding cache."""
    if not cfg.data:
        raise RewardiffError("no preference dataset given (--data DIR)")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    from rewardiff.run_folder import claim_run_folder_main

    runtime = runtime or Runtime(cfg.device)
    dataset = load_preference_dataset(cfg.data, cfg.min_images, cfg.max_images)
    with claim_run_folder_main(cfg.out, "train-reward", reward_run_settings(cfg), cfg, runtime.is_main) as folder:
        if embedder is None:
            embedder = _LazyClip(cfg.clip, str(runtime.device))
        emb = EmbeddingCache(dataset, embedder, cfg.embed_batch, progress and runtime.is_main).load(runtime)
        splits = {s: PreferenceTensors.from_dataset(dataset, s) for s in ("train", "validation", "test")}
        return fit(cfg, emb, splits["train"], splits["validation"], splits["test"], str(embedder.key), progress, folder=folder, runtime=runtime)


class _LazyClip:
    """The config's CLIP, loaded only if the cache misses (a ViT-L/14 takes seconds and GBs).
    Its key is ClipEmbedder's, so the reward rebuilt at scoring time checks against it."""

    def __init__(self, model: str, device: str):
        self.model, self.device, self._clip = model, device, None
        self.key = f"clip-{model}"

    def _get(self):
        if self._clip is None:
            from rewardiff.rewards.clip import ClipEmbedder

            self._clip = ClipEmbedder(self.model, device=self.device)
        return self._clip

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._get().embed_images(images)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self._get().embed_texts(texts)


__all__ = [
    "Embedder", "EmbeddingCache", "Embeddings", "PreferenceMLP", "PreferenceTensors", "RewardModelConfig", "TrainResult",
    "bradley_terry_loss", "feature_width", "fit", "pair_features", "grouped_step_loss", "load_preference_model", "make_optimizer", "run_epoch", "score_split",
    "split_accuracy", "train_reward_model",
]
