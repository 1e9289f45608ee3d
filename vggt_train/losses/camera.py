"""The camera loss: pose-encoding errors (translation, rotation quaternion, field of view) of every frame."""

from __future__ import annotations

from typing import Dict, List

import torch

from vggt_train.geometry import extri_intri_to_pose_encoding
from vggt_train.losses.common import HARD_MAX, MIN_VALID_PIXELS, _as_bool, _fix_non_finite, _image_size, _zero_like_graph


# -- camera ----------------------------------------------------------------------------------------------------
def _pose_errors(pred: torch.Tensor, gt: torch.Tensor, loss_type: str):
    """Per-camera translation / rotation / FoV errors of [M, 9] encodings -> three 0-d means."""
    if loss_type == "l1":
        err_t = (pred[..., :3] - gt[..., :3]).abs()
        err_r = (pred[..., 3:7] - gt[..., 3:7]).abs()
        err_f = (pred[..., 7:] - gt[..., 7:]).abs()
    elif loss_type == "l2":
        err_t = (pred[..., :3] - gt[..., :3]).norm(dim=-1)
        err_r = (pred[..., 3:7] - gt[..., 3:7]).norm(dim=-1)
        err_f = (pred[..., 7:] - gt[..., 7:]).norm(dim=-1)
    else:
        raise ValueError(f"unknown camera loss_type {loss_type!r}: expected 'l1' or 'l2'")
    err_t, err_r, err_f = (_fix_non_finite(e) for e in (err_t, err_r, err_f))
    return err_t.clamp(max=HARD_MAX).mean(), err_r.mean(), err_f.mean()


def camera_samples(batch) -> torch.Tensor:
    """[B] bool: the samples the camera term supervises (frame 0 has more than MIN_VALID_PIXELS valid pixels, or
    the sample is camera-only: `has_depth` [B, S] False everywhere)."""
    valid = _as_bool(batch["point_masks"])[:, 0].sum(dim=(-1, -2)) > MIN_VALID_PIXELS
    if batch.get("has_depth") is not None:
        valid = valid | ~_as_bool(batch["has_depth"]).any(dim=1)
    return valid


def camera_loss(
    predictions,
    batch,
    loss_type: str = "l1",
    gamma: float = 0.6,
    weight_trans: float = 1.0,
    weight_rot: float = 1.0,
    weight_focal: float = 0.5,
    pose_encoding_type: str = "absT_quaR_FoV",
) -> Dict[str, torch.Tensor]:
    """Camera terms over the refinement iterations: predictions pose_enc_list (list of [B, S, 9]).

    The gt encoding is computed from batch extrinsics / intrinsics and the image size. Iteration i of n has
    weight gamma^(n-1-i) (the last counts most) and the weighted sum is divided by n. Samples whose frame 0 has
    at most 100 valid pixels are left out (their normalisation, hence their gt, is unreliable), unless the sample
    has no depth at all (camera-only data: batch["has_depth"] all False), whose cameras are its only targets.
    """
    pose_list: List[torch.Tensor] = list(predictions["pose_enc_list"])
    n = len(pose_list)
    if n == 0:
        raise ValueError("pose_enc_list is empty")
    valid_samples = camera_samples(batch)  # [B]
    gt = extri_intri_to_pose_encoding(
        batch["extrinsics"], batch["intrinsics"], _image_size(batch), pose_encoding_type=pose_encoding_type
    )

    total_t = total_r = total_f = 0.0
    any_valid = bool(valid_samples.any())
    for i, pose in enumerate(pose_list):
        weight = gamma ** (n - 1 - i)
        pose = pose.float()
        if any_valid:
            loss_t, loss_r, loss_f = _pose_errors(pose[valid_samples], gt[valid_samples], loss_type)
        else:
            loss_t = loss_r = loss_f = _zero_like_graph(pose)
        total_t = total_t + weight * loss_t
        total_r = total_r + weight * loss_r
        total_f = total_f + weight * loss_f

    loss_t, loss_r, loss_f = total_t / n, total_r / n, total_f / n
    return {
        "loss_camera": weight_trans * loss_t + weight_rot * loss_r + weight_focal * loss_f,
        "loss_T": loss_t,
        "loss_R": loss_r,
        "loss_FL": loss_f,
    }
