"""Read the raw Virtual KITTI 2 layout (rgb/depth folders, intrinsic.txt, extrinsic.txt) into frames, as VGGT reads it.

Layout (the release's vkitti_2.0.3_rgb / _depth / _textgt archives unpacked into one tree):
  DIR/<scene>/<variation>/frames/rgb/Camera_<c>/rgb_<frame:05d>.jpg
  DIR/<scene>/<variation>/frames/depth/Camera_<c>/depth_<frame:05d>.png     (16-bit, centimetres, 65535 = far plane)
  DIR/<scene>/<variation>/intrinsic.txt   header, then "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]" rows
  DIR/<scene>/<variation>/extrinsic.txt   header, then "frame cameraID r1,1 r1,2 r1,3 t1 ... t3 0 0 0 1" rows

What the official VGGT loader (training/data/datasets/vkitti.py) does, and this module does too:
  * extrinsic: the 16 numbers after frame/cameraID, row-major 4x4, top 3 rows taken *as is* as the OpenCV
    camera-from-world [R|t] (no inversion, no axis flip, no scaling);
  * intrinsic: fx, fy, cx, cy are the last four columns, used as is (the release's cx = 620.5 for 1242-pixel-wide
    images, i.e. pixel centres at integer coordinates, the convention this package uses);
  * depth: uint16 / 100 -> metres, then every value > 80 m is set to 0 (threshold_depth_map with max_depth=80 and both
    percentile cuts off). The far plane 655.35 m (the sky) is > 80 m, so it is invalid too; 0 stays 0 (invalid).
Where this module is stricter: rows are matched to images by their frame column (the official loader takes the i-th
row of the camera), and missing or malformed files and rows raise VKittiInputError instead of failing later.
"""

from __future__ import annotations

import io
import os
import re
import stat
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image

DEPTH_UNITS_PER_METRE = 100.0  # the PNGs store centimetres
FAR_PLANE_RAW = 65535  # 655.35 m: the renderer's far plane, i.e. the sky
OFFICIAL_MAX_DEPTH_M = 80.0  # VKittiDataset.depth_max: deeper values are zeroed
INTRINSIC_HEADER = "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"
EXTRINSIC_HEADER = "frame cameraID r1,1 r1,2 r1,3 t1 r2,1 r2,2 r2,3 t2 r3,1 r3,2 r3,3 t3 0 0 0 1"
_INTRINSIC_COLUMNS, _EXTRINSIC_COLUMNS = 6, 18

# A release txt file is well under 1 MB and a depth PNG a few hundred kB; the caps only bound what a hostile file costs.
_MAX_TXT_BYTES = 64 << 20
_MAX_FRAME_FILE_BYTES = 256 << 20

_RGB_NAME = re.compile(r"rgb_(\d{5,})\.jpg")
_CAMERA_DIR = re.compile(r"Camera_(\d+)")

# Reason codes; the keys are stable (reports may group by them).
VKITTI_REASONS = {
    "missing_dir": "the root, a scene/variation folder or a camera's rgb folder does not exist",
    "unknown_selection": "a requested scene, variation or camera is not in the tree",
    "unsafe_path": "a scene/variation name is empty, absolute, '.', '..' or holds a path separator or NUL byte "
                   "(it would leave the root)",
    "missing_txt": "intrinsic.txt or extrinsic.txt does not exist",
    "malformed_txt": "the header is not the release's, or a row has the wrong column count, a non-number, or a "
                     "frame/camera id that is not a non-negative integer",
    "duplicate_row": "two rows of a txt file for the same frame and camera",
    "missing_camera_row": "a frame of the camera lacks its row in extrinsic.txt or intrinsic.txt",
    "bad_camera": "non-finite camera, rotation not orthonormal with det +1, last extrinsic row not 0 0 0 1, "
                  "or focal length <= 0",
    "missing_image": "a frame (camera row) has no rgb_<frame>.jpg",
    "corrupt_image": "the rgb JPEG's header cannot be read",
    "missing_depth": "the camera has a depth folder but not this frame's depth_<frame>.png, or no depth folder at all",
    "corrupt_depth": "the depth PNG cannot be decoded or is not 16-bit grayscale",
    "size_mismatch": "the depth PNG's size differs from the rgb image's",
    "not_a_regular_file": "a txt/image/depth path is a directory, FIFO, device or socket",
    "file_too_large": "a txt or depth file is larger than any file of the release could be",
}


