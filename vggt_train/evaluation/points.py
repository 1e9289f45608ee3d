"""Point-map metrics: similarity (Umeyama) alignment of the prediction to the ground truth, then accuracy,
completeness and chamfer distance by nearest neighbours.

Following the official VGGT/Pi3 point-cloud evaluation, the prediction is aligned to the ground truth with one
similarity transform fitted by Umeyama over all valid points (pixel-wise correspondences); unlike it there is no
ICP refinement and no normal consistency. Nearest neighbours are exact (chunked torch.cdist, no scipy needed).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

__all__ = ["umeyama", "nearest_neighbor_distances", "point_metrics"]

# Elements of one distance block in nearest_neighbor_distances: 2**22 float64 values = 32 MiB.
_BLOCK_ELEMENTS = 1 << 22


def umeyama(
    src: torch.Tensor, dst: torch.Tensor, with_scale: bool = True
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity dst ~ s * R @ src + t (Umeyama 1991) of src [N, 3] onto dst [N, 3].

    Returns (s 0-d, R [3, 3] with det +1, t [3]) in float64; s is 1 when not `with_scale`. Needs N >= 3 and
    src points that do not all coincide.
    """
    src = torch.as_tensor(src).to(torch.float64)
    dst = torch.as_tensor(dst).to(torch.float64).to(src.device)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"src and dst must both be [N, 3], got {tuple(src.shape)} and {tuple(dst.shape)}")
    if src.shape[0] < 3:
        raise ValueError(f"a similarity needs at least 3 point pairs, got {src.shape[0]}")
    mean_src, mean_dst = src.mean(dim=0), dst.mean(dim=0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    var_src = (src_c * src_c).sum(dim=1).mean()
    if not var_src > 0:
        raise ValueError("the source points all coincide: no rotation or scale is defined")
    covariance = dst_c.T @ src_c / src.shape[0]
    u, singular, vh = torch.linalg.svd(covariance)
    # Flipping the axis of the smallest singular value keeps R a rotation when the best orthogonal fit reflects.
    sign = torch.ones(3, dtype=torch.float64, device=src.device)
    if torch.det(u) * torch.det(vh) < 0:
        sign[2] = -1.0
    rotation = u @ torch.diag(sign) @ vh
    scale = (singular * sign).sum() / var_src if with_scale else torch.ones((), dtype=torch.float64, device=src.device)
    translation = mean_dst - scale * rotation @ mean_src
    return scale, rotation, translation


def nearest_neighbor_distances(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each query point [N, 3] to its nearest reference point [M, 3] -> [N], exact."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, reference.shape[0]))
    out = []
    for start in range(0, query.shape[0], rows):
        # The matrix-product form of cdist cancels catastrophically for nearby points; the direct form is exact.
        block = torch.cdist(query[start:start + rows], reference, compute_mode="donot_use_mm_for_euclid_dist")
        out.append(block.min(dim=1).values)
    return torch.cat(out) if out else query.new_zeros(0)


def point_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
    max_points: int = 20000,
    seed: int = 0,
) -> Dict[str, float]:
    """{"accuracy", "completeness", "chamfer", "num_points"} of point maps pred [S, H, W, 3] vs gt [S, H, W, 3].

    Valid points: `valid` [S, H, W] (None: all) and finite gt. pred is Umeyama-aligned to gt over all valid points,
    then at most `max_points` valid pixels are drawn uniformly without replacement (torch.randperm with a
    generator seeded by `seed`: the same pixels for pred and gt, fixed for a given torch version) and
    accuracy = mean distance pred -> nearest gt, completeness = mean distance gt -> nearest pred,
    chamfer = their mean. `num_points` is the number of valid points before subsampling.
    Fewer than 3 valid points, a non-finite prediction on a valid pixel, or a prediction collapsed to one point
    gives NaN metrics (a failure a mean shows).
    """
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    pred = torch.as_tensor(pred).to(torch.float64)
    gt = torch.as_tensor(gt).to(torch.float64).to(pred.device)
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[-1] != 3:
        raise ValueError(f"pred and gt must both be [S, H, W, 3], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    mask = torch.isfinite(gt).all(dim=-1)
    if valid is not None:
        valid = torch.as_tensor(valid).to(pred.device)
        if valid.shape != gt.shape[:-1]:
            raise ValueError(f"valid must be {tuple(gt.shape[:-1])}, got {tuple(valid.shape)}")
        mask &= valid.bool()

    pred_points, gt_points = pred[mask], gt[mask]
    num_points = int(gt_points.shape[0])
    failed = {"accuracy": math.nan, "completeness": math.nan, "chamfer": math.nan, "num_points": num_points}
    if num_points < 3 or not bool(torch.isfinite(pred_points).all()):
        return failed
    if not bool((pred_points != pred_points[0]).any()):
        return failed

    scale, rotation, translation = umeyama(pred_points, gt_points)
    aligned = scale * pred_points @ rotation.T + translation
    if num_points > max_points:
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(num_points, generator=generator)[:max_points].to(pred.device)
        aligned, gt_points = aligned[keep], gt_points[keep]

    accuracy = nearest_neighbor_distances(aligned, gt_points).mean()
    completeness = nearest_neighbor_distances(gt_points, aligned).mean()
    return {
        "accuracy": float(accuracy),
        "completeness": float(completeness),
        "chamfer": float(0.5 * (accuracy + completeness)),
        "num_points": num_points,
    }
