"""Read frames of a converted split: O(1) sequence lookup and zero-copy depth, straight from the Arrow shards.

    split = Co3DSplit("OUT/train")
    frames = split.get_frames("106_12648_23157", [0, 5, 9])   # positions within the sequence
    frames["images"][0]      # [H, W, 3] uint8          frames["depths"][0]  # [H, W] float16 (read-only view)
    frames["extrinsics"]     # [S, 3, 4] float64        frames["intrinsics"] # [S, 3, 3] float64
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import logging
import os
import time
from typing import Sequence

import numpy as np
from PIL import Image

from vggt_train.data.safe_names import plain_name
from vggt_train.data.shards.index_rebuild import rebuild_index
from vggt_train.data.shards.schema import INDEX_FILE, arrow_schema

log = logging.getLogger("vggt_train.data")


class ShardError(ValueError):
    """A shard that cannot be read (truncated, damaged schema or buffers): the message names the shard."""


def split_data_files(path: str) -> list[str]:
    """The shard names that state.json of split `path` lists, each checked to be a plain file name in `path`
    (load_from_disk opens them)."""

    state_path = os.path.join(path, "state.json")
    try:
        with open(state_path) as f:
            state = json.load(f)
        files = state["_data_files"]
        names = [d["filename"] for d in files]
    except FileNotFoundError:
        raise ValueError(f"{state_path}: missing (not a converted split)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{state_path}: lacks a readable '_data_files' list ({type(exc).__name__}: {exc})") from None
    for name in names:
        plain_name(name, state_path)
    return names


def open_shard(path: str):
    """The pa.Table of one Arrow stream shard, every record batch checked with validate(full=True) before any
    value is touched (damaged offsets would otherwise crash the process); raises ShardError naming the shard."""
    import pyarrow as pa


    arrow_schema()  # registers datasets' Array2D extension type before reading
    batches, rows = [], 0
    try:
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_stream(source)
            schema = reader.schema
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                batch.validate(full=True)
                batches.append(batch)
                rows += batch.num_rows
    except Exception as exc:
        where = f" at record batch {len(batches)} (after row {rows})" if batches or rows else ""
        raise ShardError(f"{path}: not a readable Arrow shard{where} ({type(exc).__name__}: {exc})") from None
    return pa.Table.from_batches(batches, schema=schema)


def index_problems(index, num_rows: int, source: str, num_shards: int | None = None, sequence_at=None) -> list[str]:
    """What is wrong with a parsed sequence_index.json against a split of `num_rows` rows ([] if nothing).

    Entries must tile the rows in order: start of the first is 0, each starts where the previous ended,
    num_frames >= 1, the last ends at num_rows; names are unique; `shard` is an index < num_shards.
    `sequence_at(row)` (optional) gives the stored sequence of a row: the first and last row of each entry are
    checked against its name (a cheap check; verify-dataset compares every row).
    """
    if not isinstance(index, dict) or not isinstance(index.get("sequences"), list):
        return [f"{source}: lacks {{'sequences': [{{'sequence', 'category', 'start', 'num_frames', 'shard'}}]}}"]
    problems: list[str] = []
    if index.get("num_rows") != num_rows:
        problems.append(f"{source}: lists {index.get('num_rows')!r} rows, the shards hold {num_rows}")
    end, seen = 0, set()

    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    for k, e in enumerate(index["sequences"]):
        where = f"{source}: entry {k}"
        if not (isinstance(e, dict) and isinstance(e.get("sequence"), str) and isinstance(e.get("category"), str)
                and is_int(e.get("start")) and is_int(e.get("num_frames")) and is_int(e.get("shard"))):
            problems.append(f"{where}: not {{'sequence': str, 'category': str, 'start': int, 'num_frames': int, "
                            f"'shard': int}} ({str(e)[:120]})")
            break
        where = f"{where} ({e['sequence']})"
        start, n = e["start"], e["num_frames"]
        if e["sequence"] in seen:
            problems.append(f"{where}: sequence listed twice")
        seen.add(e["sequence"])
        if n < 1:
            problems.append(f"{where}: num_frames {n} < 1")
        if start != end:
            problems.append(f"{where}: start {start}, but the previous entry ends at row {end} (entries must be "
                            f"contiguous and in row order)")
        if start < 0 or start + n > num_rows:
            problems.append(f"{where}: rows {start}..{start + n - 1} outside the split's {num_rows} rows")
        if num_shards is not None and not 0 <= e["shard"] < num_shards:
            problems.append(f"{where}: shard {e['shard']} is not one of the split's {num_shards} shards")
        if problems:
            break
        if sequence_at is not None:
            for row in (start, start + n - 1):
                got = sequence_at(row)
                if got != e["sequence"]:
                    problems.append(f"{where}: row {row} holds sequence {got!r}")
                    break
            if problems:
                break
        end = start + n
    if not problems and end != num_rows:
        problems.append(f"{source}: entries cover rows 0..{end - 1}, the split has {num_rows}")
    return problems


class Co3DSplit:
    """One split of a converted dataset (a `load_from_disk` directory), memory-mapped; cheap to pickle into workers.

    Opening checks what a damaged or hostile split could abuse: state.json's shard names stay in the split
    directory, every shard reads (a failure names the shard), sequence_index.json tiles the rows (index_problems).
    Without sequence_index.json (a split saved by `datasets` itself) the index is rebuilt from the columns
    (index_rebuild.py), once: the rebuilt index travels with the pickled split.
    """

    def __init__(self, path: str, rebuilt_index: dict | None = None):
        import datasets

        self.path = path
        names = split_data_files(path)
        try:
            self.dataset = datasets.load_from_disk(path)
        except Exception as exc:
            for name in names:  # name the shard: load_from_disk's errors do not
                open_shard(os.path.join(path, name))
            raise ValueError(f"{path}: datasets.load_from_disk fails ({type(exc).__name__}: {exc})") from None
        # Arrow format: rows come back as pyarrow tables over the memory map, nothing becomes a Python object.
        self._table = self.dataset.with_format("arrow")
        index_path = os.path.join(path, INDEX_FILE)
        sequence_at = self._sequence_reader(names)
        # Set when the index was rebuilt from the columns; pickled along, so workers do not rebuild it.
        self.rebuilt_index = rebuilt_index
        if rebuilt_index is None and not os.path.exists(index_path):
            self.rebuilt_index = self._rebuild_index(names)
        if self.rebuilt_index is not None:
            index = self.rebuilt_index
        else:
            try:
                with open(index_path) as f:
                    index = json.load(f)
            except (OSError, ValueError) as exc:
                raise ValueError(f"{index_path}: not readable JSON ({type(exc).__name__}: {exc})") from None
            problems = index_problems(index, len(self.dataset), index_path, len(names), sequence_at)
            if problems:
                raise ValueError(problems[0])
        self.sequences: list[str] = [s["sequence"] for s in index["sequences"]]
        self._index = {s["sequence"]: s for s in index["sequences"]}
        self._names = names

    def _rebuild_index(self, names: list[str]) -> dict:
        """The sequence index from the columns (index_rebuild.rebuild_index), with one log line saying so."""
        t0 = time.perf_counter()
        table = getattr(self.dataset.data, "table", self.dataset.data)
        missing = [c for c in ("sequence", "category", "frame") if c not in table.column_names]
        if missing:
            raise ValueError(f"{self.path}: no {INDEX_FILE} and no {missing} column(s) to rebuild it from "
                             f"(not a converted split?)")
        blocks = getattr(self.dataset.data, "blocks", None)  # one block row per shard file after load_from_disk
        shard_rows = [len(row[0]) for row in blocks] if blocks and len(blocks) == len(names) else None
        index = rebuild_index(table.select(["sequence", "category", "frame"]), shard_rows)
        log.warning("%s: no %s; rebuilt it from the 'sequence' column (%d sequences, %d rows, %s, %.2f s)", self.path,
                    INDEX_FILE, len(index["sequences"]), index["num_rows"],
                    "contiguous" if index["contiguous"] else "rows of a sequence not contiguous: grouped per sequence",
                    time.perf_counter() - t0)
        return index

    def _validate(self, sequence: str, rows: list[int]) -> None:
        """Damaged offsets would crash the take/slice of read_rows: each record batch holding `rows` passes
        validate(full=True) once (then is remembered, one byte per batch); else ShardError naming shard and rows."""

        table = getattr(self.dataset.data, "table", self.dataset.data)
        for row in rows:
            ci = bisect.bisect_right(self._starts, row) - 1
            if self._validated[ci]:
                continue
            a, b = self._starts[ci], self._starts[ci + 1]
            try:
                table.slice(a, b - a).validate(full=True)
            except Exception as exc:
                shard = os.path.join(self.path, self._names[self._index[sequence]["shard"]])
                raise ShardError(f"{shard} (sequence {sequence}, row {row}, in the record batch of dataset rows "
                                 f"{a}..{b - 1}): damaged ({type(exc).__name__}: {exc}); run `vggt-train verify-dataset`") from None
            self._validated[ci] = 1

    def _sequence_reader(self, names: list[str]):
        """row -> the row's `sequence` value (validated column; O(log chunks) per row)."""

        table = getattr(self.dataset.data, "table", self.dataset.data)
        col = table.column("sequence")
        try:
            col.validate(full=True)
        except Exception:
            for name in names:
                open_shard(os.path.join(self.path, name))
            raise ValueError(f"{self.path}: the 'sequence' column is damaged") from None
        starts = list(itertools.accumulate([0] + [len(c) for c in col.chunks]))
        self._starts = starts
        self._validated = bytearray(len(starts) - 1)  # per record batch: passed validate(full=True)

        def sequence_at(row: int):
            ci = bisect.bisect_right(starts, row) - 1
            return col.chunk(ci)[row - starts[ci]].as_py()

        return sequence_at

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self):
        return {"path": self.path, "rebuilt_index": self.rebuilt_index}

    def __setstate__(self, state):
        self.__init__(state["path"], state.get("rebuilt_index"))

    def category(self, sequence: str) -> str:
        return self._index[sequence]["category"]

    def num_frames(self, sequence: str) -> int:
        """Number of stored (valid) frames of `sequence`."""
        return self._index[sequence]["num_frames"]

    def rows(self, sequence: str) -> Sequence[int]:
        """Dataset rows of `sequence`, frames in annotation order: a range (the converter's layout, rows grouped
        by sequence), or an int64 array of row indices for a rebuilt index of a split whose rows are not."""
        s = self._index[sequence]
        return s["rows"] if "rows" in s else range(s["start"], s["start"] + s["num_frames"])

    def get_frames(self, sequence: str, positions: Sequence[int] | None = None, decode_images: bool = True) -> dict:
        """Frames at `positions` (0..num_frames-1, default all) of `sequence`.

        Returns {"images": S x [H, W, 3] uint8 (or JPEG bytes if not decode_images), "depths": S x [H, W] float16,
        "extrinsics": [S, 3, 4] float64, "intrinsics": [S, 3, 3] float64, "frames": [S] int (annotation index),
        "original_sizes": [S, 2] int (H, W), "category": str}. Sizes may differ between frames of a sequence.
        """
        r = self.rows(sequence)
        pos = list(range(len(r))) if positions is None else [int(p) for p in positions]
        if any(not 0 <= p < len(r) for p in pos):
            raise IndexError(f"positions {pos} out of range for {sequence} with {len(r)} frames")
        rows = [int(r[p]) for p in pos]
        self._validate(sequence, rows)
        return read_rows(self._table, rows, decode_images) | {"category": self.category(sequence)}


