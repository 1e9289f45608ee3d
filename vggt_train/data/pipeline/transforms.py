"""Per-view transforms of the official VGGT recipe: crop at the principal point, resize, strict crop, rot90, jitter.

Pixel convention: pixel (u, v) has its centre at integer coordinates, as in Co3D's intrinsics, the synthetic
renderer and `geometry.depth_to_cam_points`. In "edge" coordinates (pixel u spans [u, u + 1)) a resize by s maps
e -> s * e, so the intrinsic becomes c' = s (c + 0.5) - 0.5, f' = s f.

The official recipe is a chain: (1) crop a random fraction (0.8-1.2 per axis, capped at 1) of the image centred on
the principal point, (2) resize so the target plus a margin fits, (3) crop the target exactly around the principal
point (zero-padding what falls outside), (4) optionally rotate a portrait crop by 90 degrees into a landscape
target. `plan_view` composes (1)-(3) into one source box and scale, so the image is resampled once (PIL resize with
`box`, after a JPEG `draft` where the downscale allows it) and the depth is gathered once by nearest neighbour at
the same pixel centres. The crop sizes, the margin and the intrinsics follow the official steps exactly; unlike
the official code, the intrinsic uses each axis's actual resize factor (the official uses the larger of the two,
off by up to one pixel), and the rotation uses H - 1 - c (the official H - c is the half-pixel convention).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image

# the settings live apart (no heavy imports) because the trainer's typed config reads them too
from vggt_train.data.pipeline.augment_config import AugmentConfig, ColorJitterConfig  # noqa: F401
from vggt_train.data.pipeline.resample import ViewResample

try:
    _LANCZOS, _BICUBIC = Image.Resampling.LANCZOS, Image.Resampling.BICUBIC
except AttributeError:  # Pillow < 9.1
    _LANCZOS, _BICUBIC = Image.LANCZOS, Image.BICUBIC


SAFE_BOUND = 4  # pixels of margin the resize keeps around the target (official safe_bound)


def target_shape(img_size: int, aspect_ratio: float, patch_size: int = 14) -> Tuple[int, int]:
    """(H, W) of the network input: W = img_size, H = floor(img_size * aspect / patch) * patch (official)."""
    height = int(img_size * aspect_ratio) // patch_size * patch_size
    if height < patch_size:
        raise ValueError(f"aspect_ratio {aspect_ratio} gives a height below one patch ({patch_size}) at img_size {img_size}")
    return height, img_size


# ----------------------------------------------------------------------------------------------- random draws
@dataclass(frozen=True)
class ViewDraw:
    """The random numbers of one view's geometry (identity when augmentation is off)."""

    scale_hw: Tuple[float, float] = (1.0, 1.0)
    extra_margin: float = 0.0  # fraction of the target's long side added to the resize margin
    swap: bool = False  # rotate a portrait crop into the target (only if landscape_check and it is portrait)
    clockwise: bool = False

    @staticmethod
    def draw(rng: np.random.Generator, cfg: AugmentConfig) -> "ViewDraw":
        # Always draw the same count of numbers, so one view's options never shift another view's randomness.
        u = rng.random(5)
        lo, hi = cfg.scale_range or (1.0, 1.0)
        scale = (min(lo + (hi - lo) * u[0], 1.0), min(lo + (hi - lo) * u[1], 1.0))
        # inverse CDF of triangular(0, 0, 0.3): mode at 0
        margin = 0.3 * (1.0 - math.sqrt(1.0 - u[2])) if cfg.rescale_aug else 0.0
        return ViewDraw(scale, margin, bool(cfg.landscape_check and u[3] > 0.5), bool(u[4] > 0.5))


