"""Patchifiers: a single strided convolution, or a DINOv2-style ViT with register tokens."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vggt_train.model.config import PatchEmbedViTConfig
from vggt_train.model.layers import Block


class ConvPatchEmbed(nn.Module):
    """Non-overlapping patch projection. [N, 3, H, W] -> [N, (H/p)(W/p), C]."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViTPatchEmbed(nn.Module):
    """DINOv2 ViT with registers used as the aggregator's patchifier. [N, 3, H, W] -> [N, (H/p)(W/p), C].

    Returns the final-normed patch tokens only (class and register tokens are dropped, as in VGGT).
    The learned position embedding covers a square grid of img_size/patch_size; other input sizes get it
    bicubically interpolated (antialiased by default).
    """

    def __init__(self, img_size: int, patch_size: int, num_register_tokens: int, cfg: PatchEmbedViTConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = cfg.interpolate_antialias
        self.interpolate_offset = cfg.interpolate_offset
        grid = img_size // patch_size
        self.patch_embed = ConvPatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim)) if num_register_tokens else None
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, init_values=cfg.init_values, norm_eps=1e-6)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        # kept only so the released checkpoint loads strictly; masking is a DINOv2 pre-training feature
        self.mask_token = nn.Parameter(torch.zeros(1, dim), requires_grad=False)
        # set by the aggregator (its gradient_checkpointing): recompute each block in backward when training
        self.gradient_checkpointing = False
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)

    def position_embedding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        """Class + patch position embedding for a grid_h x grid_w grid: [1, 1 + grid_h * grid_w, C]."""
        n_stored = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(n_stored))
        if grid_h == grid_w == side:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            # DINOv2's historical offset trick: a scale factor slightly off the exact ratio
            scale = ((grid_h + self.interpolate_offset) / side, (grid_w + self.interpolate_offset) / side)
            patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias)
        else:
            patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=self.interpolate_antialias)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([cls_pos, patch_pos], dim=1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(n, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.position_embedding(h // self.patch_size, w // self.patch_size, x.dtype)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        recompute = self.training and self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        x = self.norm(x)
        return x[:, 1 + self.num_register_tokens:]
