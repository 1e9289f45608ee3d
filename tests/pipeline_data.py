"""Tiny synthetic Co3D, converted once per test session, shared by the tests/test_pipeline_*.py modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HW = (72, 96)  # source size (H, W): small, but large enough that resampling to 56-70 px is a real downscale


def tiny_dataset(base: Path) -> dict:
    """{"root": converted dataset, "co3d_dir", "annotation_dir"}: 2 categories x (2 train + 1 test) sequences x 24 frames."""
    from vggt_train.data.convert import Options, convert
    from vggt_train.data.synthetic import make_synthetic_co3d

    root = base / "pipeline_data"
    raw, out = root / "raw", root / "hf"
    done = root / "done"
    if not done.exists():
        info = make_synthetic_co3d(str(raw), ["apple", "tv"], sequences=2, test_sequences=1, frames=24, hw=HW, seed=3)
        convert(Options(co3d_dir=info["co3d_dir"], annotation_dir=info["annotation_dir"], out=str(out), quiet=True))
        done.write_text("ok")
    return {"root": str(out), "co3d_dir": str(raw / "co3d"), "annotation_dir": str(raw / "annotations")}


def reprojection_errors(world_a: torch.Tensor, mask_a: torch.Tensor, extri_b, intri_b, depth_b) -> np.ndarray:
    """|z_b(X) - depth_b(project_b(X))| / depth_b for valid points X of view a that land on valid pixels of view b."""
    from vggt_train.geometry import project_world_points

    pts = world_a[mask_a].double()[None, None]
    uv, z = project_world_points(pts, extri_b.double(), intri_b.double())
    uv, z = uv[0, 0], z[0, 0]
    H, W = depth_b.shape
    u, v = uv[:, 0].round().long(), uv[:, 1].round().long()
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (z > 0)
    d = depth_b[v[inside], u[inside]].double()
    ok = d > 0
    return ((z[inside][ok] - d[ok]).abs() / d[ok]).numpy()


def rss_anon(pid: int) -> int:
    """Private (anonymous) resident memory of a process in bytes; file-backed mmap pages of the shards excluded."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc status")


def corrupt_bytes_in_file(path: str, needle: bytes, replacement: bytes) -> None:
    """Overwrite the first occurrence of `needle` (e.g. one row's JPEG header) inside a shard file, in place."""
    data = bytearray(Path(path).read_bytes())
    at = data.find(needle)
    assert at >= 0, "needle not found"
    data[at:at + len(replacement)] = replacement
    Path(path).write_bytes(bytes(data))
