"""Kill a command with SIGKILL at a chosen write, then compare its resumed folder with an
uninterrupted run (the fault suite, issue 15).

Each run happens in a forked child process, so the kill is a real SIGKILL of another process (no
`finally`, no atexit, the kernel drops its lock) and every run starts from the same interpreter
state without paying for a fresh interpreter and torch import. The kill points are the writes
themselves: `rewardiff.io_utils.fault_point` is called between each write and the rename or
append that publishes it, and the child kills itself at the k-th call.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from typing import Callable

import torch

VOLATILE = {"seconds", "images_per_s", "cpu_seconds", "cpu_minutes", "timings"}
"""Fields that measure time, not results: they differ between any two runs."""
SKIPPED = {"tensorboard", "timings.json", ".rewardiff.lock", "report"}
"""Not compared: logs of time, the lock, and the HTML report (a view of the run that shows its CPU time)."""


def _child(fn: Callable[[], object], kill_at: int | None, report_fd: int) -> None:
    import numpy as np

    from rewardiff import io_utils

    random.seed(0)  # a fresh interpreter's global RNGs, made the same for every run: a checkpoint
    np.random.seed(0)  # stores them, so two runs' checkpoints compare only if they start alike
    torch.manual_seed(0)
    calls = 0

    def hook(label: str) -> None:
        nonlocal calls
        calls += 1
        if kill_at is not None and calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    io_utils.set_fault_hook(hook)
    code = 0
    try:
        result = fn()
        code = int(result) if isinstance(result, int) else 0
    except BaseException as e:  # noqa: BLE001 - the parent sees it as a failed run
        os.write(2, f"child failed: {e!r}\n".encode())
        code = 3
    os.write(report_fd, json.dumps({"points": calls, "code": code}).encode())
    os._exit(0)


def run_forked(fn: Callable[[], object], kill_at: int | None = None) -> dict:
    """Run fn() in a child process, SIGKILLed at its kill_at-th write point if given. Returns
    {'killed': bool, 'points': writes seen (when not killed), 'code': fn's int result}."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        try:
            torch.set_num_threads(1)
            _child(fn, kill_at, write_fd)
        finally:
            os._exit(4)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, f"child died of signal {os.WTERMSIG(status)}"
        return {"killed": True, "points": None, "code": None}
    report = json.loads(b"".join(chunks) or b"{}")
    return {"killed": False, **report}


def kill_points(total: int, n: int, seed: int) -> list[int]:
    """n distinct seeded write points in [1, total] (the first and last kept in reach)."""
    rng = random.Random(seed)
    return sorted(rng.sample(range(1, total + 1), min(n, total)))


def _normalise(value, run: str):
    if isinstance(value, dict):
        return {k: _normalise(v, run) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalise(v, run) for v in value]
    if isinstance(value, str):
        return value.replace(run, "<RUN>")
    return value


def _jsonl(path: Path, run: str) -> list:
    return [_normalise(json.loads(line), run) for line in path.read_text().splitlines() if line.strip()]


def _files(folder: Path) -> list[str]:
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part in SKIPPED for part in rel.parts) or not path.is_file():
            continue
        out.append(str(rel))
    return out


def _same_tensors(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_run(expected: Path, actual: Path) -> None:
    """The same files; PNGs, YAML and text byte-identical; safetensors and torch files the same
    tensors; JSON and JSONL the same rows (time measurements and the folder's own path aside);
    no row twice in any JSONL file."""
    from safetensors.torch import load_file

    files = _files(expected)
    assert files == _files(actual), f"file sets differ: {sorted(set(files) ^ set(_files(actual)))}"
    for rel in files:
        a, b = expected / rel, actual / rel
        if rel.endswith(".safetensors"):
            assert _same_tensors(load_file(str(a)), load_file(str(b))), f"{rel}: tensors differ"
        elif rel.endswith(".pt"):
            assert _same_tensors(torch.load(a, weights_only=True), torch.load(b, weights_only=True)), f"{rel}: tensors differ"
        elif rel.endswith(".jsonl"):
            rows_a, rows_b = _jsonl(a, str(expected)), _jsonl(b, str(actual))
            assert rows_a == rows_b, f"{rel}: rows differ"
            keys = [json.dumps(r, sort_keys=True) for r in rows_b]
            assert len(keys) == len(set(keys)), f"{rel}: a row appears twice"
        elif rel.endswith(".json"):
            assert _normalise(json.loads(a.read_text()), str(expected)) == _normalise(json.loads(b.read_text()), str(actual)), f"{rel} differs"
        elif rel.endswith((".yaml", ".txt")):
            assert a.read_text().replace(str(expected), "<RUN>") == b.read_text().replace(str(actual), "<RUN>"), f"{rel} differs"
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel}: bytes differ"


def check_kill_and_resume(run: Callable[[Path], object], root: Path, n_kills: int, seed: int) -> list[int]:
    """The fault case of one command: an uninterrupted run, then for each of n seeded write points
    a run killed there and rerun to the end; every rerun's folder must equal the uninterrupted one.
    Returns the kill points used."""
    reference = root / "uninterrupted"
    result = run_forked(lambda: run(reference))
    assert not result["killed"] and result["code"] == 0, result
    points = kill_points(result["points"], n_kills, seed)
    for k in points:
        folder = root / f"killed_at_{k}"
        killed = run_forked(lambda: run(folder), kill_at=k)
        assert killed["killed"], f"write point {k} of {result['points']} was never reached"
        resumed = run_forked(lambda: run(folder))
        assert not resumed["killed"] and resumed["code"] == 0, (k, resumed)
        assert_same_run(reference, folder)
    return points
