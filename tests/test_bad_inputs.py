"""Every bad number or file at the edge (issue 15): one `error: ...` line on stderr, exit code 2,
and nothing written (an existing --out folder byte-identical afterwards, a new one not created).

Each row: an argv (built from the paths of one test), a substring of the error, and whether the
command runs on an existing output folder. Checks that come before any model is loaded use the
shipped `shapes` model; those that need the model (a LoRA that does not fit it) the tiny one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rewardiff.cli import main


@dataclass
class Paths:
    out: Path  # the command's --out folder
    model: Path  # the tiny pipeline folder
    good: Path  # a LoRA of the tiny model
    nan_lora: Path  # the same with a NaN in one tensor
    missing: Path  # a LoRA adapting layers the model lacks
    wrong_shape: Path  # a LoRA with one layer of another model's size
    file: Path  # a regular file (a path under it cannot be a folder)


@pytest.fixture(scope="module")
def loras(tiny_sd_dir, tmp_path_factory) -> dict[str, Path]:
    from rewardiff.models.lora import add_lora, save_lora
    from rewardiff.models.pipeline import load_pipeline

    root = tmp_path_factory.mktemp("bad-loras")
    pipe, _ = load_pipeline(str(tiny_sd_dir))
    add_lora(pipe.unet, rank=2)
    add_lora(pipe.text_encoder, rank=2)
    good = save_lora(root / "good.safetensors", unet=pipe.unet, text_encoder=pipe.text_encoder)
    tensors = load_file(str(good))
    keys = sorted(tensors)

    nan = dict(tensors)
    nan[keys[0]] = tensors[keys[0]].clone()
    nan[keys[0]].view(-1)[0] = float("nan")
    save_file(nan, root / "nan.safetensors")

    save_file({k.replace(".to_q.", ".to_query."): v for k, v in tensors.items()}, root / "missing.safetensors")

    wrong = dict(tensors)
    down = next(k for k in keys if k.startswith("unet.") and k.endswith(".to_k.lora.down.weight"))
    wrong[down] = torch.zeros(tensors[down].shape[0], tensors[down].shape[1] + 16)  # another model's in-features, same rank
    save_file(wrong, root / "wrong_shape.safetensors")
    return {"good": good, "nan": root / "nan.safetensors", "missing": root / "missing.safetensors", "wrong": root / "wrong_shape.safetensors"}


def _gen(p: Paths, *extra: str, model: str = "shapes") -> list[str]:
    return ["generate", "--model", model, "--prompts", "a red circle", "--num-images", "1", "--steps", "2",
            "--out", str(p.out), *extra]


ROWS = [
    # (id, argv, substring of the error, run on an existing --out folder)
    ("guidance-nan", lambda p: _gen(p, "--set", "sampling.guidance=.nan"), "sampling.guidance must be a finite number", True),
    ("guidance-inf", lambda p: _gen(p, "--set", "sampling.guidance=inf"), "sampling.guidance must be a finite number", False),
    ("steps-negative", lambda p: _gen(p, "--steps", "-3"), "sampling.steps must be an integer >= 1, got -3", True),
    ("steps-zero", lambda p: _gen(p, "--steps", "0"), "sampling.steps must be an integer >= 1, got 0", False),
    ("rescale-out-of-range", lambda p: _gen(p, "--set", "sampling.guidance_rescale=1.5"), "sampling.guidance_rescale", True),
    ("eta-negative", lambda p: _gen(p, "--set", "sampling.eta=-1"), "sampling.eta must be a finite number >= 0", True),
    ("height-not-multiple-of-8", lambda p: _gen(p, "--set", "sampling.height=30"), "sampling.height must be", True),
    ("batch-size-zero", lambda p: _gen(p, "--batch-size", "0"), "--batch-size must be at least 1", True),
    ("lora-scale-nan", lambda p: _gen(p, "--lora", f"{p.good}:nan"), "scale must be a finite number, got 'nan'", True),
    ("lora-scale-inf", lambda p: _gen(p, "--lora", f"{p.good}:inf"), "scale must be a finite number, got 'inf'", False),
    ("lora-nan-tensor", lambda p: _gen(p, "--lora", str(p.nan_lora), model=str(p.model)), "nan.safetensors: tensor", True),
    ("lora-missing-targets", lambda p: _gen(p, "--lora", str(p.missing), model=str(p.model)), ".to_query.lora.down.weight' adapts", True),
    ("lora-wrong-shape", lambda p: _gen(p, "--lora", str(p.wrong_shape), model=str(p.model)), "wrong_shape.safetensors: key 'unet.", True),
    ("out-under-a-file", lambda p: _gen(p)[:-1] + [str(p.file / "sub")], "cannot write", False),
    ("fuse-weight-nan", lambda p: ["fuse", f"{p.good}:nan", "--out", str(p.out / "y.safetensors")], "scale must be a finite number", False),
    ("fuse-nan-tensor", lambda p: ["fuse", str(p.nan_lora), "--out", str(p.out / "y.safetensors")], "holds NaN or inf", True),
    ("fuse-out-is-input", lambda p: ["fuse", f"{p.out / 'a.safetensors'}:0.5", str(p.good), "--out", str(p.out / "." / "a.safetensors")],
     "is one of the input LoRA files", True),
    ("fuse-out-under-a-file", lambda p: ["fuse", str(p.good), "--out", str(p.file / "y.safetensors")], "cannot write", False),
    ("ddpo-prompt-not-shapes", lambda p: ["train", "ddpo", "--set", "prompts=a photo of a cat", "--out", str(p.out)], "a photo of a cat", True),
    ("ddpo-lr-nan", lambda p: ["train", "ddpo", "--set", "lr=.nan", "--out", str(p.out)], "lr must be a finite number > 0", True),
    ("ddpo-clip-range-zero", lambda p: ["train", "ddpo", "--set", "clip_range=0", "--out", str(p.out)], "clip_range must be", False),
    ("ddpo-guidance-negative", lambda p: ["train", "ddpo", "--set", "guidance=-1", "--out", str(p.out)], "guidance must be a finite number >= 0", True),
    ("refl-prompt-not-shapes", lambda p: ["train", "refl", "--set", "prompts=a photo of a cat", "--out", str(p.out)], "a photo of a cat", True),
    ("self-reward-unknown-class", lambda p: ["self-reward", "--classes", "circle,hexagon", "--out", str(p.out)],
     "['hexagon']; the shapes world's classes are the shapes circle, square, triangle, the colours red", True),
    ("self-reward-steps-negative", lambda p: ["self-reward", "--set", "sampling.steps=-1", "--out", str(p.out)], "sampling.steps", False),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.fixture
def library_output(capfd):
    """What a user's terminal shows: the libraries' log records go to stderr as in a fresh process
    (their own handlers may hold a stream of an earlier test); their progress bars are off (loading
    a pipeline draws some, and they are not what these tests look at)."""
    import logging
    import sys

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    class _ToStderr(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            sys.stderr.write(self.format(record) + "\n")

    handler = _ToStderr(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    yield
    diffusers_logging.enable_progress_bar()
    transformers_logging.enable_progress_bar()
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.mark.parametrize("argv, expected, existing", [pytest.param(*row[1:], id=row[0]) for row in ROWS])
def test_bad_input_is_one_error_line_and_writes_nothing(argv, expected, existing, tiny_sd_dir, loras, tmp_path, capfd, library_output):
    regular_file = tmp_path / "somefile.txt"
    regular_file.write_text("not a folder\n")
    p = Paths(out=tmp_path / "out", model=tiny_sd_dir, good=loras["good"], nan_lora=loras["nan"], missing=loras["missing"],
              wrong_shape=loras["wrong"], file=regular_file)
    if existing:
        p.out.mkdir()
        (p.out / "keep.txt").write_text("an earlier run's file\n")
        shutil.copy(loras["good"], p.out / "a.safetensors")
    before = _snapshot(p.out) if existing else None
    capfd.readouterr()

    code = main(argv(p))

    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    if existing:
        assert _snapshot(p.out) == before, "a refused command changed its output folder"
    else:
        assert not p.out.exists(), "a refused command created its output folder"
    assert regular_file.read_text() == "not a folder\n"
