"""Relative camera pose errors and their AUC, computed as the official VGGT Co3D evaluation computes them.

Definitions (facebookresearch/vggt, evaluation/test_co3d.py):
- pairs: all (i, j) with i < j, in `itertools.combinations(range(N), 2)` order (the official `build_pair_index`);
- relative pose of a pair: E_i @ inv(E_j) for camera-from-world (OpenCV) extrinsics E, i.e. camera j -> camera i;
- rotation error: the angle between the predicted and ground-truth relative rotations, from their quaternions q:
  arccos(1 - 2 * max(1 - <q_pred, q_gt>^2, 1e-15)), in degrees (so an exact match reads ~3.6e-6, not 0);
- translation error: the angle between the relative translation directions, arccos(sqrt(1 - max(1 - c^2, 1e-15)))
  with c the cosine between them, in degrees; it lies in [0, 90] because a direction and its opposite are
  the same answer for the benchmark (the official also folds with min(e, |180 - e|), a no-op for finite e);
- a non-finite error becomes NONFINITE_ERROR_DEG (the official sets 1e6 radians, then converts and folds);
- AUC@T: per pair the max of the two errors; a histogram over the 1-degree bins [0, 1), ..., [T-1, T] (numpy's
  last bin includes its right edge); the mean over the T bins of the cumulative histogram divided by the number
  of pairs. Errors outside [0, T] (and NaN) fall in no bin but still count in the number of pairs.
"""

from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np
import torch

from vggt_train.geometry import closed_form_inverse_se3, mat_to_quat

__all__ = ["NONFINITE_ERROR_DEG", "pair_indices", "relative_pose_errors", "pose_auc", "rra_rta"]

# The official translation error of a non-finite pair: 1e6 radians in degrees, folded by min(e, |180 - e|).
NONFINITE_ERROR_DEG = math.degrees(1e6) - 180.0
# The official clamp floor of 1 - cos^2 in both angle formulas.
_EPS = 1e-15

ArrayLike = Union[torch.Tensor, np.ndarray, list, tuple]


