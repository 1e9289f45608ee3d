"""PIL's 8-bit LANCZOS / BICUBIC resize, reproduced bit for bit as banded integer sums that run on any torch device.

Why: at 518 px the LANCZOS resample is the largest per-view cost of the recipe in a DataLoader worker (~6-9 ms of
~600x600 source pixels). Splitting it in two moves it off the worker: the worker computes PIL's coefficients
(float64, a few hundred numbers per axis) and ships the source rows and columns they touch; `resample_views`
runs the two passes on the training device, where they cost next to nothing. The result is PIL's to the bit.

PIL (src/libImaging/Resample.c) resizes in two separable passes, horizontal then vertical, over the rows the
vertical pass needs. Per pass and output pixel it takes the float64 filter weights over the support, normalises
them to sum 1, turns them into 22-bit fixed point (`normalize_coeffs_8bpc`) and computes
`clip8(2^21 + sum(pixel * weight) >> 22)` in 32-bit integers; the first pass rounds to uint8 before the second.
`axis_coefficients` repeats the float64 part in the same operation order, and `resample_views` the integer part
(int32 on the device: no float rounding anywhere).

Pass order: PIL used to run the horizontal pass first. Newer Pillow (13) runs the vertical pass first when the
height shrinks, and by more than twice as many pixels as the width: (H - out_h) > max(0, 2 (W - out_w)), on the
whole source image whatever the box (measured: the rule reproduces Pillow 13 on every tested size and box). Since the intermediate is rounded, the order changes the result, so
`vertical_first` asks the installed Pillow once, with a probe image, which rule it follows.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

PRECISION_BITS = 22  # PIL's 32 - 8 - 2: 8 bits of result, 2 of headroom for the negative lobes

# PIL's filters: (support, function of a float64 array)


def _sinc(x: np.ndarray) -> np.ndarray:
    xp = x * math.pi
    return np.divide(np.sin(xp), xp, out=np.ones_like(xp), where=x != 0.0)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


FILTERS = {"lanczos": (3.0, _lanczos), "bicubic": (2.0, _bicubic)}


def axis_coefficients(in_size: int, in0: float, in1: float, out_size: int, filter_name: str):
    """PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis: (first [out] int64, count [out] int64,
    weights [out, K] int32).

    Output pixel i is sum_t weights[i, t] * source[first[i] + t] over t < count[i] (the weights beyond are 0).
    in0/in1 are the box edges along this axis in source pixels; PIL holds them as C floats, so they are rounded
    to float32 here too.
    """
    support0, fn = FILTERS[filter_name]
    in0_f, in1_f = np.float32(in0), np.float32(in1)
    scale = float(in1_f - in0_f) / out_size  # C: (double)(in1 - in0) with float operands
    filterscale = max(scale, 1.0)
    support = support0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    centre = float(in0_f) + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(centre - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    inside = taps[None, :] < xmax[:, None]
    w = fn(((taps[None, :] + xmin[:, None]) - centre[:, None] + 0.5) * (1.0 / filterscale))
    w[~inside] = 0.0
    # a running sum, left to right as PIL adds (np.sum's pairwise order could differ in the last bit)
    total = np.add.accumulate(w, axis=1)[:, -1:]
    np.divide(w, total, out=w, where=total != 0.0)
    w *= float(1 << PRECISION_BITS)
    w += np.where(w < 0, -0.5, 0.5)
    return xmin, xmax, np.trunc(w, out=w).astype(np.int32)


_VERTICAL_FIRST_RULE = None


def _pillow_has_vertical_first_rule() -> bool:
    """Whether the installed Pillow runs the vertical pass first when (H - out_h) > 2 (W - out_w) (probed once)."""
    global _VERTICAL_FIRST_RULE
    if _VERTICAL_FIRST_RULE is None:
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8))
        lanczos = getattr(Image, "Resampling", Image).LANCZOS
        both = np.asarray(img.resize((80, 10), lanczos))  # 110 > 2 x 40: vertical first under the newer rule
        vertical = np.asarray(img.resize((120, 10), lanczos).resize((80, 10), lanczos))
        horizontal = np.asarray(img.resize((80, 120), lanczos).resize((80, 10), lanczos))
        if np.array_equal(both, vertical) == np.array_equal(both, horizontal):
            raise RuntimeError("cannot tell which pass the installed Pillow resizes first; resample in the workers instead")
        _VERTICAL_FIRST_RULE = bool(np.array_equal(both, vertical))
    return _VERTICAL_FIRST_RULE


def vertical_first(size_wh, out_wh) -> bool:
    """Whether PIL (the installed version) resizes an image of size_wh to out_wh vertically first."""
    (W, H), (ow, oh) = size_wh, out_wh
    return (H - oh) > max(0, 2 * (W - ow)) and _pillow_has_vertical_first_rule()


def pil_box(box, size_wh) -> Tuple[float, float, float, float]:
    """The box PIL resizes from: (x0, y0, x1, y1) as given (PIL checks it lies inside the image)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = size_wh
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"box {box} is not inside the {w}x{h} image")
    return x0, y0, x1, y1


