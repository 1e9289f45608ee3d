"""One forward of VGGT over a set of images and its predictions in the original images' terms: cameras, depth,
confidence, and the confident point cloud.

Cameras: the pose encoding decoded in float64 (geometry.pose_encoding_to_extri_intri, principal point at the grid
centre), OpenCV camera-from-world extrinsics in the first camera's frame, intrinsics mapped to each original image
(images.GridPlacement). Points: the depth head's depth unprojected through the predicted cameras, not the point
head. The official README says the unprojected depth "usually leads to more accurate 3D points than [the] point map
branch", and the model is loaded as `vggt-train evaluate` loads it, without the point and track heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch

from vggt_train.evaluation.evaluate import _autocast
from vggt_train.geometry import depth_to_world_points, pose_encoding_to_extri_intri
from vggt_train.predict.images import InputImage

__all__ = ["Prediction", "PointCloud", "run_model", "check_cameras", "select_points"]


@dataclass
class Prediction:
    """The model's outputs for S images; arrays on the padded grid [Hg, Wg] unless said otherwise."""

    images: List[InputImage]
    grid: np.ndarray  # [S, Hg, Wg, 3] uint8, the preprocessed images (colours of the points)
    extrinsics: np.ndarray  # [S, 3, 4] float64, OpenCV camera-from-world
    grid_intrinsics: np.ndarray  # [S, 3, 3] float64, on the grid (integer pixel centres)
    intrinsics: np.ndarray  # [S, 3, 3] float64, in each original image's pixels (integer pixel centres)
    depth: np.ndarray  # [S, Hg, Wg] float32
    conf: np.ndarray  # [S, Hg, Wg] float32 (the depth head's confidence, >= 1)


@dataclass
class PointCloud:
    """Points of confident grid pixels: world xyz, colour, and the pixel they came from."""

    xyz: np.ndarray  # [N, 3] float64
    rgb: np.ndarray  # [N, 3] uint8
    image: np.ndarray  # [N] int64, index into Prediction.images
    u: np.ndarray  # [N] int64, grid column
    v: np.ndarray  # [N] int64, grid row
    threshold: float  # the confidence at the requested percentile
    candidates: int  # valid pixels the percentile was taken over


def run_model(model: torch.nn.Module, items: List[InputImage], batch: torch.Tensor, device: torch.device) -> Prediction:
    """One forward over batch [S, 3, Hg, Wg] (bf16 autocast on an accelerator, float32 on the CPU) -> Prediction."""
    with torch.no_grad(), _autocast(device):
        out = model(batch.to(device))
    pose_enc = out["pose_enc"][0].detach().double().cpu()
    hw = tuple(batch.shape[-2:])
    extrinsics, grid_k = pose_encoding_to_extri_intri(pose_enc, hw)
    grid_k = grid_k.numpy()
    return Prediction(
        images=items,
        grid=(batch.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
        extrinsics=extrinsics.numpy(),
        grid_intrinsics=grid_k,
        intrinsics=np.stack([it.placement.intrinsic_to_original(k) for it, k in zip(items, grid_k)]),
        depth=out["depth"][0, ..., 0].detach().float().cpu().numpy(),
        conf=out["depth_conf"][0].detach().float().cpu().numpy(),
    )


def check_cameras(pred: Prediction) -> None:
    """Raise ValueError naming the images whose predicted camera is not finite or has a focal length <= 0 (a field
    of view of 0: an untrained or broken checkpoint); such a camera has no COLMAP or JSON form."""
    bad = [item.name for item, e, k in zip(pred.images, pred.extrinsics, pred.intrinsics)
           if not (np.isfinite(e).all() and np.isfinite(k).all() and k[0, 0] > 0 and k[1, 1] > 0)]
    if bad:
        raise ValueError(f"the model predicted no usable camera (non-finite, or a field of view of 0) for "
                         f"{len(bad)} of {len(pred.images)} images ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
                         "is the checkpoint trained and --preset right?")


def _valid_mask(pred: Prediction) -> np.ndarray:
    """[S, Hg, Wg] bool: inside the image's own box (not padding), finite positive depth, finite confidence."""
    mask = np.zeros(pred.depth.shape, bool)
    for s, item in enumerate(pred.images):
        left, top, right, bottom = item.placement.box
        mask[s, top:bottom, left:right] = True
    return mask & np.isfinite(pred.depth) & (pred.depth > 0) & np.isfinite(pred.conf)


def select_points(pred: Prediction, conf_percentile: float, max_points: int, seed: int = 0) -> PointCloud:
    """The points of valid pixels whose confidence is at or above the `conf_percentile`-th percentile (0-100) of all
    valid pixels' confidence, at most `max_points` of them (a seeded draw without replacement, kept in pixel order:
    the same inputs give the same points)."""
    mask = _valid_mask(pred)
    candidates = int(mask.sum())
    threshold = float(np.percentile(pred.conf[mask], conf_percentile)) if candidates else float("nan")
    keep = mask & (pred.conf >= threshold) if candidates else mask
    s, v, u = np.nonzero(keep)
    if len(s) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(s), max_points, replace=False))
        s, v, u = s[pick], v[pick], u[pick]
    xyz = np.zeros((len(s), 3))
    for i in np.unique(s):
        # float64, pixel (u, v) at its integer coordinate (geometry's convention, the one the intrinsics use)
        rows = s == i
        depth = torch.from_numpy(pred.depth[i].astype(np.float64))
        world = depth_to_world_points(depth, torch.from_numpy(pred.extrinsics[i]), torch.from_numpy(pred.grid_intrinsics[i]))
        xyz[rows] = world[v[rows], u[rows]].numpy()
    return PointCloud(xyz=xyz, rgb=pred.grid[s, v, u], image=s.astype(np.int64), u=u.astype(np.int64),
                      v=v.astype(np.int64), threshold=threshold, candidates=candidates)
