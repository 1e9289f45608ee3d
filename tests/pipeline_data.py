"""Tiny synthetic Co3D, converted once per test session, shared by the tests/test_pipeline_*.py modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HW = (72, 96)  # source size (H, W): small, but large enough that resampling to 56-70 px is a real downscale


def tiny_dataset(base: Path, categories=("apple", "tv"), seed: int = 3, name: str = "pipeline_data") -> dict:
    """{"root": converted dataset, "co3d_dir", "annotation_dir"}: 2 categories x (2 train + 1 test) sequences x 24 frames.
    Another `name` (with other categories / seed) makes a second dataset beside it, e.g. to mix the two."""
    from vggt_train.data.shards.convert import Options, convert
    from vggt_train.data.synthetic import make_synthetic_co3d

    root = base / name
    raw, out = root / "raw", root / "hf"
    done = root / "done"
    if not done.exists():
        info = make_synthetic_co3d(str(raw), list(categories), sequences=2, test_sequences=1, frames=24, hw=HW, seed=seed)
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


def portrait_frames(ds, seq: str, count: int = 4) -> list:
    """The first `count` frames of `seq` rotated by 90 degrees (cameras adjusted exactly): portrait sources, for the
    landscape_check rotation."""
    import io

    from PIL import Image

    from vggt_train.data.pipeline.transforms import rotate_camera

    frames = []
    for p in range(count):
        f = ds.source.read_frame(seq, p)
        E, K = rotate_camera(f.extrinsic, f.intrinsic, f.depth.shape, 1)
        img = np.rot90(np.asarray(Image.open(io.BytesIO(f.image)).convert("RGB")), 1)
        frames.append({"image": np.ascontiguousarray(img), "depth": np.ascontiguousarray(np.rot90(f.depth, 1)), "extrinsic": E,
                       "intrinsic": K})
    return frames


def reference_batch(ds, specs, aspect_ratio: float, normalize: bool) -> dict:
    """The recipe done view by view on the CPU with the per-view reference functions, as the workers did it before
    the finishing stage existed: PIL resize (+ rotation), float image + JitterDraw, float32 depth, points from
    geometry.depth_to_*_points, then geometry.normalize_batch. Clean data only (no frame replacement)."""
    from vggt_train.data.pipeline.transforms import image_size_hw, open_image, plan_view, resample_depth, resample_image, rotate_camera
    from vggt_train.geometry import depth_to_cam_points, depth_to_world_points, normalize_batch

    hw = ds.target_shape(aspect_ratio)
    keys = ("images", "depths", "extrinsics", "intrinsics")
    samples = []
    for spec in specs:
        views, jitters = ds._draws(spec, len(spec.frame_ids))
        parts = {k: [] for k in keys}
        for draw, jitter, pos in zip(views, jitters, spec.frame_ids):
            frame = ds.source.read_frame(spec.sequence, pos)
            img = open_image(frame.image)
            plan = plan_view(image_size_hw(img), frame.intrinsic, hw, draw)
            image = np.asarray(resample_image(img, plan, ds.use_draft))
            depth = resample_depth(frame.depth, plan)
            extri, intri = np.asarray(frame.extrinsic, np.float64), plan.intrinsic
            if plan.rot90_k:
                image, depth = np.rot90(image, plan.rot90_k), np.rot90(depth, plan.rot90_k)
                extri, intri = rotate_camera(extri, intri, plan.out_hw, plan.rot90_k)
            parts["images"].append(jitter(torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255.0)))
            parts["depths"].append(torch.from_numpy(depth.copy()))
            parts["extrinsics"].append(torch.tensor(extri, dtype=torch.float32))
            parts["intrinsics"].append(torch.tensor(intri, dtype=torch.float32))
        samples.append({k: torch.stack(v) for k, v in parts.items()})
    batch = {k: torch.stack([s[k] for s in samples]) for k in keys}
    batch["point_masks"] = batch["depths"] > 0
    batch["cam_points"] = depth_to_cam_points(batch["depths"], batch["intrinsics"])
    batch["world_points"] = depth_to_world_points(batch["depths"], batch["extrinsics"], batch["intrinsics"])
    return normalize_batch(batch) if normalize else batch
