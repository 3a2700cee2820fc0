"""Small file helpers shared by every command: atomic writes, JSONL, images."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

_fault_hook: Callable[[str], None] | None = None


def set_fault_hook(hook: Callable[[str], None] | None) -> None:
    """Install `hook(label)`, called at every point where a kill could interrupt a write (the
    fault suite kills the process there); None removes it."""
    global _fault_hook
    _fault_hook = hook


def fault_point(label: str) -> None:
    """A point where a real kill could land: between a write and the rename that publishes it."""
    if _fault_hook is not None:
        _fault_hook(label)


def _default_file_mode() -> int:
    """What open() would give a new file (0666 minus the umask); mkstemp's 0600 would hide
    outputs from the other users and tools of a shared machine."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write via a temp file + rename, so a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _default_file_mode())
        fault_point(f"write {path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_folder_atomically(directory: Path, write: Callable[[Path], Any]) -> Path:
    """Fill a temp folder with `write(tmp)`, then rename it over `directory`: a kill at any point
    leaves either the old folder or the new one, never a half-written one."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    give_default_modes(tmp)
    fault_point(f"folder {directory.name} written")
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
        fault_point(f"folder {directory.name} moved aside")
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def give_default_modes(root: Path) -> None:
    """Every file under ROOT gets the mode a plain open gives (safetensors' writer makes 0600
    files, which other users of a shared machine cannot read)."""
    mode = _default_file_mode()
    for parent, _, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(parent, name), mode)


def save_safetensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """safetensors.torch.save_file, but atomic and with the default file mode."""
    from safetensors.torch import save

    return atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def safetensors_intact(path: Path) -> bool:
    """Whether a safetensors file opens and every tensor in it reads back (resume trusts nothing)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
        return True
    except Exception:  # any failure to read is a broken file, whatever the library's error type
        return False


def recover_interrupted_writes(root: Path, skip: tuple[str, ...] = ()) -> None:
    """Undo what a killed writer left under ROOT: temp files of atomic_write_bytes ('.NAME.*.tmp')
    are removed; of write_folder_atomically, 'D.old' is renamed back when 'D' is missing (the kill
    came between its two renames) and removed otherwise, and 'D.tmp' is removed. Only for a folder
    this process holds the lock of (no writer is alive)."""
    for parent, dirs, files in os.walk(root):
        base = Path(parent)
        for name in sorted(d for d in dirs if d.endswith(".old")):
            target = name[: -len(".old")]
            if target in dirs:
                shutil.rmtree(base / name, ignore_errors=True)
            else:
                (base / name).rename(base / target)
                dirs.append(target)
            dirs.remove(name)
        for name in [d for d in dirs if d.endswith(".tmp")]:
            shutil.rmtree(base / name, ignore_errors=True)
            dirs.remove(name)
        for name in files:
            if name.startswith(".") and ".tmp" in name and name not in skip:
                (base / name).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSONL file; a malformed line is an error naming file and line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows and fsync: the file is the resume record, so it must reach the disk."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            f.flush()
            fault_point(f"row of {Path(path).name}")
        f.flush()
        os.fsync(f.fileno())


def save_png(path: Path, image: np.ndarray) -> Path:
    """Save a uint8 (H, W, 3) array as PNG atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def load_image(path: Path) -> np.ndarray:
    """Load an RGB uint8 array; a missing or corrupt file is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"corrupt image {path}: {e}") from None
