"""One rank's stream of normalised micro-batches, and the DataLoader around it (workers, prefetch, pinned memory).

    planner = StepPlanner(ds.index_info(), img_nums=[2, 24], max_img_per_gpu=48, seed=42)
    stream = RankBatchStream(ds, planner, rank, world_size, accum_steps=2, start_step=resume_step)
    loader = make_loader(stream, num_workers=4)          # batch_size=None: one item = one micro-batch
    for batch in loader:                                 # accum_steps items per optimizer step, in order
        batch = finish_batch(batch.to(device))           # the recipe's last part, on the training device

Workers ship the batch unfinished (a WorkerBatch, batch.py: uint8 images, float16 depth, the drawn jitter): ~6x
less to copy between processes, and the float work runs where it is cheapest. finish=True finishes in the worker instead.

Item k of the stream is micro-step k % accum_steps of step start_step + k // accum_steps. DataLoader worker w of
n produces exactly the items with k % n == w, and the DataLoader returns them in k order, so the stream does not
depend on num_workers. Every batch depends only on (seed, step, rank, world_size, accum_steps).
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Iterator, Optional, Union

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vggt_train.data.pipeline.batch import TrainBatch, WorkerBatch
from vggt_train.data.pipeline.dataset import MultiViewDataset
from vggt_train.data.pipeline.finish import finish_batch
from vggt_train.data.pipeline.sampler import StepPlanner


class RankBatchStream(IterableDataset):
    """Micro-batches of one rank, as WorkerBatch items. Once finished (`finish_batch`, or finish=True): TrainBatch
    dicts of images [B, S, 3, H, W] float32 in [0, 1], depths [B, S, H, W], extrinsics [B, S, 3, 4], intrinsics [B, S, 3, 3], cam_points /
    world_points [B, S, H, W, 3], point_masks [B, S, H, W] bool (batch-normalised unless normalize=False), plus
    step, micro_step, aspect_ratio, seq_names [B], categories [B], sources [B], frame_ids / frames [B, S] and replaced (per
    sample, the frames and sequences replaced because they were unusable).
    """

    def __init__(self, dataset: MultiViewDataset, planner: StepPlanner, rank: int = 0, world_size: int = 1,
                 accum_steps: int = 1, start_step: int = 0, num_steps: Optional[int] = None, normalize: bool = True,
                 finish: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if accum_steps < 1:
            raise ValueError(f"accum_steps={accum_steps} must be >= 1")
        self.dataset, self.planner = dataset, planner
        self.rank, self.world_size, self.accum_steps = int(rank), int(world_size), int(accum_steps)
        self.start_step, self.num_steps = int(start_step), num_steps
        self.normalize, self.finish = normalize, finish

    def batch(self, step: int, micro_step: int = 0) -> Union[WorkerBatch, TrainBatch]:
        """The micro-batch `micro_step` of `step` for this rank (what iteration yields; usable without a DataLoader):
        a WorkerBatch, or with finish=True a TrainBatch."""
        plan = self.planner.rank_specs(step, self.rank, self.world_size, micro_step, self.accum_steps)
        batch = self.dataset.load_batch(plan.specs, plan.aspect_ratio, normalize=self.normalize, finish=False)
        batch.step, batch.micro_step, batch.aspect_ratio = plan.step, int(micro_step), plan.aspect_ratio
        return finish_batch(batch) if self.finish else batch

    def _items(self) -> Iterator[tuple]:
        steps = itertools.count(self.start_step) if self.num_steps is None else range(self.start_step, self.start_step + self.num_steps)
        for step in steps:
            for micro in range(self.accum_steps):
                yield step, micro

    def __iter__(self) -> Iterator[Union[WorkerBatch, TrainBatch]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for k, (step, micro) in enumerate(self._items()):
            if k % workers == worker:
                yield self.batch(step, micro)

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless RankBatchStream has no length (pass num_steps)")
        return self.num_steps * self.accum_steps


def accelerator_present() -> bool:
    """True when a CUDA or Ascend NPU device is usable (pinned host memory then speeds up the copies)."""
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        try:
            return bool(acc.is_available())
        except Exception:  # an accelerator backend that fails to initialise counts as absent
            pass
    if torch.cuda.is_available():
        return True
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def make_loader(stream: RankBatchStream, num_workers: int = 4, prefetch_factor: int = 2,
                pin_memory: Optional[bool] = None, persistent_workers: bool = True,
                multiprocessing_context: Optional[str] = None) -> DataLoader:
    """A DataLoader yielding the stream's micro-batches in order (batch_size=None: workers build whole batches).

    pin_memory defaults to accelerator_present(). Workers are persistent so their memory maps stay open.
    """
    kwargs: Dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
                      multiprocessing_context=multiprocessing_context)
    return DataLoader(stream, batch_size=None, num_workers=num_workers,
                      pin_memory=accelerator_present() if pin_memory is None else pin_memory, **kwargs)
