"""Turn COLMAP workspaces (undistorted images, a sparse model, optional depth) into plain per-frame records.

A workspace is a folder with images/ and a sparse model in sparse/0/ or sparse/ (binary or text); it is one
sequence, named after its folder. The model is read with pycolmap when it is importable, else with our own parsers
(colmap_model); both give the same records.

Conventions of the records (ours, the ones synthetic.py and Co3D use):
  extrinsic  OpenCV camera-from-world [R | t], float64 [3, 4]: COLMAP's pose (qvec w-first, tvec) already is
             camera-from-world with x right, y down, z forward, so R = rotation(qvec), t = tvec, unchanged.
  intrinsic  float64 [3, 3] with pixel centres at integer coordinates. COLMAP puts the centre of the upper-left
             pixel at (0.5, 0.5), so cx = colmap_cx - 0.5 and cy = colmap_cy - 0.5; focal lengths are unchanged.
  frame      COLMAP's IMAGE_ID (stable when images are added or removed; not contiguous, not in name order).
  depth      z-depth in the model's units (metres when the reconstruction is metric), float32 [H, W],
             0 = invalid (<= 0 or non-finite in the file).
Frames are sorted by image name. Only PINHOLE and SIMPLE_PINHOLE cameras are read: distortion must be removed by
`colmap image_undistorter` first, which also writes a workspace of exactly this layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from vggt_train.data.safe_names import is_plain_name
from vggt_train.data.sources.colmap_model import (COLMAP_REASONS, Camera, ColmapInputError, Image, Model, Point3D,
                                                  model_format, qvec_to_rotmat, read_depth_map, read_model)

__all__ = ["COLMAP_REASONS", "ColmapInputError", "SceneFrame", "list_workspaces", "find_sparse_dir", "load_model",
           "read_workspace", "read_depth", "camera_intrinsic", "image_extrinsic"]

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
DEPTH_MAPS_DIR = os.path.join("stereo", "depth_maps")
DEPTH_MAP_SUFFIX = ".geometric.bin"


@dataclass
class SceneFrame:
    """One registered image of a workspace: where its files are and its camera (conventions: module docstring)."""

    image_path: str  # absolute
    filepath: str  # relative to the DIR given to list_workspaces / read_workspace, '/'-separated
    frame: int  # COLMAP IMAGE_ID
    extrinsic: np.ndarray  # [3, 4] float64, OpenCV camera-from-world
    intrinsic: np.ndarray  # [3, 3] float64, integer pixel centres
    size_hw: tuple  # (H, W) of the camera
    depth_path: str | None = None
    depth_kind: str | None = None  # "colmap" (stereo/depth_maps/*.geometric.bin) | "npy" | None (camera-only)


# ----------------------------------------------------------------------------------------------- workspaces
def _looks_like_workspace(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "images")) or os.path.isdir(os.path.join(path, "sparse"))


def list_workspaces(root: str) -> list[tuple[str, str]]:
    """[(sequence name, workspace dir)]: `root` itself when it is a workspace (has images/ or sparse/), else its
    immediate subfolders that are, sorted by name. Raises ColmapInputError('missing_model') when there is none."""
    if not os.path.isdir(root):
        raise ColmapInputError(root, "missing_model", "not a directory")
    if _looks_like_workspace(root):
        return [(os.path.basename(os.path.normpath(os.path.abspath(root))), root)]
    found = [(name, os.path.join(root, name)) for name in sorted(os.listdir(root))
             if os.path.isdir(os.path.join(root, name)) and _looks_like_workspace(os.path.join(root, name))]
    if not found:
        raise ColmapInputError(root, "missing_model", "neither a COLMAP workspace (images/ + sparse/) nor a folder "
                               "of such workspaces")
    return found


def find_sparse_dir(workspace: str) -> tuple[str, str]:
    """(sparse model dir, 'bin' | 'txt') of a workspace: sparse/0/ (the mapper's first model) before sparse/ (where
    image_undistorter writes it). Raises ColmapInputError('missing_model')."""
    if not os.path.isdir(os.path.join(workspace, "images")):
        raise ColmapInputError(workspace, "missing_model", "no images/ folder")
    for sub in (os.path.join("sparse", "0"), "sparse"):
        fmt = model_format(os.path.join(workspace, sub))
        if fmt:
            return os.path.join(workspace, sub), fmt
    raise ColmapInputError(workspace, "missing_model",
                           "no cameras/images/points3D .bin or .txt in sparse/0/ or sparse/")


# ----------------------------------------------------------------------------------------------- model
def _pycolmap():
    try:
        # optional dependency: our own parsers read the same files when it is absent
        import pycolmap
    except ImportError:
        return None
    return pycolmap


def load_model(sparse_dir: str, backend: str = "auto", points: bool = False) -> Model:
    """The sparse model in `sparse_dir` as colmap_model records. backend: 'pycolmap', 'builtin' (our parsers) or
    'auto' (pycolmap when importable). points=False skips 2D/3D points where the backend allows it."""
    if backend not in ("auto", "pycolmap", "builtin"):
        raise ValueError(f"backend must be auto, pycolmap or builtin, got {backend!r}")
    pycolmap = _pycolmap() if backend != "builtin" else None
    if backend == "pycolmap" and pycolmap is None:
        raise ImportError("backend='pycolmap' but pycolmap is not installed (pip install pycolmap)")
    if pycolmap is None:
        return read_model(sparse_dir, points)
    if model_format(sparse_dir) is None:
        raise ColmapInputError(sparse_dir, "missing_model", "needs cameras, images and points3D as .bin or .txt")
    try:
        rec = pycolmap.Reconstruction(sparse_dir)
    except Exception as exc:  # pycolmap raises its own types (ValueError, RuntimeError, ...) for unreadable files
        raise ColmapInputError(sparse_dir, "malformed_model", f"pycolmap: {type(exc).__name__}: {exc}") from None
    cameras = {int(cid): Camera(int(cid), str(cam.model_name), int(cam.width), int(cam.height),
                                tuple(float(v) for v in cam.params)) for cid, cam in rec.cameras.items()}
    images = {}
    for iid, im in rec.images.items():
        # a Rigid3d attribute in pycolmap < 3.12, a method (the pose through the image's rig frame) since
        pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        x, y, z, w = (float(v) for v in pose.rotation.quat)  # Eigen's storage order: scalar LAST
        image = Image(int(iid), np.array([w, x, y, z]), np.asarray(pose.translation, np.float64).copy(),
                      int(im.camera_id), str(im.name))
        if points:
            pts2d = list(im.points2D)
            image.xys = np.array([p.xy for p in pts2d], np.float64).reshape(-1, 2)
            image.point3D_ids = np.array([int(p.point3D_id) if p.has_point3D() else -1 for p in pts2d], np.int64)
        images[int(iid)] = image
    points3D = {}
    if points:
        for pid, p in rec.points3D.items():
            track = np.array([[e.image_id, e.point2D_idx] for e in p.track.elements], np.int64).reshape(-1, 2)
            points3D[int(pid)] = Point3D(int(pid), np.asarray(p.xyz, np.float64).copy(),
                                         np.asarray(p.color, np.uint8).copy(), float(p.error), track)
    return Model(cameras, images, points3D)


def camera_intrinsic(camera: Camera, source: str) -> np.ndarray:
    """[3, 3] float64 K of a PINHOLE / SIMPLE_PINHOLE camera with integer pixel centres (COLMAP's cx, cy minus 0.5).
    Raises ColmapInputError naming `source` (the cameras file): 'distorted_camera' or 'bad_camera'."""
    if camera.model not in PINHOLE_MODELS:
        raise ColmapInputError(source, "distorted_camera", f"camera {camera.camera_id} is {camera.model}, only "
                               f"{' / '.join(PINHOLE_MODELS)} are read: run `colmap image_undistorter` first and read "
                               "its output workspace")
    p = np.asarray(camera.params, np.float64)
    fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if camera.model == "SIMPLE_PINHOLE" else p
    if not (np.isfinite(p).all() and fx > 0 and fy > 0 and camera.width >= 1 and camera.height >= 1):
        raise ColmapInputError(source, "bad_camera", f"camera {camera.camera_id}: {camera.model} "
                               f"{camera.width}x{camera.height} params {list(camera.params)}")
    return np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])


def image_extrinsic(image: Image, source: str) -> np.ndarray:
    """[3, 4] float64 OpenCV camera-from-world [R | t] of a COLMAP image (R from qvec (w, x, y, z), t = tvec).
    Raises ColmapInputError(source, 'bad_camera') on a non-finite pose or a zero quaternion."""
    q, t = np.asarray(image.qvec, np.float64), np.asarray(image.tvec, np.float64)
    if not (np.isfinite(q).all() and np.isfinite(t).all() and np.linalg.norm(q) > 1e-12):
        raise ColmapInputError(source, "bad_camera", f"image {image.image_id} ({image.name!r}): pose qvec {q.tolist()} "
                               f"tvec {t.tolist()}")
    return np.concatenate([qvec_to_rotmat(q), t[:, None]], 1)


# ----------------------------------------------------------------------------------------------- frames
def _safe_rel(name, source: str) -> list[str]:
    """The '/'-separated components of an image name from the model, each a plain name; else 'unsafe_path'."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ColmapInputError(source, "unsafe_path", f"image name {name!r} is empty or contains a NUL byte")
    parts = name.split("/")
    if name.startswith("/") or os.path.isabs(name) or not all(is_plain_name(p) for p in parts):
        raise ColmapInputError(source, "unsafe_path", f"image name {name!r} must be a relative path inside images/ "
                               "(no absolute path, '..', '.', backslash or empty component)")
    return parts


def _inside(base: str, path: str) -> bool:
    base = os.path.normpath(os.path.abspath(base))
    return os.path.commonpath([base, os.path.normpath(os.path.abspath(path))]) == base


def read_workspace(root: str, workspace_dir: str, depth_dir: str | None = None,
                   backend: str = "auto") -> list[SceneFrame]:
    """The registered images of one workspace as SceneFrames sorted by image name; `filepath`s are relative to
    `root`. Depth: with `depth_dir` (relative to the workspace) `<depth_dir>/<image name without extension>.npy`,
    else COLMAP's `stereo/depth_maps/<image name>.geometric.bin`; a frame without its file has no depth.
    Raises ColmapInputError."""
    sparse_dir, fmt = find_sparse_dir(workspace_dir)
    cameras_file, images_file = (os.path.join(sparse_dir, f"{n}.{fmt}") for n in ("cameras", "images"))
    model = load_model(sparse_dir, backend, points=False)
    images_dir = os.path.join(workspace_dir, "images")
    if depth_dir is not None:
        depth_root = os.path.join(workspace_dir, depth_dir)
        if not os.path.isdir(depth_root):
            raise ColmapInputError(depth_root, "missing_depth_dir", f"--depth-dir {depth_dir!r} is not a folder of "
                                   f"the workspace {workspace_dir}")
    names = [im.name for im in model.images.values()]
    if len(set(names)) != len(names):
        raise ColmapInputError(images_file, "malformed_model", "two images share a name")
    frames = []
    for image in sorted(model.images.values(), key=lambda im: im.name):
        parts = _safe_rel(image.name, images_file)
        image_path = os.path.abspath(os.path.join(images_dir, *parts))
        if not _inside(images_dir, image_path):
            raise ColmapInputError(images_file, "unsafe_path", f"image name {image.name!r} resolves outside images/")
        if not os.path.isfile(image_path):
            raise ColmapInputError(image_path, "missing_image", f"image {image.image_id} {image.name!r} of the model")
        camera = model.cameras.get(image.camera_id)
        if camera is None:
            raise ColmapInputError(images_file, "malformed_model", f"image {image.image_id} uses camera "
                                   f"{image.camera_id}, which cameras.{fmt} lacks")
        intrinsic = camera_intrinsic(camera, cameras_file)
        extrinsic = image_extrinsic(image, images_file)
        if depth_dir is not None:
            depth_path, kind = os.path.join(depth_root, *parts[:-1], os.path.splitext(parts[-1])[0] + ".npy"), "npy"
        else:
            depth_path = os.path.join(workspace_dir, DEPTH_MAPS_DIR, *parts[:-1], parts[-1] + DEPTH_MAP_SUFFIX)
            kind = "colmap"
        has_depth = os.path.isfile(depth_path)
        frames.append(SceneFrame(
            image_path=image_path,
            filepath=os.path.relpath(image_path, os.path.abspath(root)).replace(os.sep, "/"),
            frame=int(image.image_id), extrinsic=extrinsic, intrinsic=intrinsic,
            size_hw=(int(camera.height), int(camera.width)),
            depth_path=os.path.abspath(depth_path) if has_depth else None, depth_kind=kind if has_depth else None))
    return frames


def read_depth(frame: SceneFrame) -> np.ndarray | None:
    """[H, W] float32 depth of a frame (0 = invalid: <= 0 or non-finite in the file), None when it has none.
    Raises ColmapInputError: 'corrupt_depth' (unreadable) or 'depth_size_mismatch' (not the camera's H x W)."""
    if frame.depth_kind is None or frame.depth_path is None:
        return None
    path = frame.depth_path
    try:
        if frame.depth_kind == "colmap":
            depth = read_depth_map(path)
        elif frame.depth_kind == "npy":
            depth = np.load(path, allow_pickle=False)
        else:
            raise ValueError(f"unknown depth_kind {frame.depth_kind!r}")
    except (OSError, ValueError, EOFError) as exc:
        raise ColmapInputError(path, "corrupt_depth", f"{type(exc).__name__}: {exc}") from None
    # integers are refused: millimetre maps would otherwise pass as metres
    if not isinstance(depth, np.ndarray) or depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise ColmapInputError(path, "corrupt_depth", f"expected a 2-D float array, got "
                               f"{getattr(depth, 'dtype', type(depth))} {getattr(depth, 'shape', '')}")
    if tuple(depth.shape) != tuple(frame.size_hw):
        raise ColmapInputError(path, "depth_size_mismatch", f"depth {depth.shape[0]}x{depth.shape[1]} (HxW), camera "
                               f"{frame.size_hw[0]}x{frame.size_hw[1]}")
    with np.errstate(over="ignore", invalid="ignore"):
        depth = depth.astype(np.float32)  # values beyond float32 become inf and so invalid below
    depth[~np.isfinite(depth) | (depth <= 0)] = 0
    return depth
