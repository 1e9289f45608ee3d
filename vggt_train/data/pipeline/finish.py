"""The finishing stage of a training batch: the part of the recipe that runs after the batch reaches the device.

DataLoader workers do what needs the CPU: read, decode, crop and resize (or, with `resample="device"`, only cut
the source window the resize reads), gather the depth, and draw every random number of the recipe from the
sample's seed. They ship compact tensors: uint8 images, float16 depth (the stored precision), float32 cameras and
the drawn jitter parameters, about 6x less than the finished float32 batch. `finish_batch` does the rest where
the batch is (the accelerator in training, the CPU otherwise), batched over all views:

    uint8 -> float in [0, 1]; [the PIL-exact resize, if deferred]; colour jitter and grayscale with the worker's
    parameters; depth -> float32, masks, camera and world points; the batch normalisation (scale).

The numbers are the recipe's: the same as doing everything per view in the worker, to float rounding (tested).

    batch = next(loader)                                # unfinished: "pending" + "pending_*" keys
    batch = finish_batch(to_device(batch))              # images [B, S, 3, H, W] float32, points, ... (see loader)

A finished batch passes through unchanged, so calling it twice is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np
import torch

from vggt_train.data.pipeline.transforms import apply_jitter_

# the ground truth a finished training batch carries (what the loss terms may be supervised with)
TARGET_KEYS = ("images", "depths", "point_masks", "cam_points", "world_points", "extrinsics", "intrinsics")

# geometry.normalize_batch's bounds and count epsilon, so the normalisation gives the same numbers
_SCALE_MIN, _SCALE_MAX, _COUNT_EPS = 1e-6, 1e6, 1e-3


@dataclass
class Pending:
    """The host-side part of an unfinished batch: plain numbers, which DataLoader pinning and `.to(device)` leave
    on the host (the finishing needs them there to plan its kernel calls without a device sync).

    jitter: [B * S, len(JITTER_FIELDS)] draws per view. With a deferred resize, per view: rot90 (the final
    rotation, -1 / 0 / 1), vertical_first (PIL's pass order) and out_hw (the resized shape before rotation).
    """

    batch_size: int
    num_images: int
    hw: Tuple[int, int]
    normalize: bool
    jitter: np.ndarray
    rot90: Tuple[int, ...] = ()
    vertical_first: Tuple[bool, ...] = ()
    out_hw: Tuple[Tuple[int, int], ...] = ()


def is_finished(batch: Dict[str, Any]) -> bool:
    return "pending" not in batch


def finish_batch(batch: Dict[str, Any]) -> Dict[str, Any]:
    """The training batch from a worker's batch, computed on the device its tensors are on. Returns a new dict:
    images [B, S, 3, H, W] float32 in [0, 1], depths [B, S, H, W] float32, point_masks bool (depth > 0),
    cam_points / world_points [B, S, H, W, 3], extrinsics / intrinsics; batch-normalised if the stream asked for
    it; every other key passes through."""
    pending = batch.get("pending")
    if pending is None:
        return batch
    out = {k: v for k, v in batch.items() if k != "pending" and not k.startswith("pending_")}
    B, S, (H, W) = pending.batch_size, pending.num_images, pending.hw
    stored_depths = batch["pending_depths"]
    if "pending_images" in batch:
        u8 = batch["pending_images"]
    else:
        u8 = _resample_on_device(batch, pending).view(B, S, H, W, 3)
    images = torch.empty((B, S, 3, H, W), dtype=torch.float32, device=stored_depths.device)
    images.copy_(u8.permute(0, 1, 4, 2, 3)).div_(255.0)
    apply_jitter_(images.view(B * S, 3, H, W), pending.jitter)
    depths = stored_depths.to(torch.float32, copy=True)  # scaled in place below: never the worker's tensor
    masks = depths > 0
    extrinsics = out["extrinsics"].float()
    cam, world, dist = unproject(depths, out["intrinsics"].float(), extrinsics, with_norm=pending.normalize)
    if pending.normalize:
        # extrinsics are already relative to camera 0 (the worker did that rigid part in float64); what is left
        # is the scale: the mean distance of the valid world points of each sample
        dist.masked_fill_(~masks, 0.0)
        count = masks.sum(dim=(1, 2, 3)).to(torch.float32)
        scale = (dist.sum(dim=(1, 2, 3)) / (count + _COUNT_EPS)).clamp_(_SCALE_MIN, _SCALE_MAX)
        depths.div_(scale.view(B, 1, 1, 1))
        cam.div_(scale.view(B, 1, 1, 1, 1))
        world.div_(scale.view(B, 1, 1, 1, 1))
        extrinsics = extrinsics.clone()
        extrinsics[..., 3].div_(scale.view(B, 1, 1))
    out.update(images=images, depths=depths, point_masks=masks, cam_points=cam, world_points=world, extrinsics=extrinsics)
    return out


def unproject(depths: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor, with_norm: bool = False):
    """(cam_points, world_points [B, S, H, W, 3], |world point| [B, S, H, W] or None) of depths [B, S, H, W] through
    intrinsics [B, S, 3, 3] and camera-from-world extrinsics [B, S, 3, 4], at integer pixel centres
    (geometry.depth_to_cam_points' convention).

    world = depth * R^T K^-1 [u, v, 1] + (-R^T t): the ray is separable in u and v, so each world channel is an
    outer sum of a row and a column term times the depth (a [HW, 3] x [3, 3] matmul is several times slower on
    the CPU).
    """
    B, S, H, W = depths.shape
    dev, dt = depths.device, depths.dtype
    fx, fy = intrinsics[..., 0, 0, None], intrinsics[..., 1, 1, None]
    cx, cy = intrinsics[..., 0, 2, None], intrinsics[..., 1, 2, None]
    xs = (torch.arange(W, device=dev, dtype=dt) - cx) / fx  # [B, S, W]: camera x per unit depth
    ys = (torch.arange(H, device=dev, dtype=dt) - cy) / fy  # [B, S, H]
    # written channel by channel into the interleaved outputs (torch.stack on the last dim is ~5x slower on CPU)
    cam = torch.empty((B, S, H, W, 3), device=dev, dtype=dt)
    torch.mul(depths, xs[:, :, None, :], out=cam[..., 0])
    torch.mul(depths, ys[:, :, :, None], out=cam[..., 1])
    cam[..., 2] = depths
    rot_t = extrinsics[..., :3].transpose(-1, -2)  # [B, S, 3, 3]
    centre = -(rot_t @ extrinsics[..., 3:])[..., 0]  # [B, S, 3]
    world = torch.empty_like(cam)
    # one planar buffer for the three channels and one for the squared norm: on the CPU a fresh temporary costs
    # more in page faults than the arithmetic on it
    ray = torch.empty_like(depths)
    squares = torch.zeros_like(depths) if with_norm else None
    for k in range(3):
        row = ys * rot_t[..., k, 1, None] + rot_t[..., k, 2, None]  # [B, S, H]
        col = xs * rot_t[..., k, 0, None]  # [B, S, W]
        torch.add(row[..., :, None], col[..., None, :], out=ray).mul_(depths).add_(centre[..., k, None, None])
        world[..., k] = ray
        if with_norm:  # planar here: far cheaper than a norm over the interleaved last dim
            squares.addcmul_(ray, ray)
    return cam, world, (squares.sqrt_() if with_norm else None)


def _resample_on_device(batch: Dict[str, Any], pending: Pending) -> torch.Tensor:
    """[B * S, H, W, 3] uint8: PIL's resize of every view from its source window, then its rotation."""
    from vggt_train.data.pipeline.resample import resample_views, unpack

    window, table = batch["pending_window"], batch["pending_resample"]
    width = max(o[1] for o in pending.out_hw)  # the horizontal part of the table (see resample.pack)
    N = window.shape[0]
    H, W = pending.hw
    out = torch.zeros((N, H, W, 3), dtype=torch.uint8, device=window.device)
    groups: Dict[tuple, list] = {}
    for i in range(N):
        groups.setdefault((pending.rot90[i], bool(pending.vertical_first[i]), tuple(pending.out_hw[i])), []).append(i)
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
