"""The trainer's view of the data: per-rank micro-batch streams for training and validation, and their state."""

from __future__ import annotations

import itertools
from typing import Dict, Iterator, Optional

import torch

from vggt_train.train.config import TrainConfig


class TrainData:
    """DEV STUB: random batches with normalised-looking geometry (to be replaced by the shard pipeline)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.step = 0

    def nominal_samples_per_rank(self) -> int:
        return max(1, self.cfg.data.max_img_per_gpu // self.cfg.data.img_nums[0])

    def _batch(self, step: int, rank: int, world: int, micro: int, val: bool) -> Dict:
        from vggt_train.geometry import depth_to_world_points, normalize_batch

        d = self.cfg.data
        g = torch.Generator().manual_seed(hash((d.len_train, step, val)) % (2**31))
        S = int(torch.randint(d.img_nums[0], d.img_nums[1] + 1, (1,), generator=g))
        B = max(1, d.max_img_per_gpu // S)
        G = B * world * self.cfg.train.grad_accum_steps
        H = W = d.img_size
        imgs = torch.rand(G, S, 3, H, W, generator=g)
        depth = 1 + imgs.mean(2)
        ext = torch.zeros(G, S, 3, 4); ext[..., :3, :3] = torch.eye(3); ext[..., 2, 3] = torch.rand(G, S, generator=g)
        intr = torch.tensor([[W, 0, W / 2], [0, W, H / 2], [0, 0, 1.0]]).expand(G, S, 3, 3).clone()
        from vggt_train.geometry import depth_to_cam_points
        cam = depth_to_cam_points(depth, intr)
        world = depth_to_world_points(depth, ext, intr)
        i0 = (micro * world + rank) * B if False else ((micro * (G // self.cfg.train.grad_accum_steps)) + rank * B)
        sl = slice(i0, i0 + B)
        batch = {"images": imgs[sl], "depths": depth[sl], "extrinsics": ext[sl], "intrinsics": intr[sl], "cam_points": cam[sl],
                 "world_points": world[sl], "point_masks": torch.ones_like(depth[sl], dtype=torch.bool)}
        return normalize_batch(batch)

    def train_stream(self, rank: int, world: int, start_step: int = 0) -> Iterator[Dict]:
        for step in itertools.count(start_step):
            for micro in range(self.cfg.train.grad_accum_steps):
                yield self._batch(step, rank, world, micro, False)

    def val_stream(self, rank: int, world: int) -> Optional[Iterator[Dict]]:
        return (self._batch(10**6 + i, rank, world, 0, True) for i in itertools.count())

    def advance(self, step: int) -> None:
        self.step = step

    def state_dict(self) -> Dict:
        return {"step": self.step}

    def load_state_dict(self, state: Dict) -> None:
        self.step = state.get("step", self.step)
