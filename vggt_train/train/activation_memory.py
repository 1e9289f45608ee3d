"""Measured activation memory of one VGGT training step (forward + loss + backward), counted by torch's MemTracker.

A step runs under torch's MemTracker (`torch.distributed._tools.mem_tracker`, torch >= 2.5), which sees every
tensor storage an op creates and frees. With `fake=True` it also runs under FakeTensorMode: tensors carry
shapes and dtypes only, nothing is computed, so VGGT-1B at 24 frames is counted on a laptop in tens of seconds.
With `fake=False` the same step really runs (small presets on the CPU), which is how the fake count is checked.

What is reported (bytes, one card):
  activations  the peak over the step of everything that is not a parameter, a gradient or a buffer: saved
               activations, autocast's weight copies, the batch, the loss and the backward's temporaries.
               Gradients are left out because the plan counts them whole (vggt_train.train.memory).
  params, buffers, grads  what the model holds (grads: after the backward).
The step is the trainer's: `model.train()`, bf16 autocast on the CPU (weights stay float32), the heads in float32,
the config's loss, gradient checkpointing as configured. Autocast follows the CPU's cast lists: CUDA's also runs
layer norms and softmax in float32, so a GPU holds somewhat more (plan_memory keeps headroom for it).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from vggt_train import kernels
from vggt_train.losses import MultitaskLoss
from vggt_train.model import VGGT, preset_config
from vggt_train.model.vggt import DEFAULT_HEAD_CHUNK_FRAMES
from vggt_train.train.config import LossConfig
from vggt_train.train.optim import freeze_modules

try:  # torch >= 2.5; torch 2.1 has neither the tracker nor this FakeTensorMode behaviour
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:
    MemTracker = object  # type: ignore[misc,assignment]
    _IMPORT_ERROR = f"torch {torch.__version__} has no torch.distributed._tools.mem_tracker ({exc}); needs torch >= 2.5"


def unavailable() -> Optional[str]:
    """None when this torch can measure, else why not (one line)."""
    if _IMPORT_ERROR is None and not hasattr(MemTracker(), "_param_to_grad_hook_handles"):
        return f"torch {torch.__version__}'s MemTracker lacks the hook table this module relies on"
    return _IMPORT_ERROR


@dataclass
class Workload:
    """One training step's shape: preset, what is frozen, samples x frames x img_size^2, checkpointing."""

    preset: str = "vggt_1b"
    samples: int = 1
    frames: int = 2
    img_size: int = 518
    frozen: List[str] = field(default_factory=list)  # e.g. ["aggregator*"]
    gradient_checkpointing: bool = True
    mixed_precision: str = "bf16"  # bf16 | no
    disable_heads: List[str] = field(default_factory=lambda: ["point_head", "track_head"])
    head_checkpointing: bool = True
    head_chunk_frames: int = DEFAULT_HEAD_CHUNK_FRAMES
    attention: str = "auto"  # the attention kernel: auto (the registry's choice: fused SDPA here) | reference

    def tokens_per_image(self) -> int:
        """Aggregator tokens of one image: patches + camera + register tokens."""
        agg = preset_config(self.preset).aggregator
        return (self.img_size // agg.patch_size) ** 2 + 1 + agg.num_register_tokens

    def tokens(self) -> int:
        """Aggregator tokens of the step: images x tokens_per_image."""
        return self.samples * self.frames * self.tokens_per_image()


@dataclass
class Measurement:
    """Bytes one card holds during the step (see the module docstring)."""

    workload: Workload
    activations: int
    peak_total: int
    params: int
    buffers: int
    grads: int
    fake: bool

    def as_dict(self) -> Dict:
        return {**asdict(self), "tokens": self.workload.tokens()}


class _StepTracker(MemTracker):  # type: ignore[misc,valid-type]
    """MemTracker that keeps only the global peaks (its per-module peak bookkeeping costs O(modules) per op,
    minutes for VGGT-1B) and also the peak of activations + temporaries, which its total peak does not give."""

    def __init__(self) -> None:
        super().__init__()
        self.activation_peak = 0

    def _update_peak_stats(self, peak_state) -> None:  # called after every op
        for dev, snap in self._curr_mem_snap.items():
            beyond = snap[_MemRefType.ACT] + snap[_MemRefType.TEMP] + snap[_MemRefType.OTH]
            self.activation_peak = max(self.activation_peak, beyond)
            if self._peak_mem.get(dev, 0) < snap["Total"]:
                self._peak_mem[dev] = snap["Total"]
                self._peak_mem_snap[dev] = dict(snap)

    def skip_grad_hooks(self, model: torch.nn.Module) -> None:
        """Frozen parameters: MemTracker registers a gradient hook on every parameter it meets, which torch
        refuses for one that does not require grad; a placeholder in its hook table makes it skip them."""
        for p in model.parameters():
            if not p.requires_grad:
                self._param_to_grad_hook_handles[p] = (_NoHandle(), _NoHandle())


class _NoHandle:
    def remove(self) -> None:
        pass


def _build_model(w: Workload, fake_mode=None) -> VGGT:
    """The workload's model; with a FakeTensorMode, fake (shapes only). Initialisers draw random numbers, which
    fake tensors cannot: the model is built on the meta device (outside the fake mode), then given fake storage."""
    config = preset_config(w.preset)
    for head in w.disable_heads:
        setattr(config, head, None)
    if fake_mode is None:
        model = VGGT(config)
    else:
        with torch.device("meta"):
            model = VGGT(config)
        with fake_mode:
            model = model.to_empty(device="cpu")
    model.gradient_checkpointing = w.gradient_checkpointing
    model.head_checkpointing = w.head_checkpointing
    model.head_chunk_frames = w.head_chunk_frames
    freeze_modules(model, w.frozen)
    return model.train()


def synthetic_batch(B: int, S: int, H: int, W: int) -> Dict[str, torch.Tensor]:
    """A finished training batch (finish_batch's keys) of plausible values: images [B, S, 3, H, W] in [0, 1],
    depths [B, S, H, W] > 0, points, identity-rotation cameras [B, S, 3, 4] and pinhole intrinsics [B, S, 3, 3]."""
    extrinsics = torch.zeros(B, S, 3, 4)
    extrinsics[..., :3, :3] = torch.eye(3)
    extrinsics[..., 2, 3] = torch.linspace(0.0, 1.0, S)
    intrinsics = torch.zeros(B, S, 3, 3)
    intrinsics[..., 0, 0] = intrinsics[..., 1, 1] = float(max(H, W))
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = W / 2, H / 2, 1.0
    depths = torch.rand(B, S, H, W) + 1.0
    return {"images": torch.rand(B, S, 3, H, W), "depths": depths, "point_masks": depths > 0,
            "cam_points": torch.rand(B, S, H, W, 3), "world_points": torch.rand(B, S, H, W, 3),
            "extrinsics": extrinsics, "intrinsics": intrinsics}


def surrogate_loss(preds: Dict, batch: Dict) -> torch.Tensor:
    """The default loss's shape without its value-dependent branches (quantile filtering, "any valid sample"),
    which fake tensors cannot take: L1 on every camera iteration, and on the depth a confidence-weighted L1 with
    its log-confidence term plus first differences in x and y (the gradient term) at full resolution."""
    loss = sum((p - torch.zeros_like(p)).abs().mean() for p in preds.get("pose_enc_list", []))
    if "depth" in preds:
        depth, conf, gt = preds["depth"][..., 0], preds["depth_conf"], batch["depths"]
        mask = batch["point_masks"].to(depth.dtype)
        diff = (depth - gt) * mask
        grad = (diff[..., 1:] - diff[..., :-1]).abs().mean() + (diff[..., 1:, :] - diff[..., :-1, :]).abs().mean()
        loss = loss + (conf * diff.abs() - 0.2 * torch.log(conf)).mean() + grad
    return loss


def _step(model: VGGT, w: Workload, loss_fn) -> None:
    batch = synthetic_batch(w.samples, w.frames, w.img_size, w.img_size)
    autocast = (torch.autocast(device_type="cpu", dtype=torch.bfloat16) if w.mixed_precision == "bf16"
                else contextlib.nullcontext())
    with autocast:
        preds = model(batch["images"])
    loss = loss_fn(preds, batch)
    (loss["objective"] if isinstance(loss, dict) else loss).backward()


@contextlib.contextmanager
def _attention_kernel(name: str):
    """The workload's attention kernel for the duration of a count; the previous config-level choice after."""
    if name == "auto":
        yield
        return
    before = {op: backend for op, (backend, source) in kernels.overrides().items() if source == "config"}
    kernels.configure({**before, "attention": name})
    try:
        yield
    finally:
        kernels.configure(before)


def measure(w: Workload, fake: bool = True, optimizer_step: bool = False, real_loss: bool = False) -> Measurement:
    """Count one training step of workload `w` (fake: shapes only; else really run on the CPU).

    optimizer_step: also run an AdamW step (its state then counts in peak_total, never in activations).
    real_loss: the trainer's MultitaskLoss instead of `surrogate_loss` (real tensors only)."""
    if fake and real_loss:
        raise ValueError("the trainer's loss branches on values: it cannot run on fake tensors")
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"activation memory cannot be measured: {reason}")
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    torch.manual_seed(0)
    model = _build_model(w, fake_mode)
    with fake_mode or contextlib.nullcontext():
        loss_fn = MultitaskLoss(**{k: v for k, v in vars(LossConfig()).items() if v is not None}) if real_loss else surrogate_loss
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-6) if optimizer_step and trainable else None
        tracker = _StepTracker()
        tracker.skip_grad_hooks(model)
        tracker.track_external(model)
        with tracker, _attention_kernel(w.attention):
            _step(model, w, loss_fn)
            if optimizer is not None:
                optimizer.step()
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
        peak = max(tracker._peak_mem.values()) if tracker._peak_mem else 0
    return Measurement(workload=w, activations=int(tracker.activation_peak), peak_total=int(peak), params=params,
                       buffers=buffers, grads=grads, fake=fake)


