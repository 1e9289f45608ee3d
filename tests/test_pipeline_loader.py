"""RankBatchStream + DataLoader: normalisation invariants, worker-count independence, identical global batches for
world sizes 1, 2 and 4, resume, flat worker memory. Streams yield the workers' (unfinished) batches; finish_batch
completes them, as the trainer does after moving them to its device."""

from __future__ import annotations

import gc
import time

import psutil
import pytest
import torch

from pipeline_data import rss_anon, tiny_dataset
from vggt_train.data.pipeline.collate import collate_and_normalize, collate_samples
from vggt_train.data.pipeline.dataset import MultiViewDataset
from vggt_train.data.pipeline.finish import finish_batch, is_finished
from vggt_train.data.pipeline.loader import RankBatchStream, make_loader
from vggt_train.data.pipeline.sampler import StepPlanner


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return MultiViewDataset(tiny_dataset(tmp_path_factory.getbasetemp())["root"], "train", img_size=42)


def make_planner(ds, **kw):
    kw = {"img_nums": (2, 4), "max_img_per_gpu": 8, "aspect_range": (0.5, 1.0), "seed": 5, **kw}
    return StepPlanner(ds.index_info(), **kw)


def test_batches_are_normalised(ds):
    stream = RankBatchStream(ds, make_planner(ds), 0, 1, 1)
    raw_stream = RankBatchStream(ds, make_planner(ds), 0, 1, 1, normalize=False, finish=True)
    for step in range(3):
        b, raw = finish_batch(stream.batch(step)), raw_stream.batch(step)
        B, S = b["images"].shape[:2]
        assert b["step"] == step and len(b["seq_names"]) == B and b["frame_ids"].shape == (B, S)
        eye = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1).expand(B, 3, 4)
        torch.testing.assert_close(b["extrinsics"][:, 0], eye, atol=1e-5, rtol=0)  # camera 0 is the world origin
        dist = b["world_points"].norm(dim=-1)
        m = b["point_masks"]
        mean = (dist * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3))
        torch.testing.assert_close(mean, torch.ones(B), atol=1e-3, rtol=0)  # unit mean distance per sample
        torch.testing.assert_close(b["cam_points"][..., 2], b["depths"])
        # world points are still the cam points seen through the (normalised) cameras
        R, t = b["extrinsics"][..., :3], b["extrinsics"][..., 3]
        world = torch.einsum("bsji,bshwj->bshwi", R, b["cam_points"] - t[:, :, None, None, :])
        torch.testing.assert_close(world[m], b["world_points"][m], atol=1e-4, rtol=1e-4)
        assert torch.equal(b["images"], raw["images"]) and torch.equal(b["intrinsics"], raw["intrinsics"])
        assert torch.equal(b["point_masks"], raw["point_masks"])
        for i in range(B):  # one scale per sample: depth ratios within a sample are unchanged
            r = raw["depths"][i][m[i]] / raw["depths"][i][m[i]].mean()
            torch.testing.assert_close(b["depths"][i][m[i]] / b["depths"][i][m[i]].mean(), r, atol=1e-4, rtol=1e-4)


def test_collate_of_samples_equals_load_batch(ds):
    stream = RankBatchStream(ds, make_planner(ds), 0, 1, 1)
    plan = stream.planner.rank_specs(4, 0, 1)
    samples = [ds.get_sample(s.sequence, s.frame_ids, plan.aspect_ratio, s.aug_seed) for s in plan.specs]
    a, b = collate_and_normalize(samples), finish_batch(stream.batch(4))  # geometry.normalize_batch vs the split one
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["point_masks"], b["point_masks"])
    for k in ("depths", "extrinsics", "world_points", "cam_points"):
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    assert collate_samples(samples)["seq_names"] == b["seq_names"]


def test_stream_is_the_same_with_any_number_of_workers(ds):
    planner = make_planner(ds)
    direct = list(RankBatchStream(ds, planner, 1, 2, accum_steps=2, num_steps=3))
    loaded = list(make_loader(RankBatchStream(ds, planner, 1, 2, accum_steps=2, num_steps=3), num_workers=2, pin_memory=False))
    assert len(direct) == len(loaded) == 6
    for a, b in zip(direct, loaded):
        assert not is_finished(b)  # workers ship the batch unfinished, through pinning/conversion intact
        assert (a.step, a.micro_step) == (b.step, b.micro_step)
        a, b = finish_batch(a), finish_batch(b)
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["world_points"], b["world_points"])


def test_global_batches_are_identical_for_world_sizes_1_2_4(ds):
    planner = make_planner(ds)
    total = 4  # world_size x accum_steps, as a trainer keeps the global batch when the cluster changes
    results = {}
    for world_size in (1, 2, 4):
        accum = total // world_size
        per_step = []
        for step in (0, 1):
            chunks = {}
            for rank in range(world_size):
                stream = RankBatchStream(ds, planner, rank, world_size, accum, start_step=step, num_steps=1, finish=True)
                for micro, batch in enumerate(stream):
                    chunks[micro * world_size + rank] = batch
            per_step.append({k: torch.cat([chunks[c][k] for c in sorted(chunks)]) for k in ("images", "world_points", "extrinsics")}
                            | {"seq_names": sum((chunks[c]["seq_names"] for c in sorted(chunks)), [])})
        results[world_size] = per_step
    for world_size in (2, 4):
        for step in (0, 1):
            a, b = results[1][step], results[world_size][step]
            assert a["seq_names"] == b["seq_names"]
            for k in ("images", "world_points", "extrinsics"):
                assert torch.equal(a[k], b[k]), (world_size, step, k)


def test_resumed_stream_continues_the_same_batches(ds):
    planner = make_planner(ds)
    full = list(RankBatchStream(ds, planner, 0, 1, accum_steps=2, num_steps=4))
    state = planner.state_dict() | {"step": 2}
    resumed_planner = make_planner(ds, seed=999)
    resumed_planner.load_state_dict(state)
    resumed = list(RankBatchStream(ds, resumed_planner, 0, 1, accum_steps=2, start_step=resumed_planner.step, num_steps=2))
    for a, b in zip(full[4:], resumed):
        assert a.step == b.step and torch.equal(a.images, b.images)


def test_worker_memory_is_flat(ds):
    """RSS (anonymous memory: the shards' page cache excluded) of each of 2 persistent workers after 20 and after
    200 micro-batches: no growth beyond a small bound (no Python objects or buffers accumulate)."""
    planner = make_planner(ds, img_nums=(2, 6), max_img_per_gpu=12)
    loader = make_loader(RankBatchStream(ds, planner, 0, 1, 1), num_workers=2, prefetch_factor=2, pin_memory=False)
    it = iter(loader)
    me = psutil.Process()

    def worker_rss():
        time.sleep(0.2)  # let the workers finish the prefetched batches
        gc.collect()
        return {c.pid: rss_anon(c.pid) for c in me.children() if c.is_running()}

    for _ in range(20):
        next(it)
    before = worker_rss()
    for _ in range(180):
        next(it)
    after = worker_rss()
    del it, loader
    assert len(before) >= 2
    growth = {pid: after[pid] - before[pid] for pid in before if pid in after}
    assert len(growth) >= 2
    assert max(growth.values()) < 8 * 2**20, {p: f"{g / 2**20:.1f} MiB" for p, g in growth.items()}
