"""The conversion plan: which categories, and which sequences go to which shard, from the annotations alone.

The plan is deterministic (sequences sorted by name, one size probe per category) and independent of --workers
and --part, so every part of a conversion computes the same one; its fingerprint ties part manifests to it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from vggt_train.data.sources import co3d
from vggt_train.data.sources.select import parse_categories, select_categories
from vggt_train.data.shards.layout import ConvertError, record, sha256_file, work_dir, write_json_exclusive, load_json

_FALLBACK_FRAME_BYTES = 1.2e6  # size estimate when a category's probe frame is unreadable
_PLAN_VERSION = 1


@dataclass
class Options:
    co3d_dir: str
    annotation_dir: str
    out: str
    categories: str = "all"  # "all" | "train41" | "a,b,c"
    splits: tuple[str, ...] = ("train", "test")
    min_frames: int = 24
    max_side: int | None = None
    shard_size_mb: float = 512.0
    workers: int = 1
    part: tuple[int, int] = (0, 1)
    strict: bool = False
    quiet: bool = False
    rehash_finished: bool = False

    def output_key(self) -> dict:
        """The options that change the output bytes (not workers/part/strict/quiet/rehash_finished)."""
        return {"splits": list(self.splits), "min_frames": self.min_frames, "max_side": self.max_side,
                "shard_size_mb": self.shard_size_mb}


def resolve_categories(opts: Options) -> list[str]:
    """The categories to convert; a requested category without any annotation file is an error."""
    if not os.path.isdir(opts.annotation_dir):
        raise ConvertError(f"annotation dir {opts.annotation_dir} does not exist")
    if not os.path.isdir(opts.co3d_dir):
        raise ConvertError(f"Co3D dir {opts.co3d_dir} does not exist")
    found = co3d.find_categories(opts.annotation_dir, opts.splits)
    if not opts.categories.replace(",", "").strip():
        raise ConvertError("--categories is empty")
    try:
        chosen = select_categories(opts.categories, found)
    except ValueError:
        missing = [c for c in parse_categories(opts.categories) if c not in found]
        raise ConvertError(f"requested categories not found in {opts.annotation_dir} (no "
                           f"<category>_{{{','.join(opts.splits)}}}.jgz): {', '.join(missing)}") from None
    if not chosen:
        raise ConvertError(f"no <category>_<{'|'.join(opts.splits)}>.jgz annotation files in {opts.annotation_dir}")
    return chosen


def make_plan(opts: Options) -> dict:
    """Deterministic shard plan: {split: [shard: [[category, sequence, n_annotated], ...]]} plus input problems.

    Reads every annotation file once (then drops it, so memory stays small) and probes one frame per category
    for a bytes-per-frame estimate that sets how many sequences fill a --shard-size-mb shard.
    """
    categories = resolve_categories(opts)
    target = opts.shard_size_mb * 1e6
    plan: dict[str, Any] = {"version": _PLAN_VERSION, "options": opts.output_key(), "categories": categories,
                            "inputs": {}, "splits": {}, "problems": [], "filtered": {}}
    for split in opts.splits:
        shards: list[list] = [[]]
        size = 0.0
        filtered = {"sequences": 0, "frames": 0}
        # Rows, the sequence index and Co3DSplit are keyed by sequence name alone, so a name must be unique per split.
        owner: dict[str, str] = {}
        for category in categories:
            path = co3d.annotation_path(opts.annotation_dir, category, split)
            if not os.path.exists(path):
                if opts.strict:
                    raise ConvertError(f"{path}: missing_annotation_file [--strict]")
                plan["problems"].append(record(split, category, None, None, path, "missing_annotation_file"))
                continue
            try:
                co3d.check_regular_file(path, "missing_annotation_file")  # a FIFO would hang the hash below
                plan["inputs"][os.path.basename(path)] = sha256_file(path)
                annotation = co3d.load_annotation_file(path)
            except co3d.BadInput as exc:
                if opts.strict:
                    raise ConvertError(f"{exc} [--strict]") from None
                plan["problems"].append(record(split, category, None, None, exc.path, exc.reason, exc.detail))
                continue
            names = [n for n in sorted(annotation) if len(annotation[n]) >= opts.min_frames]
            filtered["sequences"] += len(annotation) - len(names)
            filtered["frames"] += sum(len(annotation[n]) for n in annotation if len(annotation[n]) < opts.min_frames)
            per_frame = None
            for name in names[:3]:
                for entry in annotation[name][:3]:
                    per_frame = per_frame or co3d.probe_frame_bytes(opts.co3d_dir, entry, opts.max_side)
            per_frame = per_frame or _FALLBACK_FRAME_BYTES
            for name in names:
                if name in owner:
                    if opts.strict:
                        raise ConvertError(f"{path}: duplicate_sequence ({name} is also in {owner[name]}) [--strict]")
                    plan["problems"].append(record(split, category, name, None, path, "duplicate_sequence",
                                                    f"{name} is also in {owner[name]}, which is kept"))
                    continue
                owner[name] = path
                est = per_frame * len(annotation[name])
                if shards[-1] and size + est > target:
                    shards.append([])
                    size = 0.0
                shards[-1].append([category, name, len(annotation[name])])
                size += est
            del annotation
        plan["splits"][split] = shards
        plan["filtered"][split] = filtered
    plan["fingerprint"] = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:32]
    return plan


def save_plan(out: str, plan: dict) -> None:
    """Store the plan, or check that an existing one (an earlier or parallel part) is the same plan."""
    os.makedirs(work_dir(out), exist_ok=True)
    path = os.path.join(work_dir(out), "plan.json")
    if not os.path.exists(path) and write_json_exclusive(path, plan):
        return
    # an earlier part, or one started at the same moment (write_json_exclusive lets only one create the file)
    old = load_json(path, "the conversion plan")
    if not isinstance(old, dict):
        raise ConvertError(f"{path}: the conversion plan is not a JSON object; it was damaged or edited by hand")
    if old.get("fingerprint") != plan["fingerprint"]:
        raise ConvertError(f"{out} holds a conversion with other inputs or options (plan {old.get('fingerprint')} "
                           f"!= {plan['fingerprint']}); use another --out or delete {out}")
