"""Dense losses (depth and world points), as the official `training/loss.py` computes them: confidence-weighted
regression, its 0.98-quantile outlier filter, and the multi-scale gradient (or normal) term."""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from vggt_train.geometry import autocast_off
from vggt_train.losses.common import HARD_MAX, MIN_VALID_PIXELS, _as_bool, _fix_non_finite, _zero_like_graph


# -- robust statistics -----------------------------------------------------------------------------------------
def torch_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of all elements, "nearest" rank (Python's round, as the official code): [...] -> 0-d.

    Uses kthvalue, which has no 2**24 element limit unlike torch.quantile.
    """
    q = float(q)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    flat = values.reshape(-1)
    k = round(q * (flat.numel() - 1)) + 1
    return torch.kthvalue(flat, k).values


def filter_by_quantile(
    loss: torch.Tensor, valid_range: float, min_elements: int = 1000, hard_max: float = HARD_MAX
) -> torch.Tensor:
    """Drop per-element losses at or above their `valid_range` quantile: [N] -> [M], M <= N.

    Small tensors (<= min_elements) are returned untouched; otherwise values are clamped to hard_max first, and
    the filter is applied only if more than min_elements survive it.
    """
    if loss.numel() <= min_elements:
        return loss
    if loss.numel() > 100_000_000:
        # bound the cost of the quantile (the official code subsamples 1M elements here too)
        keep = torch.randperm(loss.numel(), device=loss.device)[:1_000_000]
        loss = loss.reshape(-1)[keep]
    loss = loss.clamp(max=hard_max)
    threshold = torch.clamp(torch_quantile(loss.detach(), valid_range), max=hard_max)
    keep_mask = loss < threshold
    if keep_mask.sum() > min_elements:
        return loss[keep_mask]
    return loss


# -- gradient (smoothness) losses ------------------------------------------------------------------------------
def gradient_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    conf: Optional[torch.Tensor] = None,
    gamma: float = 1.0,
    alpha: float = 0.2,
) -> torch.Tensor:
    """L1 on the horizontal / vertical finite differences of the masked error: [N, H, W, C] -> 0-d.

    Normalised by the number of valid (pixel, channel) pairs; optionally confidence-weighted (conf [N, H, W]).
    """
    mask = mask[..., None].expand_as(prediction).to(prediction.dtype)
    diff = (prediction - target) * mask

    grad_x = (diff[:, :, 1:] - diff[:, :, :-1]).abs() * (mask[:, :, 1:] * mask[:, :, :-1])
    grad_y = (diff[:, 1:] - diff[:, :-1]).abs() * (mask[:, 1:] * mask[:, :-1])
    grad_x = grad_x.clamp(max=HARD_MAX)
    grad_y = grad_y.clamp(max=HARD_MAX)

    if conf is not None:
        conf = conf[..., None].expand_as(prediction)
        conf_x, conf_y = conf[:, :, 1:], conf[:, 1:]
        grad_x = gamma * grad_x * conf_x - alpha * torch.log(conf_x)
        grad_y = gamma * grad_y * conf_y - alpha * torch.log(conf_y)

    count = mask.sum()
    if count == 0:
        return _zero_like_graph(prediction)
    return (grad_x.sum() + grad_y.sum()) / count


def point_map_to_normal(points: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6):
    """Surface normals of a point map from its 4 neighbour pairs: points [N, H, W, 3], mask [N, H, W] ->
    (normals [4, N, H, W, 3] unit, valid [4, N, H, W]).

    Normal k is the cross product of the directions to two adjacent neighbours (up x left, left x down,
    down x right, right x up); it is valid where the centre and both neighbours are valid (zero padding outside).
    """
    mask = _as_bool(mask)
    with autocast_off(points.device.type):
        padded_mask = F.pad(mask, (1, 1, 1, 1), mode="constant", value=False)
        padded = F.pad(points.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="constant", value=0).permute(0, 2, 3, 1)

        center = padded[:, 1:-1, 1:-1]
        up = padded[:, :-2, 1:-1] - center
        left = padded[:, 1:-1, :-2] - center
        down = padded[:, 2:, 1:-1] - center
        right = padded[:, 1:-1, 2:] - center

        m_center = padded_mask[:, 1:-1, 1:-1]
        m_up, m_left = padded_mask[:, :-2, 1:-1], padded_mask[:, 1:-1, :-2]
        m_down, m_right = padded_mask[:, 2:, 1:-1], padded_mask[:, 1:-1, 2:]

        normals = torch.stack([
            torch.cross(up, left, dim=-1),
            torch.cross(left, down, dim=-1),
            torch.cross(down, right, dim=-1),
            torch.cross(right, up, dim=-1),
        ], dim=0)
        valid = torch.stack([
            m_up & m_center & m_left,
            m_left & m_center & m_down,
            m_down & m_center & m_right,
            m_right & m_center & m_up,
        ], dim=0)
        normals = F.normalize(normals, p=2, dim=-1, eps=eps)
    return normals, valid


def normal_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    cos_eps: float = 1e-8,
    conf: Optional[torch.Tensor] = None,
    gamma: float = 1.0,
    alpha: float = 0.2,
) -> torch.Tensor:
    """Mean (1 - cos) between predicted and gt surface normals: point maps [N, H, W, 3], mask [N, H, W] -> 0-d.

    Returns 0 when fewer than 10 normals are valid; optionally confidence-weighted (conf [N, H, W]).
    """
    pred_normals, pred_valid = point_map_to_normal(prediction, mask, eps=cos_eps)
    gt_normals, gt_valid = point_map_to_normal(target, mask, eps=cos_eps)
    valid = pred_valid & gt_valid  # [4, N, H, W]
    if valid.sum() < 10:
        return _zero_like_graph(prediction)

    cos = (pred_normals[valid] * gt_normals[valid]).sum(dim=-1)
    # 1 - cos rather than the angle: arccos has an infinite gradient at +-1
    loss = 1 - cos.clamp(-1 + cos_eps, 1 - cos_eps)
    loss = _fix_non_finite(loss)
    if conf is not None:
        conf = conf[None].expand(4, -1, -1, -1)[valid]
        loss = gamma * loss * conf - alpha * torch.log(conf)
    return loss.mean()


def gradient_loss_multi_scale_wrapper(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    scales: int = 4,
    gradient_loss_fn=gradient_loss,
    conf: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean of `gradient_loss_fn` over `scales` strided subsamplings (steps 1, 2, 4, ...): [N, H, W, C] -> 0-d."""
    total = 0.0
    for scale in range(scales):
        step = 2 ** scale
        total = total + gradient_loss_fn(
            prediction[:, ::step, ::step],
            target[:, ::step, ::step],
            mask[:, ::step, ::step],
            conf=conf[:, ::step, ::step] if conf is not None else None,
        )
    return total / scales


# -- the confidence-weighted regression ------------------------------------------------------------------------
def _masked_mean(values: torch.Tensor, valid_range: float, like: torch.Tensor) -> torch.Tensor:
    """Quantile-filter (if valid_range > 0), sanitise and average [M] per-element losses; 0 if empty."""
    if values.numel() == 0:
        return _zero_like_graph(like)
    if valid_range > 0:
        values = filter_by_quantile(values, valid_range)
    return _fix_non_finite(values).mean()


def regression_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    conf: torch.Tensor,
    gradient_loss_fn: Optional[str] = None,
    gamma: float = 1.0,
    alpha: float = 0.2,
    valid_range: float = -1,
):
    """Confidence-aware regression of a dense map: pred / gt [B, S, H, W, C], mask / conf [B, S, H, W].

    Returns (loss_conf, loss_grad, loss_reg), 0-d tensors:
      loss_reg  = mean over valid pixels of ||pred - gt||;
      loss_conf = mean of gamma * ||pred - gt|| * conf - alpha * log(conf) (the uncertainty-aware form: the
                  network may lower conf where it is wrong, at a log-penalty);
      loss_grad = multi-scale gradient loss: "grad" (finite differences, 4 scales) or "normal" (surface
                  normals, 3 scales); "conf" in the name also weights it by conf; 0 when gradient_loss_fn is None.
    Both per-pixel terms are filtered at their `valid_range` quantile when valid_range > 0.
    """
    b, s, h, w, c = pred.shape
    mask = _as_bool(mask)
    error = _fix_non_finite(torch.norm(gt[mask] - pred[mask], dim=-1))
    conf_valid = conf[mask]
    conf_term = _fix_non_finite(gamma * error * conf_valid - alpha * torch.log(conf_valid))

    loss_grad = _zero_like_graph(pred)
    if gradient_loss_fn:
        flat = dict(
            prediction=pred.reshape(b * s, h, w, c),
            target=gt.reshape(b * s, h, w, c),
            mask=mask.reshape(b * s, h, w),
            conf=conf.reshape(b * s, h, w) if "conf" in gradient_loss_fn else None,
        )
        if "normal" in gradient_loss_fn:
            loss_grad = gradient_loss_multi_scale_wrapper(gradient_loss_fn=normal_loss, scales=3, **flat)
        elif "grad" in gradient_loss_fn:
            loss_grad = gradient_loss_multi_scale_wrapper(gradient_loss_fn=gradient_loss, scales=4, **flat)
        else:
            raise ValueError(f"unknown gradient_loss_fn {gradient_loss_fn!r}: expected 'grad' or 'normal'")

    loss_conf = _masked_mean(conf_term, valid_range, pred)
    loss_reg = _masked_mean(error, valid_range, pred)
    return loss_conf, loss_grad, loss_reg