class ViewResample:
    """One view's resize, split into what the worker ships and what the device computes.

    window = (r0, r1, c0, c1): the source rows and columns the two passes read (PIL's ybox_first..ybox_last for
    the rows); first_x / first_y index into that window.
    """

    __slots__ = ("window", "first_x", "weights_x", "first_y", "weights_y", "vertical_first")

    def __init__(self, size_wh, box, out_wh, filter_name: str):
        W, H = size_wh
        x0, y0, x1, y1 = pil_box(box, size_wh)
        ow, oh = out_wh
        fx, nx, kx = axis_coefficients(W, x0, x1, ow, filter_name)
        fy, ny, ky = axis_coefficients(H, y0, y1, oh, filter_name)
        c0, c1 = int(fx.min()), int((fx + nx).max())
        r0, r1 = int(fy.min()), int((fy + ny).max())
        self.window = (r0, r1, c0, c1)
        self.first_x, self.weights_x = fx - c0, kx
        self.first_y, self.weights_y = fy - r0, ky
        self.vertical_first = vertical_first(size_wh, out_wh)


def _pass(src: torch.Tensor, first: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One PIL pass along dim 1: src [N, L, M, 3] uint8, first [N, O], weights [N, O, K] int32 -> [N, O, M, 3] uint8.

    Taps past the end of a (padded) window read clamped positions; their weights are 0.
    """
    N, L = src.shape[:2]
    acc = torch.full((N, first.shape[1]) + tuple(src.shape[2:]), 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=src.device)
    rows = torch.arange(N, device=src.device)[:, None]
    for t in range(weights.shape[2]):  # no skipping of all-zero taps: the test would sync with the device
        taken = src[rows, (first + t).clamp_(max=L - 1)]  # [N, O, M, 3]
        acc.add_(taken.to(torch.int32).mul_(weights[:, :, t, None, None]))
    return torch.bitwise_right_shift(acc, PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resample_views(src: torch.Tensor, first_x: torch.Tensor, weights_x: torch.Tensor, first_y: torch.Tensor,
                   weights_y: torch.Tensor, vertical_first: bool = False) -> torch.Tensor:
    """PIL's two passes for N views at once: src [N, h, w, 3] uint8 windows (padded to a common h, w; the padding
    is never weighted), first_x [N, Wo] / weights_x [N, Wo, Kx], first_y [N, Ho] / weights_y [N, Ho, Ky]
    -> [N, Ho, Wo, 3] uint8. All views of one call take their passes in the same order.

    Output columns / rows with all-zero weights come out 0 (the canvas padding of a partially valid view).
    """
    first_x, first_y = first_x.long(), first_y.long()
    if vertical_first:
        mid = _pass(src, first_y, weights_y)  # [N, Ho, w, 3], rounded to uint8 as PIL's intermediate image
        return _pass(mid.transpose(1, 2).contiguous(), first_x, weights_x).transpose(1, 2).contiguous()
    # [N, w, h, 3]: each horizontal tap then gathers whole source columns
    mid = _pass(src.transpose(1, 2).contiguous(), first_x, weights_x)  # [N, Wo, h, 3]
    return _pass(mid.transpose(1, 2).contiguous(), first_y, weights_y)


def pack(plans: List[Optional[ViewResample]], out_hw: Tuple[int, int]) -> torch.Tensor:
    """The views' coefficient tables as one int32 tensor [N, W + H, 1 + K] (one tensor: each one a DataLoader worker
    ships costs a shared-memory segment): rows [0, W) hold the horizontal pass, rows [W, W + H) the vertical one;
    column 0 is the first source index, columns 1.. the weights. Outputs beyond a view's own size, and every output
    of a view without a plan (nothing valid), get zero weights: they come out 0. `unpack` splits it again."""
    H, W = out_hw
    k = max([max(p.weights_x.shape[1], p.weights_y.shape[1]) for p in plans if p is not None] or [1])
    table = np.zeros((len(plans), W + H, 1 + k), np.int32)
    for i, p in enumerate(plans):
        if p is None:
            continue
        (ow, kx), (oh, ky) = p.weights_x.shape, p.weights_y.shape
        table[i, :ow, 0], table[i, :ow, 1:1 + kx] = p.first_x, p.weights_x
        table[i, W:W + oh, 0], table[i, W:W + oh, 1:1 + ky] = p.first_y, p.weights_y
    return torch.from_numpy(table)


def unpack(table: torch.Tensor, out_hw: Tuple[int, int], width: int):
    """(first_x [N, w], weights_x [N, w, K], first_y [N, h], weights_y [N, h, K]) for outputs of size out_hw = (h, w)
    from a `pack` table whose horizontal part has `width` rows."""
    h, w = out_hw
    return table[:, :w, 0], table[:, :w, 1:], table[:, width:width + h, 0], table[:, width:width + h, 1:]
