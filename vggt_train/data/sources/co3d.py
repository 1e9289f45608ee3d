"""Read and validate one frame of the raw Co3D layout (annotations, JPEG, fp16-in-PNG depth, mask).

Everything here is plain numpy + Pillow so that spawned conversion workers start fast (no `datasets` import).
Bad input is reported as `BadInput(path, reason, detail)`; the caller decides to skip or to stop.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

SPLITS = ("train", "test")


# Reason codes written to report.json; the keys are stable (scripts may group by them).
REASONS = {
    "missing_annotation_file": "a requested category has no annotation file for this split",
    "malformed_annotation_file": "annotation file is not gzip'd JSON of {sequence: [frame, ...]}",
    "bad_annotation": "annotation entry lacks filepath/extri/intri or has the wrong shape",
    "unsafe_filepath": "annotation filepath is absolute, contains '..' or a NUL byte, or is not "
                       "<category>/<sequence>/images/*.jpg of the annotation file's category",
    "duplicate_sequence": "a sequence name already used by another category's annotation file of the same split",
    "bad_camera": "camera is non-finite or singular",
    "missing_image": "image file does not exist",
    "corrupt_image": "image cannot be decoded",
    "missing_depth": "depth file does not exist",
    "corrupt_depth": "depth PNG cannot be decoded or is not 16-bit",
    "missing_mask": "depth mask file does not exist",
    "corrupt_mask": "depth mask PNG cannot be decoded",
    "size_mismatch": "image, depth and mask sizes differ",
    "too_few_frames": "sequence fell below --min-frames after skipping bad frames",
    "annotation_too_large": "annotation file decompresses to more than VGGT_TRAIN_MAX_ANNOTATION_MB (a gzip bomb?)",
    "not_a_regular_file": "an image/depth/mask/annotation path is a device, FIFO, socket or directory",
    "file_too_large": "an image/depth/mask file is larger than VGGT_TRAIN_MAX_FRAME_FILE_MB",
}

# Resource caps on raw input (environment variables, so spawned workers see them too).
# Annotation files: a Co3D frame entry is ~350 bytes of JSON and the largest category-split file holds well under
# 100k frames (< 40 MB), so 256 MiB is a wide margin while a gzip bomb stops at 256 MiB instead of exhausting RAM
# (json.loads of the text costs several times its size again).
MAX_ANNOTATION_ENV = "VGGT_TRAIN_MAX_ANNOTATION_MB"
DEFAULT_MAX_ANNOTATION_MB = 256
# Image / depth / mask files: Co3D's are a few MB at most; 256 MiB bounds what one frame can make a worker hold.
MAX_FRAME_FILE_ENV = "VGGT_TRAIN_MAX_FRAME_FILE_MB"
DEFAULT_MAX_FRAME_FILE_MB = 256


def _limit_bytes(env: str, default_mb: float) -> int:
    try:
        mb = float(os.environ.get(env, "") or default_mb)
    except ValueError:
        mb = default_mb
    return max(1, int(mb * (1 << 20)))

_PNG_IEND = b"IEND\xaeB`\x82"
DEPTH_MAX_PERCENTILE = 98.0
JPEG_QUALITY = 95
_LANCZOS = Image.Resampling.LANCZOS if hasattr(Image, "Resampling") else Image.LANCZOS


_ADDRESS = re.compile(r"<([\w.]+ object) at 0x[0-9a-fA-F]+>")


class BadInput(Exception):
    """One bad input file or entry: `path` names it, `reason` is a key of REASONS, `detail` says what exactly."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        # a library's message may hold an object's address ("<_io.BytesIO object at 0x7f...>"): reports would then
        # differ from run to run; the path already names the file
        detail = _ADDRESS.sub(r"<\1>", detail)
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class Frame:
    """One converted frame: image bytes [h, w] (JPEG, or the source's PNG), depth float16 [h, w] (None: camera
    only), extrinsic [3, 4], intrinsic [3, 3]."""

    image_jpeg: bytes
    depth: np.ndarray
    extrinsic: np.ndarray
    intrinsic: np.ndarray
    original_size: tuple[int, int]  # (H, W) of the raw image
    stored_hw: tuple[int, int] | None = None  # (h, w) as stored: the size of a frame without depth (camera-only)

    @property
    def size(self) -> tuple[int, int]:
        if self.depth is None:
            return self.stored_hw
        return int(self.depth.shape[0]), int(self.depth.shape[1])


# ----------------------------------------------------------------------------------------------- annotations
def annotation_path(annotation_dir: str, category: str, split: str) -> str:
    return os.path.join(annotation_dir, f"{category}_{split}.jgz")


