"""The rows of issue 15's table that tests/test_bad_inputs.py does not cover: folders owned by
another command or other settings, two writers at once, a failed start, a resume over broken
files, file modes. Each refusal: exit code 2, one `error: ...` line, the folder byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rewardiff.cli import main
from rewardiff.run_folder import LOCK, claim_run_folder, read_marker


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def _one_error(capfd, code: int, expected: str) -> str:
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("\r") and "%|" not in line]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    return lines[0]


def _generate(model, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--prompts", "a red circle", "--num-images", "2", "--steps", "2", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def generated(tiny_sd_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "run"
    assert main(_generate(tiny_sd_dir, out)) == 0
    return out


def _copy(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


def test_ddpo_refuses_a_train_reward_folder(tiny_sd_dir, tmp_path, capfd):
    from test_fault_kill import _Embedder, _preference_set

    from rewardiff.algorithms.reward_model import RewardModelConfig, train_reward_model

    run = tmp_path / "reward"
    train_reward_model(RewardModelConfig(data=str(_preference_set(tmp_path / "set")), out=str(run), epochs=2, hidden=(8, 4),
                                         dropout=(0.0, 0.0)), embedder=_Embedder(), progress=False)
    before = _snapshot(run)
    capfd.readouterr()
    code = main(["train", "ddpo", "--set", f"model={tiny_sd_dir}", "--set", "prompts=a red circle", "--reward", "jpeg_incompressibility",
                 "--set", "steps=2", "--set", "epochs=1", "--out", str(run)])
    _one_error(capfd, code, "a `train-reward` run; `train ddpo` would overwrite it")
    assert _snapshot(run) == before


@pytest.mark.parametrize("argv, owner", [
    (lambda out, data: ["self-reward", "--classes", "circle", "--out", str(out)], "`self-reward` would overwrite it"),
    (lambda out, data: ["train-reward", "--data", str(data), "--out", str(out)], "`train-reward` would overwrite it"),
], ids=["self-reward", "train-reward"])
def test_other_commands_refuse_a_generate_folder(generated, tmp_path, capfd, argv, owner):
    from test_fault_kill import _preference_set

    data = _preference_set(tmp_path / "set")
    out = _copy(generated, tmp_path / "gen")
    before = _snapshot(out)
    capfd.readouterr()
    _one_error(capfd, main(argv(out, data)), owner)
    assert _snapshot(out) == before


def test_make_preference_set_refused_keeps_its_config(tmp_path, capfd):
    out = tmp_path / "pref"
    counts = "prompts_per_category={single: 1, pair: 0, counting: 0, position: 0}"
    tiny = ["--set", "min_images=4", "--set", "max_images=4", "--set", "sampling.steps=2", "--out", str(out)]
    assert main(["shapes", "make-preference-set", "--set", counts, *tiny]) == 0
    before = _snapshot(out)
    capfd.readouterr()
    code = main(["shapes", "make-preference-set", "--set", counts.replace("single: 1", "single: 2"), *tiny])
    _one_error(capfd, code, "prompts_per_category.single: 1 there, 2 now")
    assert _snapshot(out) == before  # config.yaml included


def test_a_second_writer_is_refused_at_once(tiny_sd_dir, generated, tmp_path, capfd):
    out = _copy(generated, tmp_path / "busy")
    (out / "metadata.jsonl").write_text("".join((out / "metadata.jsonl").read_text().splitlines(keepends=True)[:1]))  # one image to redo
    before = _snapshot(out)
    with claim_run_folder(out, "generate", read_marker(out)["settings"]):  # another writer holds it (its own open file, as another process would)
        held = _snapshot(out)
        capfd.readouterr()
        t0 = time.monotonic()
        _one_error(capfd, main(_generate(tiny_sd_dir, out)), "is in use by pid")
        assert time.monotonic() - t0 < 30  # refused, not queued behind the writer
        assert _snapshot(out) == held
        capfd.readouterr()
        _one_error(capfd, main(["eval", "oracle", str(out)]), "is being written by pid")  # a reader would count half a run
    assert _snapshot(out) == before and not (out / LOCK).exists()


def test_a_killed_writer_process_leaves_no_stale_lock(tiny_sd_dir, tmp_path, capfd):
    """A true `rewardiff generate` process: while it runs a second one is refused; after
    `kill -9` the rerun takes the folder, resumes, and ends with every image exactly once."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rewardiff.cli", *_generate(tiny_sd_dir, out, "--num-images", "40", "--batch-size", "1")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a loaded machine may take minutes to import torch
        while not (out / "metadata.jsonl").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / "metadata.jsonl").is_file() and proc.poll() is None, "the writer never started, or ended before it could be killed"
        capfd.readouterr()
        _one_error(capfd, main(_generate(tiny_sd_dir, out, "--num-images", "40", "--batch-size", "1")), f"is in use by pid {proc.pid}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / LOCK).exists()  # a kill -9 leaves the file; the kernel dropped the lock
    assert main(_generate(tiny_sd_dir, out, "--num-images", "40", "--batch-size", "1")) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(40))
    assert not (out / LOCK).exists()


