"""One guard for every command that writes a run folder: who owns it, one writer at a time.

    with claim_run_folder(out, "train ddpo", settings, config=cfg) as folder:
        ...checks that may still fail (load the model, open the LoRAs)...
        folder.commit()          # writes run.json (the marker) and config.yaml
        ...the work...

Why each part:
- **Marker** (`run.json`: the command and the settings signature that own the folder). A folder
  owned by another command, or by the same command with other settings, is refused before
  anything is written, so one run can never overwrite another's log, config or images.
  `generate` wrote a flat signature there before; such a file reads as a `generate` marker.
- **Lock** (`fcntl.flock` on `.rewardiff.lock` inside the folder, non-blocking): a second process
  on the same folder is refused at once. The kernel drops the lock when its process dies, so a
  `kill -9` leaves nothing stale to clean up; the pid/host written into the file only name the
  holder in the error.
- **Failed start**: until `commit()`, any exception rolls the folder back to what it was (entries
  the claim found are kept, new ones removed, a folder the claim created is removed again).
- **Interrupted writes**: under the lock, temp files and half-renamed folders a killed writer
  left (io_utils' atomic-write names) are cleaned or restored before the command looks at its
  outputs.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from rewardiff.errors import RewardiffError
from rewardiff.io_utils import recover_interrupted_writes, write_json

MARKER = "run.json"
LOCK = ".rewardiff.lock"
CONFIG = "config.yaml"
FOREIGN_OUTPUTS = ("metadata.jsonl", "train_log.jsonl", "index.jsonl")
"""Files of some rewardiff run: an unmarked folder holding one is refused (its owner is unknown)."""


class FolderBusyError(RewardiffError):
    """Another process holds the folder's lock."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def normalise(settings: dict) -> dict:
    """Settings as they read back from JSON (tuples become lists), so a comparison is exact."""
    return json.loads(json.dumps(settings))


def settings_of(config: Any, free: tuple[str, ...] = ()) -> dict:
    """A config dataclass as a settings signature, without the dotted fields a resumed run may
    change (`free`, e.g. 'epochs', 'unet.steps': run longer, elsewhere, with more threads)."""
    from rewardiff.config import to_dict

    data = to_dict(config)
    for key in free:
        node, *rest = key.split(".")
        if not rest:
            data.pop(node, None)
        elif isinstance(data.get(node), dict):
            data[node] = dict(data[node])
            data[node].pop(rest[0], None)
    return normalise(data)


def read_marker(folder: Path) -> dict | None:
    """{'command', 'settings'} of the folder's marker, or None. A flat run.json (generate before
    the marker existed) is a generate marker."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RewardiffError(f"{path} is not valid JSON; the folder's owner is unknown: choose another --out") from None
    if not isinstance(data, dict):
        raise RewardiffError(f"{path} is not a run marker; choose another --out")
    if "command" in data and "settings" in data:
        return {"command": data["command"], "settings": data["settings"]}
    return {"command": "generate", "settings": data}


def check_owner(folder: Path, command: str, settings: dict, config: Any = None) -> None:
    """Refuse a folder that another command or other settings own (the first differing setting named)."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        _check_unmarked(folder, command, config)
        return
    if marker["command"] != command:
        raise RewardiffError(f"{folder} already holds a different run (a `{marker['command']}` run; `{command}` would overwrite it); choose another --out")
    then, now = _flatten(marker["settings"]), _flatten(normalise(settings))
    diffs = [k for k in [*now, *then] if then.get(k, "<unset>") != now.get(k, "<unset>")]
    if diffs:
        k = diffs[0]
        raise RewardiffError(f"{folder} already holds a different run (`{command}` with other settings: {k}: {then.get(k, '<unset>')!r} there, "
                             f"{now.get(k, '<unset>')!r} now); resume with the same settings or choose another --out")


