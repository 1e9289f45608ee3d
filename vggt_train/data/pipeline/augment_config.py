"""The settings of the recipe's random parts (crop scale, rotation, colour jitter): plain data, no heavy imports,
shared by the transforms and the trainer's typed config (`data.aug`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple


@dataclass(frozen=True)
class ColorJitterConfig:
    """torchvision-style ColorJitter ranges, applied with probability p (the official defaults)."""

    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.1
    p: float = 0.9


@dataclass(frozen=True)
class AugmentConfig:
    """The random parts of the recipe; `MultiViewDataset(augment=False)` turns all of them off.

    cojitter_ratio has the official meaning: with probability 1 - cojitter_ratio (0.7) one jitter is shared by
    all views of a sample, otherwise each view draws its own (official: `random.random() > cojitter_ratio`);
    0: always shared, 1: never.
    """

    scale_range: Optional[Tuple[float, float]] = (0.8, 1.2)  # crop size per axis (capped at 1); None: whole image
    rescale_aug: bool = True  # extra resize margin triangular(0, 0, 0.3) x the target's long side
    landscape_check: bool = False  # portrait crops may be rotated by 90 degrees into a landscape target
    color_jitter: Optional[ColorJitterConfig] = field(default_factory=ColorJitterConfig)  # None: no colour jitter
    cojitter_ratio: float = 0.3
    grayscale_p: float = 0.05
