"""The trainer's view of the data: one rank's micro-batch streams (training, validation) and their checkpoint state.

Training draws step t's global batch from (seed, t) only and gives rank r its slice, so a run's batches do not
depend on the number of processes and a resumed run continues the same stream from the saved step.
"""

from __future__ import annotations

import warnings
from typing import Dict, Iterator, Optional

from vggt_train.train.config import ConfigError, TrainConfig

# validation draws from its own stream, fixed across evaluations so successive validation losses compare
_VAL_SEED_OFFSET = 1_000_003


class TrainData:
    """Datasets and step planners for a run; streams are built per rank once the accelerator is up."""

    def __init__(self, cfg: TrainConfig):
        from vggt_train.data.dataset import MultiViewDataset
        from vggt_train.data.sampler import StepPlanner

        self.cfg = cfg
        d = cfg.data
        try:
            self.train_set = MultiViewDataset(d.path, d.train_split, img_size=d.img_size, patch_size=d.patch_size, augment=d.augment)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"data.path={d.path!r} / data.train_split={d.train_split!r}: {exc}") from None

        def planner(dataset, seed: int) -> StepPlanner:
            return StepPlanner(dataset.index_info(), img_nums=d.img_nums, aspect_range=d.aspect_range, len_train=d.len_train,
                               seed=seed, frame_sampling=d.frame_sampling, max_img_per_gpu=d.max_img_per_gpu)

        self.planner = planner(self.train_set, cfg.train.seed)
        self.val_set = self.val_planner = None
        if d.val_split and cfg.train.val_every:
            try:
                self.val_set = MultiViewDataset(d.path, d.val_split, img_size=d.img_size, patch_size=d.patch_size, augment=False)
                self.val_planner = planner(self.val_set, cfg.train.seed + _VAL_SEED_OFFSET)
            except FileNotFoundError as exc:
                warnings.warn(f"no validation: data.val_split={d.val_split!r} is not in {d.path} ({exc})", stacklevel=2)

    def nominal_samples_per_rank(self) -> int:
        """Samples in a rank's micro-batch at the smallest image count (what DeepSpeed's config is told)."""
        return self.planner.samples_per_rank(self.cfg.data.img_nums[0])

    def train_stream(self, rank: int, world_size: int, start_step: int = 0) -> Iterator[Dict]:
        """Micro-batches of this rank from `start_step` on: grad_accum_steps items per optimiser step, in order."""
        from vggt_train.data.loader import RankBatchStream, make_loader

        stream = RankBatchStream(self.train_set, self.planner, rank, world_size, self.cfg.train.grad_accum_steps, start_step)
        d = self.cfg.data
        return iter(make_loader(stream, num_workers=d.num_workers, prefetch_factor=d.prefetch_factor))

    def val_stream(self, rank: int, world_size: int) -> Optional[Iterator[Dict]]:
        """The same validation micro-batches at every evaluation (no augmentation), or None without a val split."""
        if self.val_set is None:
            return None
        from vggt_train.data.loader import RankBatchStream

        return iter(RankBatchStream(self.val_set, self.val_planner, rank, world_size, 1, 0))

    def advance(self, step: int) -> None:
        self.planner.advance(step)

    def state_dict(self) -> Dict:
        return {"planner": self.planner.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        if "planner" in state:
            self.planner.load_state_dict(state["planner"])
