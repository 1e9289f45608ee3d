"""The tracker's sampling, embedding and correlation operations: bilinear sampling of feature maps at pixel
coordinates (align-corners), sin-cos embeddings, the feature pyramid and local correlation windows.

They compute the official track head's functions (see tracker.py for the quirks kept on purpose).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------------
# Sampling and embedding helpers
# ----------------------------------------------------------------------------------------------------------------


def _cpu_grid_sample_takes(dtype: torch.dtype) -> bool:
    # torch < 2.2 has no reduced-precision grid_sample on the CPU ("grid_sampler_2d_cpu" not implemented)
    try:
        F.grid_sample(torch.zeros(1, 1, 2, 2, dtype=dtype), torch.zeros(1, 1, 1, 2, dtype=dtype), align_corners=True)
        return True
    except RuntimeError:
        return False


_CPU_GRID_SAMPLE_DTYPES = {dtype: _cpu_grid_sample_takes(dtype) for dtype in (torch.bfloat16, torch.float16)}


def bilinear_sampler(
    input: torch.Tensor, coords: torch.Tensor, align_corners: bool = True, padding_mode: str = "border"
) -> torch.Tensor:
    """Bilinear sampling of `input` [B, C, H, W] at pixel coordinates `coords` [B, Ho, Wo, 2] (x, y) -> [B, C, Ho, Wo].

    Same as `F.grid_sample` but the coordinates are in pixels: with `align_corners=True` x runs over [0, W - 1]
    (pixel centres), with False over [0, W] (pixel edges).

    Quirk: the coordinates are detached, as in the reference. Gradients reach `input` but never the sampling
    positions; the tracker's coordinate updates are trained only through the predicted tracks themselves.
    """
    if input.dim() != 4:
        raise ValueError(f"bilinear_sampler expects a 4-D input [B, C, H, W], got {tuple(input.shape)}")
    coords = coords.detach().to(device=input.device, dtype=input.dtype)
    height, width = input.shape[-2:]
    # Pixel -> [-1, 1]. The scale is built in Python double and cast once, then applied as a multiply followed by a
    # subtraction, which is the reference's exact rounding sequence. max(.., 1) keeps a 1-pixel axis finite.
    if align_corners:
        scale = [2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)]
    else:
        scale = [2.0 / width, 2.0 / height]
    grid = coords * torch.tensor(scale, device=coords.device, dtype=coords.dtype) - 1
    if input.device.type == "cpu" and not _CPU_GRID_SAMPLE_DTYPES.get(input.dtype, True):
        # an older torch without this dtype's CPU kernel: sample in float32, round the result to the input's dtype
        out = F.grid_sample(input.float(), grid.float(), mode="bilinear", padding_mode=padding_mode,
                            align_corners=align_corners)
        return out.to(input.dtype)
    return F.grid_sample(input, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)


def sample_features4d(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Features of `input` [B, C, H, W] at the points `coords` [B, R, 2] (pixel x, y) -> [B, R, C].

    Bilinear, align-corners, border padding (a point outside the map takes the nearest edge value).
    """
    batch = input.shape[0]
    feats = bilinear_sampler(input, coords.unsqueeze(2))  # [B, C, R, 1]
    return feats.permute(0, 2, 1, 3).reshape(batch, -1, feats.shape[1] * feats.shape[3])


