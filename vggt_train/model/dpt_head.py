"""DPT head: fuses four aggregator layers into a dense per-pixel map (depth, points, or track features)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vggt_train.model.head_act import activate_head

# F.interpolate indexes with 32-bit ints on some backends; split the batch above this many output elements.
_MAX_INTERPOLATE_ELEMENTS = 1_500_000_000


def interpolate(x: torch.Tensor, size=None, scale_factor=None, mode: str = "bilinear", align_corners: bool = True) -> torch.Tensor:
    """F.interpolate that splits very large batches. [N, C, H, W] -> [N, C, H', W']."""
    if size is None:
        size = (int(x.shape[-2] * scale_factor), int(x.shape[-1] * scale_factor))
    elements = size[0] * size[1] * x.shape[0] * x.shape[1]
    if elements <= _MAX_INTERPOLATE_ELEMENTS:
        return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)
    chunks = x.chunk(elements // _MAX_INTERPOLATE_ELEMENTS + 1, dim=0)
    return torch.cat([F.interpolate(c, size=size, mode=mode, align_corners=align_corners) for c in chunks], dim=0)


def uv_grid(width: int, height: int, aspect_ratio: float, dtype=None, device=None) -> torch.Tensor:
    """Normalised pixel-centre coordinates [H, W, 2] spanning a unit diagonal with the image's aspect ratio."""
    diag = (aspect_ratio ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, steps=width, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, steps=height, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def sincos_embed_1d(dim: int, pos: torch.Tensor, omega_0: float = 100) -> torch.Tensor:
    """[M] positions -> [M, dim] (sin | cos), frequencies omega_0^(-2i/dim), computed in float64."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0 ** omega
    angles = pos.reshape(-1).double()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def grid_position_embedding(grid: torch.Tensor, dim: int) -> torch.Tensor:
    """[H, W, 2] coordinates -> [H, W, dim]: half the channels encode x, half y."""
    H, W, _ = grid.shape
    flat = grid.reshape(-1, 2)
    emb = torch.cat([sincos_embed_1d(dim // 2, flat[:, 0]), sincos_embed_1d(dim // 2, flat[:, 1])], dim=-1)
    return emb.view(H, W, dim)


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, added to the rectified input.

    The official block applies an in-place ReLU to its input before branching, so the skip path carries
    relu(x), not x; we reproduce that without mutating the caller's tensor.
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """Merge a coarser path with a skip feature, refine, upsample to `size` (or x2), project 1x1."""

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None, size=None) -> torch.Tensor:
        if self.has_residual and skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Dense Prediction Transformer head.

    (aggregated tokens list of [B, S, P, dim_in], images [B, S, 3, H, W], patch_start_idx) ->
    (values [B, S, H, W, output_dim - 1], confidence [B, S, H, W]), or with feature_only the fused feature map
    [B, S, features, H / down_ratio, W / down_ratio].
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
        frames_chunk_size: int = 8,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.intermediate_layer_idx = list(intermediate_layer_idx)
        # frames are decoded a chunk at a time: the full-resolution maps dominate memory otherwise
        self.frames_chunk_size = frames_chunk_size
        # in training, decode checkpoint_chunk_frames frames (of all samples) at a time and recompute each chunk in
        # backward: only one chunk's full-resolution maps are alive instead of the whole batch's
        self.checkpointing = False
        self.checkpoint_chunk_frames = 4
        oc = list(out_channels)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, kernel_size=1) for c in oc)
        # bring the four token maps (all at 1/p) to 4x, 2x, 1x and 0.5x of the patch grid
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
        scratch.refinenet1 = FeatureFusionBlock(features)
        scratch.refinenet2 = FeatureFusionBlock(features)
        scratch.refinenet3 = FeatureFusionBlock(features)
        scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        if feature_only:
            scratch.output_conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        else:
            scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
            scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, output_dim, kernel_size=1),
            )
        self.scratch = scratch

    def forward(self, aggregated_tokens: List[torch.Tensor], images: torch.Tensor, patch_start_idx: int):
        B, S = images.shape[:2]
        # one chunk would hold the same maps in backward as no checkpoint does: recomputing it would gain nothing
        if self.training and self.checkpointing and torch.is_grad_enabled() and B * S > self.checkpoint_chunk_frames:
            return self._forward_checkpointed(aggregated_tokens, images, patch_start_idx)
        step = self.frames_chunk_size
        if not step or step >= S:
            return self._decode(aggregated_tokens, images, patch_start_idx, 0, S)
        parts = [self._decode(aggregated_tokens, images, patch_start_idx, s, min(s + step, S)) for s in range(0, S, step)]
        return self._join(parts)

    def _forward_checkpointed(self, aggregated_tokens: List[torch.Tensor], images: torch.Tensor, patch_start_idx: int):
        # every frame is decoded on its own, so the B samples' S frames are one sequence of B * S frames
        B, S = images.shape[:2]
        flat_tokens = [None if t is None else t.reshape(1, B * S, *t.shape[2:]) for t in aggregated_tokens]
        flat_images = images.reshape(1, B * S, *images.shape[2:])
        step = max(1, self.checkpoint_chunk_frames)
        parts = [
            checkpoint(self._decode, flat_tokens, flat_images, patch_start_idx, s, min(s + step, B * S), use_reentrant=False)
            for s in range(0, B * S, step)
        ]
        out = self._join(parts)
        if self.feature_only:
            return out.reshape(B, S, *out.shape[2:])
        return out[0].reshape(B, S, *out[0].shape[2:]), out[1].reshape(B, S, *out[1].shape[2:])

    def _join(self, parts):
        if len(parts) == 1:
            return parts[0]
        if self.feature_only:
            return torch.cat(parts, dim=1)
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _add_pos_embed(self, x: torch.Tensor, W: int, H: int, ratio: float = 0.1) -> torch.Tensor:
        grid = uv_grid(x.shape[-1], x.shape[-2], aspect_ratio=W / H, dtype=x.dtype, device=x.device)
        emb = grid_position_embedding(grid, x.shape[1]).to(x.dtype) * ratio
        return x + emb.permute(2, 0, 1)[None]

    def _decode(self, aggregated_tokens, images, patch_start_idx: int, s0: int, s1: int):
        B, _, _, H, W = images.shape
        S = s1 - s0
        gh, gw = H // self.patch_size, W // self.patch_size
        layers = []
        for i, layer_idx in enumerate(self.intermediate_layer_idx):
            x = aggregated_tokens[layer_idx][:, s0:s1, patch_start_idx:]
            x = self.norm(x.reshape(B * S, -1, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(B * S, -1, gh, gw)
            x = self.projects[i](x)
            if self.pos_embed:
                x = self._add_pos_embed(x, W, H)
            layers.append(self.resize_layers[i](x))
        out = self._fuse(layers)
        out = interpolate(out, size=(int(gh * self.patch_size / self.down_ratio), int(gw * self.patch_size / self.down_ratio)))
        if self.pos_embed:
            out = self._add_pos_embed(out, W, H)
        if self.feature_only:
            return out.view(B, S, *out.shape[1:])
        values, conf = activate_head(self.scratch.output_conv2(out), self.activation, self.conf_activation)
        return values.view(B, S, *values.shape[1:]), conf.view(B, S, *conf.shape[1:])

    def _fuse(self, layers: List[torch.Tensor]) -> torch.Tensor:
        sc = self.scratch
        l1, l2, l3, l4 = (getattr(sc, f"layer{i}_rn")(x) for i, x in enumerate(layers, start=1))
        out = sc.refinenet4(l4, size=l3.shape[2:])
        out = sc.refinenet3(out, l3, size=l2.shape[2:])
        out = sc.refinenet2(out, l2, size=l1.shape[2:])
        out = sc.refinenet1(out, l1)
        return sc.output_conv1(out)
