"""Track head: a DPT feature extractor at half resolution feeding the iterative point tracker."""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from vggt_train.model.config import TrackHeadConfig
from vggt_train.model.dpt_head import DPTHead


class TrackHead(nn.Module):
    """(aggregated tokens, images [B, S, 3, H, W], patch_start_idx, query_points [B, N, 2] pixels (x, y)) ->
    (tracks per iteration: list of [B, S, N, 2], visibility [B, S, N], confidence [B, S, N])."""

    def __init__(self, dim_in: int, patch_size: int, cfg: TrackHeadConfig):
        super().__init__()
        from vggt_train.model.tracker import Tracker  # imported here: the tracker is the heaviest module to load

        self.iters = cfg.iters
        self.feature_extractor = DPTHead(
            dim_in,
            patch_size=patch_size,
            features=cfg.features,
            out_channels=cfg.out_channels,
            intermediate_layer_idx=cfg.intermediate_layer_idx,
            feature_only=True,
            down_ratio=2,
            pos_embed=False,
        )
        self.tracker = Tracker(
            latent_dim=cfg.features,
            hidden_size=cfg.hidden_size,
            stride=cfg.stride,
            corr_levels=cfg.corr_levels,
            corr_radius=cfg.corr_radius,
            predict_conf=True,
        )

    def forward(self, aggregated_tokens: List[torch.Tensor], images: torch.Tensor, patch_start_idx: int, query_points: torch.Tensor, iters: int | None = None):
        fmaps = self.feature_extractor(aggregated_tokens, images, patch_start_idx)
        return self.tracker(query_points, fmaps, iters=iters or self.iters)
