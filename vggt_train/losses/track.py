"""The track loss (ours: the official one was never released in clean form): point error per refinement
iteration, discounted by gamma, plus visibility cross-entropy."""

from __future__ import annotations

from typing import Dict

import torch

from vggt_train.losses.common import _as_bool, _fix_non_finite, _zero_like_graph


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
