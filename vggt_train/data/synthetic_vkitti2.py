"""Write a synthetic Virtual KITTI 2 tree (the release's layout and file formats) from synthetic.py's procedural scenes.

The rooms of synthetic.make_scene, scaled to street size, are seen from a stereo pair driving forward.
The layout, file formats and txt columns are the release's (see sources/vkitti2.py): rgb_<frame:05d>.jpg,
depth_<frame:05d>.png (16-bit centimetres, 65535 = far plane = sky and misses), intrinsic.txt / extrinsic.txt with
their header lines and numbers printed with 7 significant digits like the release's ("725.0087 725.0087 620.5 187").
The room is scaled by SCALE so the far walls stand beyond the official 80 m cut-off while the
ground and the objects lie within it; the sky above the low walls is the far plane. Same seed -> identical bytes.

Variations: "clone" and the appearance ones (fog, morning, overcast, rain, sunset) share the cameras and the depth;
"<N>-deg-left" / "<N>-deg-right" turn the camera by N degrees about the vertical, as the release's do.
"""

from __future__ import annotations

import io
import os
import re
import zlib

import numpy as np
from PIL import Image

from vggt_train.data.sources.vkitti2 import (DEPTH_UNITS_PER_METRE, EXTRINSIC_HEADER, FAR_PLANE_RAW,
                                             INTRINSIC_HEADER)
from vggt_train.data.synthetic import look_at, make_scene, render

SCALE = 20.0  # metres per unit of synthetic.make_scene's room (its half-size 3.5-5 -> 70-100 m)
BASELINE_M = 0.54  # Camera_1 sits this far to the right of Camera_0, KITTI-like
APPEARANCES = ("clone", "fog", "morning", "overcast", "rain", "sunset")
_TURN = re.compile(r"(\d+)-deg-(left|right)")
_SHAPE_BIAS = np.array([1.0, 1.0, 1.0]) / 3


def _num(v: float) -> str:
    # '.7g' prints like the release (integers without a decimal point); + 0.0 turns -0.0 into "0"
    return format(float(v) + 0.0, ".7g")


def drive_path(rng: np.random.Generator, n: int) -> list:
    """n camera-from-world extrinsics [3, 4] (metres, z up) of a car driving towards the room centre along +x."""
    x0, x1 = -2.9 * SCALE, -2.1 * SCALE  # stays clear of the objects, which lie within |x|, |y| < 1.8 units
    y0, height = float(rng.uniform(-0.3, 0.3)) * SCALE, float(rng.uniform(1.4, 1.8))
    wobble, phase = float(rng.uniform(0.01, 0.04)), float(rng.uniform(0, 2 * np.pi))
    out = []
    for i in range(n):
        s = i / max(n - 1, 1)
        center = np.array([x0 + (x1 - x0) * s, y0 + 0.5 * np.sin(2 * np.pi * s + phase), height])
        yaw = wobble * np.sin(2 * np.pi * s + phase)
        out.append(look_at(center, center + np.array([np.cos(yaw), np.sin(yaw), -0.02])))
    return out


