"""One run per directory: an exclusive lock file naming its holder (host, pid, what, since).

Training takes `<output_dir>/vggt-train.lock`, a conversion part takes `<out>/_convert/lock-part-i-of-n`, a merge
`<out>/_convert/lock-merge`. The lock is an `fcntl.flock` on that file, so the kernel frees it when the holder
dies, however it dies (kill -9, OOM, a lost node's NFS client times out). The holder writes who it is into the
file and empties it on a clean exit: a lock file that is free yet not empty was left by a run that died, and the
next run says so ("a stale lock ... was broken") before taking it.

Filesystems without flock support (some Lustre/NFS mounts answer ENOLCK/EOPNOTSUPP) fall back to the file's
content: a holder on this host whose pid is gone is stale and broken with a message; a holder on another host
cannot be checked from here, so the run refuses and names the file to delete once that run is known to be gone.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: content-only locking
    fcntl = None

LOCK_FILE = "vggt-train.lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class LockHeldError(RuntimeError):
    """Another run holds the directory: its one-line message names the holder and the lock file."""


def describe(holder: dict) -> str:
    """'training (host h, pid 12, since 2026-...)' of a holder record."""
    what = holder.get("purpose", "a run")
    return f"{what} (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')})"


def _read_holder(fd: int) -> Optional[dict]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    if not data.strip():
        return None
    try:
        holder = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return {"purpose": "an unknown run (the lock file is not ours or was damaged)"}
    return holder if isinstance(holder, dict) else {"purpose": "an unknown run (the lock file is not ours)"}


def _write_holder(fd: int, purpose: str) -> dict:
    holder = {"purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    os.fsync(fd)
    return holder


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _try_flock(fd: int) -> Optional[bool]:
    """True: locked; False: another process holds it; None: this filesystem has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_FLOCK:
            return None
        raise


def _stale_by_content(holder: dict) -> bool:
    """Without flock: a holder on this host whose process is gone is stale; one elsewhere cannot be checked."""
    return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))


@contextlib.contextmanager
def hold(path: str | os.PathLike, purpose: str, directory: str | os.PathLike | None = None,
         say: Optional[Callable[[str], None]] = None) -> Iterator[dict]:
    """Hold the lock file `path` (created with its parent) for the block; yields the holder record.

    Raises LockHeldError (one line: the holder, `directory` it guards (default: the file's folder) and the file)
    when another live run holds it. `say` gets the message of a stale lock that is broken (default: stderr)."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    path = Path(path)
    where = Path(directory) if directory is not None else path.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        got = _try_flock(fd)
        previous = _read_holder(fd)
        if got is False:
            raise LockHeldError(f"{where} is in use by {describe(previous or {})}; wait for it to end or use "
                                f"another directory (lock file: {path})")
        if got is None and previous is not None and not _stale_by_content(previous):
            if previous.get("host") == socket.gethostname():
                raise LockHeldError(f"{where} is in use by {describe(previous)}; wait for it to end or use "
                                    f"another directory (lock file: {path})")
            raise LockHeldError(f"{where} is in use by {describe(previous)}, which cannot be checked from this "
                                f"host (this filesystem has no file locks); if that run is gone, delete {path}")
        if previous is not None:
            say(f"note: a stale lock of {describe(previous)}, which is no longer running, was broken ({path})")
        holder = _write_holder(fd, purpose)
        try:
            yield holder
        finally:
            with contextlib.suppress(OSError):  # empty = released cleanly; the flock goes with the descriptor
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def holder_of(path: str | os.PathLike) -> Optional[dict]:
    """The record of the live run holding `path`, or None when it is free (never takes or breaks the lock)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        got = _try_flock(fd)
        previous = _read_holder(fd)
        if got is False:
            return previous or {}
        if got is None and previous is not None and not _stale_by_content(previous):
            return previous
        return None  # free (a flock we took is dropped when fd closes)
    finally:
        os.close(fd)
