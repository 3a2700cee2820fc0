"""The preference reward model (algorithms/reward_model.py), its reward, `eval preference`, the benchmark."""

from __future__ import annotations

import doctest
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rewardiff.algorithms import reward_model as rm
from rewardiff.algorithms.reward_model import (
    EmbeddingCache,
    Embeddings,
    PreferenceMLP,
    PreferenceTensors,
    RewardModelConfig,
    bradley_terry_loss,
    grouped_step_loss,
    train_reward_model,
)
from rewardiff.data.preference import load_preference_dataset, write_preference_dataset
from rewardiff.errors import RewardiffError
from rewardiff.eval import preference_accuracy as pa
from rewardiff.eval.preference_accuracy import evaluate_preference, preference_accuracy

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


def test_doctests():
    assert doctest.testmod(rm).failed == 0
    assert doctest.testmod(pa).failed == 0


# --- pure functions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "better, worse, expected",
    [
        ([0.0], [0.0], math.log(2)),
        ([1.0], [0.0], math.log1p(math.exp(-1))),  # -log sigmoid(1)
        ([0.0], [1.0], math.log1p(math.exp(1))),
        ([2.0, 0.0], [0.0, 0.0], (math.log1p(math.exp(-2)) + math.log(2)) / 2),  # mean over pairs
        ([100.0], [0.0], math.log1p(math.exp(-100))),  # stable far out
        ([0.0], [100.0], 100.0 + math.log1p(math.exp(-100))),
    ],
)
def test_bradley_terry_loss_exact(better, worse, expected):
    loss = bradley_terry_loss(torch.tensor(better, dtype=torch.float64), torch.tensor(worse, dtype=torch.float64))
    assert float(loss) == pytest.approx(expected, rel=1e-12, abs=1e-30)


def test_mlp_is_the_reports_architecture():
    model = PreferenceMLP(1536)
    kinds = [(type(m).__name__, getattr(m, "p", None) or getattr(m, "out_features", None)) for m in model.layers]
    assert kinds == [("Dropout", 0.2), ("Linear", 1024), ("ReLU", None), ("Dropout", 0.2), ("Linear", 256), ("ReLU", None),
                     ("Dropout", 0.1), ("Linear", 128), ("ReLU", None), ("Linear", 32), ("ReLU", None), ("Linear", 1)]
    assert model(torch.zeros(5, 1536)).shape == (5,)
    with pytest.raises(RewardiffError, match="dropout rates"):
        PreferenceMLP(4, hidden=(8,), dropout=(0.1, 0.1))


def test_preference_accuracy_ties_count_half():
    scores = torch.tensor([2.0, 1.0, 1.0, 0.0])
    pairs = torch.tensor([[0, 1], [1, 2], [3, 0], [2, 3]])  # right, tie, wrong, right
    assert preference_accuracy(scores, pairs) == pytest.approx(2.5 / 4)
    with pytest.raises(RewardiffError, match="no non-tied pairs"):
        preference_accuracy(scores, torch.zeros(0, 2, dtype=torch.long))


