"""The conversion plan: which categories, and which sequences go to which shard, from the input's index alone.

The plan is deterministic (sequences sorted by name, one size probe per category) and independent of --workers
and --part, so every part of a conversion computes the same one; its fingerprint ties part manifests to it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from vggt_train.data.shards.inputs import get_format
from vggt_train.data.shards.layout import ConvertError, load_json, work_dir, write_json_exclusive

_PLAN_VERSION = 1


@dataclass
class Options:
    """A conversion's options. co3d_dir / annotation_dir are the Co3D format's inputs; other formats take theirs
    from `inputs` (e.g. colmap: {"input", "name", "depth_dir"}), named by `input_format`."""

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
    input_format: str = "co3d"
    inputs: dict = field(default_factory=dict)

    def output_key(self) -> dict:
        """The options that change the output bytes (not workers/part/strict/quiet/rehash_finished)."""
        key = {"splits": list(self.splits), "min_frames": self.min_frames, "max_side": self.max_side,
               "shard_size_mb": self.shard_size_mb}
        if self.input_format != "co3d":
            key.update(input_format=self.input_format, inputs=dict(sorted(self.inputs.items())))
        return key


def make_plan(opts: Options) -> dict:
    """Deterministic shard plan: {split: [shard: [[category, sequence, n_frames], ...]]} plus input problems.

    The input format (opts.input_format) lists the sequences with a bytes-per-frame estimate; sequences fill
    shards in order up to --shard-size-mb (a sequence never spans shards).
    """
    scan = get_format(opts.input_format).scan(opts)
    target = opts.shard_size_mb * 1e6
    plan: dict[str, Any] = {"version": _PLAN_VERSION, "options": opts.output_key(), "categories": scan.categories,
                            "inputs": scan.inputs, "splits": {}, "problems": scan.problems, "filtered": scan.filtered}
    if opts.input_format != "co3d":  # a Co3D plan keeps its earlier form, so earlier conversions resume
        plan.update(format=opts.input_format, source=scan.source)
    for split in opts.splits:
        shards: list[list] = [[]]
        size = 0.0
        for category, name, n, per_frame in scan.splits.get(split, []):
            est = per_frame * n
            if shards[-1] and size + est > target:
                shards.append([])
                size = 0.0
            shards[-1].append([category, name, n])
            size += est
        plan["splits"][split] = shards
        plan["filtered"].setdefault(split, {"sequences": 0, "frames": 0})
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