def pair_indices(num_frames: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Frame indices (i, j), each [N * (N - 1) / 2] int64, of all pairs i < j in itertools.combinations order."""
    if num_frames < 2:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty.clone()
    pairs = torch.combinations(torch.arange(num_frames), 2)
    return pairs[:, 0], pairs[:, 1]


def _as_se3(extrinsics: torch.Tensor, name: str) -> torch.Tensor:
    """[N, 3, 4] or [N, 4, 4] -> [N, 4, 4] float64 (bottom row 0 0 0 1)."""
    extrinsics = torch.as_tensor(extrinsics)
    if extrinsics.ndim != 3 or extrinsics.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"{name} must be [N, 3, 4] or [N, 4, 4], got {tuple(extrinsics.shape)}")
    extrinsics = extrinsics.to(torch.float64)
    se3 = torch.zeros(extrinsics.shape[0], 4, 4, dtype=torch.float64, device=extrinsics.device)
    se3[:, :3, :] = extrinsics[:, :3, :]
    se3[:, 3, 3] = 1.0
    return se3


def _rotation_error_deg(rot_gt: torch.Tensor, rot_pred: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between rotations [P, 3, 3] and [P, 3, 3] -> [P], via quaternions (sign-free)."""
    dot = (mat_to_quat(rot_pred) * mat_to_quat(rot_gt)).sum(dim=-1)
    one_minus_cos2 = (1.0 - dot**2).clamp(min=_EPS)
    return torch.rad2deg(torch.arccos(1.0 - 2.0 * one_minus_cos2))


def _translation_error_deg(t_gt: torch.Tensor, t_pred: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between translation directions [P, 3] and [P, 3] -> [P], folded to [0, 90]."""
    t_pred = t_pred / (t_pred.norm(dim=-1, keepdim=True) + _EPS)
    t_gt = t_gt / (t_gt.norm(dim=-1, keepdim=True) + _EPS)
    one_minus_cos2 = (1.0 - (t_pred * t_gt).sum(dim=-1) ** 2).clamp(min=_EPS)
    err = torch.rad2deg(torch.arccos(torch.sqrt(1.0 - one_minus_cos2)))
    return torch.minimum(err, (180.0 - err).abs())


def relative_pose_errors(
    pred_extrinsics: torch.Tensor, gt_extrinsics: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pair (rotation error, translation-direction error) in degrees, each [N * (N - 1) / 2] float64.

    Inputs are camera-from-world extrinsics [N, 3, 4] or [N, 4, 4] of the same N frames; pairs follow
    `pair_indices(N)`. A non-finite error (a NaN/inf prediction) is replaced by NONFINITE_ERROR_DEG.
    """
    pred = _as_se3(pred_extrinsics, "pred_extrinsics")
    gt = _as_se3(gt_extrinsics, "gt_extrinsics").to(pred.device)
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"pred has {pred.shape[0]} cameras, gt has {gt.shape[0]}")
    i, j = pair_indices(pred.shape[0])
    i, j = i.to(pred.device), j.to(pred.device)
    relative_gt = gt[i] @ closed_form_inverse_se3(gt[j])
    relative_pred = pred[i] @ closed_form_inverse_se3(pred[j])
    rot_err = _rotation_error_deg(relative_gt[:, :3, :3], relative_pred[:, :3, :3])
    trans_err = _translation_error_deg(relative_gt[:, :3, 3], relative_pred[:, :3, 3])
    huge = torch.tensor(NONFINITE_ERROR_DEG, dtype=torch.float64, device=pred.device)
    # The official leaves a NaN rotation error as NaN; a fixed huge value counts the same in AUC and RRA (a
    # failure) and keeps means and maxima of the errors finite.
    rot_err = torch.where(torch.isfinite(rot_err), rot_err, huge)
    trans_err = torch.where(torch.isfinite(trans_err), trans_err, huge)
    return rot_err, trans_err


def _errors_np(rot_err_deg: ArrayLike, trans_err_deg: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Both error vectors as float64 numpy [P], checked to have the same non-zero length."""
    rot, trans = (
        e.detach().cpu().double().numpy().reshape(-1)
        if isinstance(e, torch.Tensor)
        else np.asarray(e, dtype=np.float64).reshape(-1)
        for e in (rot_err_deg, trans_err_deg)
    )
    if rot.shape != trans.shape:
        raise ValueError(f"{rot.size} rotation errors but {trans.size} translation errors")
    if rot.size == 0:
        raise ValueError("no pairs: a metric over zero pairs is undefined")
    return rot, trans


def pose_auc(rot_err_deg: ArrayLike, trans_err_deg: ArrayLike, max_threshold: int = 30, percent: bool = False) -> float:
    """AUC@max_threshold of per-pair errors [P] (degrees): a fraction in [0, 1], or in [0, 100] if `percent`."""
    if isinstance(max_threshold, bool) or int(max_threshold) != max_threshold or max_threshold < 1:
        raise ValueError(f"max_threshold must be a positive whole number of degrees, got {max_threshold!r}")
    rot, trans = _errors_np(rot_err_deg, trans_err_deg)
    max_errors = np.maximum(rot, trans)  # NaN propagates
    # NaN is in no bin; as +inf it says so without numpy's comparison warnings.
    max_errors = np.where(np.isnan(max_errors), np.inf, max_errors)
    histogram, _ = np.histogram(max_errors, bins=np.arange(int(max_threshold) + 1))
    auc = float(np.mean(np.cumsum(histogram.astype(np.float64) / max_errors.size)))
    return 100.0 * auc if percent else auc


def rra_rta(rot_err: ArrayLike, trans_err: ArrayLike, threshold: float = 15) -> Tuple[float, float]:
    """(RRA@threshold, RTA@threshold): fractions in [0, 1] of pairs [P] whose error is strictly under threshold."""
    rot, trans = _errors_np(rot_err, trans_err)
    return float(np.mean(rot < threshold)), float(np.mean(trans < threshold))