class VKittiInputError(Exception):
    """Bad Virtual KITTI 2 input: `path` names the file/folder, `reason` is a key of VKITTI_REASONS, `detail` says what."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        assert reason in VKITTI_REASONS, reason
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason} ({detail})")


@dataclass
class SceneFrame:
    """One frame: files, OpenCV camera-from-world extrinsic [3, 4], intrinsic [3, 3] (integer pixel centres), (H, W)."""

    image_path: str  # absolute
    filepath: str  # relative to the root, posix separators
    frame: int
    extrinsic: np.ndarray
    intrinsic: np.ndarray
    size_hw: Tuple[int, int]
    depth_path: Optional[str]  # None when the camera has no depth folder (an rgb-only download)


# ----------------------------------------------------------------------------------------------- the tree
def _safe_name(name: str, what: str) -> str:
    if (not isinstance(name, str) or not name or name in (".", "..") or "\0" in name or "/" in name or "\\" in name
            or os.path.isabs(name) or (len(name) >= 2 and name[1] == ":")):
        raise VKittiInputError(repr(name), "unsafe_path", f"{what} must be a plain folder name")
    return name


def _subdirs(path: str) -> List[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir())
    except OSError:
        return []


def _scenes(root: str) -> List[str]:
    return [d for d in _subdirs(root) if d.startswith("Scene")]


def _variations(root: str, scene: str) -> List[str]:
    return [d for d in _subdirs(os.path.join(root, scene)) if os.path.isdir(os.path.join(root, scene, d, "frames"))]


def _cameras(root: str, scene: str, variation: str) -> List[int]:
    names = _subdirs(os.path.join(root, scene, variation, "frames", "rgb"))
    return sorted(int(m.group(1)) for m in map(_CAMERA_DIR.fullmatch, names) if m)


def _as_list(selection, what: str) -> Optional[List[str]]:
    if selection is None:
        return None
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    return [_safe_name(str(s).strip(), what) for s in items if str(s).strip()]


def _check_known(requested: Optional[Iterable], available: Iterable, what: str, root: str) -> None:
    available = sorted(set(available))
    unknown = [r for r in (requested or []) if r not in available]
    if unknown:
        raise VKittiInputError(root, "unknown_selection",
                               f"{what} {', '.join(map(str, unknown))} not found; available: {', '.join(map(str, available)) or 'none'}")


def list_sequences(root: str, scenes=None, variations=None, cameras=None) -> List[Tuple[str, str, str, int]]:
    """[(sequence_name, scene, variation, camera)] sorted by (scene, variation, camera); name e.g. Scene01_clone_Camera_0.

    scenes / variations: None (all), a list, or a comma-separated string; cameras: None, ints or "0,1". A requested name
    found in none of the selected scenes raises VKittiInputError('unknown_selection') listing the available ones.
    """
    if not os.path.isdir(root):
        raise VKittiInputError(root, "missing_dir", "the Virtual KITTI 2 root is not a directory")
    want_scenes, want_vars = _as_list(scenes, "scene"), _as_list(variations, "variation")
    if isinstance(cameras, (int, str)):
        cameras = [c for c in str(cameras).split(",") if c.strip()]
    try:
        want_cams = None if cameras is None else [int(c) for c in cameras]
    except (TypeError, ValueError):
        raise VKittiInputError(root, "unknown_selection", f"cameras {cameras!r} are not integers") from None
    all_scenes = _scenes(root)
    _check_known(want_scenes, all_scenes, "scene", root)
    chosen = [s for s in all_scenes if want_scenes is None or s in want_scenes]
    vars_of = {s: _variations(root, s) for s in chosen}
    _check_known(want_vars, [v for vs in vars_of.values() for v in vs], "variation", root)
    out, seen_cams = [], set()
    for scene in chosen:
        for var in vars_of[scene]:
            if want_vars is not None and var not in want_vars:
                continue
            for cam in _cameras(root, scene, var):
                seen_cams.add(cam)
                if want_cams is None or cam in want_cams:
                    out.append((f"{scene}_{var}_Camera_{cam}", scene, var, cam))
    _check_known(want_cams, seen_cams, "camera", root)
    return sorted(out, key=lambda r: (r[1], r[2], r[3]))


# ----------------------------------------------------------------------------------------------- files
def _stat_regular(path: str, missing_reason: str, max_bytes: Optional[int] = None) -> os.stat_result:
    """os.stat of a regular file (a FIFO or device is never opened: it could block or never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VKittiInputError(path, missing_reason, "no such file") from None
    except (OSError, ValueError) as exc:
        raise VKittiInputError(path, missing_reason, f"{type(exc).__name__}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise VKittiInputError(path, "not_a_regular_file", "not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise VKittiInputError(path, "file_too_large", f"{st.st_size} bytes > {max_bytes}")
    return st


def _read_bytes(path: str, missing_reason: str, max_bytes: int) -> bytes:
    _stat_regular(path, missing_reason, max_bytes)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise VKittiInputError(path, missing_reason, f"{type(exc).__name__}: {exc}") from None
    if len(data) > max_bytes:  # grew since the stat
        raise VKittiInputError(path, "file_too_large", f"more than {max_bytes} bytes")
    return data


def read_table(path: str, header: str) -> Dict[Tuple[int, int], np.ndarray]:
    """{(frame, camera): row values after frame/cameraID, float64 [columns - 2]} of intrinsic.txt or extrinsic.txt."""
    columns = len(header.split())
    try:
        text = _read_bytes(path, "missing_txt", _MAX_TXT_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VKittiInputError(path, "malformed_txt", f"not UTF-8 text: {exc}") from None
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    # The first two names and the count are what identify the file; spacing may differ between tools.
    if head[:2] != ["frame", "cameraID"] or len(head) != columns:
        raise VKittiInputError(path, "malformed_txt", f"line 1: expected the header {header!r}, got {lines[0][:120] if lines else ''!r}")
    rows: Dict[Tuple[int, int], np.ndarray] = {}
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns:
            raise VKittiInputError(path, "malformed_txt", f"line {number}: {len(parts)} columns, expected {columns}")
        try:
            values = np.array([float(p) for p in parts], dtype=np.float64)
        except ValueError:
            raise VKittiInputError(path, "malformed_txt", f"line {number}: not all numbers: {line[:120]!r}") from None
        ids = values[:2]
        if not (np.isfinite(ids).all() and (ids >= 0).all() and (ids == np.round(ids)).all()):
            raise VKittiInputError(path, "malformed_txt", f"line {number}: frame/cameraID {parts[0]} {parts[1]} are not non-negative integers")
        key = (int(ids[0]), int(ids[1]))
        if key in rows:
            raise VKittiInputError(path, "duplicate_row", f"line {number}: frame {key[0]} camera {key[1]} listed twice")
        rows[key] = values[2:]
    return rows


def _camera(ext_row: np.ndarray, int_row: np.ndarray, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """(extrinsic [3, 4], intrinsic [3, 3]) of one frame's rows, as the official loader builds them."""
    mat = ext_row.reshape(4, 4)
    fx, fy, cx, cy = int_row[-4:]
    intri = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if not (np.isfinite(mat).all() and np.isfinite(intri).all()):
        raise VKittiInputError(where, "bad_camera", "non-finite value")
    rot = mat[:3, :3]
    if np.abs(mat[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise VKittiInputError(where, "bad_camera", f"last extrinsic row is {mat[3].tolist()}, not [0, 0, 0, 1]")
    # 1e-4 tolerates the release's 7 significant digits; a reflection (det -1) is no camera pose
    if np.abs(rot @ rot.T - np.eye(3)).max() > 1e-4 or np.linalg.det(rot) < 0:
        raise VKittiInputError(where, "bad_camera", "extrinsic rotation is not orthonormal with det +1")
    if fx <= 0 or fy <= 0:
        raise VKittiInputError(where, "bad_camera", f"focal length fx={fx:g} fy={fy:g} is not positive")
    return mat[:3].copy(), intri


def _image_size(path: str) -> Tuple[int, int]:
    _stat_regular(path, "missing_image")
    try:
        with Image.open(path) as img:  # the header only: no pixel is decoded here
            w, h = img.size
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        raise VKittiInputError(path, "corrupt_image", f"{type(exc).__name__}: {exc}") from None
    return int(h), int(w)


def read_sequence(root: str, scene: str, variation: str, camera: int) -> List[SceneFrame]:
    """The frames of one camera of one scene/variation, sorted by frame number; raises VKittiInputError.

    A frame is any rgb_<frame>.jpg of the camera or any extrinsic.txt row of the camera; each needs its image, both
    txt rows, a valid camera and (if the camera has a depth folder) its depth PNG.
    """
    scene, variation = _safe_name(scene, "scene"), _safe_name(variation, "variation")
    camera = int(camera)
    if camera < 0:
        raise VKittiInputError(str(camera), "unsafe_path", "camera must be a non-negative integer")
    var_dir = os.path.join(root, scene, variation)
    rel_rgb = f"{scene}/{variation}/frames/rgb/Camera_{camera}"
    rgb_dir = os.path.join(root, *rel_rgb.split("/"))
    if not os.path.isdir(rgb_dir):
        raise VKittiInputError(rgb_dir, "missing_dir", f"no rgb folder for camera {camera} of {scene}/{variation}")
    ext_path, int_path = os.path.join(var_dir, "extrinsic.txt"), os.path.join(var_dir, "intrinsic.txt")
    extr = {f: r for (f, c), r in read_table(ext_path, EXTRINSIC_HEADER).items() if c == camera}
    intr = {f: r for (f, c), r in read_table(int_path, INTRINSIC_HEADER).items() if c == camera}
    images = {int(m.group(1)) for m in map(_RGB_NAME.fullmatch, os.listdir(rgb_dir)) if m}
    depth_dir = os.path.join(var_dir, "frames", "depth", f"Camera_{camera}")
    has_depth = os.path.isdir(depth_dir)
    frames = []
    for frame in sorted(images | set(extr)):
        rel = f"{rel_rgb}/rgb_{frame:05d}.jpg"
        image_path = os.path.abspath(os.path.join(root, *rel.split("/")))
        if frame not in images:
            raise VKittiInputError(image_path, "missing_image", f"frame {frame} has a camera row but no image")
        for table, path in ((extr, ext_path), (intr, int_path)):
            if frame not in table:
                raise VKittiInputError(path, "missing_camera_row", f"no row for frame {frame} camera {camera}")
        extri, intri = _camera(extr[frame], intr[frame], f"{ext_path} / {int_path} frame {frame} camera {camera}")
        depth_path = None
        if has_depth:
            depth_path = os.path.abspath(os.path.join(depth_dir, f"depth_{frame:05d}.png"))
            if not os.path.exists(depth_path):
                raise VKittiInputError(depth_path, "missing_depth", f"frame {frame} has an image but no depth")
        frames.append(SceneFrame(image_path, rel, frame, extri, intri, _image_size(image_path), depth_path))
    return frames


def read_depth(frame: SceneFrame) -> np.ndarray:
    """Depth [H, W] float32 metres of a frame: PNG / 100, with 0 (invalid) for the far plane (sky), for 0, and for
    everything > 80 m (the official cut-off, so an exact 80.00 m stays valid)."""
    path = frame.depth_path
    if path is None:
        raise VKittiInputError(frame.image_path, "missing_depth", "the camera has no depth folder")
    data = _read_bytes(path, "missing_depth", _MAX_FRAME_FILE_BYTES)
    try:
        img = Image.open(io.BytesIO(data))
        hw = (img.size[1], img.size[0])
        mode = img.mode
    except Exception as exc:
        raise VKittiInputError(path, "corrupt_depth", f"{type(exc).__name__}: {exc}") from None
    if img.format != "PNG" or mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise VKittiInputError(path, "corrupt_depth", f"expected a 16-bit grayscale PNG, got {img.format} mode {mode}")
    if hw != tuple(frame.size_hw):  # checked before decoding: a wrong header costs nothing
        raise VKittiInputError(path, "size_mismatch", f"depth is {hw[0]}x{hw[1]}, image is {frame.size_hw[0]}x{frame.size_hw[1]}")
    try:
        raw = np.asarray(img)
    except Exception as exc:
        raise VKittiInputError(path, "corrupt_depth", f"{type(exc).__name__}: {exc}") from None
    if mode == "I" and (raw.min(initial=0) < 0 or raw.max(initial=0) > 0xFFFF):
        raise VKittiInputError(path, "corrupt_depth", "values do not fit 16 bits")
    metres = raw.astype(np.float64) / DEPTH_UNITS_PER_METRE
    metres[(raw == FAR_PLANE_RAW) | (metres > OFFICIAL_MAX_DEPTH_M)] = 0.0
    return metres.astype(np.float32)
