"""MultiViewDataset: multi-view training samples (the official VGGT recipe) from converted shards or any frame source.

    ds = MultiViewDataset("OUT", "train", img_size=518)            # OUT = `vggt-train convert-co3d --out`
    s = ds.get_sample(sequence=ds.sequences[0], frame_ids=[0, 5, 9], aspect_ratio=1.0, aug_seed=7)
    s["images"]        # [S, 3, H, W] float32 in [0, 1]     s["depths"]       # [S, H, W] float32
    s["extrinsics"]    # [S, 3, 4] camera-from-world        s["intrinsics"]   # [S, 3, 3]
    s["cam_points"], s["world_points"]  # [S, H, W, 3]      s["point_masks"]  # [S, H, W] bool, depth > 0

Samples are *not* batch-normalised (collate.normalize does it). frame_ids are positions 0..num_frames-1 within the
sequence. With augment=False a sample depends on nothing but its arguments; with augment=True on `aug_seed` too.

Two stages: `load_batch(..., finish=False)` is the CPU part a DataLoader worker runs (read, decode, crop/resize,
depth gather, every random draw) and returns a WorkerBatch (batch.py) of compact uint8 / float16 tensors;
`finish.finish_batch` does the rest (uint8 -> float, colour jitter, points, normalisation) wherever the batch is,
the training device in the trainer.
`get_sample` and `load_batch(finish=True)` run both on the CPU. resample="device" leaves the resize itself to the
finishing stage too (PIL's exact LANCZOS/BICUBIC, see resample.py): the worker then only decodes and cuts.

Reading shards: only the image bytes, depth bytes, height/width, extrinsic, intrinsic and frame columns are
touched, straight from the memory-mapped Arrow buffers (depth is a zero-copy float16 view); nothing is cached, so a
worker's memory does not grow with the number of samples it has produced.

Bad rows: a frame whose image does not decode (or whose depth bytes do not match its size, or whose principal
point lies outside the image) is replaced by the next position of the same sequence (p + 1, p + 2, ... wrapping),
up to `max_frame_retries` tries; a sequence without any usable frame among those is replaced by the next sequence
in index order (of the same dataset in a mixture; same positions modulo its length). Each replacement is counted (`bad_frames`,
`replaced_samples`), logged once per frame as a warning naming the file, sequence, frame and field, and listed in
the sample's "replaced" entry. The replacement is deterministic: the same data give the same batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from vggt_train.data.pipeline.batch import FinishPlan, TrainBatch, WorkerBatch
from vggt_train.data.pipeline.finish import finish_batch
from vggt_train.data.pipeline.resample import pack
from vggt_train.data.pipeline.sampler import IndexInfo, SampleSpec
from vggt_train.data.pipeline.transforms import (
    JITTER_FIELDS,
    AugmentConfig,
    BadView,
    JitterDraw,
    ViewDraw,
    depth_dtype,
    gather_depth,
    image_size_hw,
    open_image,
    plan_view,
    resize_for_device,
    resize_valid,
    rotate_camera,
    target_shape,
)
from vggt_train.data.sources import (  # InMemorySource, ShardReadError: re-exported, part of the dataset's API
    BadFrame,
    FrameSource,
    InMemorySource,
    RawFrame,
    ShardReadError,
    ShardSource,
    resolve_split_dir,
)
from vggt_train.data.sources.raw_co3d import RawCo3DSource
from vggt_train.data.sources.select import Selection
from vggt_train.geometry import first_camera_frame

log = logging.getLogger("vggt_train.data")
__all__ = ["MultiViewDataset", "BadFrame", "FrameSource", "InMemorySource", "RawFrame", "ShardReadError", "ShardSource",
           "resolve_split_dir"]

_MAX_LOGGED = 10000  # distinct bad frames remembered for once-only warnings (bounds the set's memory)


@dataclass
class _View:
    """One view after the worker's geometry: image (uint8 [vh, vw, 3] before rotation, or with a deferred resize
    (window, ViewResample)), depth [out_hw] after rotation (None when it went straight into the batch), cameras
    after rotation, and the plan."""

    image: Any
    depth: Optional[np.ndarray]
    extrinsic: np.ndarray
    intrinsic: np.ndarray
    plan: Any


class _Deferred:
    """Per-view windows and coefficients of a batch whose resize runs in finish_batch."""

    def __init__(self, n: int):
        self.windows: List[Optional[np.ndarray]] = [None] * n
        self.coeffs: List[Any] = [None] * n
        self.rot90, self.vertical_first = [0] * n, [False] * n
        self.out_hw: List[tuple] = [(0, 0)] * n

    def tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(windows [n, h, w, 3] uint8, zero-padded to the largest; the packed resample table)."""
        n = len(self.windows)
        h = max([w.shape[0] for w in self.windows if w is not None] or [1])
        w_ = max([w.shape[1] for w in self.windows if w is not None] or [1])
        window = torch.empty((n, h, w_, 3), dtype=torch.uint8)
        dst = window.numpy()
        for i, win in enumerate(self.windows):
            wh, ww = (0, 0) if win is None else win.shape[:2]
            if win is not None:
                dst[i, :wh, :ww] = win
            # only the padding is zeroed: it is never weighted, but the shipped bytes stay deterministic
            dst[i, wh:] = 0
            dst[i, :wh, ww:] = 0
        table = pack(self.coeffs, (max(o[0] for o in self.out_hw), max(o[1] for o in self.out_hw)))
        return window, table


