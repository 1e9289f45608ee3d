"""The official VGGT Co3D test protocol's inputs: which sequences and frames are evaluated, and how a stored frame
becomes a model input (image) and a ground-truth depth on the same pixel grid.

Frame selection (facebookresearch/vggt, evaluation/test_co3d.py):
- categories in the official script's order (OFFICIAL_CATEGORIES) for those among them, then any others sorted;
  within a category, sequences sorted by name;
- a sequence is skipped, before any draw, when it has fewer than `min_frames` frames or when one of its frames has
  an annotated PyTorch3D translation whose components sum above 1e5 (the official sanity check; the shards store
  the OpenCV t, and T_pytorch3d = (-t_x, -t_y, t_z));
- every other sequence draws its frames with `numpy.random.RandomState(seed).choice(num_frames, frames,
  replace=False)`, one RandomState created once and drawn from in the order above. This is the official draw:
  it calls np.random.seed(seed) once and then np.random.choice per sequence, which use the same legacy
  generator. The positions index the sequence's stored frames (annotation order) and are fed in draw order.
  They equal the official ids when the converter kept every annotated frame of the sequence.

Preprocessing (vggt/utils/load_fn.py, load_and_preprocess_images, mode "crop"): width becomes `target` (518),
height round(H * (target / W) / 14) * 14 with Python's round (half to even); PIL bicubic resize of the decoded
RGB image; values / 255; a height above `target` is centre-cropped to `target` rows starting at
(new_height - target) // 2. Frames of different sizes are padded (centred) to the largest with 1.0, as there.
The stored depth goes to the same grid by nearest neighbour (the source pixel whose centre is nearest to the
output pixel's centre, `floor((i + 0.5) * src / dst)`, so no depth is blended across an edge or with invalid
zeros), then the same crop; padding is 0 (invalid).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = [
    "OFFICIAL_CATEGORIES", "MAX_TRANSLATION_SUM", "SequencePlan", "Skipped", "category_order", "draw_frames",
    "plan_sequences", "resize_geometry", "preprocess_image", "preprocess_depth", "pad_views",
]

# The categories of the official script, in its order (its list leaves out keyboard).
OFFICIAL_CATEGORIES = (
    "apple", "bench", "bowl", "cellphone", "frisbee", "hotdog", "parkingmeter", "teddybear", "toybus", "backpack",
    "book", "car", "donut", "handbag", "hydrant", "motorcycle", "pizza", "stopsign", "toaster", "tv",
)
# A sequence with a frame whose PyTorch3D translation components sum above this is skipped (official check).
MAX_TRANSLATION_SUM = 1e5
PATCH_MULTIPLE = 14
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC  # Pillow < 9.1 has no Resampling enum


@dataclass(frozen=True)
class SequencePlan:
    """One evaluated sequence: its frame positions (0-based, in the order fed to the model)."""

    category: str
    sequence: str
    num_frames: int
    frames: Tuple[int, ...]


@dataclass(frozen=True)
class Skipped:
    """A sequence left out of the evaluation and why."""

    category: str
    sequence: str
    reason: str


@dataclass
class Plan:
    """What an evaluation runs: the sequences in draw order, and those skipped before drawing."""

    sequences: List[SequencePlan] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)


def category_order(categories: Iterable[str]) -> List[str]:
    """The official script's order for the categories it lists, then any others sorted by name."""
    names = set(categories)
    return [c for c in OFFICIAL_CATEGORIES if c in names] + sorted(names - set(OFFICIAL_CATEGORIES))


def draw_frames(rng: np.random.RandomState, num_frames: int, frames: int) -> Tuple[int, ...]:
    """`frames` distinct positions out of `num_frames`, the official np.random.choice draw (replace=False)."""
    return tuple(int(i) for i in rng.choice(num_frames, frames, replace=False))


def translation_too_large(extrinsics: np.ndarray) -> bool:
    """Whether a frame's PyTorch3D translation (-t_x, -t_y, t_z) of OpenCV extrinsics [N, 3, 4] sums above 1e5."""
    t = np.asarray(extrinsics, dtype=np.float64)[:, :, 3]
    return bool(np.any(-t[:, 0] - t[:, 1] + t[:, 2] > MAX_TRANSLATION_SUM))


