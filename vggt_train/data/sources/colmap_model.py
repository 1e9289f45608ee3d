"""Read and write COLMAP's sparse model files (binary and text) and dense depth maps as plain numpy records.

Facts of the formats (COLMAP's documentation, "Output format"; all binary data little-endian):
  cameras.bin   u64 count; per camera: i32 camera_id, i32 model_id, u64 width, u64 height, f64 params[n(model)]
  images.bin    u64 count; per image: i32 image_id, f64 qw qx qy qz, f64 tx ty tz, i32 camera_id, name (UTF-8,
                NUL-terminated), u64 n_points2D, n x (f64 x, f64 y, i64 point3D_id)
  points3D.bin  u64 count; per point: u64 point3D_id, f64 x y z, u8 r g b, f64 error, u64 track_length,
                track_length x (i32 image_id, i32 point2D_idx)
  *.txt         the same fields, space separated, '#' comments; images.txt has two lines per image (the second one
                holds the 2D points and may be empty)
  depth maps    ASCII "width&height&channels&", then width*height*channels float32; the element (x, y, c) is at
                x + width * (y + height * c) (a [W, H, C] array in Fortran order == [C, H, W] in C order)

The pose (qvec, tvec) maps world to camera (camera-from-world), the quaternion is Hamilton with the scalar FIRST,
and the camera axes are OpenCV's (x right, y down, z forward). Pixel coordinates (2D points, principal points) put
the centre of the upper-left pixel at (0.5, 0.5).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

# Reason codes of ColmapInputError; the keys are stable (a report may group by them).
COLMAP_REASONS = {
    "missing_model": "no COLMAP workspace (images/ and a complete sparse model in sparse/0/ or sparse/)",
    "malformed_model": "a sparse model file is truncated, unparsable or inconsistent (unknown camera, duplicate id)",
    "distorted_camera": "a camera model with lens distortion: run `colmap image_undistorter` first",
    "missing_image": "an image named by the model does not exist under images/",
    "bad_camera": "camera parameters or pose are non-finite, non-positive or degenerate",
    "corrupt_depth": "a depth file cannot be parsed (bad header, wrong byte count, not a 2-D float array)",
    "depth_size_mismatch": "a depth map's size differs from its camera's width x height",
    "unsafe_path": "an image name from the model is absolute, contains '..' or a NUL byte, or leaves images/",
    "missing_depth_dir": "the requested depth directory does not exist in the workspace",
}


class ColmapInputError(Exception):
    """Bad COLMAP input: `path` names the file or folder, `reason` is a key of COLMAP_REASONS, `detail` says what."""

    def __init__(self, path, reason: str, detail: str = ""):
        assert reason in COLMAP_REASONS, reason
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason} ({detail})")


# model id -> (name, number of params), as COLMAP numbers them (the binary files store the id).
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4), 13: ("DIVISION", 5), 14: ("SIMPLE_FISHEYE", 3), 15: ("FISHEYE", 4), 16: ("EUCM", 6),
    17: ("EQUIRECTANGULAR", 2),
}
CAMERA_MODEL_IDS = {name: (model_id, n) for model_id, (name, n) in CAMERA_MODELS.items()}
MODEL_FILES = ("cameras", "images", "points3D")

_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
_TRACK = np.dtype([("image_id", "<i4"), ("idx", "<i4")])
_MAX_DEPTH_HEADER = 64  # "width&height&channels&" of three decimal integers fits easily


@dataclass
class Camera:
    camera_id: int
    model: str
    width: int
    height: int
    params: tuple  # floats, in COLMAP's order for the model (PINHOLE: fx, fy, cx, cy; SIMPLE_PINHOLE: f, cx, cy)


@dataclass
class Image:
    image_id: int
    qvec: np.ndarray  # [4] float64 (w, x, y, z), camera-from-world rotation
    tvec: np.ndarray  # [3] float64, camera-from-world translation
    camera_id: int
    name: str  # relative to the workspace's images/ folder, '/'-separated
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [N, 2] float64, COLMAP pixel convention
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [N] int64, -1 = none


@dataclass
class Point3D:
    point3D_id: int
    xyz: np.ndarray  # [3] float64
    rgb: np.ndarray  # [3] uint8
    error: float
    track: np.ndarray  # [M, 2] int64 rows (image_id, point2D_idx)


@dataclass
class Model:
    cameras: dict  # camera_id -> Camera
    images: dict  # image_id -> Image
    points3D: dict  # point3D_id -> Point3D


# ----------------------------------------------------------------------------------------------- rotations
def qvec_to_rotmat(qvec) -> np.ndarray:
    """[3, 3] float64 rotation of a Hamilton quaternion (w, x, y, z), normalised first."""
    w, x, y, z = np.asarray(qvec, np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(rot) -> np.ndarray:
    """[4] float64 unit quaternion (w, x, y, z), w >= 0, of a [3, 3] rotation (the largest-diagonal branch keeps it
    accurate for every rotation, also near 180 degrees)."""
    m = np.asarray(rot, np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


# ----------------------------------------------------------------------------------------------- reading
def model_format(sparse_dir: str) -> str | None:
    """'bin' or 'txt' when `sparse_dir` holds all three model files in that format (binary preferred, as COLMAP
    does), else None."""
    for ext in ("bin", "txt"):
        if all(os.path.isfile(os.path.join(sparse_dir, f"{name}.{ext}")) for name in MODEL_FILES):
            return ext
    return None


def read_model(sparse_dir: str, points: bool = True) -> Model:
    """The sparse model in `sparse_dir` (binary or text) read by our own parsers; with points=False the 2D points of
    images and the 3D points are skipped (not needed for cameras). Raises ColmapInputError."""
    fmt = model_format(sparse_dir)
    if fmt is None:
        raise ColmapInputError(sparse_dir, "missing_model", "needs cameras, images and points3D as .bin or .txt")
    path = {name: os.path.join(sparse_dir, f"{name}.{fmt}") for name in MODEL_FILES}
    if fmt == "bin":
        cameras = _read_cameras_bin(path["cameras"])
        images = _read_images_bin(path["images"], points)
        points3D = _read_points3D_bin(path["points3D"]) if points else {}
    else:
        cameras = _read_cameras_txt(path["cameras"])
        images = _read_images_txt(path["images"], points)
        points3D = _read_points3D_txt(path["points3D"]) if points else {}
    return Model(cameras, images, points3D)


class _Cursor:
    """Bounds-checked little-endian reads over the bytes of one file."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            self.data = f.read()
        self.pos = 0

    def bad(self, detail: str) -> ColmapInputError:
        return ColmapInputError(self.path, "malformed_model", f"{detail} at byte {self.pos}")

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise self.bad(f"truncated: {n} more bytes needed, {len(self.data) - self.pos} left")

    def take(self, fmt: str) -> tuple:
        st = struct.Struct("<" + fmt)
        self.need(st.size)
        out = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return out

    def array(self, dtype: np.dtype, count: int, decode: bool = True):
        self.need(count * dtype.itemsize)
        out = np.frombuffer(self.data, dtype, count, self.pos) if decode else None
        self.pos += count * dtype.itemsize
        return out

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.bad("image name without its NUL terminator")
        try:
            name = self.data[self.pos:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.bad(f"image name is not UTF-8 ({exc.reason})") from None
        self.pos = end + 1
        return name

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.bad(f"{len(self.data) - self.pos} trailing bytes")


def _add(table: dict, key: int, value, path: str, what: str) -> None:
    if key in table:
        raise ColmapInputError(path, "malformed_model", f"duplicate {what} id {key}")
    table[key] = value


def _read_cameras_bin(path: str) -> dict:
    cur, cameras = _Cursor(path), {}
    (count,) = cur.take("Q")
    for _ in range(count):
        camera_id, model_id, width, height = cur.take("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise cur.bad(f"camera {camera_id} has unknown model id {model_id}")
        name, n = CAMERA_MODELS[model_id]
        _add(cameras, camera_id, Camera(camera_id, name, width, height, cur.take("d" * n)), path, "camera")
    cur.done()
    return cameras


def _read_images_bin(path: str, points: bool) -> dict:
    cur, images = _Cursor(path), {}
    (count,) = cur.take("Q")
    for _ in range(count):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = cur.take("idddddddi")
        name = cur.cstring()
        (n,) = cur.take("Q")
        pts = cur.array(_POINT2D, n, decode=points)
        image = Image(image_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), camera_id, name)
        if points:
            image.xys = np.stack([pts["x"], pts["y"]], 1).astype(np.float64)
            image.point3D_ids = pts["id"].astype(np.int64)
        _add(images, image_id, image, path, "image")
    cur.done()
    return images


def _read_points3D_bin(path: str) -> dict:
    cur, pts = _Cursor(path), {}
    (count,) = cur.take("Q")
    for _ in range(count):
        point_id, x, y, z, r, g, b, error, n = cur.take("QdddBBBdQ")
        track = cur.array(_TRACK, n)
        track = np.stack([track["image_id"], track["idx"]], 1).astype(np.int64)
        _add(pts, point_id, Point3D(point_id, np.array([x, y, z]), np.array([r, g, b], np.uint8), error, track),
             path, "point3D")
    cur.done()
    return pts


def _text_lines(path: str) -> list[str]:
    """The lines of a text model file (not stripped: images.txt needs its empty 2D-point lines)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as exc:
        raise ColmapInputError(path, "malformed_model", f"not UTF-8 text ({exc.reason})") from None
    return lines


def _records(path: str):
    """(line number, whitespace-split fields) of each non-empty, non-comment line of a one-line-per-record file."""
    for lineno, line in enumerate(_text_lines(path), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield lineno, line.split()


def _parse_error(path: str, lineno: int, exc: Exception) -> ColmapInputError:
    return ColmapInputError(path, "malformed_model", f"line {lineno}: {type(exc).__name__}: {exc}")


def _read_cameras_txt(path: str) -> dict:
    cameras = {}
    for lineno, tok in _records(path):
        try:
            if len(tok) < 4:
                raise ValueError(f"{len(tok)} fields, expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
            camera = Camera(int(tok[0]), tok[1], int(tok[2]), int(tok[3]), tuple(float(v) for v in tok[4:]))
            expected = CAMERA_MODEL_IDS.get(camera.model, (None, len(camera.params)))[1]
            if len(camera.params) != expected:
                raise ValueError(f"{camera.model} takes {expected} params, got {len(camera.params)}")
        except ValueError as exc:
            raise _parse_error(path, lineno, exc) from None
        _add(cameras, camera.camera_id, camera, path, "camera")
    return cameras


def _read_images_txt(path: str, points: bool) -> dict:
    images, lines, i = {}, _text_lines(path), 0
    while i < len(lines):
        line, lineno = lines[i].strip(), i + 1
        i += 1
        if not line or line.startswith("#"):
            continue
        # the name is everything after the ninth field, so names with inner spaces survive
        tok = line.split(None, 9)
        # the second line of an image (its 2D points) is taken as it is: COLMAP writes it even when empty
        second = lines[i] if i < len(lines) else ""
        i += 1
        try:
            if len(tok) != 10:
                raise ValueError(f"{len(tok)} fields, expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
            vals = [float(v) for v in tok[1:8]]
            image = Image(int(tok[0]), np.array(vals[:4]), np.array(vals[4:]), int(tok[8]), tok[9])
            if points:
                fields = second.split()
                if len(fields) % 3:
                    raise ValueError(f"line {lineno + 1}: 2D points are not (X, Y, POINT3D_ID) triples")
                image.xys = np.array([[float(fields[k]), float(fields[k + 1])] for k in range(0, len(fields), 3)],
                                     np.float64).reshape(-1, 2)
                image.point3D_ids = np.array([int(fields[k]) for k in range(2, len(fields), 3)], np.int64)
        except ValueError as exc:
            raise _parse_error(path, lineno, exc) from None
        _add(images, image.image_id, image, path, "image")
    return images


def _read_points3D_txt(path: str) -> dict:
    pts = {}
    for lineno, tok in _records(path):
        try:
            if len(tok) < 8 or (len(tok) - 8) % 2:
                raise ValueError("expected POINT3D_ID X Y Z R G B ERROR then (IMAGE_ID, POINT2D_IDX) pairs")
            rgb = [int(v) for v in tok[4:7]]
            if not all(0 <= c <= 255 for c in rgb):
                raise ValueError(f"colour {rgb} outside 0..255")
            track = np.array([int(v) for v in tok[8:]], np.int64).reshape(-1, 2)
            point = Point3D(int(tok[0]), np.array([float(v) for v in tok[1:4]]), np.array(rgb, np.uint8),
                            float(tok[7]), track)
        except ValueError as exc:
            raise _parse_error(path, lineno, exc) from None
        _add(pts, point.point3D_id, point, path, "point3D")
    return pts


def read_depth_map(path: str) -> np.ndarray:
    """[H, W] float32 of a single-channel COLMAP depth map file, values as stored; raises ColmapInputError
    ('corrupt_depth') on a bad header, a channel count other than 1 or a byte count other than W * H * 4."""
    with open(path, "rb") as f:
        head = f.read(_MAX_DEPTH_HEADER)
        parts = head.split(b"&", 3)
        if len(parts) < 4 or not all(p.isdigit() for p in parts[:3]):
            raise ColmapInputError(path, "corrupt_depth", f"header is not 'width&height&channels&': {head[:32]!r}")
        width, height, channels = (int(p) for p in parts[:3])
        if channels != 1 or width < 1 or height < 1:
            raise ColmapInputError(path, "corrupt_depth", f"{width}x{height} with {channels} channels, "
                                   "expected a single-channel depth map")
        f.seek(len(head) - len(parts[3]))
        data = f.read(width * height * 4 + 1)
    if len(data) != width * height * 4:
        got = "more than" if len(data) > width * height * 4 else f"only {len(data)}"
        raise ColmapInputError(path, "corrupt_depth", f"{got} data bytes for the header's {width} x {height} float32 "
                               f"({width * height * 4} bytes)")
    # x varies fastest, so the flat data is [H, W] in C order
    return np.frombuffer(data, "<f4").reshape(height, width).astype(np.float32)


# ----------------------------------------------------------------------------------------------- writing
def _fmt(value: float) -> str:
    # repr is the shortest text that parses back to the same float64: text and binary models hold equal numbers
    return repr(float(value))


def write_model(model: Model, sparse_dir: str, binary: bool = True) -> None:
    """Write `model` as cameras/images/points3D .bin (or .txt) into `sparse_dir`, in id order (deterministic)."""
    os.makedirs(sparse_dir, exist_ok=True)
    cams = [model.cameras[k] for k in sorted(model.cameras)]
    imgs = [model.images[k] for k in sorted(model.images)]
    pts = [model.points3D[k] for k in sorted(model.points3D)]
    if binary:
        out = {"cameras": [struct.pack("<Q", len(cams))], "images": [struct.pack("<Q", len(imgs))],
               "points3D": [struct.pack("<Q", len(pts))]}
        for c in cams:
            model_id, n = CAMERA_MODEL_IDS[c.model]
            assert len(c.params) == n, (c.model, c.params)
            out["cameras"].append(struct.pack(f"<iiQQ{n}d", c.camera_id, model_id, c.width, c.height, *c.params))
        for im in imgs:
            pts2d = np.zeros(len(im.point3D_ids), _POINT2D)
            pts2d["x"], pts2d["y"], pts2d["id"] = im.xys[:, 0], im.xys[:, 1], im.point3D_ids
            out["images"] += [struct.pack("<i7di", im.image_id, *im.qvec, *im.tvec, im.camera_id),
                              im.name.encode("utf-8") + b"\0", struct.pack("<Q", len(pts2d)), pts2d.tobytes()]
        for p in pts:
            track = np.zeros(len(p.track), _TRACK)
            track["image_id"], track["idx"] = p.track[:, 0], p.track[:, 1]
            out["points3D"] += [struct.pack("<Q3d3BdQ", p.point3D_id, *p.xyz, *p.rgb.tolist(), p.error, len(track)),
                                track.tobytes()]
        for name, chunks in out.items():
            with open(os.path.join(sparse_dir, f"{name}.bin"), "wb") as f:
                f.write(b"".join(chunks))
        return
    lines = {
        "cameras": ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
                    f"# Number of cameras: {len(cams)}"],
        "images": ["# Image list with two lines of data per image:",
                   "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)",
                   f"# Number of images: {len(imgs)}"],
        "points3D": ["# 3D point list with one line of data per point:",
                     "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
                     f"# Number of points: {len(pts)}"],
    }
    for c in cams:
        lines["cameras"].append(" ".join([str(c.camera_id), c.model, str(c.width), str(c.height)]
                                         + [_fmt(v) for v in c.params]))
    for im in imgs:
        lines["images"].append(" ".join([str(im.image_id)] + [_fmt(v) for v in (*im.qvec, *im.tvec)]
                                        + [str(im.camera_id), im.name]))
        lines["images"].append(" ".join(f"{_fmt(x)} {_fmt(y)} {int(i)}" for (x, y), i in zip(im.xys, im.point3D_ids)))
    for p in pts:
        lines["points3D"].append(" ".join([str(p.point3D_id)] + [_fmt(v) for v in p.xyz] + [str(int(v)) for v in p.rgb]
                                          + [_fmt(p.error)] + [str(int(v)) for v in p.track.ravel()]))
    for name, text in lines.items():
        with open(os.path.join(sparse_dir, f"{name}.txt"), "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(text) + "\n")


def write_depth_map(path: str, depth: np.ndarray) -> None:
    """Write [H, W] float32 `depth` as a COLMAP depth map file ("W&H&1&" + little-endian float32, x fastest)."""
    depth = np.asarray(depth)
    assert depth.ndim == 2, depth.shape
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(f"{depth.shape[1]}&{depth.shape[0]}&1&".encode("ascii"))
        f.write(np.ascontiguousarray(depth, "<f4").tobytes())
