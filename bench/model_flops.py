"""FLOPs of VGGT-1B per sample (2 x 518x518, the Ascend reference workload) and CPU forward/backward cost of the `small` preset.

Prints a table and one JSON line. FLOPs come from torch.utils.flop_counter on the meta device (exact shapes,
no memory); times and peak RSS are measured here on the CPU.
    python bench/model_flops.py [--small-size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from vggt_train.model import VGGT, preset_config
from vggt_train.model.flops import measure_flops


def small_cpu_cost(size: int, images: int, repeats: int) -> dict:
    torch.manual_seed(0)
    config = preset_config("small")
    config.track_head = None  # the training recipe runs camera + depth (+ point) heads
    model = VGGT(config).train()
    x = torch.rand(1, images, 3, size, size)
    fwd, bwd = [], []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(x)
        t1 = time.perf_counter()
        (out["depth"].mean() + out["pose_enc"].mean() + out["world_points"].mean()).backward()
        t2 = time.perf_counter()
        if i:  # the first iteration warms up allocator and kernels
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "forward_s": statistics.median(fwd),
        "backward_s": statistics.median(bwd),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = preset_config("vggt_1b")
    config.track_head = None
    with torch.device("meta"):
        big = VGGT(config)
    f = measure_flops(big, 2, 518, 518)
    tf = {k: v / 1e12 for k, v in f.items()}
    print("VGGT-1B, one sample of 2 images at 518x518 (TFLOP)")
    print(f"  {'aggregator forward':44s} {tf['aggregator_forward']:7.3f}")
    print(f"  {'  of which softmax attention':44s} {tf['aggregator_forward_attention']:7.3f}")
    print(f"  {'  without attention (official count: 4.98)':44s} {tf['aggregator_forward'] - tf['aggregator_forward_attention']:7.3f}")
    print(f"  {'camera+depth heads forward+backward (1.80)':44s} {tf['heads_forward_backward']:7.3f}")
    print(f"  {'frozen-aggregator training step':44s} {tf['frozen_aggregator_step']:7.3f}")

    cost = small_cpu_cost(args.small_size, args.images, args.repeats)
    print(f"\nsmall preset ({cost['params_m']:.1f} M params w/o track head), {args.images} x {args.small_size}px, "
          f"CPU {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  forward {cost['forward_s']:.3f} s   backward {cost['backward_s']:.3f} s   peak RSS {cost['peak_rss_gib']:.2f} GiB")
    print(json.dumps({"bench": "model_flops", "vggt_1b_tflop": tf, "small_cpu": cost, "small_size": args.small_size,
                      "images": args.images, "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