@dataclass
class _Filling:
    """A WorkerBatch while its views are filled in, and what is only kept until it is complete: the deferred
    resizes, the jitter rows and the cameras in float64 (made relative to view 0 per sample once it is whole)."""

    batch: WorkerBatch
    hw: Tuple[int, int]
    deferred: Optional[_Deferred]
    cameras: np.ndarray  # [B, S, 3, 4] float64


class _SequenceUnusable(Exception):
    pass


class MultiViewDataset:
    """Multi-view samples over a converted split (or any FrameSource): decoding, the official per-image recipe, points.

    path/split: the converted dataset root and split name (or a split directory). source: any FrameSource instead
    (InMemorySource, raw_co3d.RawCo3DSource). aug: the random parts (AugmentConfig; ignored when augment=False).
    use_draft: decode JPEGs at a reduced DCT scale where the output resolution allows (much faster for large
    sources; the geometry is unchanged). resample: where the resize runs, "worker" (PIL, in load_batch) or
    "device" (the same numbers, in finish_batch; pays off where the batch is finished on an accelerator).
    """

    def __init__(self, path: Optional[str] = None, split: Optional[str] = "train", img_size: int = 518, patch_size: int = 14,
                 augment: bool = True, aug: Optional[AugmentConfig] = None, *, source: Optional[FrameSource] = None,
                 categories: Selection = None, use_draft: bool = True, resample: str = "worker",
                 max_frame_retries: int = 8, max_sequence_retries: int = 8):
        if source is None:
            if path is None:
                raise ValueError("MultiViewDataset needs a path (converted dataset) or a source")
            source = ShardSource(resolve_split_dir(path, split), categories=categories)
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        if resample not in ("worker", "device"):
            raise ValueError(f"resample={resample!r}; choose 'worker' or 'device'")
        self.source = source
        self.resample = resample
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
    def from_raw(cls, co3d_dir: str, annotation_dir: str, split: str = "train", categories: Selection = "all", min_frames: int = 24, **kwargs):
        """Straight from the raw Co3D layout (no conversion): same samples, slower (PNG depth decode + clean-up per frame)."""

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
        out["source"] = batch["sources"][0]
        for k in ("seq_names", "categories", "sources"):
            out.pop(k)
        return out

    def load_batch(self, specs: Sequence[SampleSpec], aspect_ratio: float = 1.0, normalize: bool = False,
                   finish: bool = True) -> Union[TrainBatch, WorkerBatch]:
        """B specs with the same S as one batch of [B, S, ...] tensors, filled in place (no per-sample stacking).

        finish=False stops after the worker's part and returns a WorkerBatch (batch.py): uint8 images (or source
        windows), float16 depth, float32 cameras and the drawn jitter, to be finished by `finish_batch` on the
        training device. finish=True also finishes it here on the CPU and returns a TrainBatch dict: images,
        depths, extrinsics, intrinsics, cam_points, world_points, point_masks.
        normalize=True applies the official batch normalisation (geometry.normalize_batch: camera 0 becomes the
        world origin, translations / depths / points divided by the mean distance of the valid world points) in
        its two halves: the rigid one here in float64 (geometry.first_camera_frame), the scale one in the
        finishing stage (geometry.scene_scale); the same result to float32 rounding (tested).
        Also: seq_names [B], categories [B], sources [B] (the mixed dataset each sample came from, "" without a
        mixture: FrameSource.source_name), replaced [B] lists of replaced frames, frame_ids / frames [B, S]
        (positions used, annotation frame indices).
        """
        if not specs:
            raise ValueError("load_batch needs at least one sample spec")
        S = len(specs[0].frame_ids)
        if S < 1 or any(len(s.frame_ids) != S for s in specs):
            raise ValueError("every sample of a batch needs the same, non-zero number of frames")
        hw = self.target_shape(aspect_ratio)
        B, (H, W) = len(specs), hw
        deferred = _Deferred(B * S) if self.resample == "device" else None
        jitter = np.zeros((B * S, len(JITTER_FIELDS)))
        # every view's slot is written whole (padding included): no zero-filling
        batch = WorkerBatch(
            extrinsics=torch.empty(B, S, 3, 4), intrinsics=torch.empty(B, S, 3, 3),
            depths=torch.empty(B, S, H, W, dtype=torch.float16),
            frame_ids=torch.empty(B, S, dtype=torch.int64), frames=torch.empty(B, S, dtype=torch.int64),
            has_depth=torch.empty(B, S, dtype=torch.bool),
            images=None if deferred else torch.empty(B, S, H, W, 3, dtype=torch.uint8),
            plan=FinishPlan(B, S, hw, bool(normalize), jitter),
        )
        fill = _Filling(batch, hw, deferred, np.empty((B, S, 3, 4)))
        for b, spec in enumerate(specs):
            seq, replaced = self._fill_sample(fill, b, spec)
            cameras = torch.from_numpy(fill.cameras[b:b + 1])
            batch.extrinsics[b] = (first_camera_frame(cameras) if normalize else cameras)[0]
            batch.seq_names.append(seq)
            batch.categories.append(self.source.category(seq))
            batch.sources.append(self.source.source_name(seq))
            batch.replaced.append(replaced)
        if deferred is not None:
            batch.windows, batch.resample_table = deferred.tensors()
            batch.plan.rot90, batch.plan.vertical_first = tuple(deferred.rot90), tuple(deferred.vertical_first)
            batch.plan.out_hw = tuple(deferred.out_hw)
        return finish_batch(batch) if finish else batch

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

    def _fill_sample(self, fill: _Filling, b: int, spec: SampleSpec):
        """Fill sample b of the batch; returns (the sequence used, the list of replacements)."""
        S = len(spec.frame_ids)
        views, jitters = self._draws(spec, S)
        fill.batch.plan.jitter[b * S:(b + 1) * S] = [j.row() for j in jitters]
        seq, replaced = spec.sequence, []
        if seq not in self._seq_pos:
            raise KeyError(f"sequence {seq!r} is not in the dataset")
        for attempt in range(self.max_sequence_retries):
            try:
                for v, pos in enumerate(spec.frame_ids):
                    self._fill_view(fill, b, v, seq, pos, views[v], replaced)
                return seq, replaced
            except _SequenceUnusable:
                nxt = self.source.next_sequence(seq)  # a mixture's stays within the sample's dataset
                replaced.append(f"sequence {seq} -> {nxt}")
                self.replaced_samples += 1
                log.warning("no usable frame among the tried positions of sequence %s; sample moved to sequence %s", seq, nxt)
                seq = nxt
        raise RuntimeError(f"{self.max_sequence_retries} sequences in a row had no usable frame (last: {seq}); "
                           f"the dataset looks corrupt: run `vggt-train verify-dataset`")

    def _fill_view(self, fill: _Filling, b: int, v: int, seq: str, pos: int, draw: ViewDraw, replaced: List[str]) -> None:
        """Fill view v of sample b (the worker's part) from position `pos` of `seq`, or the next usable one."""
        batch = fill.batch
        n = self.source.num_frames(seq)
        pos = int(pos) % n
        for k in range(min(n, self.max_frame_retries)):
            p = (pos + k) % n
            try:
                frame = self.source.read_frame(seq, p)
                slot = batch.depths[b, v].numpy()
                gather_into = frame.depth is None or depth_dtype(frame.depth) == slot.dtype
                view = self._process(frame, draw, fill.hw, slot if gather_into else None)
            except (BadFrame, BadView) as exc:
                self._report(seq, p, exc)
                continue
            if k:
                replaced.append(f"{seq}/{pos} -> {seq}/{p}")
            self._store_image(fill, b, v, view)
            if view.depth is not None:  # not gathered into the batch: its dtype differs
                if view.depth.dtype != np.float16 and batch.depths.dtype == torch.float16:
                    batch.depths = batch.depths.float()  # a float32 source keeps its precision
                batch.depths[b, v].numpy()[...] = view.depth
            fill.cameras[b, v] = view.extrinsic
            batch.intrinsics[b, v] = torch.from_numpy(np.array(view.intrinsic, dtype=np.float32))
            batch.frame_ids[b, v] = p
            batch.frames[b, v] = frame.frame
            batch.has_depth[b, v] = frame.depth is not None
            return
        raise _SequenceUnusable(seq)

    def _store_image(self, fill: _Filling, b: int, v: int, view: _View) -> None:
        plan, deferred = view.plan, fill.deferred
        if deferred is not None:
            i = b * fill.batch.plan.num_images + v
            deferred.windows[i], deferred.coeffs[i] = view.image if view.image is not None else (None, None)
            deferred.rot90[i] = plan.rot90_k
            deferred.vertical_first[i] = bool(view.image is not None and view.image[1].vertical_first)
            deferred.out_hw[i] = tuple(plan.out_hw)
            return
        dst = fill.batch.images[b, v].numpy()
        vh, vw = plan.valid_hw
        if plan.rot90_k:
            canvas = np.zeros(tuple(plan.out_hw) + (3,), np.uint8)
            if view.image is not None:
                canvas[:vh, :vw] = view.image
            dst[...] = np.rot90(canvas, plan.rot90_k)
            return
        dst[...] = 0
        if view.image is not None:
            dst[:vh, :vw] = view.image

    def _process(self, frame: RawFrame, draw: ViewDraw, hw, depth_out: Optional[np.ndarray] = None) -> _View:
        """One view through the worker's part of the recipe (decode, crop, resize, depth, cameras, rotation).

        depth_out: the view's [H, W] slot of the batch (dtype `depth_dtype(frame.depth)`); the depth is then
        gathered straight into it, after everything that can fail, and the _View's depth is None.
        """
        try:
            img = open_image(frame.image)
            src_hw = image_size_hw(img)
        except Exception as exc:  # Pillow raises many types for bad bytes (OSError, SyntaxError, ValueError, ...)
            raise BadFrame(frame.where, "image", f"cannot be decoded: {type(exc).__name__}: {exc}") from None
        source_depth = frame.depth
        if source_depth is None:  # a camera-only frame: every depth pixel invalid (see has_depth)
            source_depth = np.zeros(tuple(src_hw), np.float16 if depth_out is None else depth_out.dtype)
        elif tuple(source_depth.shape) != tuple(src_hw):
            raise BadFrame(frame.where, "depth", f"depth {tuple(source_depth.shape)} does not match the image {src_hw}")
        plan = plan_view(src_hw, frame.intrinsic, hw, draw)
        extri, intri = np.asarray(frame.extrinsic, np.float64), plan.intrinsic
        if not (np.isfinite(extri).all() and np.isfinite(intri).all() and intri[0, 0] > 0 and intri[1, 1] > 0):
            raise BadFrame(frame.where, "extrinsic/intrinsic", "non-finite camera or focal length <= 0")
        try:
            if self.resample == "device":
                image = resize_for_device(img, plan, self.use_draft)
            else:
                resized = resize_valid(img, plan, self.use_draft)
                image = None if resized is None else np.asarray(resized)
        except Exception as exc:
            raise BadFrame(frame.where, "image", f"cannot be decoded: {type(exc).__name__}: {exc}") from None
        if depth_out is None:
            depth = gather_depth(source_depth, plan)
            depth = np.rot90(depth, plan.rot90_k) if plan.rot90_k else depth
        else:  # gathered into the un-rotated view of the slot, the slot holds the rotated depth
            depth = gather_depth(source_depth, plan, np.rot90(depth_out, -plan.rot90_k) if plan.rot90_k else depth_out)
            depth = None
        if plan.rot90_k:
            extri, intri = rotate_camera(extri, intri, plan.out_hw, plan.rot90_k)
        return _View(image, depth, extri, intri, plan)

    def _report(self, seq: str, pos: int, exc: Exception) -> None:
        self.bad_frames += 1
        key = (seq, pos)
        if key in self._logged:
            return
        if len(self._logged) < _MAX_LOGGED:
            self._logged.add(key)
        log.warning("skipping unusable frame (replaced by the next position of the sequence): %s", exc)