# -- the fitted model -----------------------------------------------------------------------------------------------
# Workloads the plan distinguishes: what is trained decides what is saved for backward.
WORKLOADS = ("frozen_aggregator", "full_checkpointed", "full")


def workload_kind(frozen: List[str], gradient_checkpointing: bool) -> str:
    """The WORKLOADS entry a config trains: the aggregator frozen (the fine-tuning recipe), else full training
    with or without activation checkpointing."""
    if any(g.startswith("aggregator") and g.rstrip("*.") == "aggregator" for g in frozen):
        return "frozen_aggregator"
    return "full_checkpointed" if gradient_checkpointing else "full"


def workload_of(kind: str, preset: str, samples: int, frames: int, img_size: int) -> Workload:
    """A Workload of one kind (see WORKLOADS)."""
    if kind not in WORKLOADS:
        raise ValueError(f"workload {kind!r}: choose from {WORKLOADS}")
    return Workload(preset=preset, samples=samples, frames=frames, img_size=img_size,
                    frozen=["aggregator*"] if kind == "frozen_aggregator" else [],
                    gradient_checkpointing=kind != "full")


def score_elements(samples: int, frames: int, tokens_per_image: int) -> Tuple[float, float]:
    """Elements of the attention score matrices of one layer pair, per head: (global: samples x (frames x tokens per
    image)^2, frame: samples x frames x tokens per image^2). Attention without a fused kernel
    (kernels.attention=reference) materialises these and their softmax."""
    return float(samples) * float(frames * tokens_per_image) ** 2, float(samples * frames) * float(tokens_per_image) ** 2


