"""The iterative point tracker of VGGT's track head (the official `BaseTrackerPredictor`).

Given query points in the first frame and one dense feature map per frame, the tracker refines a track for every
query over `iters` iterations. Each iteration builds, per (frame, track), a token from

* a local correlation window of the track's feature against every pyramid level of that frame's feature map,
* a sin-cos embedding of the track's displacement from its query position,
* the track's current feature,

and lets a transformer (attention along time, and across tracks through a small set of learned "virtual tracks")
predict a coordinate update and a feature update.

Everything here must compute the official function and load the released checkpoint (`track_head.tracker.*`), so
the parameter names (including the official misspelling `virual_tracks`) and several numerically visible quirks of
the reference are kept on purpose; each is marked "Quirk" where it happens. The attention itself goes through
`vggt_train.kernels.attention` so that device-specific fused kernels can replace it.

Coordinates are pixel (x, y) throughout; sampling uses the align-corners convention (0 = centre of the first pixel,
W - 1 = centre of the last one).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vggt_train import kernels
from vggt_train.model.layers import Mlp
from vggt_train.model.tracker_ops import (
    bilinear_sampler,
    build_feature_pyramid,
    compute_corr_level,
    correlation_window_offsets,
    get_2d_embedding,
    get_2d_sincos_pos_embed,
    sample_correlation,
    sample_features4d,
)

__all__ = [
    "Tracker",
    "EfficientUpdateFormer",
    "MultiheadAttention",
    "AttnBlock",
    "CrossAttnBlock",
    "Mlp",
    "bilinear_sampler",
    "sample_features4d",
    "get_2d_sincos_pos_embed",
    "get_2d_embedding",
    "build_feature_pyramid",
    "compute_corr_level",
    "correlation_window_offsets",
    "sample_correlation",
]


# ----------------------------------------------------------------------------------------------------------------
# Transformer pieces
# ----------------------------------------------------------------------------------------------------------------


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with `nn.MultiheadAttention`'s parameters and numerics.

    Same parameter names (`in_proj_weight` [3E, E] packing q, k, v projections; `in_proj_bias` [3E]; `out_proj`),
    so the official checkpoint loads unchanged, but the attention product runs through
    `vggt_train.kernels.attention` (softmax(q k^T / sqrt(head_dim)) v), where device kernels plug in.
    No masks and no dropout: the tracker uses neither.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.MultiheadAttention's own initialisation, so training from scratch starts from the same distribution.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, E] -> [B, heads, L, D]
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query [B, Lq, E], context [B, Lk, E] (None: self-attention on `query`) -> [B, Lq, E]."""
        e = self.embed_dim
        if context is None:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q = F.linear(query, self.in_proj_weight[:e], self.in_proj_bias[:e])
            k, v = F.linear(context, self.in_proj_weight[e:], self.in_proj_bias[e:]).chunk(2, dim=-1)
        out = kernels.attention(self._split_heads(q), self._split_heads(k), self._split_heads(v), scale=None)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], e)
        return self.out_proj(out)


class AttnBlock(nn.Module):
    """Pre-norm self-attention block: [B, L, E] -> [B, L, E].

    Quirk: the residual branch starts from the NORMALISED input (x = norm1(x); x = x + attn(x)), so the raw input
    never reaches the output directly. This is the reference's behaviour and the checkpoint depends on it.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.attn = MultiheadAttention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + self.attn(x)
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Pre-norm cross-attention block: x [B, L, E] attends to context [B, M, E] -> [B, L, E].

    Same quirk as `AttnBlock`: the residual is taken from norm1(x), not from x.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.cross_attn = MultiheadAttention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + self.cross_attn(x, self.norm_context(context))
        return x + self.mlp(self.norm2(x))


class EfficientUpdateFormer(nn.Module):
    """Transformer predicting the per-iteration update of every track: [B, N, S, input_dim] -> [B, N, S, output_dim].

    Alternates attention along time (each track over its S frames) with attention across tracks, made linear in N
    by routing through `num_virtual_tracks` learned tokens: virtual <- points (cross), virtual <- virtual (self),
    points <- virtual (cross).
    """

    def __init__(
        self,
        space_depth: int = 6,
        time_depth: int = 6,
        input_dim: int = 320,
        hidden_size: int = 384,
        num_heads: int = 8,
        output_dim: int = 130,
        mlp_ratio: float = 4.0,
        add_space_attn: bool = True,
        num_virtual_tracks: int = 64,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.add_space_attn = add_space_attn
        self.num_virtual_tracks = num_virtual_tracks

        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)

        # The official name is misspelt; kept so the checkpoint loads.
        if add_space_attn:
            self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
        else:
            self.register_parameter("virual_tracks", None)

        self.time_blocks = nn.ModuleList([AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(time_depth)])
        if add_space_attn:
            if space_depth < 1 or time_depth < space_depth:
                raise ValueError(f"space attention needs 1 <= space_depth <= time_depth, got {space_depth}, {time_depth}")
            self.space_virtual_blocks = nn.ModuleList([AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)])
            self.space_point2virtual_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)]
            )
            self.space_virtual2point_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)]
            )
        self._init_weights()

    def _init_weights(self) -> None:
        # Reference initialisation: Xavier-uniform for every Linear (attention output projections included; the
        # packed in-projections keep MultiheadAttention's own Xavier init), zero biases, and a near-zero flow head
        # so that the first updates are tiny.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.flow_head.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, S, input_dim] -> [B, N, S, output_dim]."""
        tokens = self.input_transform(self.input_norm(x))  # [B, N, S, E]
        init_tokens = tokens
        batch, _, frames, dim = tokens.shape

        if self.add_space_attn:
            tokens = torch.cat([tokens, self.virual_tracks.expand(batch, -1, frames, -1)], dim=1)
        total = tokens.shape[1]  # real + virtual tracks
        num_real = total - self.num_virtual_tracks if self.add_space_attn else total

        # Quirk: space attention follows time block i when i % (time_depth // space_depth) == 0 (every block with
        # the equal depths the tracker builds).
        space_every = len(self.time_blocks) // len(self.space_virtual_blocks) if self.add_space_attn else 0
        j = 0
        for i, time_block in enumerate(self.time_blocks):
            tokens = time_block(tokens.reshape(batch * total, frames, dim)).reshape(batch, total, frames, dim)
            if self.add_space_attn and i % space_every == 0:
                space = tokens.permute(0, 2, 1, 3).reshape(batch * frames, total, dim)
                points, virtual = space[:, :num_real], space[:, num_real:]
                virtual = self.space_virtual2point_blocks[j](virtual, points)
                virtual = self.space_virtual_blocks[j](virtual)
                points = self.space_point2virtual_blocks[j](points, virtual)
                space = torch.cat([points, virtual], dim=1)
                tokens = space.reshape(batch, frames, total, dim).permute(0, 2, 1, 3)
                j += 1

        tokens = tokens[:, :num_real] + init_tokens
        return self.flow_head(self.output_norm(tokens))


