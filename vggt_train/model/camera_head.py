"""Camera head: iterative adaLN refinement of a 9-d pose encoding from each frame's camera token."""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from vggt_train.model.config import CameraHeadConfig
from vggt_train.model.head_act import activate_pose
from vggt_train.model.layers import Block, Mlp

POSE_DIM = 9  # absT_quaR_FoV: translation 3, quaternion (xyzw) 4, field of view (h, w) 2


class CameraHead(nn.Module):
    """aggregated tokens (last of the list, [B, S, P, dim_in]) -> list of num_iterations pose encodings [B, S, 9]."""

    def __init__(self, dim_in: int, cfg: CameraHeadConfig):
        super().__init__()
        self.num_iterations = cfg.num_iterations
        self.trunk = nn.Sequential(
            *[Block(dim_in, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, init_values=cfg.init_values) for _ in range(cfg.trunk_depth)]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        # the first iteration starts from a learned "no pose yet" encoding
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_DIM)
        self.fl_act = "relu"  # fields of view are positive

    def forward(self, aggregated_tokens: List[torch.Tensor], num_iterations: int | None = None) -> List[torch.Tensor]:
        camera_tokens = self.token_norm(aggregated_tokens[-1][:, :, 0])  # [B, S, dim_in]
        B, S, _ = camera_tokens.shape
        iterations = num_iterations or self.num_iterations
        pose = None
        poses: List[torch.Tensor] = []
        for _ in range(iterations):
            # each refinement starts from the previous estimate without backpropagating into it (as the
            # official head does): every iteration is trained as a residual step of its own
            if pose is not None:
                pose = pose.detach()
            conditioning = self.empty_pose_tokens.expand(B, S, -1) if pose is None else pose
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(conditioning)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(camera_tokens) * (1 + scale) + shift) + camera_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            pose = delta if pose is None else pose + delta
            poses.append(activate_pose(pose, fl_act=self.fl_act))
        return poses
