"""Typed architecture configuration of VGGT, the named presets, and parsing of official-style config dicts."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Optional

# DINOv2 registry names the official aggregator accepts, with the ViT sizes they imply.
DINOV2_SIZES = {
    "dinov2_vits14_reg": dict(embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitb14_reg": dict(embed_dim=768, depth=12, num_heads=12),
    "dinov2_vitl14_reg": dict(embed_dim=1024, depth=24, num_heads=16),
    "dinov2_vitg2_reg": dict(embed_dim=1536, depth=40, num_heads=24),
}


@dataclass
class PatchEmbedViTConfig:
    """DINOv2-style ViT patchifier: register tokens, layer scale, learned (interpolated) position embedding."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float = 1.0
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0


@dataclass
class AggregatorConfig:
    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    patch_embed: str = "dinov2_vitl14_reg"  # "conv" or a DINOv2 name
    aa_order: list = field(default_factory=lambda: ["frame", "global"])
    aa_block_size: int = 1
    qk_norm: bool = True
    rope_freq: float = 100
    init_values: float = 0.01


@dataclass
class CameraHeadConfig:
    trunk_depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_iterations: int = 4
    init_values: float = 0.01


@dataclass
class DPTHeadConfig:
    features: int = 256
    out_channels: list = field(default_factory=lambda: [256, 512, 1024, 1024])
    intermediate_layer_idx: list = field(default_factory=lambda: [4, 11, 17, 23])


@dataclass
class TrackHeadConfig:
    features: int = 128
    out_channels: list = field(default_factory=lambda: [256, 512, 1024, 1024])
    intermediate_layer_idx: list = field(default_factory=lambda: [4, 11, 17, 23])
    iters: int = 4
    stride: int = 2
    corr_levels: int = 7
    corr_radius: int = 4
    hidden_size: int = 384


@dataclass
class VGGTConfig:
    """Whole-model architecture. A head set to None is disabled (no parameters, no output)."""

    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    patch_embed_vit: Optional[PatchEmbedViTConfig] = None  # derived from aggregator.patch_embed when None
    camera_head: Optional[CameraHeadConfig] = field(default_factory=CameraHeadConfig)
    depth_head: Optional[DPTHeadConfig] = field(default_factory=DPTHeadConfig)
    point_head: Optional[DPTHeadConfig] = field(default_factory=DPTHeadConfig)
    track_head: Optional[TrackHeadConfig] = field(default_factory=TrackHeadConfig)

    def resolved_patch_embed_vit(self) -> Optional[PatchEmbedViTConfig]:
        """The ViT patchifier config, or None for the single-conv patchifier."""
        kind = self.aggregator.patch_embed
        if kind == "conv":
            return None
        if self.patch_embed_vit is not None:
            return self.patch_embed_vit
        if kind not in DINOV2_SIZES:
            raise ValueError(
                f"aggregator.patch_embed={kind!r} is unknown; use 'conv' or one of {sorted(DINOV2_SIZES)} "
                "(or 'dinov2' with an explicit patch_embed_vit section)"
            )
        return PatchEmbedViTConfig(**DINOV2_SIZES[kind])

    def validate(self) -> None:
        """Raise ValueError naming the field when the architecture is inconsistent."""
        agg = self.aggregator
        if agg.embed_dim % agg.num_heads:
            raise ValueError(f"aggregator.embed_dim={agg.embed_dim} is not divisible by aggregator.num_heads={agg.num_heads}")
        head_dim = agg.embed_dim // agg.num_heads
        if agg.rope_freq > 0 and head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dim divisible by 4; aggregator.embed_dim/num_heads = {head_dim}")
        if agg.depth % agg.aa_block_size:
            raise ValueError(f"aggregator.depth={agg.depth} must be a multiple of aggregator.aa_block_size={agg.aa_block_size}")
        for name in agg.aa_order:
            if name not in ("frame", "global"):
                raise ValueError(f"aggregator.aa_order has {name!r}; allowed: 'frame', 'global'")
        vit = self.resolved_patch_embed_vit()
        if vit is not None and vit.embed_dim != agg.embed_dim:
            raise ValueError(f"patch_embed_vit.embed_dim={vit.embed_dim} must equal aggregator.embed_dim={agg.embed_dim}")
        n_layers = agg.depth // agg.aa_block_size * agg.aa_block_size
        for head_name in ("depth_head", "point_head", "track_head"):
            head = getattr(self, head_name)
            if head is None:
                continue
            if len(head.out_channels) != 4 or len(head.intermediate_layer_idx) != 4:
                raise ValueError(f"{head_name}: out_channels and intermediate_layer_idx need 4 entries each")
            bad = [i for i in head.intermediate_layer_idx if not 0 <= i < n_layers]
            if bad:
                raise ValueError(f"{head_name}.intermediate_layer_idx {bad} out of range for aggregator.depth={agg.depth}")
        if self.camera_head is not None and (2 * agg.embed_dim) % self.camera_head.num_heads:
            raise ValueError("camera_head.num_heads must divide 2 * aggregator.embed_dim")

    def to_dict(self) -> dict:
        return asdict(self)


