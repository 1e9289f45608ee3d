"""Co3D conversion throughput (frames/s per worker) against the decode+re-encode bound, and depth read speed.

1. Writes a synthetic Co3D set (default 600x800, Co3D-like) with make-synthetic-co3d.
2. Bound: one core only decoding and re-encoding (JPEG q95) the same images, plus decoding depth/mask PNGs.
3. convert-co3d with --workers 1 and 2 (and --max-side 512, which re-encodes), frames/s and per worker, and what a
   resume with --rehash-finished adds: re-hashing the finished shards (just written, so from the page cache).
4. Read speed of one 600x800 float16 depth per row, for the storage layouts we considered.
Prints tables and one JSON line.
    python bench/convert_throughput.py [--size 600x800] [--sequences 2] [--frames 24] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from vggt_train.data.shards.convert import Options, convert, read_manifests
from vggt_train.data.synthetic import make_synthetic_co3d


def replicate(raw: dict, copies: int) -> None:
    """Hard-link the rendered sequences under new names: rendering 600x800 costs ~1.7 s a frame, converting ~10 ms."""
    import gzip

    for ann_path in glob.glob(os.path.join(raw["annotation_dir"], "*.jgz")):
        with gzip.open(ann_path) as f:
            ann = json.loads(f.read())
        for name, entries in list(ann.items()):
            category = entries[0]["filepath"].split("/")[0]
            for c in range(1, copies):
                new = f"{name}_copy{c}"
                src, dst = os.path.join(raw["co3d_dir"], category, name), os.path.join(raw["co3d_dir"], category, new)
                shutil.copytree(src, dst, copy_function=os.link)
                ann[new] = [dict(e, filepath=e["filepath"].replace(f"/{name}/", f"/{new}/")) for e in entries]
        with gzip.open(ann_path, "wb") as f:
            f.write(json.dumps(ann).encode())


def bound(co3d_dir: str) -> dict:
    jpgs = sorted(glob.glob(os.path.join(co3d_dir, "*", "*", "images", "*.jpg")))
    data = [open(p, "rb").read() for p in jpgs]
    pngs = [(open(p.replace("/images", "/depths") + ".geometric.png", "rb").read(),
             open(p.replace("/images", "/depth_masks").replace(".jpg", ".png"), "rb").read()) for p in jpgs]
    t0 = time.perf_counter()
    for d in data:
        Image.open(io.BytesIO(d)).load()
    dec = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d in data:
        im = Image.open(io.BytesIO(d))
        im.load()
        im.save(io.BytesIO(), format="JPEG", quality=95)
    decenc = time.perf_counter() - t0
    t0 = time.perf_counter()
    for dp, mp in pngs:
        Image.open(io.BytesIO(dp)).load()
        Image.open(io.BytesIO(mp)).load()
    png = time.perf_counter() - t0
    n = len(data)
    return {"frames": n, "jpeg_decode_fps": n / dec, "jpeg_decode_encode_fps": n / decenc, "png_decode_fps": n / png,
            "decode_encode_plus_png_fps": n / (decenc + png), "mean_jpeg_kb": sum(map(len, data)) / n / 1e3}


def convert_fps(raw: dict, workers: int, max_side: int | None, tmp: str) -> dict:
    out = os.path.join(tmp, f"out-w{workers}-m{max_side}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = convert(Options(raw["co3d_dir"], raw["annotation_dir"], out, workers=workers, max_side=max_side,
                              splits=("train",), quiet=True))
    dt = time.perf_counter() - t0
    frames = sum(s["frames"] for s in summary["splits"].values())
    nbytes = sum(s["bytes"] for s in summary["splits"].values())
    with open(os.path.join(out, "_convert", "plan.json")) as f:
        fingerprint = json.load(f)["fingerprint"]
    t0 = time.perf_counter()
    _entries, rejected = read_manifests(out, fingerprint, rehash=True)
    rehash = time.perf_counter() - t0
    assert not rejected, rejected
    shutil.rmtree(out, ignore_errors=True)
    return {"workers": workers, "max_side": max_side, "frames": frames, "seconds": dt, "fps": frames / dt,
            "fps_per_worker": frames / dt / workers, "mb_per_frame": nbytes / frames / 1e6, "rehash_seconds": rehash,
            "rehash_mb_per_s": nbytes / rehash / 1e6}


def _time(fn, n: int) -> float:
    fn(0)
    ts = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def read_speed(tmp: str, hw: tuple[int, int], rows: int = 6) -> list[dict]:
    """ms to get one row's depth as an [H, W] array, per storage layout and datasets format."""
    import datasets

    from vggt_train.data.shards.schema import decode_depth

    h, w = hw
    rng = np.random.default_rng(0)
    depths = [rng.uniform(0.5, 10, hw).astype(np.float16) for _ in range(rows)]
    res = []

    def build(name, feats, column):
        path = os.path.join(tmp, f"read-{name}")
        datasets.Dataset.from_dict(column, features=datasets.Features(feats)).save_to_disk(path)
        return datasets.load_from_disk(path)

    nested = build("nested", {"depth": datasets.Sequence(datasets.Sequence(datasets.Value("float16")))},
                   {"depth": [d.tolist() for d in depths[:2]]})
    res.append({"layout": "nested lists Sequence(Sequence(float16))", "format": "python (default)",
                "ms": _time(lambda i: np.asarray(nested[i % 2]["depth"], np.float16), 3)})
    res.append({"layout": "nested lists Sequence(Sequence(float16))", "format": "numpy",
                "ms": _time(lambda i: nested.with_format("numpy")[i % 2]["depth"], 3)})
    fixed = build("fixed", {"depth": datasets.Array2D((h, w), "float16")}, {"depth": [d for d in depths]})
    fx = fixed.with_format("numpy")
    res.append({"layout": f"Array2D(({h}, {w}), float16) (fixed shape only)", "format": "numpy",
                "ms": _time(lambda i: fx[i % rows]["depth"], 10)})
    binary = build("binary", {"depth": datasets.Value("binary"), "height": datasets.Value("int32"), "width": datasets.Value("int32")},
                   {"depth": [d.tobytes() for d in depths], "height": [h] * rows, "width": [w] * rows})
    res.append({"layout": "binary + height/width (ours)", "format": "python (default) + decode_depth",
                "ms": _time(lambda i: decode_depth(binary[i % rows]), 20)})
    bn = binary.with_format("numpy")
    res.append({"layout": "binary + height/width (ours)", "format": "numpy + decode_depth",
                "ms": _time(lambda i: decode_depth(bn[i % rows]), 20)})
    ba = binary.with_format("arrow")

    def arrow_row(i):
        t = ba[i % rows:i % rows + 1]
        return decode_depth({c: t.column(c)[0] for c in ("depth", "height", "width")})

    res.append({"layout": "binary + height/width (ours)", "format": "arrow + decode_depth (zero-copy)",
                "ms": _time(arrow_row, 20)})
    buf = io.BytesIO()
    Image.fromarray((rng.random((h, w, 3)) * 40 + np.linspace(0, 200, w)[None, :, None]).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    jpeg = buf.getvalue()
    res.append({"layout": "for scale: decode the frame's JPEG", "format": "PIL",
                "ms": _time(lambda i: np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")), 10)})
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="600x800", help="HxW of the synthetic frames [600x800]")
    p.add_argument("--sequences", type=int, default=2, help="rendered sequences [2]")
    p.add_argument("--frames", type=int, default=24, help="frames per sequence [24]")
    p.add_argument("--copies", type=int, default=4, help="hard-linked copies of each rendered sequence to convert [4]")
    p.add_argument("--workers", default="1,2", help="comma list of --workers values to time [1,2]")
    p.add_argument("--max-side", type=int, default=512, help="also time a resizing conversion (0: skip) [512]")
    args = p.parse_args()
    hw = tuple(int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        raw = make_synthetic_co3d(os.path.join(tmp, "raw"), ["apple"], args.sequences, 0, args.frames, hw, seed=0)
        gen_s = time.perf_counter() - t0
        replicate(raw, args.copies)
        import datasets  # imported up front so that its import time is not charged to the first timed run

        datasets.disable_progress_bars()
        b = bound(raw["co3d_dir"])
        runs = [convert_fps(raw, int(w), None, tmp) for w in args.workers.split(",")]
        if args.max_side:
            runs.append(convert_fps(raw, 1, args.max_side, tmp))
        reads = read_speed(tmp, hw)
    print(f"synthetic set: {b['frames']} frames ({args.sequences} rendered sequences x {args.copies} copies) {hw[0]}x{hw[1]}, mean JPEG {b['mean_jpeg_kb']:.0f} KB, rendered in {gen_s:.1f}s "
          f"({os.cpu_count()} CPUs)\n")
    print("| what (one core unless said) | frames/s | frames/s per worker |\n|---|---:|---:|")
    print(f"| bound: JPEG decode only | {b['jpeg_decode_fps']:.0f} | |")
    print(f"| bound: JPEG decode + re-encode (q95) | {b['jpeg_decode_encode_fps']:.0f} | |")
    print(f"| bound: JPEG decode + re-encode + depth/mask PNG decode | {b['decode_encode_plus_png_fps']:.0f} | |")
    for r in runs:
        what = f"convert-co3d --workers {r['workers']}" + (f" --max-side {r['max_side']}" if r["max_side"] else "")
        print(f"| {what} ({r['mb_per_frame']:.2f} MB/frame stored) | {r['fps']:.0f} | {r['fps_per_worker']:.0f} |")
    r = runs[0]
    print(f"\nresume --rehash-finished: re-hashing all {r['frames'] * r['mb_per_frame']:.0f} MB of finished shards took "
          f"{r['rehash_seconds']:.2f} s ({r['rehash_mb_per_s']:.0f} MB/s, {100 * r['rehash_seconds'] / r['seconds']:.1f}% of "
          f"the conversion time of --workers {r['workers']})")
    print(f"\n| depth {hw[0]}x{hw[1]} float16, one row | datasets format | ms |\n|---|---|---:|")
    for r in reads:
        print(f"| {r['layout']} | {r['format']} | {r['ms']:.2f} |")
    print(json.dumps({"bench": "convert_throughput", "size": list(hw), "bound": b, "convert": runs, "read_ms": reads,
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
