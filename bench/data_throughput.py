"""Training-data throughput: samples/s per worker at 518 px, 2 views per sample, from the shards vs the raw files.

1. Data: a synthetic Co3D at 600x800 (H x W, Co3D-like; rendered once into --workdir and reused) converted with
   convert-co3d, or your own with --co3d-dir/--annotation-dir/--shards.
2. Per worker (one process, torch on 1 thread, as a DataLoader worker): the worker stage of the pipeline
   (plan -> read -> decode -> crop [-> resize] -> depth gather, every random draw; what a worker ships) from the
   shards and from the raw files (our RawCo3DSource: JPEG + 16-bit depth PNG + mask PNG + the official depth
   clean-up per frame), with the resize on the device (resample="device", what the trainer does on an
   accelerator) and in the worker (resample="worker", its choice on a CPU); the whole recipe in the worker
   (the layout of a plain raw-file loader such as the official one); the read stage alone; and the bound:
   decoding the JPEGs only. The per-row checksum check (every read recomputes it) is timed alone and as the
   same worker stage without it.
3. The finishing stage (finish_batch: uint8 -> float, jitter, points, normalisation [, the resize]) on this CPU,
   per sample, as a CPU-only trainer runs it in its main process. On an accelerator it runs there instead.
4. The shard pipeline through a DataLoader with 1 and 2 workers, micro-batches of --loader-batch samples
   (batches arrive unfinished; each shipped tensor costs a shared-memory segment, so tiny batches pay more).
Each rate is the best of --repeats runs. The one-process rows count the process's CPU time (user + system) by
default (--clock cpu): on a machine shared with other jobs, wall time measures their load as much as ours; on a
dedicated core the two agree. The DataLoader rows use wall time. Prints a table and one JSON line.
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

from vggt_train.data.pipeline.dataset import MultiViewDataset
from vggt_train.data.pipeline.finish import finish_batch
from vggt_train.data.pipeline.loader import RankBatchStream, make_loader
from vggt_train.data.pipeline.sampler import StepPlanner

OFFICIAL_LOADER = 12.0  # samples/s per core of the official raw-file loader on 800x600 sources (quoted in the issue)


def prepare(workdir: str, size: str, sequences: int, frames: int) -> dict:
    from vggt_train.data.shards.convert import Options, convert
    from vggt_train.data.synthetic import make_synthetic_co3d

    raw, shards = os.path.join(workdir, "raw"), os.path.join(workdir, "shards")
    if not os.path.exists(os.path.join(workdir, "raw.done")):
        h, w = (int(x) for x in size.split("x"))
        t0 = time.perf_counter()
        make_synthetic_co3d(raw, ["apple"], sequences=sequences, test_sequences=0, frames=frames, hw=(h, w), seed=0)
        print(f"rendered {sequences * frames} frames at {size} in {time.perf_counter() - t0:.0f}s (cached in {workdir})")
        open(os.path.join(workdir, "raw.done"), "w").close()
    if os.path.exists(os.path.join(shards, "manifest.json")):
        with open(os.path.join(shards, "manifest.json")) as f:
            if json.load(f).get("schema_version", 1) < 2:  # converted before the per-row checksums: convert again
                import shutil

                shutil.rmtree(shards)
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        convert(Options(os.path.join(raw, "co3d"), os.path.join(raw, "annotations"), shards, splits=("train",), quiet=True))
    return {"co3d_dir": os.path.join(raw, "co3d"), "annotation_dir": os.path.join(raw, "annotations"), "shards": shards}


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCK["cpu"]


def best_rate(fn, count: int, repeats: int) -> float:
    """Best items/s of `repeats` runs of fn(count) (fn processes `count` items), by `clock`."""
    fn(2)  # warm-up: imports, first memory maps, allocator
    best = 0.0
    for _ in range(repeats):
        t0 = clock()
        fn(count)
        best = max(best, count / max(clock() - t0, 1e-9))
    return best


def _stream(ds: MultiViewDataset, views: int, finish: bool, seed: int = 0, per_batch: int = 1) -> RankBatchStream:
    planner = StepPlanner(ds.index_info(), img_nums=(views, views), max_img_per_gpu=views * per_batch, seed=seed)
    return RankBatchStream(ds, planner, finish=finish)


def pipeline_rate(ds: MultiViewDataset, views: int, count: int, repeats: int, finish: bool = False) -> float:
    """Samples/s of the worker stage (finish=False) or of the whole recipe in one process (finish=True)."""
    stream = _stream(ds, views, finish)
    step = [0]

    def run(n):
        for _ in range(n):
            stream.batch(step[0])
            step[0] += 1

    return best_rate(run, count, repeats)


def finish_ms(ds: MultiViewDataset, views: int, count: int, repeats: int) -> float:
    """Milliseconds per sample of finish_batch on this CPU (worker batches prepared beforehand)."""
    stream = _stream(ds, views, False, seed=2)
    batches = [stream.batch(i) for i in range(count)]
    it = iter(batches * (repeats + 1))
    return 1e3 / best_rate(lambda n: [finish_batch(next(it)) for _ in range(n)], count, repeats)


def read_rate(ds: MultiViewDataset, views: int, count: int, repeats: int) -> float:
    """Samples/s of the read stage: fetch `views` frames, decode the image (full resolution); depth as stored
    (shards: a zero-copy float16 view; raw: PNG decode + the official clean-up)."""
    rng = np.random.default_rng(0)
    seqs = ds.sequences

    def run(n):
        for _ in range(n):
            seq = seqs[int(rng.integers(len(seqs)))]
            for p in rng.integers(ds.num_frames(seq), size=views):
                Image.open(io.BytesIO(ds.source.read_frame(seq, int(p)).image)).load()

    return best_rate(run, count, repeats)


def checksum_us(ds: MultiViewDataset, repeats: int) -> float:
    """Microseconds per frame of the per-row checksum check alone (xxh3-64 of image + depth + camera bytes, as
    ShardSource.read_frame recomputes it), over every frame of the split."""
    from vggt_train.data.shards.schema import payload_checksum

    frames = [ds.source.read_frame(s, p) for s in ds.sequences for p in range(ds.num_frames(s))]

    def run(n):
        for i in range(n):
            f = frames[i % len(frames)]
            payload_checksum(f.image, f.depth, f.extrinsic, f.intrinsic)

    return 1e6 / best_rate(run, max(len(frames), 50), repeats)


def decode_bound(ds: MultiViewDataset, views: int, repeats: int) -> float:
    jpegs = [bytes(ds.source.read_frame(s, p).image) for s in ds.sequences for p in range(ds.num_frames(s))]

    def run(n):
        for i in range(n * views):
            Image.open(io.BytesIO(jpegs[i % len(jpegs)])).load()  # decoded RGB; convert("RGB") would add a copy

    return best_rate(run, max(len(jpegs) // views, 10), repeats)


def loader_rate(ds: MultiViewDataset, views: int, workers: int, count: int, per_batch: int) -> float:
    """Samples/s arriving in the main process (unfinished) from `workers` workers, micro-batches of per_batch samples."""
    loader = make_loader(_stream(ds, views, False, seed=1, per_batch=per_batch), num_workers=workers, prefetch_factor=2,
                         pin_memory=False)
    it = iter(loader)
    for _ in range(2 * workers + 1):  # workers started and primed
        next(it)
    batches = max(3, -(-count // per_batch))
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * per_batch / (time.perf_counter() - t0)
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
    ap.add_argument("--loader-batch", type=int, default=8, help="samples per DataLoader micro-batch [default: 8]")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="cpu", help="one-process rows: CPU or wall time [default: cpu]")
    args = ap.parse_args()
    global clock
    clock = CLOCK[args.clock]

    torch.set_num_threads(1)  # what a DataLoader worker gets
    if args.co3d_dir:
        paths = {"co3d_dir": args.co3d_dir, "annotation_dir": args.annotation_dir, "shards": args.shards}
    else:
        os.makedirs(args.workdir, exist_ok=True)
        paths = prepare(args.workdir, args.size, args.sequences, args.frames)
    V, N, R = args.views, args.samples, args.repeats
    rows, res = [], {}

    def row(name, key, rate, note=""):
        res[key] = rate
        rows.append((name, rate, note))

    def shards(resample):
        return MultiViewDataset(paths["shards"], args.split, img_size=args.img_size, resample=resample)

    def raw(resample):
        return MultiViewDataset.from_raw(paths["co3d_dir"], paths["annotation_dir"], args.split, min_frames=1,
                                         img_size=args.img_size, resample=resample)

    shard_dev, shard_cpu, raw_dev, raw_cpu = shards("device"), shards("worker"), raw("device"), raw("worker")
    row("bound: JPEG decode only", "decode_bound", decode_bound(shard_dev, V, R), f"{V} decodes per sample")
    row("shards: worker stage, resize on the device", "shards_dev", pipeline_rate(shard_dev, V, N, R))
    if shard_dev.source.has_checksums:  # the same stage without the per-row check (what a schema-1 dataset costs)
        unchecked = shards("device")
        unchecked.source._rows.checksum = None
        row("shards: worker stage, resize on the device, no checksum check", "shards_dev_unchecked", pipeline_rate(unchecked, V, N, R))
    row("raw files: worker stage, resize on the device", "raw_dev", pipeline_rate(raw_dev, V, N, R))
    row("shards: worker stage, resize in the worker", "shards_cpu", pipeline_rate(shard_cpu, V, N, R))
    row("raw files: worker stage, resize in the worker", "raw_cpu", pipeline_rate(raw_cpu, V, N, R))
    row("shards: whole recipe in the worker", "shards_all", pipeline_rate(shard_cpu, V, N, R, finish=True))
    row("raw files: whole recipe in the worker (plain raw loader)", "raw_all", pipeline_rate(raw_cpu, V, N, R, finish=True))
    row("shards: read stage (fetch + full decode)", "shards_read", read_rate(shard_dev, V, N, R))
    row("raw files: read stage (JPEG + depth/mask PNG + clean-up)", "raw_read", read_rate(raw_dev, V, N, R))
    for w in [int(x) for x in args.workers.split(",") if x]:
        rate = loader_rate(shard_dev, V, w, 2 * N, args.loader_batch)
        row(f"shards: DataLoader, {w} worker{'s' if w > 1 else ''}, resize on the device", f"loader_w{w}", rate,
            f"{rate / w:.1f} per worker, {args.loader_batch} samples a batch")
    fin_cpu, fin_dev = finish_ms(shard_cpu, V, N, R), finish_ms(shard_dev, V, N, R)
    res.update(finish_ms_worker_resize=fin_cpu, finish_ms_device_resize=fin_dev)
    check_us = checksum_us(shard_dev, R)
    frame_us = 1e6 / (res["shards_dev"] * V)  # worker-stage time per frame, resize on the device (the cheapest stage)
    res.update(checksum_us_per_frame=check_us, checksum_share_of_worker_stage=check_us / frame_us)

    src = Image.open(io.BytesIO(bytes(shard_dev.source.read_frame(shard_dev.sequences[0], 0).image)))
    print(f"\n{V} views per sample at {args.img_size} px (aspect 1.0, augment), sources {src.size[1]}x{src.size[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.clock} clock\n")
    print("| per worker (one process, torch 1 thread) | samples/s | |")
    print("|---|---:|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:.1f} | {note} |")
    print(f"\nfinishing stage on this CPU (1 thread), per sample: {fin_cpu:.1f} ms (resize done in the worker), "
          f"{fin_dev:.1f} ms (with the resize)")
    print(f"per-row checksum check: {check_us:.1f} us per frame = {check_us / frame_us:.2%} of the worker stage's "
          f"{frame_us / 1e3:.2f} ms per frame (resize on the device)")
    print(f"shards / raw files, same split: {res['shards_dev'] / res['raw_dev']:.1f}x (resize on the device), "
          f"{res['shards_cpu'] / res['raw_cpu']:.1f}x (resize in the worker); read stage {res['shards_read'] / res['raw_read']:.1f}x")
    print(f"shards (resize on the device) / plain raw loader (whole recipe in the worker): {res['shards_dev'] / res['raw_all']:.1f}x; "
          f"/ the official loader's ~{OFFICIAL_LOADER:.0f} samples/s: {res['shards_dev'] / OFFICIAL_LOADER:.1f}x; "
          f"decode bound reached: {res['shards_dev'] / res['decode_bound']:.0%}")
    print(json.dumps({"bench": "data_throughput", "img_size": args.img_size, "views": V, "source_hw": [src.size[1], src.size[0]],
                      "clock": args.clock,
                      **{k: round(v, 2) for k, v in res.items()}}))


if __name__ == "__main__":
    main()
