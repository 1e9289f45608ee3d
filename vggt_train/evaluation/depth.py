"""Scale-aligned depth-map metrics: AbsRel and the delta < 1.25 inlier ratio over valid pixels.

The network's depth has an arbitrary scale, so the prediction is scaled to the ground truth first:
- "median": per frame, s_f = median(gt) / median(pred) over that frame's valid pixels (true medians: the mean of
  the two middle values when their count is even);
- "lstsq": one scale per sequence, s = sum(pred * gt) / sum(pred^2) over all valid pixels (least squares).
Both metrics are then pooled over every valid pixel of the sequence (not averaged per frame):
  abs_rel = mean(|s * pred - gt| / gt),   delta_1_25 = mean(max(s * pred / gt, gt / (s * pred)) < 1.25),
where a non-positive scaled prediction is never an inlier. A valid pixel has gt > 0, finite gt and mask set.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch

__all__ = ["DEPTH_ALIGNMENTS", "depth_metrics"]

DEPTH_ALIGNMENTS = ("median", "lstsq")
DELTA_THRESHOLD = 1.25


def _median(values: torch.Tensor) -> torch.Tensor:
    """Median of a non-empty 1-D tensor, the mean of the two middle values for an even count (torch.median
    returns the lower one)."""
    ordered = values.sort().values
    n = ordered.numel()
    return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])


def depth_metrics(
    pred: torch.Tensor, gt: torch.Tensor, valid: Optional[torch.Tensor] = None, align: str = "median"
) -> Dict[str, float]:
    """{"abs_rel", "delta_1_25", "num_valid"} of pred [S, H, W] against gt [S, H, W] (valid: [S, H, W] bool or
    None for all pixels), computed in float64 after `align` scaling ("median" or "lstsq", see the module doc).

    No valid pixel, or a non-finite prediction on a valid pixel, gives NaN metrics (a failure a mean shows); so
    does a degenerate scale (a zero median or an all-zero prediction).
    """
    if align not in DEPTH_ALIGNMENTS:
        raise ValueError(f"align must be one of {DEPTH_ALIGNMENTS}, got {align!r}")
    pred = torch.as_tensor(pred).to(torch.float64)
    gt = torch.as_tensor(gt).to(torch.float64).to(pred.device)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must both be [S, H, W], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    mask = torch.isfinite(gt) & (gt > 0)
    if valid is not None:
        valid = torch.as_tensor(valid).to(pred.device)
        if valid.shape != gt.shape:
            raise ValueError(f"valid must be {tuple(gt.shape)}, got {tuple(valid.shape)}")
        mask &= valid.bool()

    num_valid = int(mask.sum())
    failed = {"abs_rel": math.nan, "delta_1_25": math.nan, "num_valid": num_valid}
    if num_valid == 0 or not bool(torch.isfinite(pred[mask]).all()):
        return failed

    if align == "median":
        scale = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
        for frame in range(pred.shape[0]):
            frame_mask = mask[frame]
            if frame_mask.any():  # a frame without valid pixels contributes nothing, whatever its scale
                scale[frame] = _median(gt[frame][frame_mask]) / _median(pred[frame][frame_mask])
    else:
        p = pred[mask]
        scale = (p * gt[mask]).sum() / (p * p).sum()
    if not bool(torch.isfinite(scale).all()):
        return failed
    scaled = (scale[:, None, None] * pred)[mask] if align == "median" else scale * pred[mask]

    target = gt[mask]
    abs_rel = ((scaled - target).abs() / target).mean()
    ratio = torch.maximum(scaled / target, target / scaled)
    inliers = (scaled > 0) & (ratio < DELTA_THRESHOLD)
    return {"abs_rel": float(abs_rel), "delta_1_25": float(inliers.double().mean()), "num_valid": num_valid}
