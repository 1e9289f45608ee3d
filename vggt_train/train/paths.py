"""Relative paths of a training run, found the same way from any working directory.

A relative path in a config (`data.path`, `data.raw_annotation_dir`, `model.checkpoint`, `deepspeed`, `resume`)
or in accelerate's `deepspeed_config_file` is looked up, in order, in: the current directory, the directory of
the YAML config that named it, and the repository this package runs from (where `configs/`, `ds_configs/` and
`accelerate_configs/` live). The first hit is used as an absolute path; a miss is an error naming every
directory tried. `output_dir` is not looked up: it is created relative to the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

# the package's parent directory, when it is a source checkout (an editable install) rather than site-packages
_CHECKOUT = Path(__file__).resolve().parents[2]


def repo_root() -> Optional[Path]:
    """The source checkout this package runs from (it has pyproject.toml and configs/), or None."""
    return _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "configs").is_dir() else None


def search_dirs(config_file: Optional[str] = None) -> List[Path]:
    """Where a relative path is looked up, in order, without repeats."""
    dirs = [Path.cwd()]
    if config_file:
        dirs.append(Path(config_file).resolve().parent)
    root = repo_root()
    if root is not None:
        dirs.append(root)
    out: List[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def locate(value: str, dirs: List[Path]) -> Optional[Path]:
    """The first existing `dir / value` (absolute), `value` itself when absolute and existing, else None."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    for d in dirs:
        if (d / path).exists():
            return (d / path).resolve()
    return None


def not_found(key: str, value: str, dirs: List[Path]) -> str:
    """The one-line error for a relative path that is in none of `dirs`."""
    if Path(value).expanduser().is_absolute():
        return f"{key}={value!r}: not found"
    return f"{key}={value!r}: not found (looked in {', '.join(str(d) for d in dirs)})"


def resolve_env_file(var: str, what: str) -> None:
    """Make the relative file path in environment variable `var` absolute by the lookup above (accelerate launch
    passes the accelerate config's deepspeed_config_file this way, relative to wherever it was started)."""
    value = os.environ.get(var)
    if not value or value == "none":
        return
    dirs = search_dirs()
    found = locate(value, dirs)
    if found is None or not found.is_file():
        raise FileNotFoundError(not_found(what, value, dirs))
    os.environ[var] = str(found)
