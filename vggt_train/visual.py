"""Pictures and point files shared by predict, inspect-batch and the training logs: coloured depth, binary PLY."""

from __future__ import annotations

from typing import Optional

import numpy as np


def turbo(values: np.ndarray, lo: float, hi: float, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """[H, W] -> [H, W, 3] uint8 through matplotlib's turbo over [lo, hi] (non-finite: the low end); pixels
    outside `mask` black."""
    from matplotlib import colormaps  # matplotlib is heavy: only the commands that draw load it

    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    rgb = (colormaps["turbo"](np.nan_to_num(t))[..., :3] * 255).round().astype(np.uint8)
    if mask is not None:
        rgb[~mask] = 0
    return rgb


def colorize_depth(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[H, W] depth -> [H, W, 3] uint8: turbo over the valid pixels' 2nd-98th percentile (near = blue), invalid black."""
    if not valid.any():
        return np.zeros(depth.shape + (3,), np.uint8)
    lo, hi = np.percentile(depth[valid], [2, 98])
    return turbo(depth, float(lo), float(hi), valid)


def write_ply(points: np.ndarray, colors: np.ndarray, path: str, comment: str = "written by vggt-train") -> None:
    """Binary little-endian PLY: vertices x y z (float32) red green blue (uchar) of points [N, 3], colors [N, 3]."""
    vertex = np.empty(len(points), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, axis in enumerate("xyz"):
        vertex[axis] = points[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = colors[:, i]
    header = (f"ply\nformat binary_little_endian 1.0\ncomment {comment}\n"
              f"element vertex {len(vertex)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())
