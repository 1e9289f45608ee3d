"""The on-disk format of converted datasets (Co3D, COLMAP, Virtual KITTI 2): column schema, row encoding,
zero-copy decoding, file names.

One row per frame, rows grouped by sequence (frames in ascending `frame` order):

| column            | feature                   | content                                                            |
|-------------------|---------------------------|--------------------------------------------------------------------|
| sequence          | string                    | sequence name (Co3D's; a COLMAP workspace folder; Scene_var_Camera) |
| category          | string                    | category (Co3D's; convert-colmap --name; the Virtual KITTI 2 scene) |
| frame             | int32                     | 0-based position in the sequence (Co3D: annotation list; COLMAP:   |
|                   |                           | image-name order), Virtual KITTI 2: the release's frame number     |
| filepath          | string                    | the image's path relative to the input root                        |
| image             | Image                     | {"bytes": JPEG or PNG, "path": None}; [height, width, 3] RGB       |
| depth             | binary                    | little-endian float16 [height, width], C order, 0 = invalid; EMPTY |
|                   |                           | (0 bytes) for a frame without depth (camera only: has_depth false) |
| height, width     | int32                     | size of the stored image and depth                                 |
| original_height,  | int32                     | size of the raw image (differs when --max-side resized it)         |
| original_width    |                           |                                                                    |
| extrinsic         | Array2D((3, 4), float64)  | OpenCV camera-from-world [R | t]                                   |
| intrinsic         | Array2D((3, 3), float64)  | pixel intrinsics of the *stored* image, pixel centres at integers  |
| checksum          | uint64                    | xxh3-64 of the row's payload (payload_checksum; schema >= 2)       |

A frame without depth supervises the camera only: the pipeline gives it an all-invalid depth and marks it in
the batch's `has_depth`, so its depth and point terms are masked and its sample still counts for the camera loss.

Depth is a binary column, not a nested list: viewing its bytes costs ~nothing, while nested lists of 480k floats
are materialised as Python objects (measured by bench/convert_throughput.py; table in the README's data section).

The checksum turns silent damage inside a row (bit rot, an edited byte) into a reported bad frame: every read in
the training workers and every row of verify-dataset recomputes it. Datasets of schema 1 have no such column;
they still load, with a note.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import xxhash
from PIL import Image

SCHEMA_VERSION = 2  # 2: the per-row `checksum` column
CHECKSUM_COLUMN = "checksum"
SHARD_PATTERN = "data-{index:05d}-of-{count:05d}.arrow"  # the names save_to_disk gives, so load_from_disk opens them
INDEX_FILE = "sequence_index.json"  # per split, next to state.json
MANIFEST_FILE = "manifest.json"  # top level: checksums of every shard, written when the dataset is complete
REPORT_FILE = "report.json"  # top level: every skipped frame / sequence / annotation file, with path and reason
WORK_DIR = "_convert"  # top level: plan + per-part manifests of a conversion in progress (kept for resume/merge)

COLUMNS = ("sequence", "category", "frame", "filepath", "image", "depth", "height", "width",
           "original_height", "original_width", "extrinsic", "intrinsic", CHECKSUM_COLUMN)


def payload_checksum(image, depth, extrinsic, intrinsic) -> int:
    """xxh3-64 of a row's payload: image bytes, depth bytes, then extrinsic [3, 4] and intrinsic [3, 3] as
    little-endian float64 (C order). `image`/`depth`: bytes or any buffer (pa.Buffer, memoryview)."""

    h = xxhash.xxh3_64()
    h.update(image)
    h.update(depth)
    h.update(np.ascontiguousarray(extrinsic, "<f8").tobytes())
    h.update(np.ascontiguousarray(intrinsic, "<f8").tobytes())
    return h.intdigest()


def features(with_checksum: bool = True):
    """The `datasets.Features` of a converted split (imports `datasets` lazily: workers never need it);
    `with_checksum=False`: schema 1's, before the checksum column."""
    import datasets

    feats = datasets.Features({
        "sequence": datasets.Value("string"),
        "category": datasets.Value("string"),
        "frame": datasets.Value("int32"),
        "filepath": datasets.Value("string"),
        "image": datasets.Image(),
        "depth": datasets.Value("binary"),
        "height": datasets.Value("int32"),
        "width": datasets.Value("int32"),
        "original_height": datasets.Value("int32"),
        "original_width": datasets.Value("int32"),
        "extrinsic": datasets.Array2D((3, 4), "float64"),
        "intrinsic": datasets.Array2D((3, 3), "float64"),
    })
    if with_checksum:
        feats[CHECKSUM_COLUMN] = datasets.Value("uint64")
    return feats


def arrow_schema(with_checksum: bool = True):
    """pyarrow schema with the `huggingface` metadata that `load_from_disk` reads the features from."""
    import pyarrow as pa

    feats = features(with_checksum)
    meta = json.dumps({"info": {"features": feats.to_dict()}}, sort_keys=True)
    return pa.schema(feats.type).with_metadata({"huggingface": meta})


def frame_columns(rows: list[dict]) -> dict[str, list]:
    """Column lists for `pa.Table.from_pydict` from per-frame dicts (as produced by the conversion workers)."""
    return {
        "sequence": [r["sequence"] for r in rows],
        "category": [r["category"] for r in rows],
        "frame": [r["frame"] for r in rows],
        "filepath": [r["filepath"] for r in rows],
        "image": [{"bytes": r["image"], "path": None} for r in rows],
        "depth": [r["depth"] for r in rows],
        "height": [r["height"] for r in rows],
        "width": [r["width"] for r in rows],
        "original_height": [r["original_height"] for r in rows],
        "original_width": [r["original_width"] for r in rows],
        "extrinsic": [np.asarray(r["extrinsic"], np.float64).tolist() for r in rows],
        "intrinsic": [np.asarray(r["intrinsic"], np.float64).tolist() for r in rows],
        CHECKSUM_COLUMN: [r["checksum"] if r.get("checksum") is not None else
                          payload_checksum(r["image"], r["depth"], r["extrinsic"], r["intrinsic"]) for r in rows],
    }


def _as_buffer(value: Any):
    # Accept what each `datasets` format hands out: bytes (python/numpy), pa.Scalar (arrow), memoryview.
    if hasattr(value, "as_buffer"):
        value = value.as_buffer()
    return value


def decode_depth(row: dict) -> np.ndarray:
    """[height, width] float16 view of a row's depth (zero-copy over bytes / Arrow buffers; read-only); zeros
    (every pixel invalid) for a frame stored without depth (empty depth bytes: a camera-only frame).

    Works with rows in the python and numpy formats and with pyarrow scalars from the arrow format.
    """
    depth = _as_buffer(row["depth"])
    h, w = int(_scalar(row["height"])), int(_scalar(row["width"]))
    if len(memoryview(depth)) == 0:
        return np.zeros((h, w), dtype="<f2")
    return np.frombuffer(depth, dtype="<f2").reshape(h, w)


def decode_image(row: dict) -> np.ndarray:
    """[height, width, 3] uint8 RGB of a row's image, whether `image` is a PIL image or {"bytes": ...}."""
    img = row["image"]
    if hasattr(img, "as_py") and not hasattr(img, "as_buffer"):  # pa.StructScalar
        img = {"bytes": img["bytes"].as_buffer()}
    if isinstance(img, dict):
        with Image.open(io.BytesIO(_as_buffer(img["bytes"]))) as im:
            return np.asarray(im.convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _scalar(x: Any) -> Any:
    return x.as_py() if hasattr(x, "as_py") else x