def _fixed_matrix(column, shape: tuple[int, int]) -> np.ndarray:
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    storage = arr.storage if hasattr(arr, "storage") else arr
    return storage.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, *shape)


def read_rows(arrow_dataset, rows: list[int], decode_images: bool = True) -> dict:
    """Columns of `rows` of a dataset in arrow format, as numpy (see Co3DSplit.get_frames for the keys)."""
    contiguous = rows == list(range(rows[0], rows[0] + len(rows))) if rows else True
    # A contiguous range is a zero-copy slice of the memory map; other lists are gathered with take().
    table = arrow_dataset[rows[0]:rows[0] + len(rows)] if contiguous and rows else arrow_dataset[rows]
    heights = table.column("height").to_numpy()
    widths = table.column("width").to_numpy()
    depth_col = table.column("depth")
    depths = [np.frombuffer(v.as_buffer(), "<f2").reshape(h, w) for v, h, w in zip(depth_col, heights, widths)]
    image_bytes = table.column("image").combine_chunks().field("bytes")
    if decode_images:
        images = []
        for v in image_bytes:
            with Image.open(io.BytesIO(v.as_buffer())) as im:
                images.append(np.asarray(im.convert("RGB")))
    else:
        images = [v.as_py() for v in image_bytes]
    return {
        "images": images,
        "depths": depths,
        "extrinsics": _fixed_matrix(table.column("extrinsic"), (3, 4)),
        "intrinsics": _fixed_matrix(table.column("intrinsic"), (3, 3)),
        "frames": table.column("frame").to_numpy(),
        "original_sizes": np.stack([table.column("original_height").to_numpy(), table.column("original_width").to_numpy()], 1),
    }