# ----------------------------------------------------------------------------------------------- geometry plan
@dataclass(frozen=True)
class ViewPlan:
    """Where each output pixel comes from: source edge coordinate of output pixel (i, j) is
    (y0 + (i + 0.5) / sy, x0 + (j + 0.5) / sx) for i < valid_hw[0], j < valid_hw[1]; the rest is zero padding.

    out_hw is the shape before the final rotation (rot90_k = -1 clockwise, 1 counter-clockwise, 0 none);
    intrinsic [3, 3] is the camera of the output before that rotation.
    """

    out_hw: Tuple[int, int]
    valid_hw: Tuple[int, int]
    origin: Tuple[float, float]  # (y0, x0) source edge coordinates of the output's top-left corner
    scale: Tuple[float, float]  # (sy, sx) output pixels per source pixel
    crop: Tuple[int, int, int, int]  # (top, left, height, width) of the source region that may be seen
    intrinsic: np.ndarray
    rot90_k: int = 0

    def source_box(self, downscale: float = 1.0) -> Tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the valid region in a source decoded at 1/downscale (PIL `box`)."""
        (y0, x0), (sy, sx), (vh, vw) = self.origin, self.scale, self.valid_hw
        return (x0 / downscale, y0 / downscale, (x0 + vw / sx) / downscale, (y0 + vh / sy) / downscale)


class BadView(ValueError):
    """The view cannot be produced (e.g. its principal point lies outside the image)."""


def _pp_crop(size: int, c: float, extent: float) -> Tuple[int, int]:
    """Official non-strict crop along one axis: (start, length), centred on c and inside [0, size)."""
    half = min(extent / 2, c, size - c)
    start = math.floor(c) - math.floor(half)
    return start, 2 * math.floor(half)


def plan_view(src_hw: Tuple[int, int], intrinsic: np.ndarray, target_hw: Tuple[int, int], draw: ViewDraw) -> ViewPlan:
    """Compose crop at the principal point -> resize -> strict crop for a source of src_hw = (H, W)."""
    H, W = int(src_hw[0]), int(src_hw[1])
    K = np.array(intrinsic, dtype=np.float64, copy=True)
    cx, cy = float(K[0, 2]), float(K[1, 2])
    aug_h = int(H * draw.scale_hw[0])
    aug_w = int(W * draw.scale_hw[1])
    top, h1 = _pp_crop(H, cy, aug_h)
    left, w1 = _pp_crop(W, cx, aug_w)
    if h1 < 1 or w1 < 1:
        raise BadView(f"principal point ({cx:.1f}, {cy:.1f}) is outside or on the border of the {W}x{H} image")
    K[0, 2] -= left
    K[1, 2] -= top

    th, tw = int(target_hw[0]), int(target_hw[1])
    rot90_k = 0
    if draw.swap and h1 > 1.25 * w1 and th != tw:
        th, tw = tw, th
        rot90_k = -1 if draw.clockwise else 1

    margin = SAFE_BOUND + draw.extra_margin * max(th, tw)
    scale = max((th + margin) / h1, (tw + margin) / w1)
    h2, w2 = math.floor(h1 * scale), math.floor(w1 * scale)
    sy, sx = h2 / h1, w2 / w1
    K[0, :2] *= sx
    K[1, :2] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5

    # strict crop: exactly the target, starting at the principal point minus half the target (official)
    top2 = math.floor(K[1, 2]) - math.floor(min(th / 2, K[1, 2]))
    left2 = math.floor(K[0, 2]) - math.floor(min(tw / 2, K[0, 2]))
    K[0, 2] -= left2
    K[1, 2] -= top2
    valid = (max(0, min(th, h2 - top2)), max(0, min(tw, w2 - left2)))
    origin = (top + top2 / sy, left + left2 / sx)
    return ViewPlan((th, tw), valid, origin, (sy, sx), (top, left, h1, w1), K, rot90_k)


# ----------------------------------------------------------------------------------------------- resampling
def open_image(data) -> Image.Image:
    """A lazily decoded PIL image from encoded bytes (bytes / memoryview / pa.Buffer) or an [H, W, 3] uint8 array."""
    if isinstance(data, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(data, dtype=np.uint8))
    return Image.open(io.BytesIO(data))


def image_size_hw(img: Image.Image) -> Tuple[int, int]:
    return img.size[1], img.size[0]


def _drafted(img: Image.Image, plan: ViewPlan, use_draft: bool):
    """(RGB image, box in its pixels, PIL filter) of the view's resize, after a JPEG draft where it is allowed.

    With use_draft, a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain when the output needs at most
    that resolution (each axis); the box is mapped into the draft's pixels, so the geometry is unchanged.
    """
    downscale = 1.0
    if use_draft and img.format == "JPEG":
        W, H = img.size
        sy, sx = plan.scale
        requested = (max(1, math.ceil(W * sx)), max(1, math.ceil(H * sy)))
        res = img.draft("RGB", requested)
        if res is not None:
            downscale = W / res[1][2]
    if img.mode != "RGB":
        img = img.convert("RGB")
    x0, y0, x1, y1 = plan.source_box(downscale)
    Wd, Hd = img.size
    box = (max(0.0, x0), max(0.0, y0), min(float(Wd), x1), min(float(Hd), y1))
    vh, vw = plan.valid_hw
    upsampling = vw > (box[2] - box[0]) or vh > (box[3] - box[1])
    return img, box, _BICUBIC if upsampling else _LANCZOS


def resize_valid(img: Image.Image, plan: ViewPlan, use_draft: bool = True) -> Optional[Image.Image]:
    """The valid part [valid_hw] of the view's RGB image (before rotation), or None when nothing is valid."""
    vh, vw = plan.valid_hw
    if vh <= 0 or vw <= 0:
        img.load()  # still decode: an undecodable image must fail here, not pass as an empty view
        return None
    img, box, resample = _drafted(img, plan, use_draft)
    return img.resize((vw, vh), resample, box=box)


