"""Frames straight from the raw Co3D layout (JPEG, fp16-in-PNG depth, mask PNG, .jgz annotations), no conversion.

The same FrameSource contract as the shards, and the same sequence order and frame positions as `convert-co3d`
(categories sorted, sequences sorted by name, sequences below `min_frames` left out), so on clean data
`MultiViewDataset.from_raw(...)` gives the very samples the converted dataset gives. Each read decodes the
16-bit depth PNG and the mask and applies the official clean-up (mask, 98th-percentile cut): that is the cost the
conversion pays once. Bad files raise BadFrame naming the file, so the dataset replaces the frame as documented.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np

from vggt_train.data.sources import co3d
from vggt_train.data.sources.base import BadFrame, FrameSource, RawFrame
from vggt_train.data.sources.select import select_categories

_FIELD_OF_REASON = {"missing_image": "image", "corrupt_image": "image", "missing_depth": "depth", "corrupt_depth": "depth",
                    "missing_mask": "mask", "corrupt_mask": "mask", "bad_camera": "camera", "bad_annotation": "annotation",
                    "unsafe_filepath": "filepath", "size_mismatch": "size"}


class RawCo3DSource(FrameSource):
    """One split of a raw Co3D tree. categories: any selection of sources.select ("all", "train41", "a,b,c")."""

    def __init__(self, co3d_dir: str, annotation_dir: str, split: str = "train", categories: str = "all", min_frames: int = 24):
        if not os.path.isdir(co3d_dir):
            raise FileNotFoundError(f"Co3D dir {co3d_dir} does not exist")
        if not os.path.isdir(annotation_dir):
            raise FileNotFoundError(f"annotation dir {annotation_dir} does not exist")
        self.co3d_dir, self.annotation_dir, self.split = co3d_dir, annotation_dir, split
        self.categories_arg, self.min_frames = categories, int(min_frames)
        try:
            cats = select_categories(categories, co3d.find_categories(annotation_dir, [split]))
        except ValueError as exc:
            raise FileNotFoundError(f"no {split} annotation file in {annotation_dir}: {exc}") from None
        self.sequences: List[str] = []
        self._category: Dict[str, str] = {}
        self._filepaths: Dict[str, List[str]] = {}
        self._extri: Dict[str, np.ndarray] = {}
        self._intri: Dict[str, np.ndarray] = {}
        for cat in cats:
            path = co3d.annotation_path(annotation_dir, cat, split)
            if not os.path.exists(path):
                continue
            annotation = co3d.load_annotation_file(path)  # BadInput names the file
            for name in sorted(annotation):
                entries = annotation[name]
                if len(entries) < self.min_frames:
                    continue
                self.sequences.append(name)
                self._category[name] = cat
                # compact per-sequence arrays instead of the annotation dicts (a fraction of the memory)
                self._filepaths[name] = [e.get("filepath", "") if isinstance(e, dict) else "" for e in entries]
                self._extri[name] = np.stack([_matrix(e, "extri", (3, 4)) for e in entries])
                self._intri[name] = np.stack([_matrix(e, "intri", (3, 3)) for e in entries])
        if not self.sequences:
            raise FileNotFoundError(f"no {split} sequence with >= {min_frames} frames under {annotation_dir}")

    def __getstate__(self):
        return {k: getattr(self, k) for k in ("co3d_dir", "annotation_dir", "split", "categories_arg", "min_frames")}

    def __setstate__(self, state):
        self.__init__(state["co3d_dir"], state["annotation_dir"], state["split"], state["categories_arg"], state["min_frames"])

    def num_frames(self, sequence: str) -> int:
        return len(self._filepaths[sequence])

    def category(self, sequence: str) -> str:
        return self._category[sequence]

    def read_frame(self, sequence: str, position: int) -> RawFrame:
        filepath = self._filepaths[sequence][position]
        try:
            image_path, depth_path, mask_path = co3d.frame_paths(self.co3d_dir, filepath)
            extri, intri = co3d.check_camera({"extri": self._extri[sequence][position], "intri": self._intri[sequence][position]}, filepath)
            jpeg = co3d._read_bytes(image_path, "missing_image")  # regular files within the size cap only
            depth = co3d.official_depth(co3d.read_depth_png(depth_path), co3d.read_mask_png(mask_path))
        except co3d.BadInput as exc:
            where = f"{exc.path} (sequence {sequence}, frame {position})"
            raise BadFrame(where, _FIELD_OF_REASON.get(exc.reason, exc.reason), f"{exc.reason}: {exc.detail}") from None
        return RawFrame(jpeg, depth, extri, intri, position, f"{image_path} (sequence {sequence}, frame {position})")


def _matrix(entry, key: str, shape: Sequence[int]) -> np.ndarray:
    """The entry's matrix as float64, or NaNs when absent/malformed (check_camera then reports the frame as bad)."""
    try:
        m = np.asarray(entry[key], dtype=np.float64)
        if m.shape == tuple(shape):
            return m
    except (KeyError, TypeError, ValueError):
        pass
    return np.full(shape, np.nan)
