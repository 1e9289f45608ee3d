"""The typed entries of `data.mix` (training on a weighted mixture of converted datasets) and their checks.

    data:
      mix:
        - {path: /data/co3d_hf, weight: 0.6, categories: [tv, apple]}
        - {path: /data/vkitti_hf, weight: 0.4, name: vkitti}

Each sample of a step draws its dataset by weight (sampler.Mixture); `name` labels its samples (the batches'
`sources`, the validation's `val/<name>/<loss>`) and defaults to the last component of `path`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from vggt_train.data.sources.mixed import SEPARATOR


@dataclass
class MixEntry:
    path: Optional[str] = None  # a converted dataset root (vggt-train convert-co3d --out): required
    weight: float = 1.0  # > 0; the weights of data.mix need not sum to 1
    name: Optional[str] = None  # label of its samples; default: the last component of path
    categories: Optional[List[str]] = None  # null: data.categories
    train_split: Optional[str] = None  # null: data.train_split
    val_split: Optional[str] = None  # null: data.val_split


def entry_name(entry: MixEntry) -> str:
    """The entry's label: `name`, else the last component of its path."""
    return entry.name if entry.name else Path(str(entry.path).rstrip("/\\")).name


def mix_problem(mix: Optional[Sequence[MixEntry]], path: Optional[str], raw_annotation_dir: Optional[str]) -> Optional[str]:
    """The first problem of data.mix together with data.path / data.raw_annotation_dir, as a message naming the
    field (`data.mix[i].weight`), or None. Paths must exist as directories."""
    if mix is None:
        return None
    if path is not None:
        return (f"data.path={path!r} and data.mix are both set: give one dataset in data.path, or several in data.mix "
                f"(add this one as an entry there)")
    if raw_annotation_dir is not None:
        return "data.mix reads converted datasets only: data.raw_annotation_dir must be null with data.mix"
    if not mix:
        return "data.mix is empty: give at least one {path, weight} entry (or one dataset in data.path)"
    seen = {}
    for i, e in enumerate(mix):
        where = f"data.mix[{i}]"
        if not e.path:
            return f"{where}.path is required: a dataset written by `vggt-train convert-co3d --out`"
        if not Path(e.path).is_dir():
            return f"{where}.path={e.path!r}: directory not found"
        if not (math.isfinite(e.weight) and e.weight > 0):
            return f"{where}.weight={e.weight} must be a finite number > 0"
        name = entry_name(e)
        if not name or SEPARATOR in name:
            return f"{where}.name={name!r} must be non-empty and without {SEPARATOR!r} (it prefixes the sequence names)"
        if name in seen:
            return (f"{where}.name={name!r} is also the name of data.mix[{seen[name]}]: set data.mix[{i}].name to tell "
                    f"them apart")
        seen[name] = i
        for field_ in ("train_split", "val_split"):
            if getattr(e, field_) == "":
                return f"{where}.{field_} is empty: a split name, or null for data.{field_}"
    return None
