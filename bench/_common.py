"""Shared helpers of the benchmarks: a tiny converted synthetic Co3D, and the CPU's measured fp32 GEMM peak."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch


def synthetic_shards(root: Path, size: str = "168x224", sequences: int = 2, frames: int = 24) -> Path:
    """make-synthetic-co3d + convert-co3d into root (reused when already there); returns the dataset root."""
    shards = root / "shards"
    if (shards / "manifest.json").exists():
        return shards
    run = [sys.executable, "-m", "vggt_train"]
    subprocess.run(run + ["make-synthetic-co3d", "--out", str(root / "raw"), "--categories", "tv", "--sequences", str(sequences),
                          "--test-sequences", "1", "--frames", str(frames), "--size", size], check=True, capture_output=True)
    subprocess.run(run + ["convert-co3d", "--co3d-dir", str(root / "raw" / "co3d"), "--annotation-dir", str(root / "raw" / "annotations"),
                          "--out", str(shards), "--quiet"], check=True, capture_output=True)
    return shards


def fp32_gemm_peak_tflops(n: int = 2048, repeats: int = 5) -> float:
    """Best observed fp32 matmul throughput of this machine with torch's current thread count (TFLOP/s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12
