"""Join the parts of a conversion (`convert-co3d --part i/n`) and finalize the dataset files.

Parts that wrote into one shared OUT only need `finalize`; parts written to separate directories are first moved
into OUT shard by shard (a rename on the same filesystem), so the data never exists twice on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil

from vggt_train.data.convert import ConvertError
from vggt_train.data.schema import INDEX_FILE, MANIFEST_FILE, REPORT_FILE, SCHEMA_VERSION, WORK_DIR


class MergeError(ConvertError):
    """A user-fixable problem (missing parts, mismatched plans)."""


def _load_plan(out: str) -> dict:
    from vggt_train.data.convert import load_json

    path = os.path.join(out, WORK_DIR, "plan.json")
    if not os.path.exists(path):
        raise MergeError(f"{out} has no {WORK_DIR}/plan.json: not a convert-co3d output")
    plan = load_json(path, "the conversion plan")
    if not (isinstance(plan, dict) and isinstance(plan.get("splits"), dict) and isinstance(plan.get("options"), dict)
            and isinstance(plan.get("fingerprint"), str)):
        raise MergeError(f"{path}: the conversion plan lacks its 'splits'/'options'/'fingerprint'; it was damaged or "
                         f"edited by hand")
    from vggt_train.data.safe_names import plain_name

    splits = plan["options"].get("splits")
    if not isinstance(splits, list):
        raise MergeError(f"{path}: the conversion plan lacks its options' 'splits' list; it was damaged or edited by hand")
    for split in splits:  # split names become directories under OUT
        plain_name(split, path, MergeError)
    return plan


def finalize(out: str) -> dict:
    """Write state.json, dataset_info.json and sequence_index.json per split, and OUT's dataset_dict.json,
    manifest.json and report.json; raises MergeError naming the missing shards if any part is unfinished."""
    from vggt_train.data.convert import read_manifests, shard_jobs, shard_relpath, summarize, write_json_atomic
    from vggt_train.data.schema import features

    plan = _load_plan(out)
    entries, rejected = read_manifests(out, plan["fingerprint"])
    jobs = shard_jobs(plan)
    missing = [shard_relpath(plan, s, k) for s, k in jobs if shard_relpath(plan, s, k) not in entries]
    if missing:
        n = len(jobs)
        first = missing[0] + (f": listed as finished, but {rejected[missing[0]]}" if missing[0] in rejected else "")
        raise MergeError(f"{len(missing)} of {n} shards are not finished yet (first: {first}); run the missing "
                         f"convert-co3d parts (or rerun them: they resume) and merge again")
    feats = features()
    manifest = {"schema_version": SCHEMA_VERSION, "fingerprint": plan["fingerprint"], "splits": {}}
    skipped = list(plan["problems"])
    for split in plan["options"]["splits"]:
        shards = plan["splits"][split]
        split_dir = os.path.join(out, split)
        os.makedirs(split_dir, exist_ok=True)
        files, sequences, start = [], [], 0
        for k in range(len(shards)):
            rel = shard_relpath(plan, split, k)
            e = entries[rel]
            files.append({"filename": os.path.basename(rel), "bytes": e["bytes"], "sha256": e["sha256"], "rows": e["rows"]})
            for category, name, n in e["sequences"]:
                sequences.append({"sequence": name, "category": category, "start": start, "num_frames": n, "shard": k})
                start += n
            skipped += e["skipped"] + e["dropped"]
        digest = hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest()[:16]
        write_json_atomic(os.path.join(split_dir, "dataset_info.json"), {
            "citation": "", "homepage": "", "license": "", "features": feats.to_dict(),
            "description": "Co3D frames converted by `vggt-train convert-co3d` (schema in vggt_train/data/schema.py)"})
        write_json_atomic(os.path.join(split_dir, INDEX_FILE), {"schema_version": SCHEMA_VERSION, "num_rows": start,
                                                                "sequences": sequences})
        # state.json last: it is what makes load_from_disk see the split.
        write_json_atomic(os.path.join(split_dir, "state.json"), {
            "_data_files": [{"filename": f["filename"]} for f in files], "_fingerprint": digest,
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
            "_split": split})
        manifest["splits"][split] = {"num_rows": start, "num_sequences": len(sequences), "shards": files}
    write_json_atomic(os.path.join(out, "dataset_dict.json"), {"splits": list(plan["options"]["splits"])})
    write_json_atomic(os.path.join(out, MANIFEST_FILE), manifest)
    summary = summarize(plan, entries, jobs)
    counts: dict[str, int] = {}
    for r in skipped:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    write_json_atomic(os.path.join(out, REPORT_FILE), {
        "fingerprint": plan["fingerprint"], "options": plan["options"], "categories": plan["categories"],
        "splits": {s: {"sequences": st["sequences"], "frames": st["frames"], "bytes": st["bytes"],
                       "sequences_below_min_frames": st["filtered"]} for s, st in summary["splits"].items()},
        "skipped_by_reason": counts, "skipped": skipped})
    return manifest


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
    from vggt_train import run_lock
    from vggt_train.data.convert import lock_path

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
    from vggt_train.data.convert import load_part_manifest, write_json_atomic

    plan = None
    if os.path.exists(os.path.join(out, WORK_DIR, "plan.json")):
        plan = _load_plan(out)
    for d in part_dirs:
        if os.path.abspath(d) == os.path.abspath(out):
            continue
        p = _load_plan(d)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the dataset root: where parts wrote (shared filesystem) or where to gather them")
    parser.add_argument("part_dirs", nargs="*", metavar="PART_DIR",
                        help="directories of `convert-co3d --part i/n` runs to move into OUT (renamed, not copied)")


def run(args: argparse.Namespace) -> int:
    from vggt_train.cli import CLIError

    try:
        manifest = merge_parts(args.out, args.part_dirs)
    except ConvertError as exc:  # MergeError, or a damaged plan / part manifest
        raise CLIError(str(exc)) from exc
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['num_rows']} frames, {info['num_sequences']} sequences, {len(info['shards'])} shards")
    print(f"merged into {args.out}; check with: vggt-train verify-dataset {args.out}")
    return 0
