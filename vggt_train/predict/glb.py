"""scene.glb of a prediction: the coloured point cloud and one frustum per camera, through trimesh (optional extra
`viz`); without trimesh the file is skipped and the caller says so."""

from __future__ import annotations

import importlib.util

import numpy as np

from vggt_train.predict.infer import PointCloud, Prediction

__all__ = ["trimesh_available", "frustum_corners", "write_glb"]

FRUSTUM_COLOR = (255, 64, 32, 255)


def trimesh_available() -> bool:
    return importlib.util.find_spec("trimesh") is not None


def frustum_corners(extrinsic: np.ndarray, intrinsic: np.ndarray, width: int, height: int, depth: float) -> np.ndarray:
    """[5, 3] world points: the camera centre, then the image's corners (pixel edges, clockwise from the top left)
    at z-depth `depth` (OpenCV camera-from-world extrinsic [3, 4], intrinsic [3, 3] with integer pixel centres)."""
    k = np.asarray(intrinsic, np.float64)
    us = np.array([-0.5, width - 0.5, width - 0.5, -0.5])
    vs = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
    cam = np.stack([(us - k[0, 2]) / k[0, 0] * depth, (vs - k[1, 2]) / k[1, 1] * depth, np.full(4, depth)], 1)
    cam = np.concatenate([np.zeros((1, 3)), cam])
    rot, t = np.asarray(extrinsic[:, :3], np.float64), np.asarray(extrinsic[:, 3], np.float64)
    return (cam - t) @ rot  # x_world = R^T (x_cam - t), row-wise


def _frustum_size(pred: Prediction, cloud: PointCloud) -> float:
    """A frustum depth that fits the scene: a tenth of the points' spread, or of the cameras' when there are none."""
    centres = np.stack([-e[:, :3].T @ e[:, 3] for e in pred.extrinsics])
    pts = cloud.xyz if len(cloud.xyz) else centres
    spread = float(np.linalg.norm(np.percentile(pts, 95, 0) - np.percentile(pts, 5, 0))) if len(pts) > 1 else 0.0
    return 0.1 * spread if spread > 0 else 0.1


def write_glb(pred: Prediction, cloud: PointCloud, path: str) -> None:
    """Write scene.glb (trimesh required): the point cloud and a pyramid per camera (apex at its centre)."""
    import trimesh

    scene = trimesh.Scene()
    if len(cloud.xyz):
        colors = np.concatenate([cloud.rgb, np.full((len(cloud.rgb), 1), 255, np.uint8)], 1)
        scene.add_geometry(trimesh.PointCloud(cloud.xyz, colors=colors), geom_name="points")
    size = _frustum_size(pred, cloud)
    # four sides, each wound both ways so the frustum is visible from inside and outside
    sides = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    faces = np.concatenate([sides, sides[:, ::-1]])
    for s, item in enumerate(pred.images):
        corners = frustum_corners(pred.extrinsics[s], pred.intrinsics[s], item.placement.width,
                                  item.placement.height, size)
        mesh = trimesh.Trimesh(corners, faces, process=False)
        mesh.visual.vertex_colors = np.tile(FRUSTUM_COLOR, (len(corners), 1))  # face colours would need scipy
        scene.add_geometry(mesh, geom_name=f"camera_{s:03d}_{item.name}")
    scene.export(path, file_type="glb")