# The prediction heads a VGGT can have (the attribute names of the model and the key prefixes of the checkpoint).
HEADS = ("camera_head", "depth_head", "point_head", "track_head")

_SECTIONS = {
    "aggregator": AggregatorConfig,
    "patch_embed_vit": PatchEmbedViTConfig,
    "camera_head": CameraHeadConfig,
    "depth_head": DPTHeadConfig,
    "point_head": DPTHeadConfig,
    "track_head": TrackHeadConfig,
}
# Keys the official fixture configs carry that are derived here rather than configured.
_DERIVED_KEYS = {"patch_start_idx"}


def _section_from_dict(cls, values: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(known)}")
    return cls(**copy.deepcopy(values))


def config_from_dict(data: dict) -> VGGTConfig:
    """Build a VGGTConfig from a nested dict (the fixtures' config.json, or our own to_dict())."""
    unknown = sorted(set(data) - set(_SECTIONS) - _DERIVED_KEYS)
    if unknown:
        raise ValueError(f"unknown top-level key(s) {unknown} in model config; valid: {sorted(_SECTIONS)}")
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        if name not in data:
            continue
        value = data[name]
        kwargs[name] = None if value is None else (value if is_dataclass(value) else _section_from_dict(cls, value, name))
    config = VGGTConfig(**kwargs)
    if config.aggregator.patch_embed == "dinov2" and config.patch_embed_vit is None:
        raise ValueError("aggregator.patch_embed='dinov2' needs a patch_embed_vit section with the ViT sizes")
    expected_start = 1 + config.aggregator.num_register_tokens
    if "patch_start_idx" in data and data["patch_start_idx"] != expected_start:
        raise ValueError(f"patch_start_idx={data['patch_start_idx']} disagrees with 1 + num_register_tokens = {expected_start}")
    config.validate()
    return config


def _tiny() -> VGGTConfig:
    """The fixtures' size: a few hundred thousand parameters, for unit tests."""
    dpt = dict(features=16, out_channels=[8, 16, 32, 32], intermediate_layer_idx=[0, 1, 2, 3])
    return VGGTConfig(
        aggregator=AggregatorConfig(embed_dim=32, depth=4, num_heads=2, patch_embed="conv"),
        camera_head=CameraHeadConfig(trunk_depth=2, num_heads=2),
        depth_head=DPTHeadConfig(**dpt),
        point_head=DPTHeadConfig(**dpt),
        track_head=TrackHeadConfig(**dpt, iters=2, stride=2, corr_levels=3, corr_radius=2, hidden_size=32),
    )


def _small() -> VGGTConfig:
    """Same structure as VGGT-1B (DINOv2 patchifier with registers, alternating attention, all heads), ~tens of
    millions of parameters: trainable on a CPU for the demo and benchmarks."""
    dpt = dict(features=64, out_channels=[48, 96, 192, 192], intermediate_layer_idx=[1, 3, 5, 7])
    return VGGTConfig(
        aggregator=AggregatorConfig(embed_dim=384, depth=8, num_heads=6, patch_embed="dinov2"),
        patch_embed_vit=PatchEmbedViTConfig(embed_dim=384, depth=4, num_heads=6),
        camera_head=CameraHeadConfig(trunk_depth=2, num_heads=12),
        depth_head=DPTHeadConfig(**dpt),
        point_head=DPTHeadConfig(**dpt),
        track_head=TrackHeadConfig(**dpt, iters=4, stride=2, corr_levels=4, corr_radius=3, hidden_size=128),
    )


PRESETS = {
    "vggt_1b": VGGTConfig,  # the defaults are the released VGGT-1B
    "small": _small,
    "tiny": _tiny,
}


def preset_config(name: str) -> VGGTConfig:
    """The architecture of a named preset: vggt_1b, small or tiny."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    config = PRESETS[name]()
    config.validate()
    return config
