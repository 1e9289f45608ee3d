"""World-size-invariant sampling: one global batch per step, every sample's randomness from (seed, step, index).

Per step t the planner draws one image count S from `img_nums` and one aspect ratio from `aspect_range` (both from
(seed, t) only), then sample i of the global batch (from (seed, t, i) only): a sequence uniformly at random (the
official `inside_random` mode), S frame positions, and an augmentation seed. The trainer decides the global
number of samples G = world_size x samples_per_rank(S) x accum_steps; since sample i never depends on G, a smaller
global batch is a prefix of a larger one and the same seed gives the same global batches on any cluster.

Slicing (documented order): micro-batch m of rank r holds global samples [c * B, (c + 1) * B) with
c = m * world_size + r and B = samples per rank. So world size 4 x accumulation 1, 2 x 2 and 1 x 4 cover the same
global batch in the same chunks.

Mixing datasets (`mixture=Mixture(...)`): sample i first draws its source by weight, from (seed, t, i) and a tag of
its own, then a sequence uniformly within that source's range of the index and its frames as above. Every sample
of a micro-batch may come from a different source; they share S and the aspect ratio of the step. The draw of
the source uses its own stream, so a one-source mixture gives exactly the batches of the plain planner.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vggt_train.data.sources.base import IndexInfo  # re-exported: the sampler API takes it

# Domain tags keep the step-level and sample-level streams independent of each other.
_STEP_TAG, _SAMPLE_TAG, _MIX_TAG = 0x5EED5, 0x5A3B1E, 0x313C5


@dataclass(frozen=True)
class Mixture:
    """Several datasets in one index: names, weights (> 0, need not sum to 1) and each one's [start, stop) range
    of sequence indices in the planner's IndexInfo (MixedSource.ranges)."""

    names: Tuple[str, ...]
    weights: Tuple[float, ...]
    ranges: Tuple[Tuple[int, int], ...]

    def __post_init__(self):
        if not self.names or not len(self.names) == len(self.weights) == len(self.ranges):
            raise ValueError("Mixture: names, weights and ranges need the same, non-zero length")
        for name, w, (start, stop) in zip(self.names, self.weights, self.ranges):
            if not (np.isfinite(w) and w > 0):
                raise ValueError(f"Mixture: weight {w} of {name!r} must be a finite number > 0")
            if not 0 <= start < stop:
                raise ValueError(f"Mixture: {name!r} has no sequences (range [{start}, {stop}))")

    def probabilities(self) -> np.ndarray:
        """[K] float64 weights normalised to sum to 1."""
        w = np.asarray(self.weights, dtype=np.float64)
        return w / w.sum()

    def pick(self, step_seed: Sequence[int]) -> int:
        """Which source: inverse CDF of one uniform from a generator seeded with step_seed (Generator.random is
        the same on every platform and numpy version we support)."""
        u = np.random.default_rng(list(step_seed)).random()
        cdf = np.cumsum(self.probabilities())
        return min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)


@dataclass(frozen=True)
class SampleSpec:
    """One multi-view sample: frame positions (0..num_frames-1) of a sequence, and the seed of its augmentation."""

    sequence: str
    frame_ids: Tuple[int, ...]
    aug_seed: int
    source: str = ""  # the dataset of a mixture it was drawn from ("" without a mixture)


@dataclass(frozen=True)
class StepPlan:
    """The global batch of one step: S images per sample, one aspect ratio, G sample specs in global order."""

    step: int
    num_images: int
    aspect_ratio: float
    specs: Tuple[SampleSpec, ...]

    def rank_slice(self, rank: int, world_size: int, micro_step: int = 0, accum_steps: int = 1) -> List[SampleSpec]:
        """Specs of rank `rank`'s micro-batch `micro_step`: chunk c = micro_step * world_size + rank of G / (W x A)."""
        _check_slice(rank, world_size, micro_step, accum_steps)
        chunks = world_size * accum_steps
        if len(self.specs) % chunks:
            raise ValueError(f"global batch of {len(self.specs)} samples does not split into {world_size} ranks x {accum_steps} micro-steps")
        per = len(self.specs) // chunks
        c = micro_step * world_size + rank
        return list(self.specs[c * per:(c + 1) * per])


