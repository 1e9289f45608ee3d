"""Join the parts of a conversion (`convert-co3d --part i/n`) and finalize the dataset files.

Parts that wrote into one shared OUT only need `finalize`; parts written to separate directories are first moved
into OUT shard by shard (a rename on the same filesystem), so the data never exists twice on disk.
"""

from __future__ import annotations

import os
import shutil

from vggt_train import run_lock
from vggt_train.data.shards.finalize import finalize, load_plan
from vggt_train.data.shards.layout import MergeError, load_part_manifest, lock_path, write_json_atomic
from vggt_train.data.shards.schema import WORK_DIR


def _move(src: str, dst: str) -> None:
    """Rename (or, across filesystems, move file by file) so at most one shard is ever duplicated."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:
        shutil.move(src, dst)


def merge_parts(out: str, part_dirs: list[str]) -> dict:
    """Move the finished shards and manifests of `part_dirs` into `out`, then finalize `out` (holding OUT's merge
    lock; refused while a conversion part still runs in OUT or in one of `part_dirs`)."""
    try:
        with run_lock.hold(lock_path(out, "merge"), "merge-shards", out):
            for d in [out, *part_dirs]:
                wdir = os.path.join(d, WORK_DIR)
                for name in sorted(os.listdir(wdir)) if os.path.isdir(wdir) else []:
                    holder = run_lock.holder_of(os.path.join(wdir, name)) if name.startswith("lock-part-") else None
                    if holder is not None:
                        raise MergeError(f"{d} is still being written by {run_lock.describe(holder)}; merge after it ends")
            return _merge_parts(out, part_dirs)
    except run_lock.LockHeldError as exc:
        raise MergeError(str(exc)) from None


def _merge_parts(out: str, part_dirs: list[str]) -> dict:
    plan = None
    if os.path.exists(os.path.join(out, WORK_DIR, "plan.json")):
        plan = load_plan(out)
    for d in part_dirs:
        if os.path.abspath(d) == os.path.abspath(out):
            continue
        p = load_plan(d)
        if plan is None:
            os.makedirs(os.path.join(out, WORK_DIR), exist_ok=True)
            write_json_atomic(os.path.join(out, WORK_DIR, "plan.json"), p)
            plan = p
        elif p["fingerprint"] != plan["fingerprint"]:
            raise MergeError(f"{d} was converted with other inputs or options than {out} "
                             f"(plan {p['fingerprint']} != {plan['fingerprint']})")
        wdir = os.path.join(d, WORK_DIR)
        for name in sorted(os.listdir(wdir)):
            if not (name.startswith("manifest-part-") and name.endswith(".json")):
                continue
            manifest = load_part_manifest(os.path.join(wdir, name))
            for rel, entry in manifest["shards"].items():
                src, dst = os.path.join(d, rel), os.path.join(out, rel)
                if os.path.exists(src):
                    _move(src, dst)
                elif not (os.path.exists(dst) and os.path.getsize(dst) == entry["bytes"]):
                    raise MergeError(f"{src} is listed in {name} but missing")
            write_json_atomic(os.path.join(out, WORK_DIR, name), manifest)
    if plan is None:
        raise MergeError(f"nothing to merge: {out} has no plan and no part directories were given")
    return finalize(out)