def resample_image(img: Image.Image, plan: ViewPlan, use_draft: bool = True) -> Image.Image:
    """The view's RGB image [out_hw] (before rotation), zero outside the valid region (see `_drafted`)."""
    (th, tw) = plan.out_hw
    out = resize_valid(img, plan, use_draft)
    if out is None:
        return Image.new("RGB", (tw, th))
    if out.size == (tw, th):
        return out
    canvas = Image.new("RGB", (tw, th))
    canvas.paste(out, (0, 0))
    return canvas


def resize_for_device(img: Image.Image, plan: ViewPlan, use_draft: bool = True):
    """What the device needs to resize the view as `resize_valid` does, bit for bit (see vggt_train.data.pipeline.resample):
    (source window [h, w, 3] uint8, ViewResample), or None when nothing is valid."""

    vh, vw = plan.valid_hw
    if vh <= 0 or vw <= 0:
        img.load()
        return None
    img, box, resample = _drafted(img, plan, use_draft)
    coeffs = ViewResample(img.size, box, (vw, vh), "bicubic" if resample == _BICUBIC else "lanczos")
    return window_pixels(img, coeffs.window), coeffs


def window_pixels(img: Image.Image, window: Tuple[int, int, int, int]) -> np.ndarray:
    """The pixels [r1 - r0, c1 - c0, 3] uint8 (read-only) of window = (r0, r1, c0, c1) of an RGB image.

    PIL's raw encoder packs that tile straight into one bytes object. np.asarray(img.crop(...)) copies three
    times (the crop, the encoder's 64 KB chunks, their join): ~3x the time, measured.
    """
    r0, r1, c0, c1 = window
    img.load()
    try:
        encoder = Image._getencoder(img.mode, "raw", img.mode)
        encoder.setimage(img.im, (c0, r0, c1, r1))
    except (AttributeError, TypeError):  # a Pillow without this (private) interface: the plain way
        return np.asarray(img.crop((c0, r0, c1, r1)))
    size = (r1 - r0) * (c1 - c0) * 3
    _, status, data = encoder.encode(size)  # room for every row: one call, status 1 (done)
    if status != 1 or len(data) != size:
        raise RuntimeError(f"PIL's raw encoder returned {len(data)} of {size} bytes (status {status})")
    return np.frombuffer(data, np.uint8).reshape(r1 - r0, c1 - c0, 3)


