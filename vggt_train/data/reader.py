"""Read frames of a converted split: O(1) sequence lookup and zero-copy depth, straight from the Arrow shards.

    split = Co3DSplit("OUT/train")
    frames = split.get_frames("106_12648_23157", [0, 5, 9])   # positions within the sequence
    frames["images"][0]      # [H, W, 3] uint8          frames["depths"][0]  # [H, W] float16 (read-only view)
    frames["extrinsics"]     # [S, 3, 4] float64        frames["intrinsics"] # [S, 3, 3] float64
"""

from __future__ import annotations

import io
import json
import os
from typing import Sequence

import numpy as np

from vggt_train.data.schema import INDEX_FILE


class Co3DSplit:
    """One split of a converted dataset (a `load_from_disk` directory), memory-mapped; cheap to pickle into workers."""

    def __init__(self, path: str):
        import datasets

        self.path = path
        self.dataset = datasets.load_from_disk(path)
        # Arrow format: rows come back as pyarrow tables over the memory map, nothing becomes a Python object.
        self._table = self.dataset.with_format("arrow")
        with open(os.path.join(path, INDEX_FILE)) as f:
            index = json.load(f)
        if index["num_rows"] != len(self.dataset):
            raise ValueError(f"{path}: {INDEX_FILE} lists {index['num_rows']} rows, the shards hold {len(self.dataset)}")
        self.sequences: list[str] = [s["sequence"] for s in index["sequences"]]
        self._index = {s["sequence"]: s for s in index["sequences"]}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def category(self, sequence: str) -> str:
        return self._index[sequence]["category"]

    def num_frames(self, sequence: str) -> int:
        """Number of stored (valid) frames of `sequence`."""
        return self._index[sequence]["num_frames"]

    def rows(self, sequence: str) -> range:
        """Dataset row range of `sequence` (rows are grouped by sequence, frames in annotation order)."""
        s = self._index[sequence]
        return range(s["start"], s["start"] + s["num_frames"])

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
        return read_rows(self._table, [r.start + p for p in pos], decode_images) | {"category": self.category(sequence)}


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
        from PIL import Image

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
