"""The files of `vggt-train predict`: cameras.json, the COLMAP text model, per-image depth and confidence, the PLY
point cloud and a copy of the images, laid out as a COLMAP workspace (images/ + sparse/).

Pixel conventions: cameras.json and the .npy maps use integer pixel centres (vggt_train.geometry); the COLMAP model
uses COLMAP's (the upper-left pixel's centre at (0.5, 0.5)), so its cx, cy and 2D points are ours + 0.5.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List

import numpy as np
from PIL import Image as PILImage

from vggt_train.data.sources.colmap_model import Camera, Image, Model, Point3D, rotmat_to_qvec, write_model
from vggt_train.predict.infer import PointCloud, Prediction
from vggt_train.visual import colorize_depth, write_ply  # re-exported: part of this module's outputs

__all__ = ["FORMAT", "cameras_document", "write_cameras_json", "colmap_model", "write_maps", "write_ply",
           "copy_images", "colorize_depth"]

FORMAT = "vggt-train predict 1"
CONVENTIONS = {
    "extrinsic": "OpenCV camera-from-world [R | t] (x right, y down, z forward) in the frame the model predicts "
                 "(the first camera's, for a trained model)",
    "intrinsic": "pinhole K in the original image's pixels, pixel centres at integer coordinates (COLMAP cx = cx + 0.5)",
    "grid": "the model's input grid: the image resized to resized_hw, rows crop_top.. kept, placed at box "
            "(left, top, right, bottom) of the padded grid_hw; grid_intrinsic is K on that grid",
    "depth": "depth/<stem>.npy: float32 [height, width], z-depth at each original pixel (nearest grid pixel); 0 where "
             "the crop cut the row off. conf/<stem>.npy: the depth head's confidence, same grid, 0 there",
}


def cameras_document(pred: Prediction, meta: Dict) -> Dict:
    """The cameras.json document: `meta` (run options) plus, per image, name, size, extrinsic, intrinsic, grid."""
    hg, wg = pred.depth.shape[1:]
    images = []
    for s, item in enumerate(pred.images):
        p = item.placement
        images.append({
            "name": item.name, "source": os.path.abspath(item.path), "width": p.width, "height": p.height,
            "extrinsic": pred.extrinsics[s].tolist(), "intrinsic": pred.intrinsics[s].tolist(),
            "grid": {"grid_hw": [int(hg), int(wg)], "resized_hw": [p.resized_h, p.resized_w], "crop_top": p.crop_top,
                     "box": list(p.box), "grid_intrinsic": pred.grid_intrinsics[s].tolist()},
        })
    return {"format": FORMAT, **meta, "conventions": CONVENTIONS, "images": images}


def write_cameras_json(doc: Dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)


def colmap_model(pred: Prediction, cloud: PointCloud) -> Model:
    """A COLMAP model: one PINHOLE camera per image (camera_id = image_id = position + 1), the point cloud as
    3D points (id = position + 1) each with a one-element track, the pixel it came from, which is also the
    image's 2D point of that index. ERROR is 0: the point projects exactly onto its pixel (no bundle adjustment)."""
    cameras, images, points = {}, {}, {}
    point_ids = np.arange(1, len(cloud.xyz) + 1, dtype=np.int64)
    for s, item in enumerate(pred.images):
        p, k = item.placement, pred.intrinsics[s]
        ident = s + 1
        cameras[ident] = Camera(ident, "PINHOLE", p.width, p.height, (k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5))
        mine = np.nonzero(cloud.image == s)[0]
        x, y = p.grid_to_original(cloud.u[mine], cloud.v[mine])
        rot, t = pred.extrinsics[s, :, :3], pred.extrinsics[s, :, 3]
        images[ident] = Image(ident, rotmat_to_qvec(rot), t.copy(), ident, item.name,
                              np.stack([x + 0.5, y + 0.5], 1), point_ids[mine])
        for idx, k_pt in enumerate(mine):
            points[int(point_ids[k_pt])] = Point3D(int(point_ids[k_pt]), cloud.xyz[k_pt], cloud.rgb[k_pt], 0.0,
                                                   np.array([[ident, idx]], np.int64))
    return Model(cameras, images, points)



def write_maps(pred: Prediction, out_dir: str) -> List[str]:
    """depth/<stem>.npy and .png, conf/<stem>.npy at each original image's resolution; returns the stems."""
    os.makedirs(os.path.join(out_dir, "depth"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "conf"), exist_ok=True)
    stems = []
    for s, item in enumerate(pred.images):
        stem = os.path.splitext(item.name)[0]
        depth = item.placement.to_original(pred.depth[s]).astype(np.float32)
        conf = item.placement.to_original(pred.conf[s]).astype(np.float32)
        np.save(os.path.join(out_dir, "depth", f"{stem}.npy"), depth)
        np.save(os.path.join(out_dir, "conf", f"{stem}.npy"), conf)
        valid = np.isfinite(depth) & (depth > 0)
        PILImage.fromarray(colorize_depth(depth, valid)).save(os.path.join(out_dir, "depth", f"{stem}.png"))
        stems.append(stem)
    return stems



def copy_images(pred: Prediction, out_dir: str) -> None:
    """images/<name>: the input files byte for byte (the workspace's images, named as in the COLMAP model)."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    for item in pred.images:
        target = os.path.join(out_dir, "images", item.name)
        if not (os.path.exists(target) and os.path.samefile(item.path, target)):
            shutil.copyfile(item.path, target)


def write_colmap(pred: Prediction, cloud: PointCloud, out_dir: str) -> str:
    """sparse/cameras.txt, images.txt, points3D.txt; returns the folder."""
    sparse = os.path.join(out_dir, "sparse")
    write_model(colmap_model(pred, cloud), sparse, binary=False)
    return sparse
