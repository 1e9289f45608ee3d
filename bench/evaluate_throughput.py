"""Evaluation throughput of `vggt-train evaluate` on the CPU: sequences/s of the `small` preset under the official
protocol (10 frames a sequence, 518 px wide) on a synthetic converted test split.

Prints a table and one JSON line. The model has random weights (speed does not depend on them); the loop is the
command's own (evaluate.evaluate_plan: shard read + JPEG decode + bicubic resize, forward in float32, scoring),
timed after one warm-up sequence; model loading and start-up are not included.
    python bench/evaluate_throughput.py [--sequences 3] [--frames 10] [--img-size 518] [--size 300x400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vggt_train.data.sources.shards import ShardSource, resolve_split_dir
from vggt_train.evaluation import evaluate
from vggt_train.evaluation.evaluate import _read_views  # timed alone: the input side of the loop


def _dataset(root: Path, sequences: int, frames: int, size: str) -> Path:
    run = [sys.executable, "-m", "vggt_train"]
    subprocess.run(run + ["make-synthetic-co3d", "--out", str(root / "raw"), "--categories", "tv", "--sequences", "1",
                          "--test-sequences", str(sequences + 1), "--frames", str(frames), "--size", size], check=True,
                   capture_output=True)
    subprocess.run(run + ["convert-co3d", "--co3d-dir", str(root / "raw" / "co3d"), "--annotation-dir",
                          str(root / "raw" / "annotations"), "--out", str(root / "shards"), "--quiet"], check=True, capture_output=True)
    return root / "shards"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=3, help="timed sequences (one more is the warm-up)")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--img-size", type=int, default=518)
    parser.add_argument("--size", default="300x400", help="stored frame size HxW of the synthetic sequences")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = _dataset(Path(tmp), args.sequences, 24, args.size)
        options = evaluate.EvalOptions(checkpoint="random", data=str(data), preset="small", frames=args.frames,
                                       min_frames=args.frames, img_size=args.img_size)
        source = ShardSource(resolve_split_dir(str(data), "test"))
        plan = evaluate.make_plan(source, options)
        torch.manual_seed(0)
        model = evaluate.VGGT.from_preset("small", point_head=None, track_head=None).eval()
        device = torch.device("cpu")

        warm = evaluate.Plan(sequences=plan.sequences[:1])
        timed = evaluate.Plan(sequences=plan.sequences[1:1 + args.sequences])
        evaluate.evaluate_plan(model, source, warm, options, device, progress=False)
        t0 = time.perf_counter()
        for seq in timed.sequences:
            images, _, _ = _read_views(source, seq, args.img_size)
        read_s = (time.perf_counter() - t0) / len(timed.sequences)
        t0 = time.perf_counter()
        evaluate.evaluate_plan(model, source, timed, options, device, progress=False)
        total_s = (time.perf_counter() - t0) / len(timed.sequences)

    result = {
        "bench": "evaluate_throughput", "preset": "small", "device": "cpu", "threads": torch.get_num_threads(),
        "sequences": len(timed.sequences), "frames": args.frames, "input_hw": list(images.shape[-2:]),
        "source_hw": args.size, "read_preprocess_s_per_seq": round(read_s, 4),
        "total_s_per_seq": round(total_s, 4), "sequences_per_s": round(1.0 / total_s, 4),
    }
    rows = [
        ("sequences timed", f"{result['sequences']} x {args.frames} frames, input {result['input_hw'][0]}x{result['input_hw'][1]}"),
        ("read + decode + preprocess, s/seq", f"{read_s:.3f}"),
        ("whole loop (read, forward fp32, score), s/seq", f"{total_s:.3f}"),
        ("sequences/s", f"{1.0 / total_s:.3f}"),
        ("torch threads", str(result["threads"])),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'evaluate, small preset, CPU':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
