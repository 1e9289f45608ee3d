"""Process pools for the data commands (convert-co3d, verify-dataset) whose workers never outlive their parent.

A spawned worker holds both ends of its task queue's pipe, so it never sees EOF when the parent is killed: it
would wait forever (and keep multiprocessing's resource tracker alive with it). Each worker therefore watches its
parent: Linux's PR_SET_PDEATHSIG where available, and everywhere a thread that polls the parent's pid.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A spawn-context ProcessPoolExecutor of `workers` processes that exit when this process dies."""

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process as soon as `parent_pid` is no longer its parent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the thread below does it
        pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