def _dense_loss(pred, conf, gt, mask, suffix: str, **kwargs) -> Dict[str, torch.Tensor]:
    """Shared body of depth_loss / point_loss; gt is sanitised and clamped to +-100 like the official code."""
    mask = _as_bool(mask)
    if mask.sum() < MIN_VALID_PIXELS:
        zero = _zero_like_graph(pred)
        return {f"loss_conf_{suffix}": zero, f"loss_reg_{suffix}": zero, f"loss_grad_{suffix}": zero}
    loss_conf, loss_grad, loss_reg = regression_loss(pred, _fix_non_finite(gt), mask, conf, **kwargs)
    return {f"loss_conf_{suffix}": loss_conf, f"loss_reg_{suffix}": loss_reg, f"loss_grad_{suffix}": loss_grad}


def depth_loss(predictions, batch, gamma=1.0, alpha=0.2, gradient_loss_fn=None, valid_range=-1) -> Dict[str, torch.Tensor]:
    """Depth terms: predictions depth [B, S, H, W, 1], depth_conf [B, S, H, W] vs batch depths [B, S, H, W]."""
    return _dense_loss(
        predictions["depth"].float(), predictions["depth_conf"].float(), batch["depths"].float()[..., None],
        batch["point_masks"], "depth",
        gamma=gamma, alpha=alpha, gradient_loss_fn=gradient_loss_fn, valid_range=valid_range,
    )


def point_loss(predictions, batch, gamma=1.0, alpha=0.2, gradient_loss_fn=None, valid_range=-1) -> Dict[str, torch.Tensor]:
    """Point-map terms: world_points [B, S, H, W, 3], world_points_conf [B, S, H, W] vs batch world_points."""
    return _dense_loss(
        predictions["world_points"].float(), predictions["world_points_conf"].float(), batch["world_points"].float(),
        batch["point_masks"], "point",
        gamma=gamma, alpha=alpha, gradient_loss_fn=gradient_loss_fn, valid_range=valid_range,
    )