def _heads_term(fit: Dict[str, float], images: int, tokens_per_image: int, chunk_frames: Optional[int]) -> float:
    # the heads hold n images' activations at their peak: all of them, or one chunk's when decoded chunk by chunk
    n = images if chunk_frames is None else min(images, chunk_frames)
    measured_whole = n <= fit.get("chunk_frames", DEFAULT_HEAD_CHUNK_FRAMES)  # as in the fit's own steps
    per_token = fit["per_head_token"] if measured_whole else fit.get("per_head_token_whole", fit["per_head_token"])
    return per_token * n * tokens_per_image


def predict(fit: Dict[str, float], images: int, tokens_per_image: int, chunk_frames: Optional[int],
            scores: Tuple[float, float] = (0.0, 0.0)) -> float:
    """Activation bytes of a step of `images` images (of all samples) of `tokens_per_image` aggregator tokens each
    (tokens = their product), the dense heads decoded `chunk_frames` images at a time beyond that many
    (model.head_chunk_frames; None: model.head_checkpointing=false), and, for unfused attention, its score
    elements (score_elements; zeros for fused attention). Fused attention:
        base + per_token x tokens + heads
    heads = the heads' cost of n images' tokens, n = images up to the chunk (all kept for backward), the chunk beyond
    it (recomputed chunk by chunk, one chunk alive at a time); per_head_token per token while n is at most the
    fit's own chunk (fit["chunk_frames"]), per_head_token_whole beyond (measured with model.head_checkpointing=false,
    the heads whole). Unfused: the larger of that and the
    aggregator's peak with its score matrices, base + per_token x tokens + per_global_score x global +
    per_frame_score x frame (the score matrices live while the aggregator runs or is recomputed; the heads' peak
    comes at another time)."""
    tokens = images * tokens_per_image
    fused = fit["base"] + fit["per_token"] * tokens + _heads_term(fit, images, tokens_per_image, chunk_frames)
    if not any(scores):
        return fused
    attention = (fit["base"] + fit["per_token"] * tokens + fit.get("per_global_score", 0.0) * scores[0]
                 + fit.get("per_frame_score", 0.0) * scores[1])
    return max(fused, attention)


