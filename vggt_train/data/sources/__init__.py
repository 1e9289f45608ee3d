"""Where frames come from: the frame-source interface (base), one module per source (shards, raw_co3d, memory),
the raw Co3D file format (co3d) and the one category selection every reader uses (select).

    from vggt_train.data.sources import ShardSource, RawCo3DSource, InMemorySource, FrameSource, RawFrame, BadFrame
"""

from vggt_train.data.sources.base import BadFrame, FrameSource, RawFrame, ShardReadError
from vggt_train.data.sources.memory import InMemorySource
from vggt_train.data.sources.shards import ShardSource, resolve_split_dir

__all__ = ["BadFrame", "FrameSource", "InMemorySource", "RawFrame", "ShardReadError", "ShardSource", "resolve_split_dir",
           "RawCo3DSource"]


def __getattr__(name: str):
    if name == "RawCo3DSource":  # imported on use: it pulls in PIL decoding of the raw files
        from vggt_train.data.sources.raw_co3d import RawCo3DSource

        return RawCo3DSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