# ----------------------------------------------------------------------------------------------------------------
# The tracker
# ----------------------------------------------------------------------------------------------------------------


class Tracker(nn.Module):
    """VGGT's point tracker (official `BaseTrackerPredictor`; parameter names match `track_head.tracker.*`).

    Args:
        latent_dim: channels C of the input feature maps and of the track features.
        hidden_size: width of the update transformer (and hidden width of `corr_mlp`).
        stride: pixel size of one feature-map cell in the image (the track head's features are at half resolution).
        corr_levels, corr_radius: correlation pyramid levels and window radius r ((2r+1)^2 samples per level).
        depth: number of time blocks (and of space blocks when `use_space_attn`).
        num_heads, num_virtual_tracks: update-transformer heads and virtual-track count.
        max_scale: normaliser of the raw displacement channels (518, the training image size, in the reference).
        predict_conf: also predict a per-point confidence.
        use_space_attn: attention across tracks (through virtual tracks) in the update transformer.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        hidden_size: int = 384,
        stride: int = 2,
        corr_levels: int = 7,
        corr_radius: int = 4,
        depth: int = 6,
        num_heads: int = 8,
        num_virtual_tracks: int = 64,
        max_scale: float = 518,
        predict_conf: bool = True,
        use_space_attn: bool = True,
    ):
        super().__init__()
        if latent_dim % 4 != 0:
            raise ValueError(f"latent_dim must be a multiple of 4 (flow and position embeddings), got {latent_dim}")
        self.latent_dim = latent_dim
        self.hidden_size = hidden_size
        self.stride = stride
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.max_scale = max_scale
        self.predict_conf = predict_conf
        self.flows_emb_dim = latent_dim // 2
        # Token = flow embedding (2 * latent/2 sin-cos + 2 + 2 raw) + correlation features + track feature.
        self.transformer_dim = 3 * latent_dim + 4

        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden_size, latent_dim)
        # Row 0 marks the query frame, row 1 every other frame.
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.updateformer = EfficientUpdateFormer(
            space_depth=depth if use_space_attn else 0,
            time_depth=depth,
            input_dim=self.transformer_dim,
            hidden_size=hidden_size,
            num_heads=num_heads,
            output_dim=latent_dim + 2,
            mlp_ratio=4.0,
            add_space_attn=use_space_attn,
            num_virtual_tracks=num_virtual_tracks,
        )
        self.fmap_norm = nn.LayerNorm(latent_dim)
        # GroupNorm with one group on [M, C] rows: a per-row LayerNorm over channels (kept as GroupNorm for the
        # checkpoint's parameter names and its eps).
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        if predict_conf:
            self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))

    def _embed_flows(self, flows: torch.Tensor) -> torch.Tensor:
        """Displacements [B*N, S, 2] (feature-map pixels) -> [B*N, S, latent_dim + 4].

        Quirk: the raw displacement over `max_scale` is appended twice (the reference pads the token to 3C + 4 so).
        """
        raw = flows / self.max_scale
        return torch.cat([get_2d_embedding(flows, self.flows_emb_dim, cat_coords=False), raw, raw], dim=-1)

    def forward(
        self, query_points: torch.Tensor, fmaps: torch.Tensor, iters: int = 4, apply_sigmoid: bool = True
    ) -> Tuple[List[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        """Track the queries through all frames.

        Args:
            query_points: [B, N, 2] pixel (x, y) in the image of frame 0 (image pixels, not feature-map cells).
            fmaps: [B, S, C, H, W] feature maps, C = latent_dim, one image pixel = 1 / stride cells.
            iters: refinement iterations.
            apply_sigmoid: return probabilities (True) or logits (False) for visibility and confidence.

        Returns:
            coord_preds: `iters` tensors [B, S, N, 2], image pixels (x, y), one per iteration; frame 0 is the query.
            vis: [B, S, N] visibility, in (0, 1) with `apply_sigmoid`.
            conf: [B, S, N] confidence (same range), or None without `predict_conf`.
        """
        if query_points.dim() != 3 or query_points.shape[-1] != 2:
            raise ValueError(f"query_points must be [B, N, 2], got {tuple(query_points.shape)}")
        if fmaps.dim() != 5 or fmaps.shape[2] != self.latent_dim:
            raise ValueError(f"fmaps must be [B, S, {self.latent_dim}, H, W], got {tuple(fmaps.shape)}")
        batch, num_tracks, _ = query_points.shape
        _, frames, channels, height, width = fmaps.shape

        # Quirk: one LayerNorm over channels is applied to the maps before anything reads them (query features,
        # correlation pyramid); the caller's features are not normalised.
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)

        # Work in feature-map cells; every frame starts at the query position.
        query_points = query_points / float(self.stride)
        query_coords = query_points.reshape(batch, 1, num_tracks, 2)
        coords = query_coords.expand(batch, frames, num_tracks, 2).clone()  # [B, S, N, 2]

        # Each track's feature starts as the query's feature in frame 0, copied to every frame.
        query_feat = sample_features4d(fmaps[:, 0], query_points)  # [B, N, C]
        track_feats = query_feat.unsqueeze(1).expand(batch, frames, num_tracks, channels)  # [B, S, N, C]

        pyramid = build_feature_pyramid(fmaps, self.corr_levels)

        # Position of the query on the coarse grid: a fixed sin-cos map over the H x W cells sampled at the query.
        # Constant over iterations because frame 0 never moves (the reference recomputes it each iteration).
        pos_grid = get_2d_sincos_pos_embed(self.transformer_dim, (height, width)).to(query_points.device)
        pos_embed = sample_features4d(pos_grid.expand(batch, -1, -1, -1), query_points)  # [B, N, D]
        pos_embed = pos_embed.reshape(batch * num_tracks, 1, self.transformer_dim)

        ref_token = torch.cat(
            [self.query_ref_token[:, 0:1], self.query_ref_token[:, 1:2].expand(-1, frames - 1, -1)], dim=1
        )  # [1, S, D]

        coord_preds = []
        for _ in range(iters):
            # The next update sees the current positions as constants (the reference's truncated backprop).
            coords = coords.detach()

            corr = sample_correlation(pyramid, track_feats, coords, self.corr_radius)  # [B, S, N, L]
            corr = self.corr_mlp(corr.permute(0, 2, 1, 3).reshape(batch * num_tracks, frames, -1))

            flows = (coords - coords[:, 0:1]).permute(0, 2, 1, 3).reshape(batch * num_tracks, frames, 2)
            feats_bn = track_feats.permute(0, 2, 1, 3).reshape(batch * num_tracks, frames, channels)

            tokens = torch.cat([self._embed_flows(flows).to(corr.dtype), corr, feats_bn], dim=-1)
            tokens = tokens + pos_embed.to(tokens.dtype) + ref_token.to(tokens.dtype)

            delta = self.updateformer(tokens.reshape(batch, num_tracks, frames, self.transformer_dim))  # [B, N, S, C+2]
            delta_coords = delta[..., :2]
            delta_feats = delta[..., 2:].reshape(-1, channels)

            feats_bn = self.ffeat_updater(self.ffeat_norm(delta_feats)) + feats_bn.reshape(-1, channels)
            track_feats = feats_bn.reshape(batch, num_tracks, frames, channels).permute(0, 2, 1, 3)

            coords = coords + delta_coords.permute(0, 2, 1, 3)
            # Quirk: the query frame is pinned to the query after every update (its predicted delta is discarded).
            coords = torch.cat([query_coords.to(coords.dtype), coords[:, 1:]], dim=1)
            coord_preds.append(coords * self.stride)

        flat_feats = track_feats.reshape(batch * frames * num_tracks, channels)
        vis = self.vis_predictor(flat_feats).reshape(batch, frames, num_tracks)
        conf = self.conf_predictor(flat_feats).reshape(batch, frames, num_tracks) if self.predict_conf else None
        if apply_sigmoid:
            vis = torch.sigmoid(vis)
            conf = torch.sigmoid(conf) if conf is not None else None
        return coord_preds, vis, conf
