"""Rebuild a split's sequence index from its columns, for splits without sequence_index.json.

sequence_index.json is an accelerator written by finalize. A split written by `datasets` itself
(`Dataset.save_to_disk`, e.g. after `load_dataset("parquet", ...)` or a copy from the Hub) has none; its index is
rebuilt from the `sequence` column (and `category` at each sequence's first row, `frame` to check the order):

- contiguous (every sequence's rows form one run, frames ascending within it, as the converter writes them):
  entries {sequence, category, start, num_frames, shard}, exactly what finalize writes;
- otherwise (rows of a sequence scattered, e.g. a shuffled dataset saved again, or frames out of order): each
  entry also carries "rows", the sequence's row indices ordered by `frame` (ties by row), so frame positions
  mean what they meant in the converted dataset. Entries are in order of each sequence's first row.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np


def rebuild_index(table, shard_rows: Sequence[int] | None = None) -> dict:
    """{"num_rows", "contiguous", "sequences": [entry]} of a pa.Table with `sequence`, `category` and `frame`
    columns (see the module docstring for the entries). `shard_rows`: rows per shard, to fill each entry's
    `shard` (its first row's shard); 0 when not given."""
    n = table.num_rows
    offsets = np.cumsum([0] + list(shard_rows or []))

    def shard_of(row: int) -> int:
        return max(0, bisect.bisect_right(offsets, row) - 1) if shard_rows else 0

    if n == 0:
        return {"num_rows": 0, "contiguous": True, "sequences": []}
    # Codes in order of first appearance: a run is a stretch of equal codes; contiguous iff one run per name.
    enc = table.column("sequence").combine_chunks().dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = enc.dictionary.to_pylist()
    frame = table.column("frame").to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1])
    drops = np.diff(frame) < 0
    drops[starts[1:] - 1] = False  # frames may restart where a new run starts
    if len(starts) == len(names) and not drops.any():
        cats = table.column("category").take(starts).to_pylist()
        ends = np.append(starts[1:], n)
        return {"num_rows": n, "contiguous": True, "sequences": [
            {"sequence": s, "category": c, "start": int(a), "num_frames": int(b - a), "shard": shard_of(int(a))}
            for s, c, a, b in zip(names, cats, starts, ends)]}
    # by sequence, then frame; a stable sort keeps row order among ties (one int64 key: 2.6x faster than lexsort)
    span = int(frame.max()) - int(frame.min()) + 1
    order = np.argsort(codes * span + (frame.astype(np.int64) - int(frame.min())), kind="stable")
    counts = np.bincount(codes, minlength=len(names))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    firsts = np.full(len(counts), n, np.int64)
    np.minimum.at(firsts, codes, np.arange(n))
    cats = table.column("category").take(firsts).to_pylist()
    entries = []
    for k in range(len(counts)):
        rows = order[bounds[k]:bounds[k + 1]]
        entries.append({"sequence": names[k], "category": cats[k], "start": int(firsts[k]),
                        "num_frames": int(counts[k]), "shard": shard_of(int(firsts[k])), "rows": rows})
    return {"num_rows": n, "contiguous": False, "sequences": entries}
