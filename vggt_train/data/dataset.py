"""MultiViewDataset: multi-view training samples (the official VGGT recipe) from converted shards or any frame source.

    ds = MultiViewDataset("OUT", "train", img_size=518)            # OUT = `vggt-train convert-co3d --out`
    s = ds.get_sample(sequence=ds.sequences[0], frame_ids=[0, 5, 9], aspect_ratio=1.0, aug_seed=7)
    s["images"]        # [S, 3, H, W] float32 in [0, 1]     s["depths"]       # [S, H, W] float32
    s["extrinsics"]    # [S, 3, 4] camera-from-world        s["intrinsics"]   # [S, 3, 3]
    s["cam_points"], s["world_points"]  # [S, H, W, 3]      s["point_masks"]  # [S, H, W] bool, depth > 0

Samples are *not* batch-normalised (collate.normalize does it). frame_ids are positions 0..num_frames-1 within the
sequence. With augment=False a sample depends on nothing but its arguments; with augment=True on `aug_seed` too.

Reading shards: only the image bytes, depth bytes, height/width, extrinsic, intrinsic and frame columns are
touched, straight from the memory-mapped Arrow buffers (depth is a zero-copy float16 view); nothing is cached, so a
worker's memory does not grow with the number of samples it has produced.

Bad rows: a frame whose image does not decode (or whose depth bytes do not match its size, or whose principal
point lies outside the image) is replaced by the next position of the same sequence (p + 1, p + 2, ... wrapping),
up to `max_frame_retries` tries; a sequence without any usable frame among those is replaced by the next sequence
in index order (same positions modulo its length). Each replacement is counted (`bad_frames`,
`replaced_samples`), logged once per frame as a warning naming the file, sequence, frame and field, and listed in
the sample's "replaced" entry. The replacement is deterministic: the same data give the same batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from vggt_train.data.sampler import IndexInfo, SampleSpec
from vggt_train.data.transforms import (
    AugmentConfig,
    BadView,
    JitterDraw,
    ViewDraw,
    image_size_hw,
    open_image,
    plan_view,
    resample_depth,
    resample_image,
    rotate_camera,
    target_shape,
)

log = logging.getLogger("vggt_train.data")

_transpose = getattr(Image, "Transpose", Image)  # Pillow < 9.1 has the constants on Image
_ROTATE_CW, _ROTATE_CCW = _transpose.ROTATE_270, _transpose.ROTATE_90  # PIL angles are counter-clockwise

_MAX_LOGGED = 10000  # distinct bad frames remembered for once-only warnings (bounds the set's memory)


# ----------------------------------------------------------------------------------------------- frame sources
@dataclass
class RawFrame:
    """One stored frame: encoded image (bytes-like) or [H, W, 3] uint8, depth [H, W] (float16/32, may be a
    read-only view), extrinsic [3, 4] and intrinsic [3, 3] (float64), annotation frame index, and where it lives."""

    image: Any
    depth: np.ndarray
    extrinsic: np.ndarray
    intrinsic: np.ndarray
    frame: int
    where: str


class BadFrame(Exception):
    """A stored frame that cannot be used: `where` names the file/row, `field` the column, `detail` the cause."""

    def __init__(self, where: str, field: str, detail: str):
        self.where, self.field, self.detail = where, field, detail
        super().__init__(f"{where}: field {field!r}: {detail}")


class FrameSource:
    """What MultiViewDataset reads from. Subclasses set `sequences` and implement num_frames / read_frame."""

    sequences: List[str]

    def num_frames(self, sequence: str) -> int:
        raise NotImplementedError

    def category(self, sequence: str) -> str:
        return ""

    def read_frame(self, sequence: str, position: int) -> RawFrame:
        """Frame at `position` (0..num_frames-1) of `sequence`; raises BadFrame for unusable stored data."""
        raise NotImplementedError

    def index_info(self) -> IndexInfo:
        return IndexInfo(tuple(self.sequences), tuple(self.num_frames(s) for s in self.sequences))


def _as_bytes_view(value) -> memoryview:
    return memoryview(value.as_buffer() if hasattr(value, "as_buffer") else value)


class _ChunkedColumn:
    """Row -> (chunk, offset) lookup of one Arrow column (a numpy array of chunk starts; no per-row objects)."""

    def __init__(self, column):
        self.column = column
        self.starts = np.cumsum([0] + [len(c) for c in column.chunks])

    def locate(self, row: int):
        ci = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.column.chunk(ci), row - int(self.starts[ci])


class ShardSource(FrameSource):
    """Frames of one converted split (`OUT/<split>`), read column-by-column from the memory-mapped shards."""

    def __init__(self, split_dir: str):
        from vggt_train.data.reader import Co3DSplit

        self.split_dir = split_dir
        self.split = Co3DSplit(split_dir)
        self.sequences = list(self.split.sequences)
        self._seq_pos = {s: i for i, s in enumerate(self.sequences)}
        ds = self.split.dataset
        if getattr(ds, "_indices", None) is not None:
            raise ValueError(f"{split_dir}: the dataset has an indices mapping (select/shuffle); MultiViewDataset needs the converter's layout")
        table = getattr(ds.data, "table", ds.data)
        names = ("image", "depth", "height", "width", "extrinsic", "intrinsic", "frame")
        missing = [n for n in names if n not in table.column_names]
        if missing:
            raise ValueError(f"{split_dir}: columns {missing} are missing (not a convert-co3d dataset?)")
        self._cols = {n: _ChunkedColumn(table.column(n)) for n in names}
        self._image_field = table.schema.field("image").type.get_field_index("bytes")
        self._files = [f["filename"] for f in ds.cache_files] if ds.cache_files else [split_dir]

    def __getstate__(self):
        return {"split_dir": self.split_dir}

    def __setstate__(self, state):
        self.__init__(state["split_dir"])

    def num_frames(self, sequence: str) -> int:
        return self.split.num_frames(sequence)

    def category(self, sequence: str) -> str:
        return self.split.category(sequence)

    def sequence_position(self, sequence: str) -> int:
        return self._seq_pos[sequence]

    def _where(self, sequence: str, position: int, row: int) -> str:
        shard = getattr(self.split, "_index", {}).get(sequence, {}).get("shard")
        path = self._files[shard] if isinstance(shard, int) and 0 <= shard < len(self._files) else self.split_dir
        return f"{path} (sequence {sequence}, frame position {position}, row {row})"

    def _scalar(self, name: str, row: int):
        chunk, i = self._cols[name].locate(row)
        return chunk[i]

    def _matrix(self, name: str, row: int, shape) -> np.ndarray:
        chunk, i = self._cols[name].locate(row)
        storage = chunk.storage if hasattr(chunk, "storage") else chunk
        values = storage.slice(i, 1).flatten().flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float64).reshape(shape)

    def read_frame(self, sequence: str, position: int) -> RawFrame:
        rows = self.split.rows(sequence)
        row = rows.start + int(position)
        if not 0 <= position < len(rows):
            raise IndexError(f"frame position {position} out of range for {sequence} with {len(rows)} frames")
        where = self._where(sequence, position, row)
        chunk, i = self._cols["image"].locate(row)
        image = chunk.flatten()[self._image_field][i]
        if not image.is_valid:
            raise BadFrame(where, "image", "no image bytes (null)")
        depth = self._scalar("depth", row)
        if not depth.is_valid:
            raise BadFrame(where, "depth", "no depth bytes (null)")
        h, w = self._scalar("height", row).as_py(), self._scalar("width", row).as_py()
        buf = depth.as_buffer()
        if buf.size != h * w * 2:
            raise BadFrame(where, "depth", f"{buf.size} bytes, expected {h}x{w} float16 = {h * w * 2}")
        return RawFrame(
            image=image.as_buffer(),
            depth=np.frombuffer(buf, dtype="<f2").reshape(h, w),
            extrinsic=self._matrix("extrinsic", row, (3, 4)),
            intrinsic=self._matrix("intrinsic", row, (3, 3)),
            frame=int(self._scalar("frame", row).as_py()),
            where=where,
        )


class InMemorySource(FrameSource):
    """Frames held in memory, for tests and tiny experiments.

    frames: {sequence: [{"image": encoded bytes or [H, W, 3] uint8, "depth": [H, W], "extrinsic": [3, 4],
    "intrinsic": [3, 3]}, ...]}.
    """

    def __init__(self, frames: Mapping[str, Sequence[Mapping[str, Any]]], categories: Optional[Mapping[str, str]] = None):
        self.frames = {str(k): list(v) for k, v in frames.items()}
        self.sequences = list(self.frames)
        self._categories = dict(categories or {})

    def num_frames(self, sequence: str) -> int:
        return len(self.frames[sequence])

    def category(self, sequence: str) -> str:
        return self._categories.get(sequence, "")

    def read_frame(self, sequence: str, position: int) -> RawFrame:
        f = self.frames[sequence][position]
        return RawFrame(f["image"], np.asarray(f["depth"]), np.asarray(f["extrinsic"], np.float64),
                        np.asarray(f["intrinsic"], np.float64), int(f.get("frame", position)), f"memory:{sequence}/{position}")


def resolve_split_dir(path: str, split: Optional[str]) -> str:
    """OUT + split -> OUT/split; a split directory itself is accepted too. Raises FileNotFoundError with a hint."""
    from vggt_train.data.schema import INDEX_FILE

    candidates = ([os.path.join(path, split)] if split else []) + [path]
    for c in candidates:
        if os.path.isfile(os.path.join(c, INDEX_FILE)):
            return c
    raise FileNotFoundError(f"no converted split at {os.path.join(path, split) if split else path} (expected {INDEX_FILE}; "
                            f"make one with `vggt-train convert-co3d --out {path}`)")


# ----------------------------------------------------------------------------------------------- the dataset
def points_into(depth: torch.Tensor, intrinsic: np.ndarray, extrinsic: np.ndarray, cam_out: torch.Tensor, world_out: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> float:
    """Unproject depth [H, W] into cam_out and world_out [H, W, 3] (integer pixel centres, as geometry.depth_to_cam_points).

    Returns the sum of |world point| over `mask` [H, W] (0.0 without a mask), for the batch normalisation.

    world = depth * R^T K^-1 [u, v, 1] + (-R^T t): the ray direction is separable in u and v, so each channel is an
    outer sum times the depth (numpy on the tensors' memory; a [HW, 3] x [3, 3] matmul is several times slower).
    """
    H, W = depth.shape
    d = depth.numpy()
    fx, fy, cx, cy = intrinsic[0, 0], intrinsic[1, 1], intrinsic[0, 2], intrinsic[1, 2]
    xs = (np.arange(W) - cx) / fx  # [W] camera x per unit depth
    ys = (np.arange(H) - cy) / fy  # [H]
    cam, world = cam_out.numpy(), world_out.numpy()
    np.multiply(d, xs[None, :].astype(np.float32), out=cam[..., 0])
    np.multiply(d, ys[:, None].astype(np.float32), out=cam[..., 1])
    cam[..., 2] = d
    rot_t = np.asarray(extrinsic[:, :3], np.float64).T
    centre = -rot_t @ np.asarray(extrinsic[:, 3], np.float64)
    squares = np.zeros((H, W), np.float32) if mask is not None else None
    for k in range(3):
        ray = np.add.outer((ys * rot_t[k, 1] + rot_t[k, 2]).astype(np.float32), (xs * rot_t[k, 0]).astype(np.float32))
        ray *= d
        ray += np.float32(centre[k])
        world[..., k] = ray
        if squares is not None:  # planar and contiguous here: far cheaper than a norm over the last dim later
            squares += ray * ray
    if squares is None:
        return 0.0
    np.sqrt(squares, out=squares)
    squares *= mask.numpy()
    return float(squares.sum(dtype=np.float64))


def empty_batch(batch_size: int, num_images: int, hw) -> Dict[str, torch.Tensor]:
    """Uninitialised [B, S, ...] tensors of a batch (filled in place by MultiViewDataset.load_batch)."""
    B, S, (H, W) = batch_size, num_images, hw
    return {
        "images": torch.empty(B, S, 3, H, W),
        "depths": torch.empty(B, S, H, W),
        "extrinsics": torch.empty(B, S, 3, 4),
        "intrinsics": torch.empty(B, S, 3, 3),
        "cam_points": torch.empty(B, S, H, W, 3),
        "world_points": torch.empty(B, S, H, W, 3),
        "point_masks": torch.empty(B, S, H, W, dtype=torch.bool),
        "frame_ids": torch.empty(B, S, dtype=torch.int64),
        "frames": torch.empty(B, S, dtype=torch.int64),
    }


def _homogeneous(extrinsic: np.ndarray) -> np.ndarray:
    return np.concatenate([extrinsic, [[0.0, 0.0, 0.0, 1.0]]], 0)


def _inverse_se3(extrinsic: np.ndarray) -> np.ndarray:
    """[4, 4] inverse of a camera-from-world [3, 4] (R^T, -R^T t), in float64."""
    inv = np.eye(4)
    inv[:3, :3] = extrinsic[:, :3].T
    inv[:3, 3] = -extrinsic[:, :3].T @ extrinsic[:, 3]
    return inv


# geometry.normalize_batch's bounds and count epsilon, so the fused normalisation gives the same numbers
_SCALE_MIN, _SCALE_MAX, _COUNT_EPS = 1e-6, 1e6, 1e-3


def _scale_sample_(out: Dict[str, torch.Tensor], b: int, dist_sum: float) -> None:
    """Divide sample b's translations, depths, cam and world points (already in camera 0's frame) by the mean
    distance of its valid world points (dist_sum / count), in place."""
    count = int(out["point_masks"][b].sum())
    scale = min(max(dist_sum / (count + _COUNT_EPS), _SCALE_MIN), _SCALE_MAX)
    for key in ("world_points", "cam_points", "depths"):
        out[key][b].div_(scale)
    out["extrinsics"][b, :, :, 3].div_(scale)


class _SequenceUnusable(Exception):
    pass


class MultiViewDataset:
    """Multi-view samples over a converted split (or any FrameSource): decoding, the official per-image recipe, points.

    path/split: the converted dataset root and split name (or a split directory). source: any FrameSource instead
    (InMemorySource, raw_reader.RawCo3DSource). aug: the random parts (AugmentConfig; ignored when augment=False).
    use_draft: decode JPEGs at a reduced DCT scale where the output resolution allows (much faster for large
    sources; the geometry is unchanged).
    """

    def __init__(self, path: Optional[str] = None, split: Optional[str] = "train", img_size: int = 518, patch_size: int = 14,
                 augment: bool = True, aug: Optional[AugmentConfig] = None, *, source: Optional[FrameSource] = None,
                 use_draft: bool = True, max_frame_retries: int = 8, max_sequence_retries: int = 8):
        if source is None:
            if path is None:
                raise ValueError("MultiViewDataset needs a path (converted dataset) or a source")
            source = ShardSource(resolve_split_dir(path, split))
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        self.source = source
        self.img_size, self.patch_size = int(img_size), int(patch_size)
        self.augment = bool(augment)
        self.aug = aug if aug is not None else AugmentConfig()
        self.use_draft = use_draft
        self.max_frame_retries, self.max_sequence_retries = max(1, max_frame_retries), max(1, max_sequence_retries)
        self.bad_frames = 0  # frames replaced in this process
        self.replaced_samples = 0  # samples moved to another sequence in this process
        self._logged: set = set()
        self._seq_pos = {s: i for i, s in enumerate(source.sequences)}

    @classmethod
    def from_source(cls, source: FrameSource, **kwargs) -> "MultiViewDataset":
        return cls(source=source, **kwargs)

    @classmethod
    def from_raw(cls, co3d_dir: str, annotation_dir: str, split: str = "train", categories: str = "all", min_frames: int = 24, **kwargs):
        """Straight from the raw Co3D layout (no conversion): same samples, slower (PNG depth decode + clean-up per frame)."""
        from vggt_train.data.raw_reader import RawCo3DSource

        return cls(source=RawCo3DSource(co3d_dir, annotation_dir, split, categories=categories, min_frames=min_frames), **kwargs)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_logged"] = set()
        return state

    # -- index ------------------------------------------------------------------------------------------------
    @property
    def sequences(self) -> List[str]:
        return self.source.sequences

    def num_frames(self, sequence: str) -> int:
        return self.source.num_frames(sequence)

    def index_info(self) -> IndexInfo:
        """Sequence names and frame counts, for StepPlanner."""
        return self.source.index_info()

    def target_shape(self, aspect_ratio: float):
        """(H, W) of samples at this aspect ratio."""
        return target_shape(self.img_size, aspect_ratio, self.patch_size)

    # -- samples ----------------------------------------------------------------------------------------------
    def get_sample(self, sequence: str, frame_ids: Sequence[int], aspect_ratio: float = 1.0, aug_seed: int = 0) -> Dict[str, Any]:
        """One sample of S = len(frame_ids) views, [S, ...] tensors (see the module docstring), before batch normalisation."""
        spec = SampleSpec(sequence, tuple(int(f) for f in frame_ids), int(aug_seed))
        batch = self.load_batch([spec], aspect_ratio)
        out = {k: (v[0] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        out["seq_name"], out["category"], out["replaced"] = batch["seq_names"][0], batch["categories"][0], batch["replaced"][0]
        for k in ("seq_names", "categories"):
            out.pop(k)
        return out

    def load_batch(self, specs: Sequence[SampleSpec], aspect_ratio: float = 1.0, normalize: bool = False) -> Dict[str, Any]:
        """[B, S, ...] tensors for B specs with the same S, filled in place (no per-sample stacking copy).

        normalize=True applies the official batch normalisation (geometry.normalize_batch: camera 0 becomes the
        world origin, translations / depths / points divided by the mean distance of the valid world points) fused
        into the point computation: the points are computed in camera 0's frame directly and scaled in place,
        several times cheaper than normalising afterwards (same result to float32 rounding; tested).
        Extra keys: seq_names [B], categories [B], replaced [B] lists of replaced frames, frame_ids / frames [B, S]
        (positions used, annotation frame indices).
        """
        if not specs:
            raise ValueError("load_batch needs at least one sample spec")
        S = len(specs[0].frame_ids)
        if S < 1 or any(len(s.frame_ids) != S for s in specs):
            raise ValueError("every sample of a batch needs the same, non-zero number of frames")
        hw = self.target_shape(aspect_ratio)
        out = empty_batch(len(specs), S, hw)
        out.update(seq_names=[], categories=[], replaced=[])
        for b, spec in enumerate(specs):
            seq, replaced = self._fill_sample(out, b, spec, hw, normalize)
            out["seq_names"].append(seq)
            out["categories"].append(self.source.category(seq))
            out["replaced"].append(replaced)
        return out

    def _draws(self, spec: SampleSpec, S: int):
        if not self.augment:
            return [ViewDraw()] * S, [JitterDraw()] * S
        rng = np.random.default_rng(spec.aug_seed)
        views = [ViewDraw.draw(rng, self.aug) for _ in range(S)]
        cj, gp = self.aug.color_jitter, self.aug.grayscale_p
        if rng.random() > self.aug.cojitter_ratio:  # official: shared jitter when random() > cojitter_ratio
            jitters = [JitterDraw.draw(rng, cj, gp)] * S
        else:
            jitters = [JitterDraw.draw(rng, cj, gp) for _ in range(S)]
        return views, jitters

    def _fill_sample(self, out: Dict, b: int, spec: SampleSpec, hw, normalize: bool):
        views, jitters = self._draws(spec, len(spec.frame_ids))
        seq, replaced = spec.sequence, []
        if seq not in self._seq_pos:
            raise KeyError(f"sequence {seq!r} is not in the dataset")
        for attempt in range(self.max_sequence_retries):
            try:
                frame0 = {"dist_sum": 0.0} if normalize else None
                for v, pos in enumerate(spec.frame_ids):
                    self._fill_view(out, b, v, seq, pos, views[v], jitters[v], hw, replaced, frame0)
                if normalize:
                    _scale_sample_(out, b, frame0["dist_sum"])
                return seq, replaced
            except _SequenceUnusable:
                nxt = self.sequences[(self._seq_pos[seq] + 1) % len(self.sequences)]
                replaced.append(f"sequence {seq} -> {nxt}")
                self.replaced_samples += 1
                log.warning("no usable frame among the tried positions of sequence %s; sample moved to sequence %s", seq, nxt)
                seq = nxt
        raise RuntimeError(f"{self.max_sequence_retries} sequences in a row had no usable frame (last: {seq}); "
                           f"the dataset looks corrupt: run `vggt-train verify-dataset`")

    def _fill_view(self, out, b, v, seq, pos, draw, jitter, hw, replaced, frame0):
        """Fill view v of sample b; with frame0 (a dict, empty for view 0) the cameras and points are expressed
        relative to view 0's camera (its inverse is stored in frame0)."""
        n = self.source.num_frames(seq)
        pos = int(pos) % n
        for k in range(min(n, self.max_frame_retries)):
            p = (pos + k) % n
            try:
                frame = self.source.read_frame(seq, p)
                image, depth, extri, intri = self._process(frame, draw, hw)
            except (BadFrame, BadView) as exc:
                self._report(seq, p, exc)
                continue
            if k:
                replaced.append(f"{seq}/{pos} -> {seq}/{p}")
            img_t = out["images"][b, v]
            img_t.copy_(torch.from_numpy(np.array(image)).permute(2, 0, 1))  # np.array: torch refuses read-only buffers
            img_t.div_(255.0)
            jitter(img_t)
            depth_t = out["depths"][b, v]
            depth_t.copy_(torch.from_numpy(np.ascontiguousarray(depth)))
            torch.gt(depth_t, 0, out=out["point_masks"][b, v])
            if frame0 is not None:
                if "inverse" not in frame0:
                    frame0["inverse"] = _inverse_se3(extri)
                extri = (_homogeneous(extri) @ frame0["inverse"])[:3]
                frame0["dist_sum"] += points_into(depth_t, intri, extri, out["cam_points"][b, v], out["world_points"][b, v],
                                                  out["point_masks"][b, v])
            else:
                points_into(depth_t, intri, extri, out["cam_points"][b, v], out["world_points"][b, v])
            out["extrinsics"][b, v] = torch.from_numpy(np.array(extri, dtype=np.float32))
            out["intrinsics"][b, v] = torch.from_numpy(np.array(intri, dtype=np.float32))
            out["frame_ids"][b, v] = p
            out["frames"][b, v] = frame.frame
            return
        raise _SequenceUnusable(seq)

    def _process(self, frame: RawFrame, draw: ViewDraw, hw):
        """(PIL RGB image, depth float32 [H, W], extrinsic [3, 4], intrinsic [3, 3]) of one view, after the geometry."""
        try:
            img = open_image(frame.image)
            src_hw = image_size_hw(img)
        except Exception as exc:  # Pillow raises many types for bad bytes (OSError, SyntaxError, ValueError, ...)
            raise BadFrame(frame.where, "image", f"cannot be decoded: {type(exc).__name__}: {exc}") from None
        if tuple(frame.depth.shape) != tuple(src_hw):
            raise BadFrame(frame.where, "depth", f"depth {tuple(frame.depth.shape)} does not match the image {src_hw}")
        plan = plan_view(src_hw, frame.intrinsic, hw, draw)
        try:
            image = resample_image(img, plan, self.use_draft)
        except Exception as exc:
            raise BadFrame(frame.where, "image", f"cannot be decoded: {type(exc).__name__}: {exc}") from None
        depth = resample_depth(frame.depth, plan)
        extri, intri = np.asarray(frame.extrinsic, np.float64), plan.intrinsic
        if not (np.isfinite(extri).all() and np.isfinite(intri).all() and intri[0, 0] > 0 and intri[1, 1] > 0):
            raise BadFrame(frame.where, "extrinsic/intrinsic", "non-finite camera or focal length <= 0")
        if plan.rot90_k:
            image = image.transpose(_ROTATE_CW if plan.rot90_k == -1 else _ROTATE_CCW)
            depth = np.rot90(depth, plan.rot90_k)
            extri, intri = rotate_camera(extri, intri, plan.out_hw, plan.rot90_k)
        return image, depth, extri, intri

    def _report(self, seq: str, pos: int, exc: Exception) -> None:
        self.bad_frames += 1
        key = (seq, pos)
        if key in self._logged:
            return
        if len(self._logged) < _MAX_LOGGED:
            self._logged.add(key)
        log.warning("skipping unusable frame (replaced by the next position of the sequence): %s", exc)