def _check_slice(rank: int, world_size: int, micro_step: int, accum_steps: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if accum_steps < 1 or not 0 <= micro_step < accum_steps:
        raise ValueError(f"micro_step {micro_step} is not in [0, accum_steps={accum_steps})")


class StepPlanner:
    """Plans global batches; stateless apart from `step` (what the trainer saved), so a resumed run continues the stream.

    frame_sampling: "random" (S positions uniformly, duplicates allowed unless allow_duplicates=False and the
    sequence is long enough) or "nearby" (an anchor, then S - 1 positions uniformly within
    [anchor - r, anchor + r), r = int(S x expand_ratio), clipped to the sequence; duplicates allowed; official
    `get_nearby_ids`). The anchor is always the first frame. mixture: draw each sample's dataset by weight first
    (see the module docstring); the IndexInfo is then the mixture's (MixedSource.index_info()).
    """

    def __init__(self, index_info: IndexInfo, img_nums: Sequence[int] = (2, 24), aspect_range: Sequence[float] = (1.0, 1.0),
                 len_train: int = 100000, seed: int = 0, frame_sampling: str = "random", expand_ratio: float = 2.0,
                 allow_duplicates: bool = True, max_img_per_gpu: int = 48, mixture: Optional[Mixture] = None):
        lo, hi = (int(x) for x in img_nums)
        if not 1 <= lo <= hi:
            raise ValueError(f"img_nums={list(img_nums)} must be [min, max] with 1 <= min <= max")
        a_lo, a_hi = (float(x) for x in aspect_range)
        if not 0 < a_lo <= a_hi:
            raise ValueError(f"aspect_range={list(aspect_range)} must be [low, high] with 0 < low <= high")
        if frame_sampling not in ("random", "nearby"):
            raise ValueError(f"frame_sampling={frame_sampling!r}; choose 'random' or 'nearby'")
        if max_img_per_gpu < lo:
            raise ValueError(f"max_img_per_gpu={max_img_per_gpu} is below img_nums min {lo}: no sample fits a GPU")
        if len_train < 1:
            raise ValueError(f"len_train={len_train} must be >= 1")
        if mixture is not None and max(stop for _, stop in mixture.ranges) > len(index_info.sequences):
            raise ValueError(f"mixture ranges {list(mixture.ranges)} exceed the {len(index_info.sequences)} sequences of the index")
        self.info = index_info
        self.mixture = mixture
        self.img_nums = (lo, hi)
        self.aspect_range = (a_lo, a_hi)
        self.len_train = int(len_train)
        self.seed = int(seed)
        self.frame_sampling = frame_sampling
        self.expand_ratio = float(expand_ratio)
        self.allow_duplicates = bool(allow_duplicates)
        self.max_img_per_gpu = int(max_img_per_gpu)
        self.step = 0  # the trainer's position; only state_dict/load_state_dict and advance() touch it

    # -- per step ---------------------------------------------------------------------------------------------
    def step_shape(self, step: int) -> Tuple[int, float]:
        """(S, aspect_ratio) of `step`: from (seed, step) only. The aspect is rounded to 2 decimals (official)."""
        rng = np.random.default_rng([self.seed, int(step), _STEP_TAG])
        lo, hi = self.img_nums
        num_images = int(rng.integers(lo, hi + 1))
        a_lo, a_hi = self.aspect_range
        aspect = round(float(rng.uniform(a_lo, a_hi)), 2) if a_hi > a_lo else a_lo
        return num_images, aspect

    def samples_per_rank(self, num_images: int) -> int:
        """B = max_img_per_gpu // S (at least 1): samples in one rank's micro-batch."""
        return max(1, self.max_img_per_gpu // int(num_images))

    def global_samples(self, num_images: int, world_size: int = 1, accum_steps: int = 1) -> int:
        """G = world_size x accum_steps x samples_per_rank(S)."""
        return int(world_size) * int(accum_steps) * self.samples_per_rank(num_images)

    def sample_spec(self, step: int, index: int, num_images: int) -> SampleSpec:
        """Sample `index` of the global batch of `step` (S = num_images): from (seed, step, index) only."""
        rng = np.random.default_rng([self.seed, int(step), _SAMPLE_TAG, int(index)])
        source = ""
        if self.mixture is None:
            seq_idx = int(rng.integers(len(self.info.sequences)))
        else:
            k = self.mixture.pick([self.seed, int(step), _MIX_TAG, int(index)])
            start, stop = self.mixture.ranges[k]
            seq_idx, source = start + int(rng.integers(stop - start)), self.mixture.names[k]
        n = self.info.num_frames[seq_idx]
        S = int(num_images)
        if self.frame_sampling == "nearby":
            anchor = int(rng.integers(n))
            radius = int(S * self.expand_ratio)
            lo, hi = max(0, anchor - radius), min(n, anchor + radius)
            hi = max(hi, lo + 1)
            frames = [anchor] + [int(x) for x in rng.integers(lo, hi, size=S - 1)]
        elif self.allow_duplicates or S > n:
            frames = [int(x) for x in rng.integers(n, size=S)]
        else:
            frames = [int(x) for x in rng.choice(n, size=S, replace=False)]
        aug_seed = int(rng.integers(2**63 - 1))
        return SampleSpec(self.info.sequences[seq_idx], tuple(frames), aug_seed, source)

    def plan(self, step: int, num_samples: Union[int, Callable[[int], int], None] = None) -> StepPlan:
        """The global batch of `step`. num_samples: G, or a function S -> G (default: samples_per_rank(S), one rank)."""
        S, aspect = self.step_shape(step)
        if num_samples is None:
            G = self.samples_per_rank(S)
        elif callable(num_samples):
            G = int(num_samples(S))
        else:
            G = int(num_samples)
        if G < 1:
            raise ValueError(f"a global batch needs at least one sample, got {G} for S={S}")
        return StepPlan(int(step), S, aspect, tuple(self.sample_spec(step, i, S) for i in range(G)))

    def rank_specs(self, step: int, rank: int, world_size: int, micro_step: int = 0, accum_steps: int = 1) -> StepPlan:
        """Only this rank's micro-batch of `step` (B specs, B = samples_per_rank(S)), without planning the rest."""
        _check_slice(rank, world_size, micro_step, accum_steps)
        S, aspect = self.step_shape(step)
        B = self.samples_per_rank(S)
        first = (micro_step * world_size + rank) * B
        return StepPlan(int(step), S, aspect, tuple(self.sample_spec(step, first + j, S) for j in range(B)))

    def epoch(self, samples_seen: int) -> float:
        """Epochs done after `samples_seen` samples (len_train samples make one epoch, as the official dataset length)."""
        return samples_seen / self.len_train

    # -- checkpoint state -------------------------------------------------------------------------------------
    def advance(self, step: int) -> None:
        """Record that the trainer has finished `step` - 1 (the next batch to draw is `step`)."""
        self.step = int(step)

    def _config(self) -> Dict:
        config = {"img_nums": list(self.img_nums), "aspect_range": list(self.aspect_range), "frame_sampling": self.frame_sampling,
                  "expand_ratio": self.expand_ratio, "allow_duplicates": self.allow_duplicates,
                  "max_img_per_gpu": self.max_img_per_gpu, "num_sequences": len(self.info.sequences)}
        if self.mixture is not None:  # only with a mixture: a plain run's state is what it always was
            config["mixture"] = {name: float(w) for name, w in zip(self.mixture.names, self.mixture.weights)}
        return config

    def state_dict(self) -> Dict:
        """{"seed", "step"} (+ the sampling config, only to warn when a resumed run samples differently)."""
        return {"seed": self.seed, "step": self.step, "config": self._config()}

    def load_state_dict(self, state: Dict) -> None:
        self.seed = int(state.get("seed", self.seed))
        self.step = int(state.get("step", self.step))
        saved = state.get("config")
        if saved and saved != self._config():
            changed = sorted(k for k in set(saved) | set(self._config()) if saved.get(k) != self._config().get(k))
            warnings.warn(f"resuming with different sampling settings ({', '.join(changed)}): the batch stream after "
                          f"step {self.step} differs from the one the checkpoint's run would have drawn", stacklevel=2)


def samples_fn(planner: StepPlanner, world_size: int, accum_steps: int = 1) -> Callable[[int], int]:
    """The usual num_samples for plan(): S -> world_size x accum_steps x samples_per_rank(S)."""
    return lambda S: planner.global_samples(S, world_size, accum_steps)


def index_info_of(sequences: Sequence[str], num_frames: Sequence[int]) -> IndexInfo:
    return IndexInfo(tuple(str(s) for s in sequences), tuple(int(n) for n in num_frames))


__all__ = ["IndexInfo", "Mixture", "SampleSpec", "StepPlan", "StepPlanner", "samples_fn", "index_info_of"]
