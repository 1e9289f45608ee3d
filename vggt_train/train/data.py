"""The trainer's view of the data: one rank's micro-batch streams (training, validation) and their checkpoint state.

Training draws step t's global batch from (seed, t) only and gives rank r its slice, so a run's batches do not
depend on the number of processes and a resumed run continues the same stream from the saved step. The streams
yield the workers' unfinished batches: the trainer calls `vggt_train.data.pipeline.finish.finish_batch` once a batch is on
its device.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple

from vggt_train.data.pipeline.batch import WorkerBatch
from vggt_train.data.pipeline.dataset import MultiViewDataset
from vggt_train.data.pipeline.loader import RankBatchStream, accelerator_present, make_loader
from vggt_train.data.pipeline.sampler import Mixture, StepPlanner
from vggt_train.data.sources import ShardSource, resolve_split_dir
from vggt_train.data.sources.mixed import MixedSource
from vggt_train.train.config import ConfigError, TrainConfig
from vggt_train.train.mix_config import entry_name

# validation draws from its own stream, fixed across evaluations so successive validation metrics compare
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
    """Datasets and step planners for a run; streams are built per rank once the accelerator is up.

    One dataset (data.path), or a weighted mixture (data.mix): then the datasets are read through one MixedSource
    and the planner draws each sample's dataset by weight. `train_sources` / `val_sources`: the names of the
    mixture's datasets (empty without data.mix); batches carry each sample's in "sources".
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        d = cfg.data
        self.resample = resample_placement(cfg)
        self.train_sources: Tuple[str, ...] = ()
        self.val_sources: Tuple[str, ...] = ()
        where = f"data.path={d.path!r} / data.train_split={d.train_split!r}"
        if d.mix:  # its errors name the entry
            self.train_set, train_mix = self._mixed_dataset(True, d.augment)
            self.train_sources = train_mix.names
        else:
            try:
                self.train_set, train_mix = self._dataset(d.train_split, d.augment), None
            except (FileNotFoundError, ValueError) as exc:
                raise ConfigError(f"{where}: {exc}") from None

        def planner(dataset, seed: int, mixture: Optional[Mixture]) -> StepPlanner:
            return StepPlanner(dataset.index_info(), img_nums=d.img_nums, aspect_range=d.aspect_range, len_train=d.len_train,
                               seed=seed, frame_sampling=d.frame_sampling, expand_ratio=d.expand_ratio,
                               max_img_per_gpu=d.max_img_per_gpu, mixture=mixture)

        try:
            self.planner = planner(self.train_set, cfg.train.seed, train_mix)
        except ValueError as exc:  # e.g. no sequence left after data.categories
            raise ConfigError(f"{where if not d.mix else 'data.mix'}: {exc}") from None
        self.val_set = self.val_planner = None
        if d.mix and cfg.train.val_every:
            self.val_set, val_mix = self._mixed_dataset(False, False)
            if self.val_set is not None:
                self.val_sources = val_mix.names
                self.val_planner = planner(self.val_set, cfg.train.seed + _VAL_SEED_OFFSET, val_mix)
        elif d.val_split and cfg.train.val_every:
            try:
                self.val_set = self._dataset(d.val_split, False)
                self.val_planner = planner(self.val_set, cfg.train.seed + _VAL_SEED_OFFSET, None)
            except (FileNotFoundError, ValueError) as exc:
                warnings.warn(f"no validation: data.val_split={d.val_split!r} is not in {d.path} ({exc})", stacklevel=2)

    def _kwargs(self, augment: bool) -> Dict[str, Any]:
        d = self.cfg.data
        return {"img_size": d.img_size, "patch_size": d.patch_size, "augment": augment, "aug": augment_config(self.cfg),
                "resample": self.resample}

    def _dataset(self, split: str, augment: bool):
        """The split's MultiViewDataset: converted shards at data.path, or the raw Co3D layout with raw_annotation_dir."""

        d = self.cfg.data
        kw = self._kwargs(augment)
        if d.raw_annotation_dir:
            return MultiViewDataset.from_raw(d.path, d.raw_annotation_dir, split, categories=d.categories, **kw)
        return MultiViewDataset(d.path, split, categories=d.categories, **kw)

    def _mixed_dataset(self, train: bool, augment: bool):
        """(MultiViewDataset over a MixedSource of data.mix's datasets, their Mixture). Training: every entry must
        open (else a ConfigError naming it); validation: entries without their val split are left out with a
        warning, and (None, None) when none is left."""
        d = self.cfg.data
        parts: List[Tuple[str, ShardSource]] = []
        weights: List[float] = []
        for i, e in enumerate(d.mix or []):
            split = (e.train_split or d.train_split) if train else (e.val_split or d.val_split)
            field_ = "train_split" if train else "val_split"
            if split is None:
                continue
            try:
                source = ShardSource(resolve_split_dir(e.path, split), categories=e.categories if e.categories is not None else d.categories)
            except (FileNotFoundError, ValueError) as exc:
                if train:
                    raise ConfigError(f"data.mix[{i}].path={e.path!r} / {field_}={split!r}: {exc}") from None
                warnings.warn(f"validation leaves out data.mix[{i}] ({entry_name(e)}): split {split!r} ({exc})", stacklevel=3)
                continue
            parts.append((entry_name(e), source))
            weights.append(float(e.weight))
        if not parts:
            if not train:
                warnings.warn("no validation: no dataset of data.mix has its validation split", stacklevel=3)
            return None, None
        try:
            mixed = MixedSource(parts)
        except ValueError as exc:  # a dataset without sequences (data.categories selected none of it)
            raise ConfigError(f"data.mix: {exc}") from None
        mixture = Mixture(mixed.names, tuple(weights), tuple(mixed.ranges[n] for n in mixed.names))
        return MultiViewDataset(source=mixed, **self._kwargs(augment)), mixture

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

    def val_draw(self, rank: int, world_size: int) -> Optional[Iterator[Tuple[int, WorkerBatch, bool]]]:
        """This rank's share of the validation draw, or None without a val split: (index, batch, counted) items.

        The draw is train.val_steps micro-batches, item t being the validation stream's step t as one process
        draws it (no augmentation): the same at every validation and whatever the number of processes. Rank r
        takes items r, r + W, ...; every rank yields the same number of items (ceil(val_steps / W)), the last
        ones possibly repeats with counted=False, so that all ranks run the same forwards (ZeRO-3 needs every
        rank in each)."""
        if self.val_set is None:
            return None
        n = self.cfg.train.val_steps
        stream = RankBatchStream(self.val_set, self.val_planner, 0, 1, 1, 0)
        rounds = -(-n // world_size)

        def items():
            for k in range(rounds):
                index = k * world_size + rank
                yield index, stream.batch(index % n), index < n

        return items()

    def advance(self, step: int) -> None:
        self.planner.advance(step)

    def state_dict(self) -> Dict:
        return {"planner": self.planner.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        if "planner" in state:
            self.planner.load_state_dict(state["planner"])
