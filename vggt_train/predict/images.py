"""The input images of `vggt-train predict`: which files, their decoding and preprocessing, and where each original
pixel lands on the model's input grid (and back).

Preprocessing is the evaluation protocol's (evaluation/protocol.py: the official load_and_preprocess_images, crop
mode), then pad_views centres smaller images on the largest grid. For an original image of W x H pixels:
  resize   to W' = target, H' = round(H * target / W / 14) * 14 (PIL bicubic); sx = W' / W, sy = H' / H;
  crop     rows [top, top + h) of the resized image, top = (H' - target) // 2 when H' > target, h = min(H', target);
  pad      the crop sits at (pad_left, pad_top) on the padded grid the model sees.
With pixel centres at integer coordinates (vggt_train.geometry's convention) a resize maps the continuous coordinate
u to (u + 0.5) * s - 0.5 (PIL samples output pixel i at input (i + 0.5) / s - 0.5), so a grid pixel (u_g, v_g) is
the original point
  u = (u_g - pad_left + 0.5) / sx - 0.5,   v = (v_g - pad_top + top + 0.5) / sy - 0.5,
and a grid intrinsic (fx_g, fy_g, cx_g, cy_g) becomes, in the original image's pixels,
  fx = fx_g / sx,  fy = fy_g / sy,  cx = (cx_g - pad_left + 0.5) / sx - 0.5,  cy = (cy_g - pad_top + top + 0.5) / sy - 0.5.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vggt_train.evaluation.protocol import (_nearest_index, decode_rgb, pad_views, preprocess_image,
                                            resize_geometry)

__all__ = ["IMAGE_EXTENSIONS", "GridPlacement", "InputImage", "list_inputs", "read_inputs", "stack_inputs"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class GridPlacement:
    """Where an original width x height image sits on the model grid (see the module docstring)."""

    width: int
    height: int
    resized_h: int
    resized_w: int
    crop_top: int
    crop_h: int
    pad_top: int = 0
    pad_left: int = 0

    @property
    def sx(self) -> float:
        return self.resized_w / self.width

    @property
    def sy(self) -> float:
        return self.resized_h / self.height

    @property
    def box(self) -> Tuple[int, int, int, int]:
        """(left, top, right, bottom) of the image's pixels on the padded grid (right/bottom exclusive)."""
        return self.pad_left, self.pad_top, self.pad_left + self.resized_w, self.pad_top + self.crop_h

    def grid_to_original(self, u: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Grid pixel coordinates -> original image coordinates (integer pixel centres), float64."""
        u = (np.asarray(u, np.float64) - self.pad_left + 0.5) / self.sx - 0.5
        v = (np.asarray(v, np.float64) - self.pad_top + self.crop_top + 0.5) / self.sy - 0.5
        return u, v

    def intrinsic_to_original(self, intrinsic: np.ndarray) -> np.ndarray:
        """[3, 3] grid intrinsic -> [3, 3] float64 intrinsic in the original image's pixels."""
        k = np.asarray(intrinsic, np.float64)
        cx, cy = self.grid_to_original(k[0, 2], k[1, 2])
        return np.array([[k[0, 0] / self.sx, k[0, 1] / self.sx, cx], [0.0, k[1, 1] / self.sy, cy], [0.0, 0.0, 1.0]])

    def original_to_grid_index(self) -> Tuple[np.ndarray, np.ndarray]:
        """(rows [H], cols [W]) int64: the grid pixel nearest to each original pixel's centre (the protocol's
        nearest-neighbour rule), -1 for rows the crop cut off."""
        rows = _nearest_index(self.resized_h, self.height)
        inside = (rows >= self.crop_top) & (rows < self.crop_top + self.crop_h)
        rows = np.where(inside, rows - self.crop_top + self.pad_top, -1)
        return rows, _nearest_index(self.resized_w, self.width) + self.pad_left

    def to_original(self, grid_map: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """A per-pixel map [Hg, Wg] of the padded grid -> [H, W] of the original image (nearest; cropped-off rows
        `fill`)."""
        rows, cols = self.original_to_grid_index()
        out = grid_map[np.maximum(rows, 0)][:, cols]
        out[rows < 0] = fill
        return out


@dataclass
class InputImage:
    """One input: its output name (file name, unique), source path, preprocessed tensor [3, h, W'] and placement."""

    name: str
    path: str
    image: torch.Tensor
    placement: GridPlacement


def list_inputs(inputs: Sequence[str]) -> List[str]:
    """Image paths of `inputs`: a folder gives its files with an image extension (not recursive, sorted by name);
    a file is taken as given, in the order given. Raises ValueError: nothing found, a missing path, or two
    inputs sharing a file stem (their outputs depth/<stem>.npy would collide)."""
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(item, n)))
            if not found:
                raise ValueError(f"no images in {item} (looked for {' '.join(IMAGE_EXTENSIONS)})")
            paths += [os.path.join(item, n) for n in found]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise ValueError(f"input not found: {item}")
    stems = {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in stems:
            raise ValueError(f"two inputs share the name {stem!r} ({stems[stem]}, {p}); outputs are named by it: rename one")
        stems[stem] = p
    return paths


def read_one(path: str, target: int) -> InputImage:
    """Decode and preprocess one image. Raises ValueError naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            img = decode_rgb(f.read())
        array = np.asarray(img)
        resized_h, resized_w, top, crop_h = resize_geometry(img.height, img.width, target)
    except UnidentifiedImageError:  # its text names the in-memory buffer, not the file
        raise ValueError(f"{path}: cannot read the image (not an image format Pillow can decode)") from None
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from None
    placement = GridPlacement(img.width, img.height, resized_h, resized_w, top, crop_h)
    return InputImage(os.path.basename(path), path, preprocess_image(array, target), placement)


def read_inputs(paths: Sequence[str], target: int, on_skip: Optional[Callable[[str], None]] = None,
                progress: Callable = iter) -> List[InputImage]:
    """The readable images of `paths` in order. An unreadable one raises ValueError, or with `on_skip` is passed
    to it (its message) and left out. `progress` wraps the iteration (a tqdm)."""
    out = []
    for path in progress(paths):
        try:
            out.append(read_one(path, target))
        except ValueError as exc:
            if on_skip is None:
                raise
            on_skip(str(exc))
    return out


def stack_inputs(images: List[InputImage]) -> torch.Tensor:
    """[S, 3, H, W]: the images centred on the largest grid (the protocol's pad_views), placements updated."""
    stacked = pad_views([i.image for i in images])
    height, width = stacked.shape[-2:]
    for item in images:
        h, w = item.image.shape[-2:]
        p = item.placement
        # pad_views' offsets: the smaller image is centred, the odd pixel going to the bottom / right
        item.placement = GridPlacement(p.width, p.height, p.resized_h, p.resized_w, p.crop_top, p.crop_h,
                                       (height - h) // 2, (width - w) // 2)
    return stacked