def find_categories(annotation_dir: str, splits: tuple[str, ...] | list[str]) -> list[str]:
    """Categories having an annotation file `<category>_<split>.jgz` for at least one of `splits`, sorted."""
    found = set()
    for name in os.listdir(annotation_dir):
        for split in splits:
            suffix = f"_{split}.jgz"
            if name.endswith(suffix) and len(name) > len(suffix):
                found.add(name[: -len(suffix)])
    return sorted(found)


def check_regular_file(path: str, missing_reason: str, max_bytes: int | None = None) -> os.stat_result:
    """os.stat of `path` (symlinks followed) if it is a regular file within `max_bytes`; else BadInput with
    `missing_reason`, 'not_a_regular_file' (never opened: a FIFO would block, /dev/zero never ends) or
    'file_too_large'."""

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(path, missing_reason, "no such file") from None
    except (OSError, ValueError) as exc:
        raise BadInput(path, missing_reason, f"{type(exc).__name__}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("directory" if stat.S_ISDIR(st.st_mode) else "FIFO" if stat.S_ISFIFO(st.st_mode) else "device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "special file")
        raise BadInput(path, "not_a_regular_file", f"a {kind}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise BadInput(path, "file_too_large", f"{st.st_size} bytes > limit {max_bytes} ({MAX_FRAME_FILE_ENV})")
    return st


def _open_regular(path: str):
    """A binary file object of `path`, opened non-blocking and re-checked with fstat (so a FIFO swapped in after
    the stat cannot block the open)."""

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadInput(path, "not_a_regular_file", "changed into a special file while being opened")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_annotation_file(path: str, max_bytes: int | None = None) -> dict[str, list[Any]]:
    """{sequence_name: [frame entry, ...]} from a .jgz file; raises BadInput('malformed_annotation_file'),
    'not_a_regular_file', or 'annotation_too_large' when it decompresses to more than `max_bytes` (default
    VGGT_TRAIN_MAX_ANNOTATION_MB, 256 MiB): the decompression stops there, so a gzip bomb costs at most that."""
    limit = max_bytes if max_bytes is not None else _limit_bytes(MAX_ANNOTATION_ENV, DEFAULT_MAX_ANNOTATION_MB)
    check_regular_file(path, "missing_annotation_file")
    try:
        with _open_regular(path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
            chunks, total = [], 0
            while True:
                block = f.read(min(1 << 22, limit + 1 - total))
                if not block:
                    break
                chunks.append(block)
                total += len(block)
                if total > limit:
                    raise BadInput(path, "annotation_too_large", f"decompresses to more than {limit} bytes "
                                   f"({MAX_ANNOTATION_ENV}={limit / (1 << 20):g})")
            text = b"".join(chunks)
            del chunks
            data = json.loads(text)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise BadInput(path, "malformed_annotation_file", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise BadInput(path, "malformed_annotation_file", "top level is not {sequence: [frames]}")
    return data


def frame_paths(co3d_dir: str, filepath: Any, category: str | None = None) -> tuple[str, str, str]:
    """(image, depth, mask) paths of an annotation `filepath`; raises BadInput('unsafe_filepath').

    Only the text of the path is checked (no symlink resolution), so a Co3D tree assembled from symlinks still works,
    while an annotation cannot make the converter read outside `co3d_dir`. With `category` (the annotation file's),
    the path must lie in that category's folder: a frame of another category would be stored under the wrong label.
    """
    if not isinstance(filepath, str) or not filepath:
        raise BadInput(str(filepath), "bad_annotation", "filepath is not a non-empty string")
    if "\0" in filepath:
        # The OS cannot open such a path (Python raises ValueError, not OSError).
        raise BadInput(filepath, "unsafe_filepath", "contains a NUL byte")
    norm = filepath.replace("\\", "/")
    parts = norm.split("/")
    if os.path.isabs(filepath) or norm.startswith("/") or ".." in parts or (len(parts[0]) == 2 and parts[0][1] == ":"):
        raise BadInput(filepath, "unsafe_filepath", "absolute or contains '..'")
    if "/images/" not in norm or not norm.endswith(".jpg"):
        raise BadInput(filepath, "unsafe_filepath", "expected <category>/<sequence>/images/<frame>.jpg")
    if category is not None and parts[0] != category:
        raise BadInput(filepath, "unsafe_filepath", f"category folder {parts[0]!r} is not the annotation file's {category!r}")
    image = os.path.join(co3d_dir, *parts)
    # The official loader derives both paths by plain substitution; replicate it on the relative path.
    depth = os.path.join(co3d_dir, *(norm.replace("/images", "/depths") + ".geometric.png").split("/"))
    mask = os.path.join(co3d_dir, *norm.replace("/images", "/depth_masks").replace(".jpg", ".png").split("/"))
    return image, depth, mask


def check_camera(entry: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(extrinsic [3, 4], intrinsic [3, 3]) float64 from an annotation entry, or BadInput if unusable."""
    try:
        extri = np.asarray(entry["extri"], dtype=np.float64)
        intri = np.asarray(entry["intri"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(where, "bad_annotation", f"extri/intri: {type(exc).__name__}: {exc}") from None
    if extri.shape != (3, 4) or intri.shape != (3, 3):
        raise BadInput(where, "bad_annotation", f"extri shape {extri.shape}, intri shape {intri.shape}")
    if not (np.isfinite(extri).all() and np.isfinite(intri).all()):
        raise BadInput(where, "bad_camera", "non-finite value in extri/intri")
    rot = extri[:, :3]
    # A rotation has det 1 and orthonormal rows; 1e-3 tolerates float32 round trips in the annotation files.
    if abs(np.linalg.det(rot)) < 1e-6 or np.abs(rot @ rot.T - np.eye(3)).max() > 1e-3:
        raise BadInput(where, "bad_camera", "extrinsic rotation is singular or not orthonormal")
    if intri[0, 0] <= 0 or intri[1, 1] <= 0 or abs(np.linalg.det(intri)) < 1e-12 or np.abs(intri[2] - [0, 0, 1]).max() > 1e-9:
        raise BadInput(where, "bad_camera", "intrinsic is singular (focal <= 0 or last row != [0, 0, 1])")
    return extri, intri


# ----------------------------------------------------------------------------------------------- files
def _read_bytes(path: str, missing_reason: str) -> bytes:
    """Contents of a regular file of at most VGGT_TRAIN_MAX_FRAME_FILE_MB (see check_regular_file)."""
    limit = _limit_bytes(MAX_FRAME_FILE_ENV, DEFAULT_MAX_FRAME_FILE_MB)
    check_regular_file(path, missing_reason, limit)
    try:
        with _open_regular(path) as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # grew since the stat
            raise BadInput(path, "file_too_large", f"more than {limit} bytes ({MAX_FRAME_FILE_ENV})")
        return data
    except FileNotFoundError:
        raise BadInput(path, missing_reason, "no such file") from None
    except OSError as exc:
        raise BadInput(path, missing_reason, f"{type(exc).__name__}: {exc}") from None


def _decode(data: bytes, path: str, reason: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Fully decoded image (truncation and corruption raise BadInput).

    `.info["raw_hw"]` is the header's (H, W); `.info["source_box"]` is the box of the decoded pixels that covers
    exactly the raw image (x0, y0, x1, y1), which is not the whole image after a DCT-scaled draft decode.
    """
    try:
        img = Image.open(io.BytesIO(data))
        raw_hw = (img.size[1], img.size[0])
        box = None
        if draft_size is not None and img.format == "JPEG":
            # DCT-domain downscaling: decodes the whole stream (truncation still detected) several times faster.
            res = img.draft("RGB", draft_size)
            if res is not None:
                # A 1/s decode has ceil(W/s) x ceil(H/s) pixels, the last ones covering padding beyond the
                # raw image; only (0, 0, W/s, H/s) maps onto it.
                box = tuple(float(v) for v in res[1])
        img.load()
        img.info["raw_hw"] = raw_hw
        img.info["source_box"] = box or (0.0, 0.0, float(img.size[0]), float(img.size[1]))
        return img
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        raise BadInput(path, reason, f"{type(exc).__name__}: {exc}") from None


def read_depth_png(path: str) -> np.ndarray:
    """Co3D depth [H, W] float16: a 16-bit PNG whose uint16 values are the bits of float16 depths."""
    data = _read_bytes(path, "missing_depth")
    if not data.rstrip(b"\0").endswith(_PNG_IEND):
        raise BadInput(path, "corrupt_depth", "truncated PNG (no IEND chunk)")
    img = _decode(data, path, "corrupt_depth")
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise BadInput(path, "corrupt_depth", f"expected a 16-bit grayscale PNG, got mode {img.mode}")
    arr = np.asarray(img)
    if img.mode == "I" and (arr.min(initial=0) < 0 or arr.max(initial=0) > 0xFFFF):
        raise BadInput(path, "corrupt_depth", "values do not fit 16 bits")
    return np.ascontiguousarray(arr.astype("<u2", copy=False)).view("<f2")


def read_mask_png(path: str) -> np.ndarray:
    """Co3D depth mask [H, W] bool: valid where the 8-bit value is > 128."""
    data = _read_bytes(path, "missing_mask")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and not data.rstrip(b"\0").endswith(_PNG_IEND):
        raise BadInput(path, "corrupt_mask", "truncated PNG (no IEND chunk)")
    img = _decode(data, path, "corrupt_mask")
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img) > 128


def official_depth(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The official Co3D depth clean-up, [H, W] float16 -> [H, W] float16 (kept values are bit-exact).

    Non-finite -> 0, invalid-mask -> 0, then values above the 98th percentile of the whole masked map (zeros
    included) -> 0. The percentile is taken in float64 like the reference (`np.nanpercentile` on a float map).
    """
    out = np.array(depth, dtype=np.float16, copy=True)
    out[~np.isfinite(out)] = 0
    out[~mask] = 0
    thres = np.percentile(out.astype(np.float64), DEPTH_MAX_PERCENTILE)
    if thres > 0:
        out[out.astype(np.float64) > thres] = 0
    return out


def target_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) after scaling the longer side down to `max_side` (never up); unchanged when max_side is None."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(1, int(round(height * s))), max(1, int(round(width * s)))


def scale_intrinsic(intri: np.ndarray, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsic [3, 3] for an image resized from old_hw to new_hw (pixel centres at integer coordinates)."""
    sy, sx = new_hw[0] / old_hw[0], new_hw[1] / old_hw[1]
    k = intri.copy()
    k[0, :] *= sx
    k[1, :] *= sy
    # A resize maps pixel-centre coordinates as u' + 0.5 = (u + 0.5) * s, so the principal point shifts by 0.5(s-1).
    k[0, 2] += 0.5 * (sx - 1.0)
    k[1, 2] += 0.5 * (sy - 1.0)
    return k


def resize_depth_nearest(depth: np.ndarray, new_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize [H, W] -> [h, w]: every output value is an input value (no mixing across edges)."""
    h, w = depth.shape
    ys = np.minimum(((np.arange(new_hw[0]) + 0.5) * h / new_hw[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(new_hw[1]) + 0.5) * w / new_hw[1]).astype(np.int64), w - 1)
    return np.ascontiguousarray(depth[ys[:, None], xs[None, :]])


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def load_frame(co3d_dir: str, entry: Any, max_side: int | None = None, category: str | None = None) -> Frame:
    """Read, validate and preprocess one annotated frame; raises BadInput naming the offending file.

    `category` is the annotation file's; the filepath must then be in that category's folder.
    Without resizing the original JPEG bytes are stored verbatim (no generation loss, no encode cost).
    """
    if not isinstance(entry, dict) or "filepath" not in entry:
        raise BadInput(repr(entry)[:120], "bad_annotation", "entry is not a dict with a filepath")
    image_path, depth_path, mask_path = frame_paths(co3d_dir, entry["filepath"], category)
    extri, intri = check_camera(entry, entry["filepath"])

    jpeg = _read_bytes(image_path, "missing_image")
    depth = read_depth_png(depth_path)
    mask = read_mask_png(mask_path)
    h, w = depth.shape
    new_hw = target_size(h, w, max_side)
    img = _decode(jpeg, image_path, "corrupt_image", draft_size=(new_hw[1], new_hw[0]) if new_hw != (h, w) else None)
    orig_hw = img.info["raw_hw"]
    if orig_hw != (h, w) or mask.shape != (h, w):
        raise BadInput(image_path, "size_mismatch", f"image {orig_hw}, depth {(h, w)}, mask {mask.shape}")

    depth = official_depth(depth, mask)
    if new_hw != (h, w):
        depth = resize_depth_nearest(depth, new_hw)
        intri = scale_intrinsic(intri, (h, w), new_hw)
        box = img.info["source_box"]
        img = img.convert("RGB")
        if img.size != (new_hw[1], new_hw[0]) or box != (0.0, 0.0, float(img.size[0]), float(img.size[1])):
            img = img.resize((new_hw[1], new_hw[0]), _LANCZOS, box=box)
        jpeg = encode_jpeg(img)
    elif img.format != "JPEG" or img.mode != "RGB":
        jpeg = encode_jpeg(img.convert("RGB"))
    return Frame(jpeg, depth, extri, intri, (h, w))


def probe_frame_bytes(co3d_dir: str, entry: Any, max_side: int | None) -> float | None:
    """Estimated stored bytes of one frame (JPEG + float16 depth), from the file size and JPEG header only."""
    try:
        image_path, _, _ = frame_paths(co3d_dir, entry["filepath"])
        size = check_regular_file(image_path, "missing_image", _limit_bytes(MAX_FRAME_FILE_ENV, DEFAULT_MAX_FRAME_FILE_MB)).st_size
        with _open_regular(image_path) as f, Image.open(f) as im:  # the header only
            w, h = im.size
    except Exception:
        return None
    nh, nw = target_size(h, w, max_side)
    ratio = (nh * nw) / float(h * w)
    return size * ratio + nh * nw * 2 + 256

