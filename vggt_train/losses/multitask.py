"""MultitaskLoss: the weighted sum of the configured terms, and what supervision each term needs (SUPERVISION)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from vggt_train.losses.camera import camera_loss, camera_samples
from vggt_train.losses.common import MIN_VALID_PIXELS, _as_bool
from vggt_train.losses.dense import depth_loss, point_loss
from vggt_train.losses.track import track_loss


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


def term_sample_counts(batch: Dict[str, Any]) -> Dict[str, int]:
    """How many samples of a batch each term supervises: {"camera", "depth", "point"} (depth and point: samples
    with a valid pixel, when the batch has the MIN_VALID_PIXELS the dense terms need; camera: camera_samples)."""
    masks = _as_bool(batch["point_masks"]).flatten(1)
    dense = int(masks.any(dim=1).sum()) if int(masks.sum()) >= MIN_VALID_PIXELS else 0
    return {"camera": int(camera_samples(batch).sum()), "depth": dense, "point": dense}


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