def _turned(extri: np.ndarray, degrees: float) -> np.ndarray:
    """The extrinsic of the same camera turned left by `degrees` about the world's vertical (z)."""
    a = np.deg2rad(degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    center = -extri[:, :3].T @ extri[:, 3]
    rot = extri[:, :3] @ rz.T  # camera-from-world of the turned camera: R_new = R_old Rz^-1
    return np.concatenate([rot, -(rot @ center)[:, None]], 1)


def _right_camera(extri: np.ndarray) -> np.ndarray:
    out = extri.copy()
    out[:, 3] -= [BASELINE_M, 0.0, 0.0]  # camera x points right: the centre moves +baseline along it
    return out


def _appearance(rgb: np.ndarray, depth: np.ndarray, variation: str) -> np.ndarray:
    """rgb [H, W, 3] uint8 restyled for an appearance variation (depth [H, W] metres, inf = sky)."""
    c = rgb.astype(np.float64) / 255
    if variation == "fog":
        k = 1 - np.exp(-np.nan_to_num(depth, posinf=1e4) / 60.0)
        c = c * (1 - k[..., None]) + 0.75 * k[..., None]
    elif variation == "morning":
        c = c * [1.05, 0.95, 0.8]
    elif variation == "overcast":
        c = 0.5 * c + 0.5 * c.mean(-1, keepdims=True) * 0.9
    elif variation == "rain":
        c = 0.8 * c * [0.9, 0.95, 1.0]
    elif variation == "sunset":
        c = c * [1.15, 0.8, 0.6]
    return np.clip(c * 255 + 0.5, 0, 255).astype(np.uint8)


def _depth_png(depth_m: np.ndarray) -> bytes:
    """16-bit PNG of depth in centimetres; sky, misses and anything at or past the far plane -> 65535."""
    cm = np.round(np.nan_to_num(depth_m, nan=np.inf, posinf=np.inf) * DEPTH_UNITS_PER_METRE)
    raw = np.where(np.isfinite(cm) & (cm < FAR_PLANE_RAW), cm, FAR_PLANE_RAW).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(raw).save(buf, format="PNG")  # uint16 -> mode I;16: a 16-bit grayscale PNG
    return buf.getvalue()


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _variation_extrinsic(extri: np.ndarray, variation: str) -> np.ndarray:
    m = _TURN.fullmatch(variation)
    if m:
        return _turned(extri, float(m.group(1)) * (1 if m.group(2) == "left" else -1))
    if variation not in APPEARANCES:
        raise ValueError(f"unknown variation {variation!r}: use {', '.join(APPEARANCES)} or <N>-deg-left/right")
    return extri


def make_synthetic_vkitti2(out: str, scenes=("Scene01",), variations=("clone", "fog"), cameras=(0, 1), frames: int = 6,
                           size=(40, 120), seed: int = 0) -> dict:
    """Write the tree under `out`; returns {'root': out, 'sequences': {name: {'extrinsics' [F, 3, 4],
    'intrinsic' [3, 3], 'depths' [F, H, W] float64 metres (inf = sky), 'frames' [F]}}}: what was rendered."""
    h, w = int(size[0]), int(size[1])
    if frames < 1 or h < 4 or w < 4 or any(c not in (0, 1) for c in cameras):
        raise ValueError("frames >= 1, size >= 4x4 and cameras within (0, 1) (the release's stereo pair)")
    for v in variations:
        _variation_extrinsic(np.eye(4)[:3], v)  # unknown names fail before anything is written
    # the release's focal/width ratio (725 / 1242) and its principal point at the centre with integer pixel centres
    focal = 0.584 * w
    intri = np.array([[focal, 0.0, (w - 1) / 2], [0.0, focal, (h - 1) / 2], [0.0, 0.0, 1.0]])
    result = {"root": out, "sequences": {}}
    for scene in scenes:
        rng = np.random.default_rng([seed, zlib.crc32(scene.encode())])  # crc32: str hash() is salted per process
        prims = make_scene(rng, _SHAPE_BIAS)
        path = drive_path(rng, frames)
        rendered = {}  # (extrinsic bytes) -> (rgb, depth): appearance variations share one rendering
        for variation in variations:
            var_dir = os.path.join(out, scene, variation)
            ext_rows, int_rows = [EXTRINSIC_HEADER], [INTRINSIC_HEADER]
            per_cam = {c: {"extrinsics": [], "depths": [], "intrinsic": intri.copy(), "frames": list(range(frames))} for c in cameras}
            for f in range(frames):
                for cam in cameras:
                    extri = _variation_extrinsic(path[f] if cam == 0 else _right_camera(path[f]), variation)
                    key = extri.tobytes()
                    if key not in rendered:
                        unit = extri.copy()
                        unit[:, 3] /= SCALE  # the same camera in the unscaled room: depths scale by SCALE
                        rgb, depth = render(prims, unit, intri, (h, w))
                        rendered[key] = (rgb, depth * SCALE)
                    rgb, depth = rendered[key]
                    frame_dir = os.path.join(var_dir, "frames")
                    jpeg = io.BytesIO()
                    Image.fromarray(_appearance(rgb, depth, variation)).save(jpeg, format="JPEG", quality=95)
                    _write(os.path.join(frame_dir, "rgb", f"Camera_{cam}", f"rgb_{f:05d}.jpg"), jpeg.getvalue())
                    _write(os.path.join(frame_dir, "depth", f"Camera_{cam}", f"depth_{f:05d}.png"), _depth_png(depth))
                    mat = np.concatenate([extri, [[0.0, 0.0, 0.0, 1.0]]])
                    ext_rows.append(" ".join([str(f), str(cam)] + [_num(v) for v in mat.ravel()]))
                    int_rows.append(" ".join([str(f), str(cam)] + [_num(v) for v in (intri[0, 0], intri[1, 1], intri[0, 2], intri[1, 2])]))
                    per_cam[cam]["extrinsics"].append(extri)
                    per_cam[cam]["depths"].append(depth)
            _write(os.path.join(var_dir, "extrinsic.txt"), ("\n".join(ext_rows) + "\n").encode())
            _write(os.path.join(var_dir, "intrinsic.txt"), ("\n".join(int_rows) + "\n").encode())
            for cam in cameras:
                entry = per_cam[cam]
                result["sequences"][f"{scene}_{variation}_Camera_{cam}"] = {
                    "extrinsics": np.stack(entry["extrinsics"]), "intrinsic": entry["intrinsic"],
                    "depths": np.stack(entry["depths"]), "frames": entry["frames"]}
    return result
