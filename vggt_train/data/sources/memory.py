"""InMemorySource: frames held in memory, for tests and tiny experiments."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from vggt_train.data.sources.base import FrameSource, RawFrame


class InMemorySource(FrameSource):
    """Frames held in memory, for tests and tiny experiments.

    frames: {sequence: [{"image": encoded bytes or [H, W, 3] uint8, "depth": [H, W] (or None: camera only),
    "extrinsic": [3, 4], "intrinsic": [3, 3]}, ...]}.
    """

    def __init__(self, frames: Mapping[str, Sequence[Mapping[str, Any]]], categories: Optional[Mapping[str, str]] = None):
        self.frames = {str(k): list(v) for k, v in frames.items()}
        self.sequences = list(self.frames)
        self._categories = dict(categories or {})

    def num_frames(self, sequence: str) -> int:
        return len(self.frames[sequence])

    def category(self, sequence: str) -> str:
        return self._categories.get(sequence, "")

    def read_frame(self, sequence: str, position: int) -> RawFrame:
        f = self.frames[sequence][position]
        depth = None if f.get("depth") is None else np.asarray(f["depth"])
        return RawFrame(f["image"], depth, np.asarray(f["extrinsic"], np.float64),
                        np.asarray(f["intrinsic"], np.float64), int(f.get("frame", position)), f"memory:{sequence}/{position}")
