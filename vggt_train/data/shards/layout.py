"""Where a conversion keeps its bookkeeping and how it is read and written: OUT/_convert/ (plan, part manifests,
locks), atomic JSON files, finished-shard checks, the shard jobs of a plan and their summary.

convert, finalize and merge all build on this module; it depends on none of them.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import json
import os
from typing import Any

from vggt_train.data.safe_names import safe_join
from vggt_train.data.shards.schema import SHARD_PATTERN, WORK_DIR


class ConvertError(Exception):
    """A user-fixable problem; the CLI turns it into a one-line CLIError."""


class MergeError(ConvertError):
    """A user-fixable problem of joining parts (missing parts, mismatched plans)."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def record(split: str, category: str, sequence: str | None, frame: int | None, path: str, reason: str, detail: str = "") -> dict:
    return {"split": split, "category": category, "sequence": sequence, "frame": frame, "path": path,
            "reason": reason, "detail": detail}


def shard_jobs(plan: dict) -> list[tuple[str, int]]:
    """Every (split, shard index) of the plan, in write order."""
    # Iterate the --splits order stored in the options: plan.json is written with sorted keys.
    return [(split, k) for split in plan["options"]["splits"] for k in range(len(plan["splits"][split]))]


def part_jobs(plan: dict, part: tuple[int, int]) -> list[tuple[str, int]]:
    """The contiguous slice of shard_jobs that part i of n converts (parts are disjoint and cover the plan)."""
    jobs = shard_jobs(plan)
    i, n = part
    return jobs[i * len(jobs) // n:(i + 1) * len(jobs) // n]


def shard_relpath(plan: dict, split: str, k: int) -> str:
    return f"{split}/" + SHARD_PATTERN.format(index=k, count=len(plan["splits"][split]))


def work_dir(out: str) -> str:
    return os.path.join(out, WORK_DIR)


def manifest_path(out: str, part: tuple[int, int]) -> str:
    return os.path.join(work_dir(out), f"manifest-part-{part[0]:05d}-of-{part[1]:05d}.json")


def lock_path(out: str, slot: str) -> str:
    """The lock file of one conversion part ('part-00000-of-00004') or of a merge ('merge') in OUT."""
    return os.path.join(work_dir(out), f"lock-{slot}")


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON so that a reader (or a crash) only ever sees the old or the complete new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk fails inside write(), whose error names no file: name the one being written
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


def write_json_exclusive(path: str, obj: Any) -> bool:
    """Publish a complete JSON file at `path` unless one exists (atomic: of two writers exactly one wins).
    Returns whether this call created it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    write_json_atomic(tmp, obj)
    try:
        os.link(tmp, path)  # fails if path exists, unlike a rename
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create (a reader may see it half-written)
        try:
            with open(tmp) as src, open(path, "x") as f:
                f.write(src.read())
            return True
        except FileExistsError:
            return False
    finally:
        os.remove(tmp)


def load_json(path: str, what: str) -> Any:
    """JSON content of one of our bookkeeping files; a damaged one is a ConvertError naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConvertError(f"{path}: {what} is not valid JSON ({exc}); it was damaged or edited by hand") from exc


def load_part_manifest(path: str) -> dict:
    """A part manifest, checked to have the structure this module writes."""
    manifest = load_json(path, "part manifest")
    ok = isinstance(manifest, dict) and isinstance(manifest.get("shards"), dict) and all(
        isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
        and isinstance(e.get("rows"), int) and all(isinstance(e.get(k), list) for k in ("sequences", "skipped", "dropped"))
        for e in manifest["shards"].values())
    if not ok:
        raise ConvertError(f"{path}: part manifest lacks the expected {{'fingerprint', 'shards': {{path: {{'bytes', "
                           f"'sha256', 'rows', 'sequences', ...}}}}}} structure; it was damaged or edited by hand")
    for rel in manifest["shards"]:  # keys are paths under OUT: resume stats them, merge-shards renames them
        safe_join(".", rel, path, ConvertError)
    return manifest


def check_finished(path: str, entry: dict, rehash: bool = False) -> tuple[dict | None, str]:
    """(entry, '') if the shard at `path` is the one `entry` describes, else (None, why).

    Size and mtime unchanged since the commit: trusted without reading (a resume stays O(shards)). Otherwise, or
    with `rehash`, the file is re-hashed; the returned entry then carries the file's current mtime.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "missing"
    if st.st_size != entry["bytes"]:
        return None, f"{st.st_size} bytes, the manifest says {entry['bytes']}"
    if rehash or entry.get("mtime_ns") != st.st_mtime_ns:
        if sha256_file(path) != entry["sha256"]:
            return None, "its sha256 differs from the manifest's (modified after it was written)"
        entry = dict(entry, mtime_ns=st.st_mtime_ns)
    return entry, ""


def read_manifests(out: str, fingerprint: str, rehash: bool = False,
                   only: set[str] | None = None) -> tuple[dict[str, dict], dict[str, str]]:
    """Finished shards of this plan in every part manifest: ({relpath: entry} of intact ones, {relpath: why not}
    of listed ones that are missing or changed) -- see check_finished. `only` limits the check to those shards
    (a part leaves the shards that other parts may be writing alone)."""
    entries: dict[str, dict] = {}
    rejected: dict[str, str] = {}
    wdir = work_dir(out)
    if not os.path.isdir(wdir):
        return entries, rejected
    for name in sorted(os.listdir(wdir)):
        if not (name.startswith("manifest-part-") and name.endswith(".json")):
            continue
        manifest = load_part_manifest(os.path.join(wdir, name))
        if manifest.get("fingerprint") != fingerprint:
            continue
        for rel, entry in manifest["shards"].items():
            if rel in entries or (only is not None and rel not in only):
                continue
            ok, why = check_finished(os.path.join(out, rel), entry, rehash)
            if ok is None:
                rejected[rel] = why
            else:
                entries[rel] = ok
                rejected.pop(rel, None)
    return entries, rejected


def remove_stale_temps(out: str, rels: list[str], part: tuple[int, int]) -> list[str]:
    """Delete `<shard>.tmp-<pid>` (and this part's manifest temps) that a killed run of this part left behind.

    Only this part's files: another part may be writing its own right now. Two runs of one part at once are not
    supported anyway (they would write the same shards).
    """
    patterns = [glob.escape(os.path.join(out, rel)) + ".tmp-*" for rel in rels]
    patterns.append(glob.escape(manifest_path(out, part)) + ".tmp-*")
    removed = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            os.remove(path)
            removed.append(path)
    return removed


def summarize(plan: dict, entries: dict[str, dict], jobs: list[tuple[str, int]]) -> dict:
    """Per-split counts over `jobs` from their manifest entries (so resumed shards are counted too)."""
    splits: dict[str, dict] = {}
    for split, k in jobs:
        st = splits.setdefault(split, {"sequences": 0, "frames": 0, "skipped": collections.Counter(), "dropped": 0,
                                       "shards": 0, "bytes": 0})
        e = entries[shard_relpath(plan, split, k)]
        st["sequences"] += len(e["sequences"])
        st["frames"] += e["rows"]
        st["dropped"] += len(e["dropped"])
        st["skipped"].update(r["reason"] for r in e["skipped"])
        st["shards"] += 1
        st["bytes"] += e["bytes"]
    for split, st in splits.items():
        st["filtered"] = plan["filtered"].get(split, {}).get("sequences", 0)
    return {"splits": splits, "problems": plan["problems"]}