def _random_split(n_prompts=30, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups, first = [], 0
    for p in range(n_prompts):
        k = int(torch.randint(4, 10, (1,), generator=g))
        ranking = torch.randint(1, 4, (k,), generator=g).tolist()  # many ties
        groups.append((p, first, ranking))
        first += k
    emb = Embeddings(torch.randn(first, dim, generator=g, dtype=torch.float64), torch.randn(n_prompts, dim, generator=g, dtype=torch.float64))
    return emb, PreferenceTensors.from_rankings(groups)


def test_grouped_loss_equals_per_pair_loss():
    emb, t = _random_split()
    torch.manual_seed(0)
    model = PreferenceMLP(12, hidden=(16, 8), dropout=(0.2,)).double().eval()  # eval: no dropout, exact
    grouped = grouped_step_loss(model, emb, t, torch.arange(t.num_groups))
    (g_grad,) = torch.autograd.grad(grouped, [model.layers[1].weight])
    pairs = t.global_pairs()
    naive = bradley_terry_loss(model(t.features(emb, pairs[:, 0])), model(t.features(emb, pairs[:, 1])))
    (n_grad,) = torch.autograd.grad(naive, [model.layers[1].weight])
    assert t.num_pairs > 100
    torch.testing.assert_close(grouped, naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_grad, n_grad, rtol=1e-10, atol=1e-12)


def test_batches_cover_every_pair_once_within_the_budget():
    emb, t = _random_split(n_prompts=50)
    batches = t.batches(40, torch.Generator().manual_seed(1))
    seen = []
    for groups in batches:
        positions, pairs = t.gather(groups)
        assert len(pairs) <= 40 or len(groups) == 1
        assert len(positions) == int((t.group_ptr[groups + 1] - t.group_ptr[groups]).sum())
        seen += [tuple(p) for p in positions[pairs].tolist()]  # back to split positions
    assert sorted(seen) == sorted(map(tuple, t.global_pairs().tolist()))


# --- a tiny dataset where the preference is a known linear function of the embeddings --------


class FakeEmbedder:
    """Image: 2 x 2 average pool (12-d); text: a fixed random 4-d vector per prompt. Counts calls."""

    key = "fake/pool2x2"

    def __init__(self):
        self.image_calls = self.text_calls = 0

    def embed_images(self, images):
        self.image_calls += 1
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1) - 0.5

    def embed_texts(self, texts):
        self.text_calls += 1
        return torch.stack([torch.randn(4, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts])


W_TRUE = torch.linspace(-1, 1, 12)  # the hidden utility: W_TRUE . image embedding


def _tiny_set(root: Path, n_prompts=80, size=8, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    fake = FakeEmbedder()
    items = []
    for p in range(n_prompts):
        k = int(rng.integers(4, 8))
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(k)]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        utility = (fake.embed_images(x) @ W_TRUE).numpy()
        ranking = (np.argsort(np.argsort(-utility)) + 1).tolist()
        if p % 5 == 0:
            ranking[-1] = ranking[0]  # a tie now and then
        split = "train" if p < n_prompts * 0.7 else "validation" if p < n_prompts * 0.85 else "test"
        items.append((f"p{p:03d}", f"prompt number {p}", images, ranking, split))
    write_preference_dataset(root, items)
    return root


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return _tiny_set(tmp_path_factory.mktemp("pref") / "set")


def _cfg(data, out, **kw) -> RewardModelConfig:
    base = dict(data=str(data), out=str(out), lr=3e-3, epochs=8, batch_pairs=32, hidden=(64, 32, 16), dropout=(0.0, 0.1))
    base.update(kw)
    return RewardModelConfig(**base)


def test_training_learns_a_linear_preference_and_cache_is_reused(tiny_set, tmp_path):
    fake = FakeEmbedder()
    result = train_reward_model(_cfg(tiny_set, tmp_path / "run"), embedder=fake, progress=False)
    assert result.best_val_accuracy > 0.9 and result.test_accuracy > 0.85
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    run = tmp_path / "run"
    for name in ("config.yaml", "best/model.safetensors", "best/config.yaml", "best/meta.json", "state/optimizer.pt",
                 "train_log.jsonl", "metrics.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert len((run / "train_log.jsonl").read_text().splitlines()) == 8
    meta = json.loads((run / "best/meta.json").read_text())
    assert meta["in_dim"] == 16 and meta["embedder"] == "fake/pool2x2" and meta["epoch"] == result.best_epoch
    assert (tiny_set / "cache" / "fake_pool2x2.safetensors").is_file()

    calls = (fake.image_calls, fake.text_calls)
    assert calls[0] > 0
    train_reward_model(_cfg(tiny_set, tmp_path / "run2", epochs=1), embedder=fake, progress=False)
    assert (fake.image_calls, fake.text_calls) == calls  # second run: embeddings from the cache


def test_cache_is_recomputed_when_the_index_changes(tiny_set, tmp_path):
    import shutil

    data = tmp_path / "copy"
    shutil.copytree(tiny_set, data, ignore=shutil.ignore_patterns("cache"))
    fake = FakeEmbedder()
    ds = load_preference_dataset(data)
    first = EmbeddingCache(ds, fake, batch_size=16, progress=False).load()
    n = fake.image_calls
    EmbeddingCache(ds, fake, batch_size=16, progress=False).load()
    assert fake.image_calls == n
    ds.items[0] = type(ds.items[0])(ds.items[0].prompt_id, "another prompt", ds.items[0].images, ds.items[0].ranking, "train")
    second = EmbeddingCache(ds, fake, batch_size=16, progress=False).load()
    assert fake.image_calls > n and first.image.shape == second.image.shape


def test_nan_embedding_names_the_item(tiny_set, tmp_path):
    class NanEmbedder(FakeEmbedder):
        key = "nan"

        def embed_images(self, images):
            out = super().embed_images(images)
            out[-1, 0] = float("nan")
            return out

    ds = load_preference_dataset(tiny_set)
    ds.root = tmp_path  # cache elsewhere; images still read from the set
    ds.items = [type(it)(it.prompt_id, it.prompt, tuple(str(tiny_set / p) for p in it.images), it.ranking, it.split) for it in ds.items[:2]]
    with pytest.raises(RewardiffError, match=r"prompt_id 'p001': image \d \(.*p001_\d.png\) has a NaN/inf embedding"):
        EmbeddingCache(ds, NanEmbedder(), batch_size=64, progress=False).load()


def test_corrupt_image_stops_training_naming_the_item(tiny_set, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_set, data, ignore=shutil.ignore_patterns("cache"))
    (data / "images/p010_2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(RewardiffError, match=r"prompt_id 'p010': image 2 \(images/p010_2.png\): corrupt image"):
        train_reward_model(_cfg(data, tmp_path / "run"), embedder=FakeEmbedder(), progress=False)
    assert not (data / "cache").exists() or not any((data / "cache").iterdir())


def test_resume_after_kill_equals_uninterrupted(tiny_set, tmp_path, monkeypatch):
    cfg = dict(epochs=3, hidden=(32, 16), dropout=(0.2, 0.1))
    train_reward_model(_cfg(tiny_set, tmp_path / "full", **cfg), embedder=FakeEmbedder(), progress=False)

    real, calls = rm.bradley_terry_loss, {"n": 0}
    steps_per_epoch = len(rm.PreferenceTensors.from_dataset(load_preference_dataset(tiny_set), "train").batches(32, torch.Generator()))

    def dying(*a):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 3:  # killed in the middle of epoch 2
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(rm, "bradley_terry_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(_cfg(tiny_set, tmp_path / "killed", **cfg), embedder=FakeEmbedder(), progress=False)
    assert json.loads((tmp_path / "killed/state/state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(rm, "bradley_terry_loss", real)
    train_reward_model(_cfg(tiny_set, tmp_path / "killed", **cfg), embedder=FakeEmbedder(), progress=False)

    for sub in ("state", "best"):
        a, b = load_file(str(tmp_path / "full" / sub / "model.safetensors")), load_file(str(tmp_path / "killed" / sub / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    assert json.loads((tmp_path / "full/metrics.json").read_text()) == json.loads((tmp_path / "killed/metrics.json").read_text())


def test_resume_refuses_a_changed_recipe(tiny_set, tmp_path):
    train_reward_model(_cfg(tiny_set, tmp_path / "run", epochs=1), embedder=FakeEmbedder(), progress=False)
    with pytest.raises(RewardiffError, match=r"other settings: lr"):
        train_reward_model(_cfg(tiny_set, tmp_path / "run", epochs=2, lr=1e-4), embedder=FakeEmbedder(), progress=False)
    result = train_reward_model(_cfg(tiny_set, tmp_path / "run", epochs=2), embedder=FakeEmbedder(), progress=False)
    assert [h["epoch"] for h in result.history] == [2]  # extended by one epoch


def test_training_needs_validation_pairs(tmp_path):
    items = [(f"p{i}", "p", [np.zeros((4, 4, 3), np.uint8)] * 4, [1, 2, 3, 4], "train") for i in range(3)]
    write_preference_dataset(tmp_path / "s", items)
    with pytest.raises(RewardiffError, match="validation split has no non-tied pairs"):
        train_reward_model(_cfg(tmp_path / "s", tmp_path / "run"), embedder=FakeEmbedder(), progress=False)


# --- with a tiny real CLIP: the `preference` reward and `eval preference` ---------------------


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    from tiny_reward_models import build_tiny_clip

    root = tmp_path_factory.mktemp("clip")
    clip = build_tiny_clip(root / "clip")
    data = _tiny_set(root / "set", n_prompts=40, size=32, seed=1)
    run = root / "run"
    result = train_reward_model(_cfg(data, run, clip=str(clip), epochs=3), progress=False)
    return clip, data, run, result


def test_cached_clip_is_not_loaded_again(clip_run, tmp_path, monkeypatch):
    import rewardiff.rewards.clip as clip_module

    clip, data, _, _ = clip_run

    def no_load(*a, **k):
        raise AssertionError("CLIP loaded although every embedding is cached")

    monkeypatch.setattr(clip_module, "ClipEmbedder", no_load)
    train_reward_model(_cfg(data, tmp_path / "again", clip=str(clip), epochs=1), progress=False)


def test_preference_reward_from_run_is_differentiable(clip_run):
    from rewardiff.rewards import build_reward

    clip, data, run, _ = clip_run
    reward = build_reward(f"preference@{run}")
    assert reward.differentiable and reward.name == "preference"
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = reward(images, ["a red circle", "two squares"])
    assert out.scores.shape == (2,)
    out.scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(RewardiffError, match="needs its run folder"):
        build_reward("preference")
    with pytest.raises(RewardiffError, match="not a reward-model run"):
        build_reward(f"preference@{data}")


def test_eval_preference_table(clip_run, tmp_path, capsys):
    from rewardiff.cli import main

    clip, data, run, result = clip_run
    assert main(["eval", "preference", "--data", str(data), "--reward", f"clip@{clip}", "--reward", "jpeg_compressibility",
                 "--reward", f"preference@{run}", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "| Model | Preference Acc. |" in printed and "| CLIP Score |" in printed and "| Ours (CLIP + MLP) |" in printed
    table = json.loads((tmp_path / "ev/preference_accuracy.json").read_text())
    assert (tmp_path / "ev/preference_accuracy.md").read_text().startswith("Preference accuracy on the test split")
    assert [r["name"] for r in table["rows"]] == ["CLIP Score", "jpeg_compressibility", "Ours (CLIP + MLP)"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in table["rows"])
    assert table["num_pairs"] == load_preference_dataset(data).num_pairs("test")
    # The reward re-embeds the images with the same CLIP: same accuracy as training measured on the cache.
    assert table["rows"][2]["accuracy"] == pytest.approx(result.test_accuracy, abs=1e-9)


def test_eval_preference_errors(clip_run, tmp_path, monkeypatch):
    from rewardiff.rewards import REWARDS, Reward, RewardOutput

    _, data, _, _ = clip_run
    with pytest.raises(RewardiffError, match="unknown reward 'nosuch'"):
        evaluate_preference(data, ["nosuch"], out=tmp_path, progress=False)

    class NanReward(Reward):
        name = "nan"

        def score(self, images, prompts):
            return RewardOutput(torch.full((len(prompts),), float("nan")))

    monkeypatch.setitem(REWARDS, "nan", lambda model, device: NanReward(device))
    with pytest.raises(RewardiffError, match=r"NaN or inf scores.*prompt_id 'p0\d\d'"):
        evaluate_preference(data, ["nan"], out=tmp_path, progress=False)


def test_train_reward_cli_reports_a_bad_clip(tiny_set, tmp_path, capsys):
    from rewardiff.cli import main

    data = tmp_path / "data"
    import shutil

    shutil.copytree(tiny_set, data, ignore=shutil.ignore_patterns("cache"))  # a cache miss: CLIP is needed
    code = main(["train-reward", "--data", str(data), "--out", str(tmp_path / "r"), "--set", "clip=/no/such/clip"])
    assert code == 2 and "CLIP model folder not found" in capsys.readouterr().err


def test_benchmark_runs_at_one_percent():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_reward_model
    finally:
        sys.path.pop(0)
    result = bench_reward_model.main(["--scale", "0.01", "--epochs", "2", "--threads", "1"])
    assert result["prompts"] == 89 and result["ratio"] > 1.0 and result["end_to_end_s"] > 0


def test_pair_features_concat_and_product():
    from rewardiff.algorithms.reward_model import feature_width, pair_features

    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    txt = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    assert pair_features(img, txt).tolist() == [[1.0, 2.0, 0.5, -1.0], [3.0, 4.0, 2.0, 0.0]]
    both = pair_features(img, txt, "concat_product")
    assert both.tolist() == [[1.0, 2.0, 0.5, -1.0, 0.5, -2.0], [3.0, 4.0, 2.0, 0.0, 6.0, 0.0]]
    assert both[:, 4:].sum(1).tolist() == [-1.5, 6.0]  # the product block sums to the dot product
    assert feature_width(2, 2, "concat_product") == 6 and feature_width(3, 2) == 5
    with pytest.raises(RewardiffError, match="equal image and text widths"):
        pair_features(torch.zeros(1, 3), torch.zeros(1, 2), "concat_product")
    with pytest.raises(RewardiffError, match="unknown reward-model features"):
        pair_features(img, txt, "sum")


def test_product_features_run_scores_through_the_reward(clip_run, tmp_path):
    """A concat_product run records its features; preference@RUN rebuilds the same input."""
    from rewardiff.algorithms.reward_model import load_preference_model, pair_features
    from rewardiff.rewards import build_reward
    from rewardiff.rewards.clip import ClipEmbedder

    clip, data, _, _ = clip_run
    run = tmp_path / "prod"
    train_reward_model(_cfg(data, run, clip=str(clip), epochs=1, features="concat_product"), progress=False)
    model, cfg, meta = load_preference_model(run)
    assert cfg.features == "concat_product" and meta["in_dim"] == 3 * meta["image_dim"]
    images, prompts = torch.rand(2, 3, 32, 32), ["a red circle", "two squares"]
    embedder = ClipEmbedder(str(clip))
    expected = model(pair_features(embedder.embed_images(images).float(), embedder.embed_texts(prompts).float(), "concat_product"))
    assert torch.allclose(build_reward(f"preference@{run}")(images, prompts).scores, expected, atol=1e-5)