def depth_dtype(depth: np.ndarray) -> np.dtype:
    """The dtype `gather_depth` returns for this source: float16 stays float16 (no conversion in the worker),
    float32 stays float32, anything else becomes float32."""
    return depth.dtype if depth.dtype in (np.float16, np.float32) else np.dtype(np.float32)


def gather_depth(depth: np.ndarray, plan: ViewPlan, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Nearest-neighbour depth [out_hw] at the output pixel centres, in `depth_dtype(depth)`; 0 outside the valid
    region and where the stored value is not finite.

    out: an [out_hw] array of that dtype to write into (a slot of the batch, or a rotated view of one): the
    values go straight there, without an intermediate image to copy.
    """
    (th, tw), (vh, vw) = plan.out_hw, plan.valid_hw
    (y0, x0), (sy, sx) = plan.origin, plan.scale
    top, left, h1, w1 = plan.crop
    dtype = depth_dtype(depth)
    if out is None:
        out = np.empty((th, tw), dtype)
    elif out.shape != (th, tw) or out.dtype != dtype:
        raise ValueError(f"out is {out.dtype} {out.shape}, expected {dtype} {(th, tw)}")
    vh, vw = max(vh, 0), max(vw, 0)
    out[vh:] = 0
    out[:vh, vw:] = 0
    if vh == 0 or vw == 0:
        return out
    rows = np.clip(np.floor(y0 + (np.arange(vh) + 0.5) / sy).astype(np.int64), top, top + h1 - 1)
    cols = np.clip(np.floor(x0 + (np.arange(vw) + 0.5) / sx).astype(np.int64), left, left + w1 - 1)
    # rows first, then columns: two 1-D takes are ~2x faster than one 2-D fancy index
    valid = out[:vh, :vw]
    taken = np.take(depth, rows, axis=0)
    if taken.dtype == dtype:  # the indices are in range: mode="clip" only skips np.take's buffering of `out`
        np.take(taken, cols, axis=1, out=valid, mode="clip")
    else:
        valid[...] = np.take(taken, cols, axis=1)
    # NaN/inf would poison the points and the batch scale; they mean "no depth"
    if dtype == np.float16:
        bits = valid.view(np.uint16)
        # NaN/inf have every exponent bit set, so their bit patterns are >= 0x7C00 with either sign: the max is
        # a test without temporaries, and only a hit (or a negative value) pays for the exact mask
        bad = (bits & 0x7C00) == 0x7C00 if bits.max() >= 0x7C00 else None
    else:
        bad = ~np.isfinite(valid)
    if bad is not None and bad.any():
        valid[bad] = 0
    return out


def resample_depth(depth: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """`gather_depth` as float32 (each value is a source value); 0 outside the valid region."""
    out = gather_depth(depth, plan)
    if out.dtype == np.float32:
        return out
    return torch.from_numpy(out).float().numpy()  # torch converts float16 to float32 ~20x faster than numpy


# Camera rotations (new camera-from-old camera) for an image rotated by np.rot90(k): clockwise k=-1, ccw k=1.
_ROT_CAM = {-1: np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), 1: np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])}


def rotate_camera(extrinsic: np.ndarray, intrinsic: np.ndarray, hw: Tuple[int, int], k: int):
    """Extrinsic [3, 4] and intrinsic [3, 3] after `np.rot90(image, k)` (k = +-1) of an image of size hw.

    Clockwise (k=-1) maps pixel (u, v) to (H - 1 - v, u); counter-clockwise (k=1) to (v, W - 1 - u).
    """
    H, W = hw
    fx, fy, cx, cy = intrinsic[0, 0], intrinsic[1, 1], intrinsic[0, 2], intrinsic[1, 2]
    K = np.eye(3)
    K[0, 0], K[1, 1] = fy, fx
    if k == -1:
        K[0, 2], K[1, 2] = H - 1 - cy, cx
    else:
        K[0, 2], K[1, 2] = cy, W - 1 - cx
    E = _ROT_CAM[k] @ np.asarray(extrinsic, np.float64)
    return E, K


# ----------------------------------------------------------------------------------------------- colour
@dataclass(frozen=True)
class JitterDraw:
    """One draw of RandomApply(ColorJitter) + RandomGrayscale (factors, op order, whether each part applies)."""

    apply: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    order: Tuple[int, ...] = (0, 1, 2, 3)
    grayscale: bool = False

    @staticmethod
    def draw(rng: np.random.Generator, cj: Optional[ColorJitterConfig], grayscale_p: float) -> "JitterDraw":
        u = rng.random(6)
        order = tuple(int(i) for i in rng.permutation(4))
        if cj is None:
            return JitterDraw(grayscale=bool(u[5] < grayscale_p))
        return JitterDraw(
            apply=bool(u[0] < cj.p),
            brightness=1 + cj.brightness * (2 * u[1] - 1),
            contrast=1 + cj.contrast * (2 * u[2] - 1),
            saturation=1 + cj.saturation * (2 * u[3] - 1),
            hue=cj.hue * (2 * u[4] - 1),
            order=order,
            grayscale=bool(u[5] < grayscale_p),
        )

    def row(self) -> Tuple[float, ...]:
        """The draw as JITTER_FIELDS numbers (what the worker ships and `apply_jitter_` reads)."""
        return (float(self.apply), self.brightness, self.contrast, self.saturation, self.hue, *map(float, self.order),
                float(self.grayscale))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Apply in place to one RGB image [3, H, W] float in [0, 1] (torchvision's tensor ColorJitter semantics:
        scale / blend with the mean grey / blend with the grayscale / HSV hue rotation, clamped after each op).
        The reference for `apply_jitter_`, which does the same for runs of views at once."""
        if self.apply:
            for op in self.order:
                if op == 0 and self.brightness != 1:
                    img.mul_(self.brightness).clamp_(0, 1)
                elif op == 1 and self.contrast != 1:
                    mean = float(grayscale(img).mean())
                    img.mul_(self.contrast).add_((1 - self.contrast) * mean).clamp_(0, 1)
                elif op == 2 and self.saturation != 1:
                    gray = grayscale(img)
                    img.mul_(self.saturation).add_(gray.mul_(1 - self.saturation)).clamp_(0, 1)
                elif op == 3 and self.hue != 0:
                    rotate_hue_(img, self.hue)
        if self.grayscale:
            img.copy_(grayscale(img).expand_as(img))
        return img


JITTER_FIELDS = ("apply", "brightness", "contrast", "saturation", "hue", "op0", "op1", "op2", "op3", "grayscale")


def _runs(keys) -> list:
    """[(start, stop)] of the maximal runs of equal, non-None keys."""
    runs, start = [], None
    for i, k in enumerate(list(keys) + [None]):
        if start is not None and k != keys[start]:
            runs.append((start, i))
            start = None
        if start is None and k is not None:
            start = i
    return runs


def apply_jitter_(images: torch.Tensor, params) -> torch.Tensor:
    """JitterDraw.__call__ for N views at once, in place: images [N, 3, H, W] float in [0, 1] on any device,
    params [N, len(JITTER_FIELDS)] (host numbers, `JitterDraw.row`).

    Consecutive views with the same op order (a sample's shared jitter, above all) form one run and get each op
    in one batched call with per-view factors: the same arithmetic as the per-view reference, with fewer kernel
    launches on an accelerator and no copies on the CPU.
    """
    p = np.asarray(params, np.float64).reshape(len(images), len(JITTER_FIELDS))
    if not (p[:, 0] > 0).any() and not (p[:, 9] > 0).any():
        return images
    factors = torch.as_tensor(p[:, 1:5], dtype=images.dtype).to(images.device, non_blocking=True)
    keys = [tuple(int(o) for o in row[5:9]) + (row[4] != 0,) if row[0] > 0 else None for row in p]
    for start, stop in _runs(keys):
        sub, f = images[start:stop], factors[start:stop, :, None, None, None]  # f[:, k]: [n, 1, 1, 1]
        op_needed = (p[start:stop, 1:5] != np.array([1.0, 1.0, 1.0, 0.0])).any(axis=0)
        for op in keys[start][:4]:
            if not op_needed[op]:
                continue
            if op == 0:
                sub.mul_(f[:, 0]).clamp_(0, 1)
            elif op == 1:
                mean = grayscale(sub).mean(dim=(1, 2, 3), keepdim=True)
                sub.mul_(f[:, 1]).add_((1 - f[:, 1]) * mean).clamp_(0, 1)
            elif op == 2:
                gray = grayscale(sub).mul_(1 - f[:, 2])  # of the image before the scaling
                sub.mul_(f[:, 2]).add_(gray).clamp_(0, 1)
            else:
                rotate_hue_(sub, f[:, 3, 0])
    for start, stop in _runs([True if row[9] > 0 else None for row in p]):
        sub = images[start:stop]
        sub.copy_(grayscale(sub).expand_as(sub))
    return images


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma [..., 1, H, W] of RGB images [..., 3, H, W] (the weights torchvision uses)."""
    r, g, b = img.unbind(-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _eq_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out = (a == b) as 0/1. On the CPU straight into the float tensor (a bool intermediate and its conversion
    cost ~10x more there, measured)."""
    if out.device.type == "cpu":
        return torch.eq(a, b, out=out)
    return out.copy_(a == b)


def _mod6_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """x -= 6 floor(x / 6), in place (tmp: scratch of x's shape)."""
    torch.div(x, 6, out=tmp).floor_()
    return x.sub_(tmp, alpha=6)  # 6 * an integer-valued float is exact: same as x - 6 * floor(x / 6)


def rotate_hue_(img: torch.Tensor, hue) -> torch.Tensor:
    """Rotate the HSV hue of RGB images [..., 3, H, W] in [0, 1] by `hue` turns (a number, or a tensor that
    broadcasts to [..., H, W], e.g. [N, 1, 1] per view), in place.

    Equal to RGB -> HSV, h += hue (mod 1), HSV -> RGB, without the round trip: the hue rotation keeps each pixel's
    max M and min m, and channel c becomes m + (M - m) * f_c(h6) with the HSV trapezoids f_c of h6 = 6 h.
    Written with masks and arithmetic only (torch.where / remainder / argmax are several times slower on CPU),
    into a few reused buffers: on the CPU fresh temporaries cost more in page faults than in arithmetic.
    """
    r, g, b = img.unbind(-3)
    mx, mn = torch.amax(img, -3), torch.amin(img, -3)
    chroma = mx - mn
    # the sector of the max channel, ties resolved r, then g, then b (as torchvision's _rgb2hsv)
    is_r = _eq_into(torch.empty_like(mx), mx, r)
    is_g = _eq_into(torch.empty_like(mx), mx, g)
    is_g.addcmul_(is_g, is_r, value=-1)  # g is the max and r is not
    h6 = torch.sub(g, b).mul_(is_r)
    tmp = torch.sub(b, r).add_(chroma, alpha=2).mul_(is_g)
    h6 += tmp
    is_r.add_(is_g).neg_().add_(1)  # now: b is the max
    torch.sub(r, g, out=tmp).add_(chroma, alpha=4).mul_(is_r)
    h6 += tmp
    # grey pixels (chroma 0) have a zero numerator, so any finite divisor leaves them grey
    h6.div_(torch.clamp_min(chroma, 1e-12, out=tmp)).add_(6 * hue + 6)
    _mod6_(h6, tmp)
    dist = is_g
    for c, centre in enumerate((0.0, 2.0, 4.0)):
        # cyclic distance of h6 from the channel's centre; the trapezoid is 1 within 1 of it, 0 beyond 2
        _mod6_(torch.add(h6, 3 - centre, out=dist), tmp)
        dist.sub_(3).abs_().neg_().add_(2).clamp_(0, 1)
        torch.addcmul(mn, chroma, dist, out=img.select(-3, c))
    return img
