"""MixedSource: several named frame sources behind one FrameSource, their sequences named "<name>/<sequence>".

    mixed = MixedSource([("co3d", ShardSource(...)), ("vkitti", ShardSource(...))])
    mixed.sequences[:2]          # ["co3d/apple_000", "co3d/apple_001"]: each part's sequences, in part order
    mixed.ranges["vkitti"]       # (start, stop): where that part's sequences sit in `sequences`
    mixed.source_name("vkitti/Scene01_clone")   # "vkitti"

The planner draws each sample's part by weight and then a sequence inside that part's range
(sampler.Mixture); MultiViewDataset reads through this source and records each sample's part name.
An unusable sequence is replaced by the next one of the same part, so a replacement never changes the mixture.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from vggt_train.data.sources.base import FrameSource, RawFrame

SEPARATOR = "/"


class MixedSource(FrameSource):
    """The union of named sources. names: unique, non-empty, without "/"; every part needs at least one sequence."""

    def __init__(self, parts: Sequence[Tuple[str, FrameSource]]):
        if not parts:
            raise ValueError("a mixture needs at least one source")
        self.names: Tuple[str, ...] = tuple(str(name) for name, _ in parts)
        for name in self.names:
            if not name or SEPARATOR in name:
                raise ValueError(f"source name {name!r} must be non-empty and without {SEPARATOR!r}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"source names must be unique, got {list(self.names)}")
        self._parts: Dict[str, FrameSource] = dict(parts)
        self.sequences: List[str] = []
        self.ranges: Dict[str, Tuple[int, int]] = {}
        self._where: Dict[str, Tuple[str, str]] = {}
        for name, source in parts:
            if not source.sequences:
                raise ValueError(f"source {name!r} has no sequences")
            start = len(self.sequences)
            for seq in source.sequences:
                full = f"{name}{SEPARATOR}{seq}"
                self.sequences.append(full)
                self._where[full] = (name, seq)
            self.ranges[name] = (start, len(self.sequences))

    def part(self, name: str) -> FrameSource:
        return self._parts[name]

    def _split(self, sequence: str) -> Tuple[str, str]:
        try:
            return self._where[sequence]
        except KeyError:
            raise KeyError(f"sequence {sequence!r} is not in the mixture of {', '.join(self.names)}") from None

    def num_frames(self, sequence: str) -> int:
        name, seq = self._split(sequence)
        return self._parts[name].num_frames(seq)

    def category(self, sequence: str) -> str:
        name, seq = self._split(sequence)
        return self._parts[name].category(seq)

    def source_name(self, sequence: str) -> str:
        return self._split(sequence)[0]

    def next_sequence(self, sequence: str) -> str:
        name, seq = self._split(sequence)
        return f"{name}{SEPARATOR}{self._parts[name].next_sequence(seq)}"

    def read_frame(self, sequence: str, position: int) -> RawFrame:
        name, seq = self._split(sequence)
        return self._parts[name].read_frame(seq, position)
