"""Write synthetic COLMAP workspaces of synthetic.py's procedural scenes: images, a sparse model, dense depth maps.

Layout of each workspace (what `colmap image_undistorter` + `patch_match_stereo` leave behind):
  <out>/scene_000/images/frame0001.jpg
  <out>/scene_000/sparse/0/{cameras,images,points3D}.{bin|txt}
  <out>/scene_000/stereo/depth_maps/frame0001.jpg.geometric.bin      (when dense_depth)

The scenes are rendered with OpenCV cameras and integer pixel centres (synthetic.py); the model stores them in
COLMAP's conventions (camera-from-world quaternion w-first, pixel centres at +0.5), so reading the workspace back
must give the rendering cameras exactly. Written by our own writer (colmap_model), so pycolmap is not needed.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image as PILImage

from vggt_train.data.sources.colmap_model import (Camera, Image, Model, Point3D, rotmat_to_qvec, write_depth_map,
                                                  write_model)
from vggt_train.data.synthetic import make_scene, orbit_cameras, render

_SALT = 0xC0143A  # keeps these scenes apart from synthetic.py's for the same seed
_POINTS_PER_WORKSPACE = 24


def _observations(points: np.ndarray, extrinsic: np.ndarray, intrinsic: np.ndarray, depth: np.ndarray):
    """(visible [N] bool, uv [N, 2] in integer-pixel-centre coordinates) of world points [N, 3] in one view: in
    front, inside the image and not hidden (the rendered depth at the nearest pixel agrees within 1 %)."""
    cam = points @ extrinsic[:, :3].T + extrinsic[:, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ intrinsic.T)[:, :2] / z[:, None]
    h, w = depth.shape
    px = np.clip(np.round(uv).astype(np.int64), 0, [w - 1, h - 1])
    inside = (z > 1e-6) & (uv[:, 0] >= -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < h - 0.5)
    seen = depth[px[:, 1], px[:, 0]]
    visible = inside & np.isfinite(seen) & (np.abs(seen - z) <= 0.01 * z)
    return visible, uv


def write_workspace(workspace: str, rng: np.random.Generator, frames: int, hw: tuple[int, int], binary: bool,
                    dense_depth: bool, model: str = "PINHOLE") -> list[dict]:
    """Render one scene into a COLMAP workspace; returns per frame (in name order) {'name', 'image_id', 'extrinsic'
    [3, 4], 'intrinsic' [3, 3] (integer pixel centres), 'depth' [H, W] float32 (0 = sky)}."""
    h, w = hw
    prims = make_scene(rng, rng.dirichlet([2.0, 2.0, 2.0]))
    fx = float(rng.uniform(0.8, 1.1)) * max(h, w)
    fy = fx if model == "SIMPLE_PINHOLE" else fx * float(rng.uniform(0.97, 1.03))
    cx, cy = (w - 1) / 2 + float(rng.uniform(-1, 1)), (h - 1) / 2 + float(rng.uniform(-1, 1))
    intrinsic = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    # COLMAP's principal point is 0.5 larger: its upper-left pixel centre is (0.5, 0.5), ours (0, 0)
    params = (fx, cx + 0.5, cy + 0.5) if model == "SIMPLE_PINHOLE" else (fx, fy, cx + 0.5, cy + 0.5)
    cameras = {1: Camera(1, model, w, h, params)}
    ids = [int(i) + 1 for i in rng.permutation(frames)]  # ids out of name order, as a mapper leaves them

    truth, images = [], {}
    for i, extrinsic in enumerate(orbit_cameras(rng, frames)):
        rgb, depth = render(prims, extrinsic, intrinsic, hw)
        name = f"frame{i + 1:04d}.jpg"
        buf = io.BytesIO()
        PILImage.fromarray(rgb).save(buf, format="JPEG", quality=95)
        os.makedirs(os.path.join(workspace, "images"), exist_ok=True)
        with open(os.path.join(workspace, "images", name), "wb") as f:
            f.write(buf.getvalue())
        d32 = np.where(np.isfinite(depth), depth, 0).astype(np.float32)  # COLMAP writes 0 where it has no depth
        if dense_depth:
            write_depth_map(os.path.join(workspace, "stereo", "depth_maps", name + ".geometric.bin"), d32)
        # one keypoint without a 3D point, as real models have
        images[ids[i]] = Image(ids[i], rotmat_to_qvec(extrinsic[:, :3]), extrinsic[:, 3].copy(), 1, name,
                               np.array([[0.5, 0.5]]), np.array([-1], np.int64))
        truth.append({"name": name, "image_id": ids[i], "extrinsic": extrinsic, "intrinsic": intrinsic, "depth": d32,
                      "rgb": rgb, "raw_depth": depth})

    # 3D points: surface points seen by the first frame, observed wherever they are visible
    first = truth[0]
    finite = np.flatnonzero(np.isfinite(first["raw_depth"]).ravel())
    pick = np.sort(rng.choice(finite, min(_POINTS_PER_WORKSPACE, len(finite)), replace=False))
    v, u = np.divmod(pick, w)
    z = first["raw_depth"].ravel()[pick]
    cam_pts = np.stack([u, v, np.ones_like(u)], 1).astype(np.float64) @ np.linalg.inv(intrinsic).T * z[:, None]
    rot, t = first["extrinsic"][:, :3], first["extrinsic"][:, 3]
    world = (cam_pts - t) @ rot  # R^T (x_cam - t)
    tracks: list[list[tuple[int, int]]] = [[] for _ in pick]
    for frame in truth:
        visible, uv = _observations(world, frame["extrinsic"], intrinsic, frame["raw_depth"])
        image = images[frame["image_id"]]
        for k in np.flatnonzero(visible):
            tracks[k].append((frame["image_id"], len(image.point3D_ids)))
            # COLMAP's keypoints are in its own pixel convention: ours + 0.5
            image.xys = np.concatenate([image.xys, uv[k][None] + 0.5])
            image.point3D_ids = np.append(image.point3D_ids, 100 + k)
    points3D = {100 + k: Point3D(100 + k, world[k], first["rgb"][v[k], u[k]].astype(np.uint8), 0.0,
                                 np.array(tracks[k], np.int64).reshape(-1, 2)) for k in range(len(pick))}
    write_model(Model(cameras, images, points3D), os.path.join(workspace, "sparse", "0"), binary=binary)
    for frame in truth:
        del frame["rgb"], frame["raw_depth"]
    return truth


def make_synthetic_colmap(out: str, workspaces: int = 2, frames: int = 8, size: tuple[int, int] = (48, 64),
                          seed: int = 0, binary: bool = True, dense_depth: bool = True) -> dict:
    """Write `workspaces` COLMAP workspaces out/scene_000, ... of `frames` (H, W) = `size` images each; the same
    arguments give byte-identical files. Workspaces alternate PINHOLE and SIMPLE_PINHOLE cameras. Returns
    {'root': out, 'workspaces': [(name, dir)], 'frames': {name: write_workspace's list}}."""
    found, truth = [], {}
    for k in range(workspaces):
        name = f"scene_{k:03d}"
        directory = os.path.join(out, name)
        rng = np.random.default_rng([seed, _SALT, k])
        truth[name] = write_workspace(directory, rng, frames, tuple(size), binary, dense_depth,
                                      "PINHOLE" if k % 2 == 0 else "SIMPLE_PINHOLE")
        found.append((name, directory))
    return {"root": out, "workspaces": found, "frames": truth}
