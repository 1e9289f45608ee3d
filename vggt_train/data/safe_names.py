"""Names that come from files we read must stay inside their directory.

Shard names in manifest.json, state.json and part manifests, split names in plan.json: a hand-edited or hostile
file could name `../../etc/passwd` or `/data/other.arrow`, and merge-shards would rename it, load_from_disk and
training would read it. Every such name is checked here before it is opened, renamed or deleted; a violation is
one line naming the file that holds the name and the name.
"""

from __future__ import annotations

import os


class UnsafeName(ValueError):
    """A name read from a file that would leave its directory."""


def _why_not_plain(name) -> str:
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if "\0" in name:
        return "contains a NUL byte"
    if name in (".", ".."):
        return "is '.' or '..'"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "contains a path separator"
    if os.path.isabs(name) or (len(name) >= 2 and name[1] == ":"):
        return "is an absolute path"
    return ""


def is_plain_name(name) -> bool:
    return not _why_not_plain(name)


def plain_name(name, source: str, error: type[Exception] = UnsafeName) -> str:
    """`name` if it is a plain file name (no separator, not '.'/'..', not absolute), else raise `error` naming
    `source` (the file that holds the name) and the name."""
    why = _why_not_plain(name)
    if why:
        raise error(f"{source}: unsafe name {name!r} ({why}; must be a plain file name inside its directory)")
    return name


def safe_join(root: str, rel, source: str, error: type[Exception] = UnsafeName) -> str:
    """os.path.join(root, rel) for a relative '/'-separated path whose every component is a plain name (so the
    result lies inside `root`, checked again after normalisation); else raise `error` naming `source` and `rel`."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or os.path.isabs(rel):
        raise error(f"{source}: unsafe path {rel!r} (must be a relative path inside {root})")
    for part in rel.split("/"):
        why = _why_not_plain(part)
        if why:
            raise error(f"{source}: unsafe path {rel!r} (component {part!r} {why}; must stay inside {root})")
    path = os.path.join(root, *rel.split("/"))
    base = os.path.normpath(os.path.abspath(root))
    if os.path.commonpath([base, os.path.normpath(os.path.abspath(path))]) != base:
        raise error(f"{source}: unsafe path {rel!r} (resolves outside {root})")
    return path
