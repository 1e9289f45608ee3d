"""The frame-source interface: what MultiViewDataset reads stored frames through (`FrameSource`), one frame
(`RawFrame`), and the two ways a read fails (`BadFrame`: this frame is unusable, the dataset replaces it;
`ShardReadError`: a shard's buffers are damaged).

A source lists `sequences` and answers `num_frames`, `category` and `read_frame(sequence, position) -> RawFrame`.
The sources: shards.ShardSource (converted shards), raw_co3d.RawCo3DSource (raw Co3D files), memory.InMemorySource,
mixed.MixedSource (several sources behind one, for training on a mixture of datasets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class IndexInfo:
    """What sampling needs to know about a dataset: sequence names and their frame counts (same order)."""

    sequences: Tuple[str, ...]
    num_frames: Tuple[int, ...]

    def __post_init__(self):
        if len(self.sequences) != len(self.num_frames):
            raise ValueError("IndexInfo: sequences and num_frames differ in length")
        if not self.sequences:
            raise ValueError("IndexInfo: the dataset has no sequences")
        if min(self.num_frames) < 1:
            raise ValueError("IndexInfo: every sequence needs at least one frame")



@dataclass
class RawFrame:
    """One stored frame: encoded image (bytes-like) or [H, W, 3] uint8, depth [H, W] (float16/32, may be a
    read-only view; None for a frame without depth, a camera-only frame), extrinsic [3, 4] and intrinsic [3, 3]
    (float64), annotation frame index, and where it lives."""

    image: Any
    depth: Optional[np.ndarray]
    extrinsic: np.ndarray
    intrinsic: np.ndarray
    frame: int
    where: str


class BadFrame(Exception):
    """A stored frame that cannot be used: `where` names the file/row, `field` the column, `detail` the cause."""

    def __init__(self, where: str, field: str, detail: str):
        self.where, self.field, self.detail = where, field, detail
        super().__init__(f"{where}: field {field!r}: {detail}")


class ShardReadError(RuntimeError):
    """A row of a converted shard cannot be read (damaged buffers); the message names the shard and the row."""


class FrameSource:
    """What MultiViewDataset reads from. Subclasses set `sequences` and implement num_frames / read_frame."""

    sequences: List[str]

    def num_frames(self, sequence: str) -> int:
        raise NotImplementedError

    def category(self, sequence: str) -> str:
        return ""

    def source_name(self, sequence: str) -> str:
        """The named dataset `sequence` comes from in a mixture ("" for a source that is not one)."""
        return ""

    def next_sequence(self, sequence: str) -> str:
        """The sequence that stands in for an unusable one: the next in index order, wrapping around."""
        return self.sequences[(self.sequences.index(sequence) + 1) % len(self.sequences)]

    def read_frame(self, sequence: str, position: int) -> RawFrame:
        """Frame at `position` (0..num_frames-1) of `sequence`; raises BadFrame for unusable stored data."""
        raise NotImplementedError

    def index_info(self) -> IndexInfo:
        return IndexInfo(tuple(self.sequences), tuple(self.num_frames(s) for s in self.sequences))
