"""VGGT: the aggregator and its four heads (camera, depth, world points, tracks)."""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Set

import torch
import torch.nn as nn

from vggt_train.geometry import autocast_off
from vggt_train.model.aggregator import Aggregator
from vggt_train.model.camera_head import CameraHead
from vggt_train.model.config import HEADS, VGGTConfig, config_from_dict, preset_config
from vggt_train.model.dpt_head import DPTHead
from vggt_train.model.track_head import TrackHead

# frames of all samples a DPT head decodes per checkpointed chunk in training (model.head_chunk_frames)
DEFAULT_HEAD_CHUNK_FRAMES = 4


def build_head(config: VGGTConfig, name: str) -> Optional[nn.Module]:
    """One head of a VGGT with this config, freshly initialised (None when the config disables it)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose from {HEADS}")
    head = getattr(config, name)
    if head is None:
        return None
    agg = config.aggregator
    dim = 2 * agg.embed_dim  # heads read frame and global tokens concatenated
    if name == "camera_head":
        return CameraHead(dim, head)
    if name == "track_head":
        return TrackHead(dim, agg.patch_size, head)
    output_dim, activation = (4, "inv_log") if name == "point_head" else (2, "exp")
    return DPTHead(dim, agg.patch_size, output_dim=output_dim, activation=activation, conf_activation="expp1",
                   features=head.features, out_channels=head.out_channels, intermediate_layer_idx=head.intermediate_layer_idx)


class VGGT(nn.Module):
    """Visual Geometry Grounded Transformer.

    forward(images [S, 3, H, W] or [B, S, 3, H, W] in [0, 1], query_points [N, 2] or [B, N, 2] pixels) -> dict:
    pose_enc [B, S, 9], pose_enc_list (per iteration), depth [B, S, H, W, 1], depth_conf [B, S, H, W],
    world_points [B, S, H, W, 3], world_points_conf [B, S, H, W]; with query points also track [B, S, N, 2]
    (last iteration), track_list, vis [B, S, N], conf [B, S, N].
    """

    def __init__(self, config: Optional[VGGTConfig] = None):
        super().__init__()
        self.config = config or VGGTConfig()
        self.config.validate()
        agg = self.config.aggregator
        self.patch_size = agg.patch_size
        self.aggregator = Aggregator(agg, self.config.resolved_patch_embed_vit())
        # registration order = the official state-dict order
        for name in ("camera_head", "point_head", "depth_head", "track_head"):
            setattr(self, name, build_head(self.config, name))
        # False: the heads run in their parameters' dtype (float32) inside an autocast region, as the official model;
        # True: they compute in the autocast dtype too (model.heads_dtype=bfloat16: faster, less exact)
        self.heads_autocast = False
        # keep only the aggregator layers the heads read, cast only those for the heads, and run a frozen
        # aggregator without building a graph; changes no value (a switch for comparisons)
        self.lean_activations = True
        self.head_checkpointing = True
        self.head_chunk_frames = DEFAULT_HEAD_CHUNK_FRAMES
        # a frozen aggregator (lean_activations) runs under torch.inference_mode instead of torch.no_grad
        self.frozen_inference_mode = False

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict | VGGTConfig) -> "VGGT":
        """Build from a VGGTConfig or a nested dict (e.g. the parity fixtures' config.json)."""
        return cls(config if isinstance(config, VGGTConfig) else config_from_dict(config))

    @classmethod
    def from_preset(cls, name: str, **disable_heads) -> "VGGT":
        """Build a named preset (vggt_1b, small, tiny); e.g. from_preset("small", track_head=None) drops a head."""
        config = preset_config(name)
        for head, value in disable_heads.items():
            if head not in HEADS or value is not None:
                raise ValueError(f"from_preset only accepts <head>=None to disable a head, got {head}={value!r}")
            setattr(config, head, None)
        return cls(config)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.aggregator.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute aggregator block activations in backward (on by default; applies in training mode only)."""
        self.aggregator.gradient_checkpointing = bool(enabled)

    @property
    def head_checkpointing(self) -> bool:
        return self._head_checkpointing

    @head_checkpointing.setter
    def head_checkpointing(self, enabled: bool) -> None:
        """Recompute the dense (depth / point) heads chunk by chunk in backward (training mode only)."""
        self._head_checkpointing = bool(enabled)
        for head in self._dense_heads():
            head.checkpointing = bool(enabled)

    @property
    def head_chunk_frames(self) -> int:
        return self._head_chunk_frames

    @head_chunk_frames.setter
    def head_chunk_frames(self, frames: int) -> None:
        """Frames (of all samples together) per checkpointed chunk of the dense heads."""
        if int(frames) < 1:
            raise ValueError(f"head_chunk_frames must be >= 1, got {frames}")
        self._head_chunk_frames = int(frames)
        for head in self._dense_heads():
            head.checkpoint_chunk_frames = int(frames)

    def _dense_heads(self) -> List[DPTHead]:
        return [h for h in (self.depth_head, self.point_head) if h is not None]

    def layers_read(self, with_tracks: bool) -> Set[int]:
        """Indices (non-negative) of the aggregator layers the enabled heads read."""
        agg = self.config.aggregator
        n_layers = agg.depth // agg.aa_block_size * agg.aa_block_size
        read: Set[int] = set()
        if self.camera_head is not None:
            read.add(n_layers - 1)
        heads = self._dense_heads() + ([self.track_head.feature_extractor] if with_tracks and self.track_head is not None else [])
        for head in heads:
            read.update(i % n_layers for i in head.intermediate_layer_idx)
        return read

    def _frozen_aggregator(self, images: torch.Tensor) -> bool:
        return not images.requires_grad and not any(p.requires_grad for p in self.aggregator.parameters())

    # -- forward ------------------------------------------------------------------------------------------------
    def _check_inputs(self, images: torch.Tensor, query_points: Optional[torch.Tensor]):
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            # uint8 0-255 images would be normalised as if in [0, 1]: garbage in, not an error, so reject it
            raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype} (convert with images.float() / 255)")
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5:
            raise ValueError(f"images must be [S, 3, H, W] or [B, S, 3, H, W], got shape {tuple(images.shape)}")
        B, S, C, H, W = images.shape
        if C != 3:
            raise ValueError(f"images must have 3 (RGB) channels in dim -3, got {C} (shape {tuple(images.shape)})")
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image height and width must be multiples of the patch size {p}, got {H}x{W}")
        if S < 1 or B < 1:
            raise ValueError(f"need at least one image, got shape {tuple(images.shape)}")
        if query_points is not None:
            if not isinstance(query_points, torch.Tensor):
                raise ValueError(f"query_points must be a tensor [N, 2] or [B, N, 2] of pixel (x, y), got {type(query_points).__name__}")
            if query_points.dim() == 2:
                query_points = query_points.unsqueeze(0)
            if query_points.dim() != 3 or query_points.shape[-1] != 2 or query_points.shape[0] != B:
                raise ValueError(f"query_points must be [N, 2] or [B={B}, N, 2] pixel (x, y), got {tuple(query_points.shape)}")
        return images, query_points

    def forward(self, images: torch.Tensor, query_points: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        images, query_points = self._check_inputs(images, query_points)
        with_tracks = self.track_head is not None and query_points is not None
        keep = self.layers_read(with_tracks) if self.lean_activations else None
        # nothing upstream of a frozen aggregator needs a gradient: no graph, no saved tensors
        no_graph = self.lean_activations and self._frozen_aggregator(images)
        inference = no_graph and self.frozen_inference_mode
        with torch.inference_mode() if inference else torch.no_grad() if no_graph else contextlib.nullcontext():
            tokens, patch_start_idx = self.aggregator(images, keep_layers=keep)
        out: Dict[str, torch.Tensor] = {}
        cast: Dict[object, tuple] = {}  # per head dtype (or "autocast"): the heads' inputs

        def inputs_for(head: nn.Module):
            # The heads regress metric-scale geometry: under autocast they run in their parameters' dtype
            # (float32 in mixed-precision training, as in the official model), so a model cast as a whole
            # (e.g. .bfloat16()) gets inputs of its own dtype. One cast per dtype, shared by the heads.
            # Inference-mode tokens cannot be saved for the heads' backward: those are copied into normal tensors
            # (a cast to another dtype is such a copy already).
            if self.heads_autocast:  # autocast picks each op's dtype
                if "autocast" not in cast:
                    cast["autocast"] = ([t.clone() if inference and t is not None else t for t in tokens], images)
                return cast["autocast"]
            dtype = next(head.parameters()).dtype
            if dtype not in cast:
                cast[dtype] = ([None if t is None else t.to(dtype, copy=inference) for t in tokens], images.to(dtype))
            return cast[dtype]

        # the heads run in float32 inside a bf16/fp16 region unless heads_autocast
        with contextlib.nullcontext() if self.heads_autocast else autocast_off(images.device.type):
            if self.camera_head is not None:
                poses = self.camera_head(inputs_for(self.camera_head)[0])
                out["pose_enc"] = poses[-1]
                out["pose_enc_list"] = poses
            if self.depth_head is not None:
                out["depth"], out["depth_conf"] = self.depth_head(*inputs_for(self.depth_head), patch_start_idx)
            if self.point_head is not None:
                out["world_points"], out["world_points_conf"] = self.point_head(*inputs_for(self.point_head), patch_start_idx)
            if self.track_head is not None and query_points is not None:
                head_tokens, head_images = inputs_for(self.track_head)
                tracks, vis, conf = self.track_head(head_tokens, head_images, patch_start_idx, query_points.to(head_images.dtype))
                out["track"] = tracks[-1]
                out["track_list"] = tracks
                out["vis"] = vis
                out["conf"] = conf
        return out
