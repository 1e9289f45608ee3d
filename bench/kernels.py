"""Time and memory of each kernel op x available backend at VGGT-1B shapes (scaled to the machine).

VGGT-1B: 16 heads of 64 channels, 518x518 images -> 37x37 patches + 5 special tokens = 1374 tokens per frame.
    attention frame   q/k/v [S, 16, 1374, 64]        (one frame per batch row, S frames)
    attention global  q/k/v [1, 16, S * 1374, 64]    (all frames' tokens together)
    rope              x [S, 16, 1374, 32], cos/sin [1, 1, 1374, 32]   (one of the 4 calls per block)
    adamw             one step over the parameters of N aggregator blocks (12.6 M each; the model has 48)
Forward + backward for attention/rope, one optimizer step for adamw. Each op x backend x dtype runs in its own
process, so its peak memory is its own: peak extra RSS on the CPU, max_memory_allocated beyond the inputs on
CUDA/NPU. Times: best and median of the repeats (on a shared machine the best is the stable one). Prints a
table and one JSON line.
    python bench/kernels.py [--frames 2] [--blocks 2] [--dtypes float32,bfloat16] [--device cpu|cuda|npu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

TOKENS_PER_FRAME = 37 * 37 + 5
HEADS, HEAD_DIM = 16, 64
BLOCK_SHAPES = [  # one aggregator block of VGGT-1B (embed 1024, MLP 4096, QK-norm over 64)
    (3072, 1024), (3072,), (1024, 1024), (1024,), (4096, 1024), (4096,), (1024, 4096), (1024,),
    (1024,), (1024,), (1024,), (1024,), (1024,), (1024,), (64,), (64,), (64,), (64,),
]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "npu":
        torch.npu.synchronize()


def _peak_bytes(device: str) -> int:
    if device == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return getattr(torch, device).max_memory_allocated()


def _current_bytes(device: str) -> int:
    if device == "cpu":  # resident set size now (the peak so far may include freed input temporaries)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return getattr(torch, device).memory_allocated()


def _reset_peak(device: str) -> None:
    if device != "cpu":
        getattr(torch, device).reset_peak_memory_stats()


def _make_case(op: str, case: str, dtype: torch.dtype, device: str, frames: int, blocks: int):
    """(callable running one iteration, description)."""
    g = torch.Generator().manual_seed(0)
    if op == "attention":
        shape = (frames, HEADS, TOKENS_PER_FRAME, HEAD_DIM) if case == "frame" else (1, HEADS, frames * TOKENS_PER_FRAME, HEAD_DIM)
        q, k, v = (torch.randn(*shape, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
        grad = torch.randn(*shape, generator=g).to(device, dtype)

        def run(fn):
            for t in (q, k, v):
                t.grad = None
            fn(q, k, v, None).backward(grad)

        return run, f"[{', '.join(map(str, shape))}]"
    if op == "rope":
        shape = (frames, HEADS, TOKENS_PER_FRAME, HEAD_DIM // 2)
        x = torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()
        angles = torch.rand(1, 1, TOKENS_PER_FRAME, HEAD_DIM // 4, generator=g) * 6.28
        cos = torch.cat([angles.cos()] * 2, -1).to(device, dtype)
        sin = torch.cat([angles.sin()] * 2, -1).to(device, dtype)
        grad = torch.randn(*shape, generator=g).to(device, dtype)

        def run(fn):
            x.grad = None
            fn(x, cos, sin).backward(grad)

        return run, f"[{', '.join(map(str, shape))}]"
    if op == "adamw":
        params = [torch.nn.Parameter(torch.randn(*s, generator=g).to(device, dtype)) for _ in range(blocks) for s in BLOCK_SHAPES]
        for p in params:
            p.grad = torch.randn_like(p)
        state = {}

        def run(fn):
            if "opt" not in state:
                state["opt"] = fn(params, 1e-4, (0.9, 0.999), 1e-8, 0.05)
            state["opt"].step()

        return run, f"{sum(p.numel() for p in params) / 1e6:.1f} M params ({blocks} blocks)"
    raise KeyError(op)


def run_one(op: str, case: str, backend: str, dtype_name: str, device: str, frames: int, blocks: int, repeats: int) -> dict:
    """One op x backend x dtype in this process: best and median of `repeats` after 2 warm-ups, peak extra memory."""
    from vggt_train.kernels import OPS

    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    fn = OPS[op].reference if backend == "reference" else OPS[op].backends[backend].fn
    step, desc = _make_case(op, case, dtype, device, frames, blocks)
    _sync(device)
    _reset_peak(device)
    before = _current_bytes(device)
    result = {"op": op, "case": case, "backend": backend, "dtype": dtype_name, "device": device, "shape": desc}
    t0 = time.perf_counter()
    for _ in range(2):  # warm-up (allocator, page faults, the optimiser's state); its peak is the op's memory
        step(fn)
    _sync(device)
    result["warmup_s"] = time.perf_counter() - t0
    result["peak_extra_mib"] = (_peak_bytes(device) - before) / 2**20
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(fn)
        _sync(device)
        times.append(time.perf_counter() - t0)
    result["median_s"] = statistics.median(times)
    result["best_s"] = min(times)
    return result


def _default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    try:
        import torch_npu  # noqa: F401

        if torch.npu.is_available():
            return "npu"
    except Exception:
        pass
    return "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda or npu (default: the accelerator if any)")
    parser.add_argument("--frames", type=int, default=None, help="frames S (default 2 on CPU, 8 on an accelerator: the reference global attention at 24 frames needs ~70 GB)")
    parser.add_argument("--blocks", type=int, default=None, help="aggregator blocks for adamw (default 2 on CPU, 48 on an accelerator)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--ops", default="attention,rope,adamw")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", nargs=4, metavar=("OP", "CASE", "BACKEND", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device or _default_device()
    frames = args.frames or (2 if device == "cpu" else 8)
    blocks = args.blocks or (2 if device == "cpu" else 48)

    if args.one:  # child process: one measurement, printed as JSON
        if device == "npu":
            import torch_npu  # noqa: F401
        print(json.dumps(run_one(*args.one, device, frames, blocks, args.repeats)))
        return

    from vggt_train.kernels import OPS
    from vggt_train.kernels.registry import availability

    jobs = []
    for op in args.ops.split(","):
        backends = ["reference"] + [b for b, be in OPS[op].backends.items() if b == device and availability(be)[0]]
        if device == "cpu":
            backends = ["reference"] + (["cpu"] if "cpu" in OPS[op].backends else [])
        cases = ["frame", "global"] if op == "attention" else ["-"]
        dtypes = ["float32"] if op == "adamw" else args.dtypes.split(",")  # master weights are float32
        jobs += [(op, case, b, dt) for case in cases for dt in dtypes for b in backends]

    results = []
    env = dict(os.environ, VGGT_KERNELS="")
    for op, case, backend, dtype in jobs:
        cmd = [sys.executable, __file__, "--one", op, case, backend, dtype, "--device", device, "--frames", str(frames),
               "--blocks", str(blocks), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            results.append({"op": op, "case": case, "backend": backend, "dtype": dtype, "device": device,
                            "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"  done {op} {case} {backend} {dtype}: " + (r.get("error") or f"{r['best_s'] * 1e3:.1f} ms"), file=sys.stderr)

    name = torch.cuda.get_device_name() if device == "cuda" else f"{device}, {torch.get_num_threads()} threads"
    print(f"kernel ops x backends on {name}, torch {torch.__version__}; {frames} frames of 518x518 "
          f"({TOKENS_PER_FRAME} tokens/frame), {args.repeats} timed runs after 2 warm-ups; 'vs ref' compares best times")
    header = (f"{'op':9s} {'case':6s} {'shape':26s} {'dtype':8s} {'backend':9s} {'best ms':>9s} {'median ms':>9s} "
              f"{'vs ref':>7s} {'peak MiB':>9s}")
    print(header)
    print("-" * len(header))
    ref_time = {(r["op"], r["case"], r["dtype"]): r.get("best_s") for r in results if r["backend"] == "reference"}
    for r in results:
        if "error" in r:
            print(f"{r['op']:9s} {r['case']:6s} {'':26s} {r['dtype']:8s} {r['backend']:9s} error: {r['error']}")
            continue
        ref = ref_time.get((r["op"], r["case"], r["dtype"]))
        speedup = f"{ref / r['best_s']:.2f}x" if ref else "-"
        print(f"{r['op']:9s} {r['case']:6s} {r['shape']:26s} {r['dtype']:8s} {r['backend']:9s} "
              f"{r['best_s'] * 1e3:9.1f} {r['median_s'] * 1e3:9.1f} {speedup:>7s} {r['peak_extra_mib']:9.0f}")
    print(json.dumps({"bench": "kernels", "device": device, "frames": frames, "blocks": blocks, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