def _check_unmarked(folder: Path, command: str, config: Any) -> None:
    """A folder without a marker: adopt a run of this command made before markers existed (its
    config.yaml has this command's fields), refuse one that holds another run's outputs."""
    cfg_file = folder / CONFIG
    if cfg_file.is_file() and config is not None and dataclasses.is_dataclass(config):
        try:
            saved = yaml.safe_load(cfg_file.read_text())
        except yaml.YAMLError:
            saved = None
        fields = {f.name for f in dataclasses.fields(config)}
        if not isinstance(saved, dict) or set(saved) != fields:
            raise RewardiffError(f"{folder} holds a config.yaml of another command's run; `{command}` would overwrite it: choose another --out")
        return
    found = [name for name in FOREIGN_OUTPUTS if (folder / name).exists()]
    if found:
        raise RewardiffError(f"{folder} already holds {found[0]} of another run (no {MARKER}); choose another --out")


def _check_writable(out: Path) -> None:
    """Refuse, creating nothing, an --out that cannot become a folder (under a file, or under a
    folder this user may not write)."""
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))


def _acquire(folder: Path, command: str) -> int:
    """The folder's lock as an open descriptor; refuses at once if another process holds it.
    Re-opens when the lock file was replaced between open and flock (a releasing holder unlinks it)."""
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise FolderBusyError(f"{folder} is in use by {holder}; wait for it to finish or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} (`{command}`)\n".encode(), 0)
            return fd
        os.close(fd)


def _release(folder: Path, fd: int) -> None:
    (folder / LOCK).unlink(missing_ok=True)  # while still holding it (see _acquire)
    os.close(fd)


def folder_busy(folder: Path) -> str | None:
    """Who is writing FOLDER now (the lock holder's line), or None: readers (eval, score) refuse
    a folder whose images are still being written."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    finally:
        os.close(fd)
    return None


@dataclasses.dataclass
class RunFolder:
    """A claimed folder: locked by this process, owner checked, not yet written until commit()."""

    path: Path
    command: str
    settings: dict
    config: Any = None
    committed: bool = False
    writer: bool = True  # False: a non-main process of a multi-process run, which writes no marker

    def commit(self) -> None:
        """The run starts writing: record the owner (run.json) and the resolved config.yaml."""
        from rewardiff.config import save_config

        if not self.writer:
            self.committed = True
            return
        write_json(self.path / MARKER, {"command": self.command, "settings": self.settings})
        if self.config is not None:
            save_config(self.config, self.path / CONFIG)
        self.committed = True


@contextmanager
def claim_run_folder(out: str | Path, command: str, settings: dict, config: Any = None) -> Iterator[RunFolder]:
    """Lock OUT, check who owns it, yield it; roll back every change if the body fails before
    `commit()`, release the lock in every case."""
    out = Path(out)
    _check_writable(out)
    created = []
    node = out
    while not node.exists():
        created.append(node)
        node = node.parent
    out.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in out.iterdir()}
    fd = _acquire(out, command)
    folder = RunFolder(out, command, normalise(settings), config)
    try:
        check_owner(out, command, folder.settings, config)
        recover_interrupted_writes(out, skip=(LOCK,))
        yield folder
    except BaseException:
        if not folder.committed:
            _roll_back(out, before)
            _release(out, fd)
            fd = -1
            for path in created:  # deepest first
                try:
                    path.rmdir()
                except OSError:
                    break
        raise
    finally:
        if fd >= 0:
            _release(out, fd)


@contextmanager
def claim_run_folder_main(out: str | Path, command: str, settings: dict, config: Any, is_main: bool) -> Iterator[RunFolder]:
    """`claim_run_folder` for a run of several processes (`accelerate launch`): the main process
    owns, locks and marks the folder; the others get a folder that writes no marker."""
    if is_main:
        with claim_run_folder(out, command, settings, config) as folder:
            yield folder
    else:
        yield RunFolder(Path(out), command, normalise(settings), None, writer=False)


def _roll_back(out: Path, before: set[str]) -> None:
    for entry in out.iterdir():
        if entry.name in before or entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
