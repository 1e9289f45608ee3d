"""2D rotary position embedding (RoPE) of the aggregator: rows rotate the first half of each head, columns the second.

Positions are (row, col) per token; the official model gives special tokens position 0 and patches their grid
position + 1. The cos/sin tables are built once per forward and shared by every block.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vggt_train import kernels


class RotaryTables(NamedTuple):
    """cos/sin for rows and columns, each [1, 1, N, head_dim / 2], broadcast over batch and heads."""

    cos_rows: torch.Tensor
    sin_rows: torch.Tensor
    cos_cols: torch.Tensor
    sin_cols: torch.Tensor


def patch_positions(grid_h: int, grid_w: int, num_special: int, device=None) -> torch.Tensor:
    """(row, col) of each token of one frame: [num_special + grid_h * grid_w, 2] long.

    Special tokens (camera, registers) sit at (0, 0); patch (i, j) at (i + 1, j + 1) in row-major order.
    """
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    grid = torch.stack([rows, cols], dim=-1) + 1
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid], dim=0)


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype) -> RotaryTables:
    """Tables for `positions` [N, 2] (row, col) and a head of `head_dim` channels.

    Each half of the head (head_dim / 2 channels) uses head_dim / 4 frequencies base^(-2i / (head_dim / 2)),
    duplicated, matching the half-split rotation of `kernels.rotary_mul`.
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=positions.device).float() / half))
    tables = []
    for axis in (0, 1):
        angles = positions[:, axis].float()[:, None] * inv_freq[None, :]  # [N, half / 2]
        # the official model rounds the angles to the activation dtype before taking cos/sin
        angles = angles.to(dtype)
        angles = torch.cat([angles, angles], dim=-1)[None, None]  # [1, 1, N, half]
        tables += [angles.cos().to(dtype), angles.sin().to(dtype)]
    return RotaryTables(*tables)


def apply_rotary_2d(x: torch.Tensor, tables: RotaryTables) -> torch.Tensor:
    """Rotate queries or keys x [B, heads, N, head_dim] by their 2D positions."""
    rows, cols = x.chunk(2, dim=-1)
    rows = kernels.rotary_mul(rows, tables.cos_rows, tables.sin_rows)
    cols = kernels.rotary_mul(cols, tables.cos_cols, tables.sin_cols)
    return torch.cat([rows, cols], dim=-1)
