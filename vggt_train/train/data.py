"""The trainer's view of the data: one rank's micro-batch streams (training, validation) and their checkpoint state.

Training draws step t's global batch from (seed, t) only and gives rank r its slice, so a run's batches do not
depend on the number of processes and a resumed run continues the same stream from the saved step. The streams
yield the workers' unfinished batches: the trainer calls `vggt_train.data.pipeline.finish.finish_batch` once a batch is on
its device.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterator, Optional

from vggt_train.data.pipeline.dataset import MultiViewDataset
from vggt_train.data.pipeline.loader import RankBatchStream, accelerator_present, make_loader
from vggt_train.data.pipeline.sampler import StepPlanner
from vggt_train.train.config import ConfigError, TrainConfig

# validation draws from its own stream, fixed across evaluations so successive validation losses compare
_VAL_SEED_OFFSET = 1_000_003


def augment_config(cfg: TrainConfig):
    """The recipe's random parts as the dataset takes them (data.aug is already a data.transforms.AugmentConfig)."""
    return cfg.data.aug


def resample_placement(cfg: TrainConfig) -> str:
    """data.resample_on, with auto resolved: the device when an accelerator is present (there the resize costs next
    to nothing), else the workers (PIL is faster than the same integer sums in torch on a CPU)."""
    if cfg.data.resample_on != "auto":
        return cfg.data.resample_on

    return "device" if accelerator_present() else "worker"


class TrainData:
    """Datasets and step planners for a run; streams are built per rank once the accelerator is up."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        d = cfg.data
        self.resample = resample_placement(cfg)
        try:
            self.train_set = self._dataset(d.train_split, d.augment)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"data.path={d.path!r} / data.train_split={d.train_split!r}: {exc}") from None

        def planner(dataset, seed: int) -> StepPlanner:
            return StepPlanner(dataset.index_info(), img_nums=d.img_nums, aspect_range=d.aspect_range, len_train=d.len_train,
                               seed=seed, frame_sampling=d.frame_sampling, expand_ratio=d.expand_ratio,
                               max_img_per_gpu=d.max_img_per_gpu)

        try:
            self.planner = planner(self.train_set, cfg.train.seed)
        except ValueError as exc:  # e.g. no sequence left after data.categories
            raise ConfigError(f"data.path={d.path!r} / data.train_split={d.train_split!r}: {exc}") from None
        self.val_set = self.val_planner = None
        if d.val_split and cfg.train.val_every:
            try:
                self.val_set = self._dataset(d.val_split, False)
                self.val_planner = planner(self.val_set, cfg.train.seed + _VAL_SEED_OFFSET)
            except (FileNotFoundError, ValueError) as exc:
                warnings.warn(f"no validation: data.val_split={d.val_split!r} is not in {d.path} ({exc})", stacklevel=2)

    def _dataset(self, split: str, augment: bool):
        """The split's MultiViewDataset: converted shards at data.path, or the raw Co3D layout with raw_annotation_dir."""

        d = self.cfg.data
        kw = {"img_size": d.img_size, "patch_size": d.patch_size, "augment": augment, "aug": augment_config(self.cfg),
              "resample": self.resample}
        if d.raw_annotation_dir:
            return MultiViewDataset.from_raw(d.path, d.raw_annotation_dir, split, categories=d.categories, **kw)
        return MultiViewDataset(d.path, split, categories=d.categories, **kw)

    def nominal_samples_per_rank(self) -> int:
        """Samples in a rank's micro-batch at the smallest image count (what DeepSpeed's config is told)."""
        return self.planner.samples_per_rank(self.cfg.data.img_nums[0])

    @staticmethod
    def replaced_samples(batch: Dict[str, Any]) -> int:
        """Samples of a micro-batch with at least one replaced frame or sequence (unusable stored data)."""
        return sum(1 for replaced in batch.get("replaced", ()) if replaced)

    def epoch(self, samples_seen: int) -> float:
        """Epochs done after `samples_seen` global samples (data.len_train samples make one, as the official dataset
        length). Only reported: the schedule runs on steps."""
        return self.planner.epoch(samples_seen)

    def train_stream(self, rank: int, world_size: int, start_step: int = 0) -> Iterator[Dict]:
        """Micro-batches of this rank from `start_step` on: grad_accum_steps items per optimiser step, in order."""

        stream = RankBatchStream(self.train_set, self.planner, rank, world_size, self.cfg.train.grad_accum_steps, start_step)
        d = self.cfg.data
        return iter(make_loader(stream, num_workers=d.num_workers, prefetch_factor=d.prefetch_factor))

    def val_stream(self, rank: int, world_size: int) -> Optional[Iterator[Dict]]:
        """The same validation micro-batches at every evaluation (no augmentation), or None without a val split."""
        if self.val_set is None:
            return None

        return iter(RankBatchStream(self.val_set, self.val_planner, rank, world_size, 1, 0))

    def advance(self, step: int) -> None:
        self.planner.advance(step)

    def state_dict(self) -> Dict:
        return {"planner": self.planner.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        if "planner" in state:
            self.planner.load_state_dict(state["planner"])
