"""ShardSource: frames of one converted split, read column by column from the memory-mapped Arrow shards.

Schema-2 shards carry a per-row payload checksum, recomputed on every read: a frame whose image, depth or camera
bytes changed since conversion is a BadFrame naming the shard and row. Schema-1 shards (no checksum column) still
load, with a note. Damaged buffers are a ShardReadError naming the shard and row.
"""

from __future__ import annotations

import array
import bisect
import itertools
import logging
import os
from typing import Any, Dict, Optional

import numpy as np

from vggt_train.data.shards.reader import Co3DSplit
from vggt_train.data.shards.schema import CHECKSUM_COLUMN, INDEX_FILE, payload_checksum
from vggt_train.data.sources.base import BadFrame, FrameSource, RawFrame, ShardReadError
from vggt_train.data.sources.select import Selection, parse_categories

log = logging.getLogger("vggt_train.data")

_SHARD_COLUMNS = ("image", "depth", "height", "width", "extrinsic", "intrinsic", "frame")


def _storage(column):
    """A chunked column without its extension type (Array2D: list<list<float64>>): indexing the storage skips
    the extension-array wrappers, which cost more than the read itself."""
    import pyarrow as pa

    if not isinstance(column.type, pa.ExtensionType):
        return column
    return pa.chunked_array([c.storage for c in column.chunks], type=column.type.storage_type)


class _ShardRows:
    """Rows of the columns MultiViewDataset reads, straight from the memory-mapped Arrow buffers.

    The columns are chunked alike (one chunk per record batch; a table whose columns are not is re-batched,
    zero-copy), so a row is located once, by bisection over the chunk starts. Nothing is cached per row or per
    chunk: the converter writes 64-row record batches, so a Co3D split has tens of thousands of chunks, and
    views kept of each would grow with the rows a worker has touched.
    """

    def __init__(self, table):
        import pyarrow as pa


        names = list(_SHARD_COLUMNS) + ([CHECKSUM_COLUMN] if CHECKSUM_COLUMN in table.column_names else [])
        table = table.select(names)
        lengths = [len(c) for c in table.column(0).chunks]
        if any([len(c) for c in table.column(n).chunks] != lengths for n in names[1:]):
            table = pa.Table.from_batches(table.to_batches(), schema=table.schema)
            lengths = [len(c) for c in table.column(0).chunks]
        self.starts = array.array("q", itertools.accumulate([0] + lengths))  # 8 bytes a chunk; bisect is ~3x faster than np.searchsorted
        image_type = table.schema.field("image").type
        image_field = image_type.get_field_index("bytes")
        # flatten() merges the struct's nulls into its fields
        self.image = pa.chunked_array([c.flatten()[image_field] for c in table.column("image").chunks],
                                      type=image_type[image_field].type)
        self.depth, self.height, self.width, self.frame = (table.column(n) for n in ("depth", "height", "width", "frame"))
        self.extrinsic, self.intrinsic = _storage(table.column("extrinsic")), _storage(table.column("intrinsic"))
        self.checksum = table.column(CHECKSUM_COLUMN) if CHECKSUM_COLUMN in names else None  # schema 1: none
        # One byte per chunk: set once the chunk's buffers passed validate(full=True). Damaged offsets would
        # otherwise make a read crash the process (or slice out of bounds) instead of raising.
        self.validated = bytearray(len(lengths))

    def _validate(self, ci: int) -> None:
        for col in (self.image, self.depth, self.height, self.width, self.frame, self.extrinsic, self.intrinsic, self.checksum):
            if col is not None:
                col.chunk(ci).validate(full=True)
        self.validated[ci] = 1

    def read(self, row: int) -> Dict[str, Any]:
        """Row `row` of the table: image / depth (pa.Buffer, zero-copy) and extrinsic / intrinsic (float64
        arrays) are None where null; height, width and frame as Python ints."""
        ci = bisect.bisect_right(self.starts, row) - 1
        i = row - self.starts[ci]
        if not self.validated[ci]:
            self._validate(ci)
        return {
            "image": _binary(self.image.chunk(ci), i),
            "depth": _binary(self.depth.chunk(ci), i),
            "height": self.height.chunk(ci)[i].as_py(),
            "width": self.width.chunk(ci)[i].as_py(),
            "extrinsic": _matrix(self.extrinsic.chunk(ci), i, (3, 4)),
            "intrinsic": _matrix(self.intrinsic.chunk(ci), i, (3, 3)),
            "frame": self.frame.chunk(ci)[i].as_py(),
            "checksum": None if self.checksum is None else self.checksum.chunk(ci)[i].as_py(),
        }


def _binary(arr, i: int):
    """Row i of a binary / large_binary array as a pa.Buffer sliced from the array's data buffer (zero-copy), or
    None for a null. A pyarrow scalar copies its value: ~20 us for a 600x800 float16 depth."""
    import pyarrow as pa

    if arr.null_count and not arr[i].is_valid:
        return None
    _, offsets, data = arr.buffers()
    kind = np.dtype(np.int64 if pa.types.is_large_binary(arr.type) else np.int32)
    start, stop = (int(x) for x in np.frombuffer(offsets, kind, count=2, offset=(arr.offset + i) * kind.itemsize))
    if not 0 <= start <= stop <= (0 if data is None else data.size):
        raise ValueError(f"value offsets {start}..{stop} outside the {0 if data is None else data.size}-byte data buffer")
    return pa.py_buffer(b"") if data is None else data.slice(start, stop - start)


