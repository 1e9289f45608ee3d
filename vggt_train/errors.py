"""User-facing error types and wording shared by the library and the CLI (the library never imports the CLI).

A `CLIError` is an error the user can fix: every `vggt-train` subcommand prints it as one line, without a
traceback, and exits with 2. `describe_os_error` words an OSError (a full disk, a permission) the same way
everywhere, naming its path; `output_dir_problem` says why a directory cannot be written before anything is.
"""

from __future__ import annotations

import os

# Set to 1 to get the traceback of errors that are otherwise printed as one line (CLIError, OSError).
DEBUG_ENV = "VGGT_TRAIN_DEBUG"


class CLIError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


class TrainingError(RuntimeError):
    """The run cannot go on (diverged, a checkpoint would be corrupt, a launch that cannot work); says why."""


def describe_os_error(exc: OSError) -> str:
    """'<strerror>: <path>' (and '-> <path2>' for renames) of an OSError, or its text when it names no path."""
    if exc.filename is None or not exc.strerror:
        return f"{type(exc).__name__}: {exc}"
    text = f"{exc.strerror}: {exc.filename}"
    return text + (f" -> {exc.filename2}" if exc.filename2 is not None else "")


def output_dir_problem(path: str) -> str | None:
    """Why `path` cannot be (created as) a writable directory, or None; creates nothing."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None