def _sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, embed_dim]: sin of all frequencies first, then cos (not interleaved).

    Computed in float64 like the reference (its frequency table is double and promotes the product), so the
    values agree to float32 rounding even for positions in the hundreds.
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # [D/2]
    out = pos.reshape(-1, 1).to(torch.float64) * omega.reshape(1, -1)  # [M, D/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of an H x W grid -> [1, embed_dim, H, W] float32 (CPU).

    Channel layout: the first half embeds the column x, the second half the row y (each half: sin then cos).
    Quirk: the reference names these halves "h" then "w" but, because of its `meshgrid(..., indexing="xy")`, the
    first half really is x; what matters for parity is the layout, which is what we build.
    """
    if isinstance(grid_size, (tuple, list)):
        height, width = grid_size
    else:
        height = width = grid_size
    if embed_dim % 2 != 0:
        raise ValueError(f"2-D sin-cos embedding needs an even dimension, got {embed_dim}")
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    emb = torch.cat([_sincos_1d(embed_dim // 2, xs), _sincos_1d(embed_dim // 2, ys)], dim=1)  # [H*W, D]
    return emb.float().reshape(1, height, width, embed_dim).permute(0, 3, 1, 2)


def get_2d_embedding(xy: torch.Tensor, C: int, cat_coords: bool = True) -> torch.Tensor:
    """Sin-cos embedding of 2-D vectors `xy` [B, N, 2] -> [B, N, 2C] (or [B, N, 2C + 2] with `cat_coords`).

    Layout: C channels for x then C for y, each interleaving sin (even channels) and cos (odd channels).
    Quirk: the frequencies are linear, k * 1000 / C for k = 0, 2, 4, ..., not the geometric 1/10000^(k/C) of the
    usual transformer embedding. Computed in at least float32 (the reference always returns float32).
    """
    if xy.shape[-1] != 2:
        raise ValueError(f"get_2d_embedding expects [..., 2] inputs, got {tuple(xy.shape)}")
    dtype = torch.promote_types(xy.dtype, torch.float32)
    freqs = torch.arange(0, C, 2, device=xy.device, dtype=torch.float32) * (1000.0 / C)  # [C/2]
    freqs = freqs.to(dtype)

    def embed(v: torch.Tensor) -> torch.Tensor:  # [B, N, 1] -> [B, N, C], sin/cos interleaved
        angles = v.to(dtype) * freqs
        return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)

    pe = torch.cat([embed(xy[..., 0:1]), embed(xy[..., 1:2])], dim=-1)
    if cat_coords:
        pe = torch.cat([xy.to(dtype), pe], dim=-1)
    return pe


# ----------------------------------------------------------------------------------------------------------------
# Correlation pyramid
# ----------------------------------------------------------------------------------------------------------------


def build_feature_pyramid(fmaps: torch.Tensor, num_levels: int) -> List[torch.Tensor]:
    """[B, S, C, H, W] -> `num_levels` maps, level i of size floor(H / 2^i) x floor(W / 2^i) (2x2 average pooling)."""
    batch, frames = fmaps.shape[:2]
    levels = [fmaps]
    current = fmaps
    for _ in range(num_levels - 1):
        pooled = F.avg_pool2d(current.reshape(batch * frames, *current.shape[2:]), kernel_size=2, stride=2)
        current = pooled.reshape(batch, frames, *pooled.shape[1:])
        levels.append(current)
    return levels


def compute_corr_level(targets: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """Dot products of every track feature with every pixel of its frame, over sqrt(C).

    targets [B, S, N, C], fmap [B, S, C, H, W] -> [B, S, N, H, W].
    """
    batch, frames, channels, height, width = fmap.shape
    corr = torch.matmul(targets, fmap.reshape(batch, frames, channels, height * width))  # [B, S, N, H*W]
    return (corr / math.sqrt(channels)).reshape(batch, frames, targets.shape[2], height, width)


def correlation_window_offsets(radius: int, device=None, dtype=None) -> torch.Tensor:
    """Pixel offsets (dx, dy) of the (2r+1) x (2r+1) correlation window -> [2r+1, 2r+1, 2].

    Quirk (order matters: it is the channel order `corr_mlp` was trained on): entry [a, b] is
    (dx, dy) = (a - r, b - r), i.e. the x offset varies along the FIRST window axis and the y offset along the
    second, so the flattened window runs x-major (x offset outer, y offset inner) - the transpose of a raster scan
    of the image patch. This is the reference's `stack(meshgrid(dy, dx, indexing="ij"))` added to (x, y) points.
    """
    steps = torch.linspace(-radius, radius, 2 * radius + 1, device=device, dtype=dtype)
    side = steps.numel()
    dx = steps.reshape(side, 1).expand(side, side)
    dy = steps.reshape(1, side).expand(side, side)
    return torch.stack([dx, dy], dim=-1)


def sample_correlation(
    pyramid: Sequence[torch.Tensor], targets: torch.Tensor, coords: torch.Tensor, radius: int, padding_mode: str = "zeros"
) -> torch.Tensor:
    """Local correlation windows around each track position, at every pyramid level.

    pyramid: maps [B, S, C, H_i, W_i]; targets [B, S, N, C] (track features); coords [B, S, N, 2] pixel (x, y) at
    level-0 resolution -> [B, S, N, levels * (2r+1)^2], level-major, each level's window ordered as in
    `correlation_window_offsets`.

    The full correlation volume of one level is built, sampled and dropped before the next level (memory).
    Windows are sampled with zero padding (correlation 0 outside the map), unlike feature sampling (border).
    """
    batch, frames, num_tracks, _ = targets.shape
    side = 2 * radius + 1
    offsets = correlation_window_offsets(radius, device=coords.device, dtype=coords.dtype).reshape(1, side, side, 2)
    out = []
    for level, fmap in enumerate(pyramid):
        height, width = fmap.shape[-2:]
        corr = compute_corr_level(targets, fmap).reshape(batch * frames * num_tracks, 1, height, width)
        centres = coords.reshape(batch * frames * num_tracks, 1, 1, 2) / (2**level)
        window = bilinear_sampler(corr, centres + offsets, padding_mode=padding_mode)  # [BSN, 1, 2r+1, 2r+1]
        out.append(window.reshape(batch, frames, num_tracks, side * side))
    return torch.cat(out, dim=-1)
