"""convert-colmap and convert-vkitti2 throughput (frames/s) on synthetic inputs, against a one-core read bound.

1. Writes a synthetic COLMAP workspace (default 480x640, binary model, dense depth maps) and a synthetic Virtual KITTI 2
   scene (default 375x1242, the release's size, stereo pair), then hard-links copies of them under new names
   (rendering costs seconds a frame, converting tens of ms), so each format has `frames x copies` frames to convert.
2. Bound: one core reading every frame the way the converter must (JPEG decode + the format's depth reader).
3. The conversion commands (in this process, as `vggt-train ...` runs them) with --workers 1 and 2, and one run with
   --max-side (re-encodes the JPEGs). The time includes planning, finalising and, for 2 workers, starting them.
Prints a table and one JSON line.
    python bench/convert_formats_throughput.py [--colmap-size 480x640] [--vkitti-size 375x1242] [--frames 12]
        [--copies 16] [--workers 1,2] [--max-side 518]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time

from PIL import Image

from vggt_train.cli import main as cli_main
from vggt_train.data.sources import colmap, vkitti2
from vggt_train.data.synthetic_colmap import make_synthetic_colmap
from vggt_train.data.synthetic_vkitti2 import make_synthetic_vkitti2


def _link_copy(src: str, dst: str) -> None:
    shutil.copytree(src, dst, copy_function=os.link)


def make_colmap(root: str, hw: tuple, frames: int, copies: int) -> str:
    """root/scenes/scene_000 ... scene_<copies-1>: one rendered workspace and hard-linked copies of it."""
    scenes = os.path.join(root, "scenes")
    make_synthetic_colmap(scenes, workspaces=1, frames=frames, size=hw, seed=0)
    for c in range(1, copies):
        _link_copy(os.path.join(scenes, "scene_000"), os.path.join(scenes, f"scene_{c:03d}"))
    return scenes


def make_vkitti(root: str, hw: tuple, frames: int, copies: int) -> str:
    """root/vk/Scene01 (clone, cameras 0 and 1, frames/2 frames each) and hard-linked copies Scene02, ..."""
    vk = os.path.join(root, "vk")
    make_synthetic_vkitti2(vk, scenes=("Scene01",), variations=("clone",), cameras=(0, 1), frames=max(1, frames // 2),
                           size=hw, seed=0)
    for c in range(1, copies):
        _link_copy(os.path.join(vk, "Scene01"), os.path.join(vk, f"Scene{c + 1:02d}"))
    return vk


def read_bound(fmt: str, root: str) -> dict:
    """frames/s of one core decoding every frame's JPEG and reading its depth with the format's reader."""
    if fmt == "colmap":
        frames = [f for _n, ws in colmap.list_workspaces(root) for f in colmap.read_workspace(root, ws)]
        read_depth = colmap.read_depth
    else:
        frames = [f for _n, s, v, c in vkitti2.list_sequences(root) for f in vkitti2.read_sequence(root, s, v, c)]
        read_depth = vkitti2.read_depth
    t0 = time.perf_counter()
    for f in frames:
        with open(f.image_path, "rb") as fh:
            Image.open(io.BytesIO(fh.read())).load()
        read_depth(f)
    dt = time.perf_counter() - t0
    return {"frames": len(frames), "fps": len(frames) / dt}


def convert_fps(fmt: str, src: str, out: str, workers: int, max_side: int | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    argv = (["convert-colmap", "--input", src] if fmt == "colmap" else
            ["convert-vkitti2", "--vkitti-dir", src, "--min-frames", "1"])
    argv += ["--out", out, "--workers", str(workers), "--quiet"] + (["--max-side", str(max_side)] if max_side else [])
    t0 = time.perf_counter()
    rc = cli_main(argv)
    dt = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit status {rc}")
    with open(os.path.join(out, "report.json")) as f:
        split = json.load(f)["splits"]["train"]
    shutil.rmtree(out, ignore_errors=True)
    return {"format": fmt, "workers": workers, "max_side": max_side, "frames": split["frames"], "seconds": dt,
            "fps": split["frames"] / dt, "mb_per_frame": split["bytes"] / split["frames"] / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--colmap-size", default="480x640", help="HxW of the COLMAP frames [480x640]")
    p.add_argument("--vkitti-size", default="375x1242", help="HxW of the Virtual KITTI 2 frames [375x1242]")
    p.add_argument("--frames", type=int, default=12, help="rendered frames per format (VKITTI2: split over 2 cameras) [12]")
    p.add_argument("--copies", type=int, default=16, help="hard-linked copies of the rendered scene to convert [16]")
    p.add_argument("--workers", default="1,2", help="comma list of --workers values to time [1,2]")
    p.add_argument("--max-side", type=int, default=518, help="also time a resizing conversion, 1 worker (0: skip) [518]")
    args = p.parse_args()
    sizes = {"colmap": tuple(int(x) for x in args.colmap_size.split("x")),
             "vkitti2": tuple(int(x) for x in args.vkitti_size.split("x"))}
    import datasets  # imported up front so that its import time is not charged to the first timed run

    datasets.disable_progress_bars()
    bounds, runs, gen = {}, [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, make in (("colmap", make_colmap), ("vkitti2", make_vkitti)):
            t0 = time.perf_counter()
            src = make(os.path.join(tmp, fmt), sizes[fmt], args.frames, args.copies)
            gen[fmt] = time.perf_counter() - t0
            bounds[fmt] = read_bound(fmt, src)
            for w in args.workers.split(","):
                runs.append(convert_fps(fmt, src, os.path.join(tmp, f"out-{fmt}"), int(w), None))
            if args.max_side:
                runs.append(convert_fps(fmt, src, os.path.join(tmp, f"out-{fmt}"), 1, args.max_side))
    print(f"synthetic inputs ({os.cpu_count()} CPUs): COLMAP {bounds['colmap']['frames']} frames "
          f"{sizes['colmap'][0]}x{sizes['colmap'][1]} (rendered in {gen['colmap']:.0f} s), Virtual KITTI 2 "
          f"{bounds['vkitti2']['frames']} frames {sizes['vkitti2'][0]}x{sizes['vkitti2'][1]} (rendered in "
          f"{gen['vkitti2']:.0f} s)\n")
    print("| format | what | frames/s | MB/frame stored |\n|---|---|---:|---:|")
    for fmt in ("colmap", "vkitti2"):
        print(f"| {fmt} | bound: one core, JPEG decode + depth read | {bounds[fmt]['fps']:.0f} | |")
        for r in (r for r in runs if r["format"] == fmt):
            what = f"convert-{fmt} --workers {r['workers']}" + (f" --max-side {r['max_side']}" if r["max_side"] else "")
            print(f"| {fmt} | {what} | {r['fps']:.0f} | {r['mb_per_frame']:.2f} |")
    print(json.dumps({"bench": "convert_formats_throughput", "sizes": {k: list(v) for k, v in sizes.items()},
                      "bound": bounds, "convert": runs, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
