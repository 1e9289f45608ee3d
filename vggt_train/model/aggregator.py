"""The aggregator: patchify every frame, then alternate frame-wise and global attention over all frames' tokens."""

from __future__ import annotations

from typing import Collection, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from vggt_train.model.config import AggregatorConfig, PatchEmbedViTConfig
from vggt_train.model.layers import Block
from vggt_train.model.patch_embed import ConvPatchEmbed, DinoViTPatchEmbed
from vggt_train.model.rope import RotaryTables, patch_positions, rotary_tables

# ImageNet statistics: the patchifier (DINOv2) was trained on inputs normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def first_frame_tokens(token_pair: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """Expand a [1, 2, T, C] token pair to [B * S, T, C]: entry 0 for the first frame, entry 1 for the others."""
    first = token_pair[:, :1].expand(B, 1, *token_pair.shape[2:])
    others = token_pair[:, 1:].expand(B, S - 1, *token_pair.shape[2:])
    return torch.cat([first, others], dim=1).reshape(B * S, *token_pair.shape[2:])


class Aggregator(nn.Module):
    """Alternating-attention transformer over multi-view tokens.

    images [B, S, 3, H, W] in [0, 1] -> (list of depth/aa_block_size*aa_block_size tensors
    [B, S, P, 2C] (frame-attention and global-attention outputs concatenated), patch_start_idx),
    where P = 1 camera + registers + (H/p)(W/p) patch tokens. With keep_layers, the other entries are None:
    a layer no head reads is not concatenated and its tokens are freed as soon as the next block has run.
    """

    def __init__(self, cfg: AggregatorConfig, vit: PatchEmbedViTConfig | None = None):
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        if vit is None:
            self.patch_embed = ConvPatchEmbed(cfg.patch_size, cfg.embed_dim)
        else:
            self.patch_embed = DinoViTPatchEmbed(cfg.img_size, cfg.patch_size, cfg.num_register_tokens, vit)

        def make_block() -> Block:
            return Block(cfg.embed_dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, init_values=cfg.init_values, qk_norm=cfg.qk_norm)

        self.frame_blocks = nn.ModuleList(make_block() for _ in range(cfg.depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(cfg.depth))
        # index 0: the first (reference) frame's token; index 1: every other frame's
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, cfg.embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, cfg.embed_dim) * 1e-6)
        self.patch_start_idx = 1 + cfg.num_register_tokens
        self.reset_non_persistent_buffers()
        # recomputing block activations in backward trades ~30% more compute for O(depth) less memory
        self.gradient_checkpointing = True

    @property
    def gradient_checkpointing(self) -> bool:
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        """Checkpoint the alternating-attention blocks and the ViT patchifier's blocks alike."""
        self._gradient_checkpointing = bool(enabled)
        if isinstance(self.patch_embed, DinoViTPatchEmbed):
            self.patch_embed.gradient_checkpointing = bool(enabled)

    def reset_non_persistent_buffers(self, device=None) -> None:
        """(Re)create the buffers no checkpoint holds; load_pretrained calls this for a model built on the meta device."""
        kwargs = {} if device is None else {"device": device}
        self.register_buffer("_image_mean", torch.tensor(IMAGENET_MEAN, **kwargs).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_image_std", torch.tensor(IMAGENET_STD, **kwargs).view(1, 1, 3, 1, 1), persistent=False)

    def _rotary(self, grid_h: int, grid_w: int, frames: int, dtype, device) -> Tuple[RotaryTables, RotaryTables] | Tuple[None, None]:
        if self.cfg.rope_freq <= 0:
            return None, None
        head_dim = self.cfg.embed_dim // self.cfg.num_heads
        frame_pos = patch_positions(grid_h, grid_w, self.patch_start_idx, device=device)
        # every frame has the same positions, so global attention sees the frame pattern repeated S times
        global_pos = frame_pos.repeat(frames, 1)
        return (
            rotary_tables(frame_pos, head_dim, self.cfg.rope_freq, dtype),
            rotary_tables(global_pos, head_dim, self.cfg.rope_freq, dtype),
        )

    def compile_blocks(self, backend: str = "inductor") -> None:
        """torch.compile every block's forward with `backend`, in place: parameter names and the state dict stay
        the same, and gradient checkpointing still wraps each (compiled) block."""
        for block in (*self.frame_blocks, *self.global_blocks):
            block.forward = torch.compile(block.forward, backend=backend)

    def _run_block(self, block: Block, tokens: torch.Tensor, rotary) -> torch.Tensor:
        if self.training and self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, tokens, rotary, use_reentrant=False)
        return block(tokens, rotary)

    def forward(self, images: torch.Tensor, keep_layers: Optional[Collection[int]] = None) -> Tuple[List[Optional[torch.Tensor]], int]:
        B, S, _, H, W = images.shape
        images = (images - self._image_mean) / self._image_std
        # a model cast as a whole (e.g. .bfloat16()) takes [0, 1] float32 images like any other; under autocast
        # the weights stay float32 and this is a no-op
        images = images.to(self.camera_token.dtype)
        patches = self.patch_embed(images.reshape(B * S, 3, H, W))  # [B*S, Np, C]
        C = patches.shape[-1]
        tokens = torch.cat(
            [
                first_frame_tokens(self.camera_token, B, S).to(patches.dtype),
                first_frame_tokens(self.register_token, B, S).to(patches.dtype),
                patches,
            ],
            dim=1,
        )
        P = tokens.shape[1]
        frame_rope, global_rope = self._rotary(H // self.patch_size, W // self.patch_size, S, tokens.dtype, tokens.device)

        n_layers = self.cfg.depth // self.cfg.aa_block_size * self.cfg.aa_block_size
        keep = set(range(n_layers)) if keep_layers is None else {i % n_layers for i in keep_layers}
        outputs: List[Optional[torch.Tensor]] = []
        frame_idx = global_idx = 0
        for _ in range(self.cfg.depth // self.cfg.aa_block_size):
            stage: dict[str, List[torch.Tensor]] = {}
            for kind in self.cfg.aa_order:
                stage[kind] = []
                for _ in range(self.cfg.aa_block_size):
                    if kind == "frame":
                        tokens = self._run_block(self.frame_blocks[frame_idx], tokens.reshape(B * S, P, C), frame_rope)
                        frame_idx += 1
                    else:
                        tokens = self._run_block(self.global_blocks[global_idx], tokens.reshape(B, S * P, C), global_rope)
                        global_idx += 1
                    stage[kind].append(tokens.reshape(B, S, P, C))
            for i in range(self.cfg.aa_block_size):
                kept = len(outputs) in keep
                outputs.append(torch.cat([stage["frame"][i], stage["global"][i]], dim=-1) if kept else None)
        return outputs, self.patch_start_idx
