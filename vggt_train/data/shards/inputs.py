"""What a raw dataset layout gives the converter: the interface of an input format, and the registry of formats.

The converter (convert.py, plan.py) is the same for every layout. A format answers three questions:

    scan(opts)                     the sequences of each split, with their frame counts and a bytes-per-frame
                                   estimate, the input files that fix the plan, and what was refused (Scan)
    entries(opts, plan, split, category, seq)
                                   the frames of one sequence, as picklable plain data (main process)
    load(task, entry, position)    one frame, read and checked (a worker process): a co3d.Frame plus the row's
                                   `filepath` and `frame`; a bad input raises an exception with .path, .reason,
                                   .detail (one of `input_errors`), which the converter skips and reports

Formats are imported by name on first use, so a conversion worker loads only its own reader.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from vggt_train.data.shards.layout import ConvertError, record, sha256_file
from vggt_train.data.sources import co3d

# format name -> module defining FORMAT (an InputFormat)
FORMATS = {
    "co3d": "vggt_train.data.shards.input_co3d",
    "colmap": "vggt_train.data.shards.input_colmap",
    "vkitti2": "vggt_train.data.shards.input_vkitti2",
}


@dataclass
class Scan:
    """A format's view of its input, from which the plan packs shards.

    splits: {split: [(category, sequence, number of frames, estimated stored bytes per frame), ...]} in plan
    order (sorted names); inputs: {input file name: sha256} (a change after planning stops a resume);
    problems: report records of what was refused while scanning; filtered: {split: {"sequences", "frames"}} left
    out for being below --min-frames; categories: the category names; source: the key of the source dataset in
    card.SOURCES (licence, citation: the dataset card's facts).
    """

    splits: Dict[str, List[Tuple[str, str, int, float]]]
    inputs: Dict[str, str] = field(default_factory=dict)
    problems: List[dict] = field(default_factory=list)
    filtered: Dict[str, Dict[str, int]] = field(default_factory=dict)
    categories: List[str] = field(default_factory=list)
    source: str = ""


@dataclass
class Loaded:
    """One converted frame with its row identity: `frame` is the co3d.Frame (depth None for a camera-only frame)."""

    frame: Any
    filepath: str
    frame_index: int


class InputFormat:
    """Base of the formats; see the module docstring. `name` is the format's key in FORMATS."""

    name = ""
    input_errors: Tuple[type, ...] = ()

    def scan(self, opts) -> Scan:
        raise NotImplementedError

    def entries(self, opts, plan: dict, split: str, category: str, sequence: str) -> list:
        raise NotImplementedError

    def load(self, task: dict, entry: Any, position: int) -> Loaded:
        raise NotImplementedError


def scan_sequence(scan: Scan, opts, split: str, category: str, name: str, read: Callable[[], tuple],
                  errors: Tuple[type, ...], rows: list, filtered: Dict[str, int]) -> None:
    """Scan one sequence into `rows` / `filtered` / scan.problems. read() -> (frames with image_path and size_hw,
    {input key: file whose sha256 fixes the plan}); an `errors` exception refuses the sequence (--strict: stops)."""
    try:
        frames, inputs = read()
        for key, path in inputs.items():
            scan.inputs[key] = sha256_file(path)
    except errors as exc:
        if opts.strict:
            raise ConvertError(f"{exc} [--strict]") from None
        scan.problems.append(record(split, category, name, None, exc.path, exc.reason, exc.detail))
        return
    if len(frames) < opts.min_frames:
        filtered["sequences"] += 1
        filtered["frames"] += len(frames)
        return
    H, W = frames[0].size_hw
    h, w = co3d.target_size(H, W, opts.max_side)
    # stored bytes per frame: the image scaled with its pixel count, float16 depth, the row's other columns
    rows.append((category, name, len(frames), os.path.getsize(frames[0].image_path) * h * w / (H * W) + 2 * h * w + 256))


def get_format(name: str) -> InputFormat:
    """The InputFormat registered as `name`."""
    if name not in FORMATS:
        raise ValueError(f"unknown input format {name!r}; known: {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name]).FORMAT


def build_frame(data: bytes, image_path: str, depth: Optional[np.ndarray], extrinsic: np.ndarray,
                intrinsic: np.ndarray, size_hw: Tuple[int, int], max_side: Optional[int]) -> co3d.Frame:
    """A frame ready for a row: the image decoded once (corrupt -> BadInput), checked against the camera's size
    (H, W) and the depth's [H, W] (float, metres, 0 = invalid; None for a camera-only frame), then, with
    max_side, scaled down (LANCZOS image re-encoded as JPEG, nearest depth, intrinsic scaled). Without resizing
    JPEG and PNG bytes are stored as they are."""
    h, w = (int(v) for v in size_hw)
    new_hw = co3d.target_size(h, w, max_side)
    img = co3d._decode(data, image_path, "corrupt_image", draft_size=(new_hw[1], new_hw[0]) if new_hw != (h, w) else None)
    if img.info["raw_hw"] != (h, w) or (depth is not None and tuple(depth.shape) != (h, w)):
        raise co3d.BadInput(image_path, "size_mismatch", f"image {img.info['raw_hw']}, camera {(h, w)}"
                            + ("" if depth is None else f", depth {tuple(depth.shape)}"))
    if depth is not None:
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float16)
    intrinsic = np.asarray(intrinsic, np.float64)
    if new_hw != (h, w):
        if depth is not None:
            depth = co3d.resize_depth_nearest(depth, new_hw)
        intrinsic = co3d.scale_intrinsic(intrinsic, (h, w), new_hw)
        box = img.info["source_box"]
        img = img.convert("RGB")
        if img.size != (new_hw[1], new_hw[0]) or box != (0.0, 0.0, float(img.size[0]), float(img.size[1])):
            img = img.resize((new_hw[1], new_hw[0]), co3d._LANCZOS, box=box)
        data = co3d.encode_jpeg(img)
    elif img.format not in ("JPEG", "PNG") or img.mode != "RGB":
        data = co3d.encode_jpeg(img.convert("RGB"))
    return co3d.Frame(data, depth, np.asarray(extrinsic, np.float64), intrinsic, (h, w), stored_hw=new_hw)