def _shape(w: Workload) -> tuple:
    """predict's (images, tokens_per_image, chunk_frames) of a measured workload."""
    return w.samples * w.frames, w.tokens_per_image(), w.head_chunk_frames if w.head_checkpointing else None


def fit_activations(workloads: List[Workload], values: List[float]) -> Dict[str, float]:
    """Least squares of `predict`'s fused-attention terms (base, per_token, per_head_token) through steps measured
    with the heads chunked (the default), and the largest relative error over them. Fused attention (SDPA, flash,
    NPU fusion attention) keeps no tokens^2 score matrix, so these are lines in tokens with one bend where the
    heads' chunking starts; the steps must lie on both sides of it, all with the same head_chunk_frames."""
    chunks = {w.head_chunk_frames for w in workloads}
    if len(chunks) != 1 or not all(w.head_checkpointing for w in workloads):
        raise ValueError("fit steps measured with the heads chunked, all with one head_chunk_frames")
    chunk = chunks.pop()
    t = torch.tensor([float(w.tokens()) for w in workloads], dtype=torch.float64)
    below = torch.tensor([float(min(w.samples * w.frames, chunk) * w.tokens_per_image()) for w in workloads],
                         dtype=torch.float64)
    y = torch.tensor(values, dtype=torch.float64)
    above = t > below
    if int(above.sum()) < 1 or len(set(t[~above].tolist())) < 2:
        raise ValueError("a fit needs three distinct token counts, with at least two up to the heads' chunk "
                         "(head_chunk_frames images) and one beyond it")
    design = torch.stack([torch.ones_like(t), t, below], dim=1)
    coef = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
    error = float(((design @ coef - y).abs() / y).max())
    return {"base": float(coef[0]), "per_token": float(coef[1]), "per_head_token": float(coef[2]),
            "chunk_frames": chunk, "max_rel_error": error}


def fit_whole_heads(fit: Dict[str, float], workloads: List[Workload], values: List[float]) -> Dict[str, float]:
    """per_head_token_whole, the heads' term of steps with model.head_checkpointing=false beyond the fit's chunk,
    by least squares of what base + per_token x tokens leaves of them; with its largest relative error."""
    if any(w.head_checkpointing or w.samples * w.frames <= fit["chunk_frames"] for w in workloads):
        raise ValueError("whole-heads steps have model.head_checkpointing=false and more images than the fit's chunk")
    t = torch.tensor([float(w.tokens()) for w in workloads], dtype=torch.float64)
    y = torch.tensor(values, dtype=torch.float64)
    rest = y - fit["base"] - fit["per_token"] * t
    whole = max(0.0, float((rest * t).sum() / (t * t).sum()))
    error = float(((fit["base"] + fit["per_token"] * t + whole * t - y).abs() / y).max())
    return {"per_head_token_whole": whole, "whole_heads_max_rel_error": error}


def fit_scores(fit: Dict[str, float], workloads: List[Workload], values: List[float]) -> Dict[str, float]:
    """The unfused-attention terms of `predict` (per_global_score, per_frame_score, >= 0) by least squares, relative
    to the measurement, over the steps measured with kernels.attention=reference whose peak the score matrices make
    (above the fused prediction); with the largest relative error of the whole prediction over all those steps."""
    scores = [score_elements(w.samples, w.frames, w.tokens_per_image()) for w in workloads]
    rows = [(w, q, y) for w, q, y in zip(workloads, scores, values) if y > 1.01 * predict(fit, *_shape(w))]
    coef = {"per_global_score": 0.0, "per_frame_score": 0.0}
    if rows:
        y = torch.tensor([r[2] for r in rows], dtype=torch.float64)
        rest = y - torch.tensor([fit["base"] + fit["per_token"] * r[0].tokens() for r in rows], dtype=torch.float64)
        features = torch.tensor([r[1] for r in rows], dtype=torch.float64)
        names = list(coef)
        for keep in ([0, 1], [0], [1]):  # both terms; else the one that stays >= 0
            design = features[:, keep] / y.unsqueeze(1)
            solution = torch.linalg.lstsq(design, (rest / y).unsqueeze(1)).solution.squeeze(1)
            if bool((solution >= 0).all()):
                coef.update({names[c]: float(v) for c, v in zip(keep, solution)})
                break
    whole = {**fit, **coef}
    error = max(abs(predict(whole, *_shape(w), q) - y) / y for w, q, y in zip(workloads, scores, values))
    return {**coef, "score_max_rel_error": float(error)}
