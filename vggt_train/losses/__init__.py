"""The VGGT training objective: camera, depth, world-point and track losses.

`MultitaskLoss(camera=..., depth=..., point=..., track=...)(predictions, batch)` returns a dict of 0-d tensors:
  camera: loss_camera, loss_T, loss_R, loss_FL
  depth:  loss_conf_depth, loss_reg_depth, loss_grad_depth
  point:  loss_conf_point, loss_reg_point, loss_grad_point
  track:  loss_track, loss_vis
  objective = camera.weight * loss_camera
            + depth.weight * (loss_conf_depth + loss_reg_depth + loss_grad_depth)
            + point.weight * (loss_conf_point + loss_reg_point + loss_grad_point)
            + track.weight * (loss_track + track.vis_weight * loss_vis)
A head whose config is None (or whose prediction is missing) contributes no term.

The camera, depth and point losses compute the same function as the official VGGT `training/loss.py`
(including its clamps, its 0.98-quantile outlier filter and its "skip when fewer than 100 valid pixels" rules);
the track loss is ours (the official one was never released in clean form).

`batch` is a normalised batch (see `vggt_train.geometry.normalize_batch`): extrinsics [B, S, 3, 4],
intrinsics [B, S, 3, 3], depths [B, S, H, W], world_points [B, S, H, W, 3], point_masks [B, S, H, W]
(bool or 0/1), images [B, S, 3, H, W] (only its size is read); for tracks, tracks [B, S, N, 2] and
track_vis_mask [B, S, N].

No valid pixels: a term whose mask selects (almost) nothing is a zero that stays attached to the graph
(`0 * prediction`), so the objective and its gradient remain finite.
"""

from vggt_train.losses.camera import camera_loss
from vggt_train.losses.dense import (
    depth_loss,
    filter_by_quantile,
    gradient_loss,
    gradient_loss_multi_scale_wrapper,
    normal_loss,
    point_loss,
    point_map_to_normal,
    regression_loss,
    torch_quantile,
)
from vggt_train.losses.multitask import SUPERVISION, MultitaskLoss, Supervision, term_sample_counts
from vggt_train.losses.track import track_loss

__all__ = [
    "MultitaskLoss",
    "term_sample_counts",
    "SUPERVISION",
    "Supervision",
    "camera_loss",
    "depth_loss",
    "point_loss",
    "track_loss",
    "regression_loss",
    "gradient_loss",
    "normal_loss",
    "gradient_loss_multi_scale_wrapper",
    "point_map_to_normal",
    "filter_by_quantile",
    "torch_quantile",
]
