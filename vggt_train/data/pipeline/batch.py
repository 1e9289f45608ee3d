"""The two batch types of the pipeline: `WorkerBatch` (what a DataLoader worker ships) and `TrainBatch` (finished).

    wb = dataset.load_batch(specs, aspect, normalize=True, finish=False)   # WorkerBatch, compact, on the host
    wb = wb.to(device, non_blocking=True)                                  # tensors to the device, plan stays
    tb = finish_batch(wb)                                                  # TrainBatch: float images, points, ...

A WorkerBatch is a dataclass: DataLoader pinning calls its `pin_memory()`, and pickling between processes keeps
its type. A TrainBatch is a plain dict (typed as a TypedDict): the model and the losses take mappings, so a
user's own batch with extra keys (tracks, query points) goes through the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, TypedDict

import numpy as np
import torch

# the ground truth a finished training batch carries (what the loss terms may be supervised with)
TARGET_KEYS = ("images", "depths", "point_masks", "cam_points", "world_points", "extrinsics", "intrinsics")


@dataclass
class FinishPlan:
    """The host-side part of a WorkerBatch: plain numbers, which pinning and `.to(device)` leave on the host (the
    finishing stage needs them there to plan its kernel calls without a device sync).

    jitter: [B * S, len(JITTER_FIELDS)] colour-jitter draws per view. normalize: the worker expressed the cameras
    relative to view 0 (the rigid half of the normalisation), the finishing stage applies the scale half. With a
    deferred resize, per view: rot90 (the final rotation, -1 / 0 / 1), vertical_first (PIL's pass order) and
    out_hw (the resized shape before rotation).
    """

    batch_size: int
    num_images: int
    hw: Tuple[int, int]
    normalize: bool
    jitter: np.ndarray
    rot90: Tuple[int, ...] = ()
    vertical_first: Tuple[bool, ...] = ()
    out_hw: Tuple[Tuple[int, int], ...] = ()


@dataclass
class WorkerBatch:
    """One unfinished micro-batch of B samples x S views at (H, W), as a worker builds it (~6x smaller than finished).

    extrinsics [B, S, 3, 4] float32 camera-from-world (relative to view 0 when plan.normalize), intrinsics
    [B, S, 3, 3] float32, depths [B, S, H, W] float16 (float32 when the source stores float32), frame_ids /
    frames [B, S] int64 (positions used, annotation frame indices), has_depth [B, S] bool (False: a camera-only
    frame, whose depth slot is all zeros). Images: either `images` [B, S, H, W, 3]
    uint8, or, with the resize deferred to the finishing stage, `windows` [B * S, h, w, 3] uint8 (each view's
    source window, zero-padded) and `resample_table` (resample.pack's coefficients). seq_names / categories /
    sources (the mixed dataset, "" without a mixture) / replaced: per sample. step / micro_step / aspect_ratio: set by the stream that planned it.
    """

    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    depths: torch.Tensor
    frame_ids: torch.Tensor
    frames: torch.Tensor
    has_depth: torch.Tensor
    plan: FinishPlan
    images: Optional[torch.Tensor] = None
    windows: Optional[torch.Tensor] = None
    resample_table: Optional[torch.Tensor] = None
    seq_names: List[str] = field(default_factory=list)
    categories: List[str] = field(default_factory=list)
    sources: List[str] = field(default_factory=list)
    replaced: List[List[str]] = field(default_factory=list)
    step: Optional[int] = None
    micro_step: Optional[int] = None
    aspect_ratio: Optional[float] = None

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The tensor fields that are set, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def _map(self, fn) -> "WorkerBatch":
        return dataclasses.replace(self, **{k: fn(v) for k, v in self.tensors().items()})

    def to(self, device, non_blocking: bool = False) -> "WorkerBatch":
        """A copy whose tensors are on `device` (the plan and the names stay on the host)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "WorkerBatch":
        """A copy in pinned host memory (called by DataLoader's pin_memory thread)."""
        return self._map(lambda t: t.pin_memory())

    def meta(self) -> Dict[str, Any]:
        """What passes through the finishing stage unchanged: names, positions, and the stream's step fields when set."""
        out: Dict[str, Any] = {"frame_ids": self.frame_ids, "frames": self.frames, "has_depth": self.has_depth,
                               "seq_names": self.seq_names, "categories": self.categories, "sources": self.sources,
                               "replaced": self.replaced}
        for k in ("step", "micro_step", "aspect_ratio"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


class TrainBatch(TypedDict, total=False):
    """A finished batch (finish_batch's output): the keys of TARGET_KEYS plus pass-through metadata.

    images [B, S, 3, H, W] float32 in [0, 1]; depths [B, S, H, W] float32; point_masks [B, S, H, W] bool
    (depth > 0); cam_points / world_points [B, S, H, W, 3]; extrinsics [B, S, 3, 4]; intrinsics [B, S, 3, 3];
    frame_ids / frames [B, S]; has_depth [B, S] bool (False: camera only); seq_names, categories, sources,
    replaced (per sample); step, micro_step, aspect_ratio.
    """

    images: torch.Tensor
    depths: torch.Tensor
    point_masks: torch.Tensor
    cam_points: torch.Tensor
    world_points: torch.Tensor
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    frame_ids: torch.Tensor
    frames: torch.Tensor
    has_depth: torch.Tensor
    seq_names: List[str]
    categories: List[str]
    sources: List[str]
    replaced: List[List[str]]
    step: int
    micro_step: int
    aspect_ratio: float
