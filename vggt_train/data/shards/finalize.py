"""Finalize a converted dataset once every shard of its plan exists: per split state.json, dataset_info.json and
sequence_index.json, then OUT's dataset_dict.json, manifest.json, report.json and README.md (the dataset card).
"""

from __future__ import annotations

import hashlib
import os

from vggt_train.data.safe_names import plain_name
from vggt_train.data.shards.card import source_info, write_dataset_card
from vggt_train.data.shards.layout import MergeError, load_json, read_manifests, shard_jobs, shard_relpath, summarize, write_json_atomic
from vggt_train.data.shards.schema import INDEX_FILE, MANIFEST_FILE, REPORT_FILE, SCHEMA_VERSION, WORK_DIR, features


def load_plan(out: str) -> dict:
    path = os.path.join(out, WORK_DIR, "plan.json")
    if not os.path.exists(path):
        raise MergeError(f"{out} has no {WORK_DIR}/plan.json: not a converter's output")
    plan = load_json(path, "the conversion plan")
    if not (isinstance(plan, dict) and isinstance(plan.get("splits"), dict) and isinstance(plan.get("options"), dict)
            and isinstance(plan.get("fingerprint"), str)):
        raise MergeError(f"{path}: the conversion plan lacks its 'splits'/'options'/'fingerprint'; it was damaged or "
                         f"edited by hand")

    splits = plan["options"].get("splits")
    if not isinstance(splits, list):
        raise MergeError(f"{path}: the conversion plan lacks its options' 'splits' list; it was damaged or edited by hand")
    for split in splits:  # split names become directories under OUT
        plain_name(split, path, MergeError)
    return plan


def finalize(out: str) -> dict:
    """Write state.json, dataset_info.json and sequence_index.json per split, and OUT's dataset_dict.json,
    manifest.json and report.json; raises MergeError naming the missing shards if any part is unfinished."""
    plan = load_plan(out)
    entries, rejected = read_manifests(out, plan["fingerprint"])
    jobs = shard_jobs(plan)
    missing = [shard_relpath(plan, s, k) for s, k in jobs if shard_relpath(plan, s, k) not in entries]
    if missing:
        n = len(jobs)
        first = missing[0] + (f": listed as finished, but {rejected[missing[0]]}" if missing[0] in rejected else "")
        raise MergeError(f"{len(missing)} of {n} shards are not finished yet (first: {first}); run the missing "
                         f"conversion parts (or rerun them: they resume) and merge again")
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
            "description": f"{source_info(plan)['name']} frames converted by `vggt-train "
                           f"convert-{plan.get('format', 'co3d')}` (schema in vggt_train/data/shards/schema.py)"})
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
    write_dataset_card(out, {"source": source_info(plan)})  # README.md: reads the files above
    return manifest
