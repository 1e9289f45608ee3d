"""Output activations of the prediction heads (official names: exp, inv_log, expp1, ...)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """sign(y) * (exp(|y|) - 1): lets the point head cover a large depth range with small outputs."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def _activate(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "linear":
        return x
    if kind == "exp":
        return torch.exp(x)
    if kind == "relu":
        return F.relu(x)
    if kind == "inv_log":
        return inverse_log_transform(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "norm_exp":
        norm = x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return x / norm * torch.expm1(norm)
    if kind == "norm":
        return x / x.norm(dim=-1, keepdim=True)
    raise ValueError(f"unknown activation {kind!r}")


def activate_pose(pose_enc: torch.Tensor, trans_act: str = "linear", quat_act: str = "linear", fl_act: str = "linear") -> torch.Tensor:
    """Activate a 9-d pose encoding [..., 9] part by part: translation 3, quaternion 4, field of view 2."""
    return torch.cat(
        [_activate(pose_enc[..., :3], trans_act), _activate(pose_enc[..., 3:7], quat_act), _activate(pose_enc[..., 7:], fl_act)],
        dim=-1,
    )


def activate_head(out: torch.Tensor, activation: str, conf_activation: str):
    """Split a dense head output [N, C, H, W] into values [N, H, W, C-1] and confidence [N, H, W]."""
    fmap = out.permute(0, 2, 3, 1)
    values = _activate(fmap[..., :-1], activation)
    conf = fmap[..., -1]
    if conf_activation == "expp1":
        conf = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf = conf.exp()
    elif conf_activation == "sigmoid":
        conf = torch.sigmoid(conf)
    else:
        raise ValueError(f"unknown confidence activation {conf_activation!r}")
    return values, conf
