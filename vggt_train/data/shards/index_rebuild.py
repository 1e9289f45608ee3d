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
    import pyarrow.compute as pc

    n = table.num_rows
    offsets = np.cumsum([0] + list(shard_rows or []))

    def shard_of(row: int) -> int:
        return max(0, bisect.bisect_right(offsets, row) - 1) if shard_rows else 0

    if n == 0:
        return {"num_rows": 0, "contiguous": True, "sequences": []}
    seq = table.column("sequence").combine_chunks()
    frame = table.column("frame").to_numpy()
    change = pc.not_equal(seq.slice(1), seq.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1])
    names = seq.take(starts).to_pylist()
    # frames ascend within every run: a drop in `frame` is only allowed where a new run starts
    drops = np.flatnonzero(np.diff(frame) < 0) + 1
    if len(set(names)) == len(names) and np.isin(drops, starts).all():
        cats = table.column("category").take(starts).to_pylist()
        ends = np.append(starts[1:], n)
        return {"num_rows": n, "contiguous": True, "sequences": [
            {"sequence": s, "category": c, "start": int(a), "num_frames": int(b - a), "shard": shard_of(int(a))}
            for s, c, a, b in zip(names, cats, starts, ends)]}
    enc = seq.dictionary_encode()  # codes in order of first appearance
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.lexsort((np.arange(n), frame, codes))  # by sequence, then frame, then row
    counts = np.bincount(codes, minlength=len(enc.dictionary))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    firsts = np.full(len(counts), n, np.int64)
    np.minimum.at(firsts, codes, np.arange(n))
    cats = table.column("category").take(firsts).to_pylist()
    seq_names = enc.dictionary.to_pylist()
    entries = []
    for k in range(len(counts)):
        rows = order[bounds[k]:bounds[k + 1]]
        entries.append({"sequence": seq_names[k], "category": cats[k], "start": int(firsts[k]),
                        "num_frames": int(counts[k]), "shard": shard_of(int(firsts[k])), "rows": rows})
    return {"num_rows": n, "contiguous": False, "sequences": entries}
