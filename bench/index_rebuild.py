"""Time rebuilding a split's sequence index from its columns (a split without sequence_index.json) on a synthetic
table, against reading the index from JSON; prints a table and one JSON line.

    python bench/index_rebuild.py                      # 1M rows, 200 frames a sequence, 64-row record batches
    python bench/index_rebuild.py --rows 100000 --repeats 5

The table holds only the columns the rebuild reads (sequence, category, frame), chunked like the converter's
shards. "scattered" is the same table with its rows shuffled: every sequence's rows grouped and ordered by frame.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from vggt_train.data.shards.index_rebuild import rebuild_index


def synthetic_table(rows: int, frames_per_sequence: int, batch_rows: int, shuffle: bool):
    """A pa.Table of `rows` rows: sequences of `frames_per_sequence` frames, 50 categories, Co3D-like names."""
    import pyarrow as pa

    n_seq = -(-rows // frames_per_sequence)
    names = np.array([f"{100 + k % 900}_{10000 + k}_{20000 + 7 * k}" for k in range(n_seq)], dtype=object)
    seq_of_row = np.arange(rows) // frames_per_sequence
    frame = (np.arange(rows) % frames_per_sequence).astype(np.int32)
    if shuffle:
        perm = np.random.default_rng(0).permutation(rows)
        seq_of_row, frame = seq_of_row[perm], frame[perm]
    table = pa.table({"sequence": pa.array(names[seq_of_row], pa.string()),
                      "category": pa.array(np.array([f"cat{k % 50}" for k in range(n_seq)], dtype=object)[seq_of_row],
                                           pa.string()),
                      "frame": pa.array(frame, pa.int32())})
    return pa.Table.from_batches(table.to_batches(max_chunksize=batch_rows))


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic split (default 1M)")
    ap.add_argument("--frames-per-sequence", type=int, default=200, help="frames of every sequence (default 200)")
    ap.add_argument("--batch-rows", type=int, default=64, help="rows per record batch, as the converter writes (64)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    args = ap.parse_args()

    results = {}
    for layout in ("contiguous", "scattered"):
        table = synthetic_table(args.rows, args.frames_per_sequence, args.batch_rows, layout == "scattered")
        seconds, index = best_of(lambda: rebuild_index(table), args.repeats)
        assert index["contiguous"] is (layout == "contiguous") and index["num_rows"] == args.rows
        results[layout] = {"seconds": seconds, "sequences": len(index["sequences"]), "chunks": table.column(0).num_chunks}
        if layout == "contiguous":
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "sequence_index.json")
                with open(path, "w") as f:
                    json.dump({"num_rows": args.rows, "sequences": index["sequences"]}, f, indent=1)

                def load():
                    with open(path) as f:
                        return json.load(f)

                results["json"] = {"seconds": best_of(load, args.repeats)[0], "sequences": len(index["sequences"]),
                                   "chunks": 0}

    print(f"{args.rows} rows, {args.frames_per_sequence} frames a sequence, {args.batch_rows}-row record batches, "
          f"best of {args.repeats}")
    print(f"| {'what':<44} | {'sequences':>9} | {'seconds':>8} | {'rows/s':>12} |")
    print(f"|{'-' * 46}|{'-' * 10}:|{'-' * 9}:|{'-' * 13}:|")
    labels = {"json": "read sequence_index.json (json.load)", "contiguous": "rebuild, contiguous (converter layout)",
              "scattered": "rebuild, scattered (shuffled rows)"}
    for key in ("json", "contiguous", "scattered"):
        r = results[key]
        print(f"| {labels[key]:<44} | {r['sequences']:>9} | {r['seconds']:>8.3f} | {args.rows / r['seconds']:>12.0f} |")
    print(json.dumps({"bench": "index_rebuild", "rows": args.rows, "frames_per_sequence": args.frames_per_sequence,
                      "batch_rows": args.batch_rows, "repeats": args.repeats,
                      **{f"{k}_s": round(v["seconds"], 4) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
