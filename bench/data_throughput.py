"""Training-data throughput: samples/s per worker at 518 px, 2 views per sample, from the shards vs the raw files.

1. Data: a synthetic Co3D at 600x800 (H x W, Co3D-like; rendered once into --workdir and reused) converted with
   convert-co3d, or your own with --co3d-dir/--annotation-dir/--shards.
2. Per worker (one process, torch on 1 thread): the full training recipe (plan -> read -> decode -> crop/resize
   -> jitter -> points -> normalise) from the shards and from the raw files (our RawCo3DSource: JPEG + 16-bit
   depth PNG + mask PNG + the official depth clean-up per frame), with and without augmentation; the read stage
   alone (frames fetched and decoded at full resolution); and the bound: decoding the JPEGs only.
3. The shard pipeline through a DataLoader with 1 and 2 workers.
Each rate is the best of --repeats runs (this is a shared machine). Prints a table and one JSON line.
    python bench/data_throughput.py [--workdir /tmp/vggt_data_bench] [--samples 40] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from vggt_train.data.dataset import MultiViewDataset
from vggt_train.data.loader import RankBatchStream, make_loader
from vggt_train.data.sampler import StepPlanner


def prepare(workdir: str, size: str, sequences: int, frames: int) -> dict:
    from vggt_train.data.convert import Options, convert
    from vggt_train.data.synthetic import make_synthetic_co3d

    raw, shards = os.path.join(workdir, "raw"), os.path.join(workdir, "shards")
    if not os.path.exists(os.path.join(workdir, "raw.done")):
        h, w = (int(x) for x in size.split("x"))
        t0 = time.perf_counter()
        make_synthetic_co3d(raw, ["apple"], sequences=sequences, test_sequences=0, frames=frames, hw=(h, w), seed=0)
        print(f"rendered {sequences * frames} frames at {size} in {time.perf_counter() - t0:.0f}s (cached in {workdir})")
        open(os.path.join(workdir, "raw.done"), "w").close()
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        convert(Options(os.path.join(raw, "co3d"), os.path.join(raw, "annotations"), shards, splits=("train",), quiet=True))
    return {"co3d_dir": os.path.join(raw, "co3d"), "annotation_dir": os.path.join(raw, "annotations"), "shards": shards}


def best_rate(fn, count: int, repeats: int) -> float:
    """Best items/s of `repeats` runs of fn(count) (fn processes `count` items)."""
    fn(2)  # warm-up: imports, first memory maps, allocator
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(count)
        best = max(best, count / (time.perf_counter() - t0))
    return best


def pipeline_rate(ds: MultiViewDataset, views: int, count: int, repeats: int) -> float:
    planner = StepPlanner(ds.index_info(), img_nums=(views, views), max_img_per_gpu=views, seed=0)
    stream = RankBatchStream(ds, planner)
    step = [0]

    def run(n):
        for _ in range(n):
            stream.batch(step[0])
            step[0] += 1

    return best_rate(run, count, repeats)


def read_rate(ds: MultiViewDataset, views: int, count: int, repeats: int) -> float:
    """Samples/s of the read stage: fetch `views` frames and decode image (full resolution) + depth."""
    rng = np.random.default_rng(0)
    seqs = ds.sequences

    def run(n):
        for _ in range(n):
            seq = seqs[int(rng.integers(len(seqs)))]
            for p in rng.integers(ds.num_frames(seq), size=views):
                f = ds.source.read_frame(seq, int(p))
                Image.open(io.BytesIO(f.image)).load()
                np.asarray(f.depth, np.float32)

    return best_rate(run, count, repeats)


def decode_bound(ds: MultiViewDataset, views: int, repeats: int) -> float:
    jpegs = [bytes(ds.source.read_frame(s, p).image) for s in ds.sequences for p in range(ds.num_frames(s))]

    def run(n):
        for i in range(n * views):
            Image.open(io.BytesIO(jpegs[i % len(jpegs)])).load()  # decoded RGB; convert("RGB") would add a copy

    return best_rate(run, max(len(jpegs) // views, 10), repeats)


def loader_rate(ds: MultiViewDataset, views: int, workers: int, count: int) -> float:
    planner = StepPlanner(ds.index_info(), img_nums=(views, views), max_img_per_gpu=views, seed=1)
    loader = make_loader(RankBatchStream(ds, planner), num_workers=workers, prefetch_factor=4, pin_memory=False)
    it = iter(loader)
    for _ in range(2 * workers + 2):  # workers started and primed
        next(it)
    t0 = time.perf_counter()
    for _ in range(count):
        next(it)
    rate = count / (time.perf_counter() - t0)
    del it, loader
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/vggt_data_bench")
    ap.add_argument("--size", default="600x800", help="synthetic source size HxW [default: 600x800]")
    ap.add_argument("--sequences", type=int, default=2)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--co3d-dir", help="benchmark your own raw Co3D instead (with --annotation-dir and --shards)")
    ap.add_argument("--annotation-dir")
    ap.add_argument("--shards", help="the converted dataset of --co3d-dir")
    ap.add_argument("--split", default="train")
    ap.add_argument("--img-size", type=int, default=518)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--samples", type=int, default=40, help="samples per timed run [default: 40]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="DataLoader worker counts to time [default: 1,2]")
    args = ap.parse_args()

    torch.set_num_threads(1)  # what a DataLoader worker gets
    if args.co3d_dir:
        paths = {"co3d_dir": args.co3d_dir, "annotation_dir": args.annotation_dir, "shards": args.shards}
    else:
        os.makedirs(args.workdir, exist_ok=True)
        paths = prepare(args.workdir, args.size, args.sequences, args.frames)
    kw = {"img_size": args.img_size}
    V, N, R = args.views, args.samples, args.repeats
    rows, res = [], {}

    def row(name, key, rate, note=""):
        res[key] = rate
        rows.append((name, rate, note))

    shard_aug = MultiViewDataset(paths["shards"], args.split, **kw)
    raw_aug = MultiViewDataset.from_raw(paths["co3d_dir"], paths["annotation_dir"], args.split, min_frames=1, **kw)
    row("bound: JPEG decode only", "decode_bound", decode_bound(shard_aug, V, R), f"{V} decodes per sample")
    row("shards: read stage (fetch + full decode)", "shards_read", read_rate(shard_aug, V, N, R))
    row("raw files: read stage (JPEG + depth/mask PNG + clean-up)", "raw_read", read_rate(raw_aug, V, N, R))
    row("shards: full recipe, augment", "shards_aug", pipeline_rate(shard_aug, V, N, R))
    row("raw files: full recipe, augment", "raw_aug", pipeline_rate(raw_aug, V, N, R))
    shard_plain = MultiViewDataset(paths["shards"], args.split, augment=False, **kw)
    raw_plain = MultiViewDataset.from_raw(paths["co3d_dir"], paths["annotation_dir"], args.split, min_frames=1, augment=False, **kw)
    row("shards: full recipe, augment=False", "shards_plain", pipeline_rate(shard_plain, V, N, R))
    row("raw files: full recipe, augment=False", "raw_plain", pipeline_rate(raw_plain, V, N, R))
    for w in [int(x) for x in args.workers.split(",") if x]:
        rate = loader_rate(shard_aug, V, w, N)
        row(f"shards: DataLoader, {w} worker{'s' if w > 1 else ''}, augment", f"loader_w{w}", rate, f"{rate / w:.1f} per worker")

    src = Image.open(io.BytesIO(bytes(shard_aug.source.read_frame(shard_aug.sequences[0], 0).image)))
    print(f"\n{V} views per sample at {args.img_size} px (aspect 1.0), sources {src.size[1]}x{src.size[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print("| what (one process, torch 1 thread) | samples/s | |")
    print("|---|---:|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:.1f} | {note} |")
    print(f"\nshards / raw: read stage {res['raw_read'] and res['shards_read'] / res['raw_read']:.1f}x, "
          f"full recipe {res['shards_aug'] / res['raw_aug']:.2f}x (augment), {res['shards_plain'] / res['raw_plain']:.2f}x (augment=False)")
    print(json.dumps({"bench": "data_throughput", "img_size": args.img_size, "views": V, "source_hw": [src.size[1], src.size[0]],
                      **{k: round(v, 2) for k, v in res.items()}}))


if __name__ == "__main__":
    main()