def plan_sequences(
    sequences_by_category: dict,
    num_frames: Callable[[str], int],
    extrinsics: Callable[[str], np.ndarray],
    frames: int,
    min_frames: int,
    seed: int,
) -> Plan:
    """The evaluated sequences and their frames, drawn as the module doc says.

    sequences_by_category: {category: [sequence names]}; num_frames(seq) -> int; extrinsics(seq) -> [N, 3, 4]
    of all its stored frames (read only for sequences with enough frames).
    """
    if not 1 <= frames <= min_frames:
        raise ValueError(f"frames ({frames}) must be between 1 and min_frames ({min_frames})")
    rng = np.random.RandomState(seed)
    plan = Plan()
    for category in category_order(sequences_by_category):
        for sequence in sorted(sequences_by_category[category]):
            n = num_frames(sequence)
            if n < min_frames:
                plan.skipped.append(Skipped(category, sequence, f"{n} frames < min_frames {min_frames}"))
            elif translation_too_large(extrinsics(sequence)):
                plan.skipped.append(Skipped(category, sequence, f"a translation sums above {MAX_TRANSLATION_SUM:g}"))
            else:
                plan.sequences.append(SequencePlan(category, sequence, n, draw_frames(rng, n, frames)))
    return plan


def resize_geometry(height: int, width: int, target: int = 518) -> Tuple[int, int, int, int]:
    """(resized_height, resized_width, crop_top, output_height) of an image of height x width in crop mode."""
    new_width = target
    new_height = round(height * (new_width / width) / PATCH_MULTIPLE) * PATCH_MULTIPLE
    if new_height < PATCH_MULTIPLE:
        raise ValueError(f"a {width}x{height} image is too wide: its height would round to {new_height} px at width {target}")
    top = (new_height - target) // 2 if new_height > target else 0
    return new_height, new_width, top, min(new_height, target)


def decode_rgb(image) -> Image.Image:
    """A PIL RGB image from encoded bytes (bytes-like) or an [H, W, 3] uint8 array."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    img = Image.open(io.BytesIO(image))
    return img if img.mode == "RGB" else img.convert("RGB")


def preprocess_image(image, target: int = 518) -> torch.Tensor:
    """Encoded image bytes or [H, W, 3] uint8 -> float32 [3, H', W'] in [0, 1], load_and_preprocess_images("crop")."""
    img = decode_rgb(image)
    new_height, new_width, top, out_height = resize_geometry(img.height, img.width, target)
    resized = np.asarray(img.resize((new_width, new_height), _BICUBIC))
    tensor = torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div(255)
    return tensor[:, top:top + out_height, :]


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """For each of `dst` output pixels, the source pixel (of `src`) whose centre is nearest: floor((i + .5) * src / dst)."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def preprocess_depth(depth: np.ndarray, target: int = 518) -> torch.Tensor:
    """Depth [H, W] (the stored image's grid) -> float32 [H', W'] on the preprocessed image's grid (nearest)."""
    depth = np.asarray(depth)
    height, width = depth.shape
    new_height, new_width, top, out_height = resize_geometry(height, width, target)
    rows = _nearest_index(height, new_height)[top:top + out_height]
    cols = _nearest_index(width, new_width)
    return torch.from_numpy(depth[rows][:, cols].astype(np.float32))


def pad_views(images: Sequence[torch.Tensor], depths: Optional[Sequence[torch.Tensor]] = None):
    """Stack S images [3, h, w] (and depths [h, w]) -> [S, 3, H, W] (and [S, H, W]), centre-padding smaller
    ones to the largest size with 1.0 (images, as the official) and 0 (depths: invalid)."""
    height = max(i.shape[-2] for i in images)
    width = max(i.shape[-1] for i in images)

    def pad(x: torch.Tensor, value: float) -> torch.Tensor:
        dh, dw = height - x.shape[-2], width - x.shape[-1]
        if not dh and not dw:
            return x
        return torch.nn.functional.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=value)

    stacked = torch.stack([pad(i, 1.0) for i in images])
    if depths is None:
        return stacked
    return stacked, torch.stack([pad(d, 0.0) for d in depths])
