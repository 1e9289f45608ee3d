"""The finishing stage of a training batch: the part of the recipe that runs after the batch reaches the device.

DataLoader workers do what needs the CPU: read, decode, crop and resize (or, with `resample="device"`, only cut
the source window the resize reads), gather the depth, and draw every random number of the recipe from the
sample's seed. They ship compact tensors: uint8 images, float16 depth (the stored precision), float32 cameras and
the drawn jitter parameters, about 6x less than the finished float32 batch. `finish_batch` does the rest where
the batch is (the accelerator in training, the CPU otherwise), batched over all views:

    uint8 -> float in [0, 1]; [the PIL-exact resize, if deferred]; colour jitter and grayscale with the worker's
    parameters; depth -> float32, masks, camera and world points; the batch normalisation (scale).

The numbers are the recipe's: the same as doing everything per view in the worker, to float rounding (tested).

    batch = next(loader)                                # a WorkerBatch (batch.py): uint8 images, float16 depth
    batch = finish_batch(batch.to(device))              # a TrainBatch: images [B, S, 3, H, W] float32, points, ...

A finished batch passes through unchanged, so calling it twice is harmless.
"""

from __future__ import annotations

from typing import Any, Dict, Union

import torch

from vggt_train.data.pipeline.batch import TARGET_KEYS, FinishPlan, TrainBatch, WorkerBatch
from vggt_train.data.pipeline.resample import resample_views, unpack
from vggt_train.data.pipeline.transforms import apply_jitter_
from vggt_train.geometry import scene_scale, unproject_batch

__all__ = ["finish_batch", "is_finished", "TARGET_KEYS", "TrainBatch", "WorkerBatch"]


def is_finished(batch: Union[WorkerBatch, Dict[str, Any]]) -> bool:
    """True for a finished batch (a mapping), False for a WorkerBatch."""
    return not isinstance(batch, WorkerBatch)


def finish_batch(batch: Union[WorkerBatch, TrainBatch]) -> TrainBatch:
    """The training batch from a worker's batch, computed on the device its tensors are on. Returns a new dict:
    images [B, S, 3, H, W] float32 in [0, 1], depths [B, S, H, W] float32, point_masks bool (depth > 0),
    cam_points / world_points [B, S, H, W, 3], extrinsics / intrinsics; batch-normalised if the stream asked for
    it; names, positions and step fields pass through (see TrainBatch)."""
    if not isinstance(batch, WorkerBatch):
        return batch
    plan = batch.plan
    B, S, (H, W) = plan.batch_size, plan.num_images, plan.hw
    if batch.images is not None:
        u8 = batch.images
    else:
        u8 = _resample_on_device(batch, plan).view(B, S, H, W, 3)
    images = torch.empty((B, S, 3, H, W), dtype=torch.float32, device=batch.depths.device)
    images.copy_(u8.permute(0, 1, 4, 2, 3)).div_(255.0)
    apply_jitter_(images.view(B * S, 3, H, W), plan.jitter)
    depths = batch.depths.to(torch.float32, copy=True)  # scaled in place below: never the worker's tensor
    masks = depths > 0
    extrinsics = batch.extrinsics.float()
    cam, world, dist = unproject_batch(depths, batch.intrinsics.float(), extrinsics, with_norm=plan.normalize)
    if plan.normalize:
        # the worker already expressed the cameras relative to camera 0 (geometry.first_camera_frame, in
        # float64), so the world points are in that frame: what is left is the scale half
        scale = scene_scale(dist, masks & torch.isfinite(dist), extrinsics)
        depths.div_(scale.view(B, 1, 1, 1))
        cam.div_(scale.view(B, 1, 1, 1, 1))
        world.div_(scale.view(B, 1, 1, 1, 1))
        extrinsics = extrinsics.clone()
        extrinsics[..., 3].div_(scale.view(B, 1, 1))
    out: Dict[str, Any] = {"extrinsics": extrinsics, "intrinsics": batch.intrinsics, **batch.meta()}
    out.update(images=images, depths=depths, point_masks=masks, cam_points=cam, world_points=world)
    return out  # type: ignore[return-value]


def _resample_on_device(batch: WorkerBatch, plan: FinishPlan) -> torch.Tensor:
    """[B * S, H, W, 3] uint8: PIL's resize of every view from its source window, then its rotation."""
    window, table = batch.windows, batch.resample_table
    width = max(o[1] for o in plan.out_hw)  # the horizontal part of the table (see resample.pack)
    N = window.shape[0]
    H, W = plan.hw
    out = torch.zeros((N, H, W, 3), dtype=torch.uint8, device=window.device)
    groups: Dict[tuple, list] = {}
    for i in range(N):
        groups.setdefault((plan.rot90[i], bool(plan.vertical_first[i]), tuple(plan.out_hw[i])), []).append(i)
    for (k, vertical_first, (oh, ow)), views in groups.items():
        if len(views) == N:
            sel: Any = slice(None)
        elif views == list(range(views[0], views[-1] + 1)):
            sel = slice(views[0], views[-1] + 1)
        else:
            sel = torch.tensor(views, device=window.device)
        res = resample_views(window[sel], *unpack(table[sel], (oh, ow), width), vertical_first)
        out[sel] = torch.rot90(res, k, dims=(1, 2)) if k else res
    return out
