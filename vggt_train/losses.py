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

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from vggt_train.geometry import autocast_off, extri_intri_to_pose_encoding

__all__ = [
    "MultitaskLoss",
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

# Below this many valid pixels (in frame 0 for the camera loss, in the batch for depth / points) a loss is
# skipped: the official thresholds.
MIN_VALID_PIXELS = 100
# Per-element losses (and the gt maps) are clamped to +-HARD_MAX so a few outliers cannot dominate.
HARD_MAX = 100.0


# -- small helpers ---------------------------------------------------------------------------------------------
def _fix_non_finite(x: torch.Tensor, hard_max: Optional[float] = HARD_MAX) -> torch.Tensor:
    """NaN / inf -> 0, then clamp to [-hard_max, hard_max] (no clamp when hard_max is None)."""
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    if hard_max is not None:
        x = x.clamp(min=-hard_max, max=hard_max)
    return x


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A 0-d zero that keeps `x` in the autograd graph (so every parameter still receives a gradient)."""
    return _fix_non_finite(x, hard_max=None).sum() * 0.0


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    """Masks may arrive as bool or as 0/1 floats (e.g. after collation): index with bool."""
    return mask if mask.dtype == torch.bool else mask > 0.5


def _image_size(batch: Dict[str, Any]) -> Sequence[int]:
    """(H, W) of the batch: from images [B, S, 3, H, W], else from depths [B, S, H, W]."""
    if batch.get("images") is not None:
        return tuple(batch["images"].shape[-2:])
    return tuple(batch["depths"].shape[-2:])


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
    at most 100 valid pixels are left out (their normalisation, hence their gt, is unreliable).
    """
    pose_list: List[torch.Tensor] = list(predictions["pose_enc_list"])
    n = len(pose_list)
    if n == 0:
        raise ValueError("pose_enc_list is empty")
    valid_samples = _as_bool(batch["point_masks"])[:, 0].sum(dim=(-1, -2)) > MIN_VALID_PIXELS  # [B]
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


# -- tracks ----------------------------------------------------------------------------------------------------
def _binary_cross_entropy(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise BCE on probabilities, with logs floored at -100 like F.binary_cross_entropy.

    Written out because F.binary_cross_entropy refuses to run under CUDA autocast.
    """
    log_p = torch.log(prob).clamp(min=-100)
    log_not_p = torch.log(1 - prob).clamp(min=-100)
    return -(target * log_p + (1 - target) * log_not_p)


def track_loss(predictions, batch, gamma: float = 0.8) -> Dict[str, torch.Tensor]:
    """Track terms: loss_track (coordinates) and loss_vis (visibility BCE).

    predictions: track_list (list of [B, S, N, 2], one per refinement iteration; falls back to [track]) and vis
    [B, S, N] (probabilities); batch: tracks [B, S, N, 2] (pixels), track_vis_mask [B, S, N].
    Only tracks visible in frame 0 count: frame 0 holds the query points, so an invisible query is no track.
    loss_track = sum_i gamma^(n-1-i) * mean over visible points of the mean |x, y| error, divided by n (like the
    camera loss). loss_vis = mean BCE over all frames of the valid tracks. Zero when no track is valid.
    """
    coords = predictions.get("track_list")
    if coords is None:
        coords = [predictions["track"]]
    coords = [c.float() for c in coords]
    n_iter = len(coords)
    num_queries = coords[-1].shape[2]
    gt = _fix_non_finite(batch["tracks"][:, :, :num_queries].float(), hard_max=None)
    visible = _as_bool(batch["track_vis_mask"][:, :, :num_queries])
    valid_tracks = visible[:, :1].expand_as(visible)  # [B, S, N]: queries visible in frame 0
    supervised = valid_tracks & visible

    loss = 0.0
    for i, pred in enumerate(coords):
        error = _fix_non_finite((pred - gt).abs(), hard_max=None).mean(dim=-1)  # [B, S, N]
        if supervised.any():
            term = error[supervised].mean()
        else:
            term = _zero_like_graph(pred)
        loss = loss + gamma ** (n_iter - 1 - i) * term
    out = {"loss_track": loss / n_iter}

    if predictions.get("vis") is not None:
        vis = predictions["vis"].float()
        if valid_tracks.any():
            bce = _binary_cross_entropy(vis[valid_tracks], visible[valid_tracks].to(vis.dtype))
            out["loss_vis"] = _fix_non_finite(bce.mean(), hard_max=None)
        else:
            out["loss_vis"] = _zero_like_graph(vis)
    return out


# -- the module ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Supervision:
    """What one loss term reads: ground-truth keys of the batch, and the model's prediction (any one of the names)."""

    targets: Tuple[str, ...]
    predictions: Tuple[str, ...]
    head: str


SUPERVISION = {
    "camera": Supervision(("extrinsics", "intrinsics"), ("pose_enc_list",), "camera_head"),
    "depth": Supervision(("depths", "point_masks"), ("depth",), "depth_head"),
    "point": Supervision(("world_points", "point_masks"), ("world_points",), "point_head"),
    "track": Supervision(("tracks", "track_vis_mask"), ("track_list", "track"), "track_head"),
}

_TERMS = {
    "camera": ("loss_camera",),
    "depth": ("loss_conf_depth", "loss_reg_depth", "loss_grad_depth"),
    "point": ("loss_conf_point", "loss_reg_point", "loss_grad_point"),
}
_ALLOWED_KEYS = {
    "camera": {"weight", "loss_type", "gamma", "weight_trans", "weight_rot", "weight_focal", "pose_encoding_type"},
    "depth": {"weight", "gradient_loss_fn", "valid_range", "gamma", "alpha"},
    "point": {"weight", "gradient_loss_fn", "valid_range", "gamma", "alpha"},
    "track": {"weight", "gamma", "vis_weight"},
}


def _split_config(name: str, config: Optional[Dict[str, Any]]):
    """(weight, kwargs for the loss function) of one head's config, or None when the head is disabled."""
    if config is None:
        return None
    config = dict(config)
    unknown = set(config) - _ALLOWED_KEYS[name]
    if unknown:
        raise ValueError(f"{name} loss: unknown option(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED_KEYS[name])}")
    weight = float(config.pop("weight", 1.0))
    return weight, config


class MultitaskLoss(torch.nn.Module):
    """The weighted sum of the enabled task losses (see the module docstring for the terms and weights).

    Args (each a dict, or None to disable the head):
        camera: weight, loss_type ("l1" | "l2"), gamma, weight_trans, weight_rot, weight_focal
        depth / point: weight, gradient_loss_fn ("grad" | "normal" | None, "+conf" variants), valid_range
            (quantile of outlier filtering, <= 0 disables), gamma, alpha
        track: weight, gamma (iteration decay, 0.8), vis_weight (weight of loss_vis inside the track term, 1.0)
    """

    def __init__(self, camera=None, depth=None, point=None, track=None):
        super().__init__()
        self.camera = _split_config("camera", camera)
        self.depth = _split_config("depth", depth)
        self.point = _split_config("point", point)
        track_cfg = _split_config("track", track)
        if track_cfg is not None:
            weight, kwargs = track_cfg
            self.track_vis_weight = float(kwargs.pop("vis_weight", 1.0))
            track_cfg = (weight, kwargs)
        self.track = track_cfg

    def forward(self, predictions: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """predictions: model outputs; batch: the normalised ground truth. -> dict of 0-d tensors + objective."""
        for name in ("camera", "depth", "point", "track"):
            if getattr(self, name) is None:
                continue
            # an enabled term without its inputs is an error, never a silently missing term
            need = SUPERVISION[name]
            missing = [k for k in need.targets if k not in batch]
            if missing:
                raise ValueError(f"loss.{name} is enabled but the batch has no {', '.join(missing)}")
            if not any(k in predictions for k in need.predictions):
                raise ValueError(f"loss.{name} is enabled but the model predicted no {need.predictions[-1]!r} "
                                 f"(is its {need.head} disabled?)")
        losses: Dict[str, torch.Tensor] = {}
        objective = 0.0
        heads = (
            ("camera", self.camera, "pose_enc_list", camera_loss),
            ("depth", self.depth, "depth", depth_loss),
            ("point", self.point, "world_points", point_loss),
        )
        for name, config, key, fn in heads:
            if config is None or key not in predictions:
                continue
            weight, kwargs = config
            terms = fn(predictions, batch, **kwargs)
            losses.update(terms)
            objective = objective + weight * sum(terms[t] for t in _TERMS[name])

        if self.track is not None and ("track_list" in predictions or "track" in predictions):
            weight, kwargs = self.track
            terms = track_loss(predictions, batch, **kwargs)
            losses.update(terms)
            track_total = terms["loss_track"]
            if "loss_vis" in terms:
                track_total = track_total + self.track_vis_weight * terms["loss_vis"]
            objective = objective + weight * track_total

        if not torch.is_tensor(objective):
            raise ValueError("no loss term was computed: enable a head whose prediction is present")
        losses["objective"] = objective
        return losses
