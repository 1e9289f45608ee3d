"""Training checkpoints: atomic accelerate save_state directories, the last K kept, newest-complete lookup."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir(output_dir, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def list_complete(output_dir) -> list[Path]:
    """Complete checkpoint directories, oldest first (temporary and partial ones are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_complete(output_dir) -> Optional[Path]:
    done = list_complete(output_dir)
    return done[-1] if done else None


def temporary_dir(output_dir, step: int) -> Path:
    """Where a checkpoint is written before it is renamed into place (a crash leaves only this behind)."""
    return checkpoint_root(output_dir) / f".tmp-step_{step:08d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the files themselves were synced
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def finalize(tmp: Path, final: Path, trainer_state: dict) -> Path:
    """Write the trainer state into `tmp`, then rename it to `final` (rank 0 only, after all ranks saved).

    Everything is flushed to disk before the rename: after a power loss or node crash a checkpoint that looks
    complete (has trainer_state.json) holds all its bytes.
    """
    state_tmp = tmp / (STATE_FILE + ".tmp")
    state_tmp.write_text(json.dumps(trainer_state, indent=1, sort_keys=True))
    os.replace(state_tmp, tmp / STATE_FILE)
    _fsync_tree(tmp)
    if final.exists():  # a re-run of the same step (e.g. after a resume): the new one wins
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)
    return final


def prune(output_dir, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints and any stale temporary directories."""
    removed = []
    done = list_complete(output_dir)
    for old in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-step_"):
                shutil.rmtree(p, ignore_errors=True)
    return removed


def read_trainer_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())