def _matrix(lists, i: int, shape) -> Optional[np.ndarray]:
    """Row i of a list<list<float>> array as float64 [shape] (a zero-copy view of float64 values), or None for
    a null row. The value range comes from the offsets: pyarrow's flatten() costs ~5 us a level."""
    if lists.null_count and not lists[i].is_valid:
        return None
    rows = lists[i].values  # the row's inner lists: a slice, whose offsets account for it
    offsets = rows.offsets
    start, stop = offsets[0].as_py(), offsets[len(rows)].as_py()
    values = rows.values.slice(start, stop - start)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(shape)


def _in_main_process() -> bool:
    import torch.utils.data  # here: the conversion and verification workers read shards without loading torch

    return torch.utils.data.get_worker_info() is None


class ShardSource(FrameSource):
    """Frames of one converted split (`OUT/<split>`), read column-by-column from the memory-mapped shards."""

    def __init__(self, split_dir: str, categories: Selection = None, split: Optional[Co3DSplit] = None):
        self.split_dir = split_dir
        self.categories = parse_categories(categories)
        self.split = split if split is not None else Co3DSplit(split_dir)  # given: unpickled (index not rebuilt again)
        self.sequences = list(self.split.sequences)
        if self.categories is not None:
            present = {self.split.category(s) for s in self.sequences}
            absent = [c for c in self.categories if c not in present]
            if absent:
                raise ValueError(f"{split_dir}: no sequences of categor{'y' if len(absent) == 1 else 'ies'} {absent}; "
                                 f"it holds {sorted(present)}")
            self.sequences = [s for s in self.sequences if self.split.category(s) in self.categories]
        self._seq_pos = {s: i for i, s in enumerate(self.sequences)}
        ds = self.split.dataset
        if getattr(ds, "_indices", None) is not None:
            raise ValueError(f"{split_dir}: the dataset has an indices mapping (select/shuffle); MultiViewDataset needs the converter's layout")
        table = getattr(ds.data, "table", ds.data)
        missing = [n for n in _SHARD_COLUMNS if n not in table.column_names]
        if missing:
            raise ValueError(f"{split_dir}: columns {missing} are missing (not a convert-co3d dataset?)")
        self._rows = _ShardRows(table)
        self.has_checksums = self._rows.checksum is not None
        if not self.has_checksums and _in_main_process():
            log.warning("%s: no per-row checksums (converted before schema 2): damage inside a row is not detected; "
                        "convert again to add them", split_dir)
        self._files = [f["filename"] for f in ds.cache_files] if ds.cache_files else [split_dir]

    def __getstate__(self):
        return {"split_dir": self.split_dir, "categories": self.categories, "split": self.split}

    def __setstate__(self, state):
        self.__init__(state["split_dir"], state.get("categories"), state.get("split"))

    def num_frames(self, sequence: str) -> int:
        return self.split.num_frames(sequence)

    def category(self, sequence: str) -> str:
        return self.split.category(sequence)

    def sequence_position(self, sequence: str) -> int:
        return self._seq_pos[sequence]

    def _where(self, sequence: str, position: int, row: int) -> str:
        shard = getattr(self.split, "_index", {}).get(sequence, {}).get("shard")
        path = self._files[shard] if isinstance(shard, int) and 0 <= shard < len(self._files) else self.split_dir
        return f"{path} (sequence {sequence}, frame position {position}, row {row})"

    def read_frame(self, sequence: str, position: int) -> RawFrame:
        rows = self.split.rows(sequence)
        if not 0 <= position < len(rows):
            raise IndexError(f"frame position {position} out of range for {sequence} with {len(rows)} frames")
        row = int(rows[int(position)])
        where = self._where(sequence, position, row)
        try:
            r = self._rows.read(row)
        except Exception as exc:  # damaged buffers: one line naming the shard and the row, not a pyarrow traceback
            raise ShardReadError(f"{where}: cannot read the row ({type(exc).__name__}: {exc}); the shard is damaged "
                                 f"(run `vggt-train verify-dataset`)") from None
        for name, what in (("image", "image bytes"), ("depth", "depth bytes"), ("extrinsic", "camera"), ("intrinsic", "camera")):
            if r[name] is None:
                raise BadFrame(where, name, f"no {what} (null)")
        h, w, depth = r["height"], r["width"], r["depth"]
        if depth.size not in (0, h * w * 2):  # 0 bytes: a frame without depth (schema.py)
            raise BadFrame(where, "depth", f"{depth.size} bytes, expected {h}x{w} float16 = {h * w * 2} (or 0: no depth)")
        if r["checksum"] is not None and payload_checksum(r["image"], depth, r["extrinsic"], r["intrinsic"]) != r["checksum"]:
            raise BadFrame(where, "checksum", "the row's image/depth/camera bytes differ from what was converted "
                                              "(damaged on disk or edited; run `vggt-train verify-dataset`)")
        return RawFrame(image=r["image"], depth=np.frombuffer(depth, dtype="<f2").reshape(h, w) if depth.size else None,
                        extrinsic=r["extrinsic"],
                        intrinsic=r["intrinsic"], frame=int(r["frame"]), where=where)


def resolve_split_dir(path: str, split: Optional[str]) -> str:
    """OUT + split -> OUT/split; a split directory itself is accepted too: a converted one (sequence_index.json) or
    one saved by `datasets` (state.json; its index is rebuilt). Raises FileNotFoundError with a hint."""
    candidates = ([os.path.join(path, split)] if split else []) + [path]
    for c in candidates:
        if os.path.isfile(os.path.join(c, INDEX_FILE)) or os.path.isfile(os.path.join(c, "state.json")):
            return c
    raise FileNotFoundError(f"no converted split at {os.path.join(path, split) if split else path} (expected {INDEX_FILE} "
                            f"or a `save_to_disk` state.json; make one with `vggt-train convert-co3d --out {path}` or "
                            f"convert-colmap / convert-vkitti2)")