def test_a_failed_start_leaves_the_folder_as_it_was(tiny_sd_dir, generated, tmp_path, capfd):
    fresh = tmp_path / "new" / "run"
    capfd.readouterr()
    _one_error(capfd, main(_generate("no-such-owner/no-such-model", fresh)), "offline")
    assert not (tmp_path / "new").exists()
    assert main(_generate(tiny_sd_dir, fresh)) == 0  # the right rerun is accepted

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine\n")
    before = _snapshot(existing)
    capfd.readouterr()
    _one_error(capfd, main(_generate("no-such-owner/no-such-model", existing)), "offline")
    assert _snapshot(existing) == before  # no run.json, no config.yaml
    assert main(_generate(tiny_sd_dir, existing)) == 0


def test_resume_redoes_broken_images_and_never_repeats_a_row(tiny_sd_dir, generated, tmp_path):
    out = _copy(generated, tmp_path / "broken")
    rows = (out / "metadata.jsonl").read_text().splitlines(keepends=True)
    first, second = (json.loads(r)["image"] for r in rows)
    png = (out / first).read_bytes()
    (out / first).write_bytes(png[: len(png) // 2])  # truncated
    (out / second).unlink()  # deleted
    (out / "metadata.jsonl").write_text("".join(rows) + rows[0] + rows[1][:20])  # a duplicate row and a torn one

    assert main(_generate(tiny_sd_dir, out)) == 0

    without_config = lambda snap: {k: v for k, v in snap.items() if k != "config.yaml"}  # noqa: E731 (it names its folder)
    assert without_config(_snapshot(out)) == without_config(_snapshot(generated))
    kept = [json.loads(r) for r in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted((r["prompt_index"], r["index"]) for r in kept) == [(0, 0), (0, 1)]


def test_outputs_get_the_mode_of_a_plain_open(tiny_sd_dir, tmp_path):
    """The self-reward round's LoRA and checkpoint were 0600 (the safetensors writer's mode)."""
    import torch

    from rewardiff.algorithms.lora_checkpoint import LORA_PARAMS, save_lora_state
    from rewardiff.io_utils import write_folder_atomically
    from rewardiff.models.lora import add_lora, save_lora
    from rewardiff.models.pipeline import load_pipeline

    pipe, _ = load_pipeline(str(tiny_sd_dir))
    add_lora(pipe.unet, rank=2)
    opt = torch.optim.AdamW([p for n, p in pipe.unet.named_parameters() if "lora_" in n])
    save_lora_state(tmp_path / "checkpoint", {"unet": pipe.unet}, opt, {"step": 1})
    write_folder_atomically(tmp_path / "lora", lambda tmp: save_lora(tmp / "lora.safetensors", unet=pipe.unet))
    save_lora(tmp_path / "plain.safetensors", unet=pipe.unet)
    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "checkpoint" / LORA_PARAMS, tmp_path / "lora" / "lora.safetensors", tmp_path / "plain.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
