"""Per-card memory plan of a training config: model states (analytic), activations (measured fits), buffers.

  weights, grads, optimizer  vggt_train.train.memory for the preset's trainable / frozen parameter counts
  activations                base + per_token x tokens + the dense heads' term (all images' tokens up to
                             model.head_chunk_frames images, one chunk's beyond) [or, the larger, the aggregator's
                             score matrices with kernels.attention=reference]; fitted per preset and workload
                             (aggregator frozen, full training with / without activation checkpointing) by
                             bench/activation_memory.py from fake-tensor counts of a bf16 training step; tokens =
                             images per card x (patches + 5) (activation_memory.predict)
  buffers                    model buffers + communication buffers: DDP's gradient buckets (a second copy of the
                             gradients, more than one process), ZeRO's reduce / all-gather buckets (the shipped
                             ds_configs), ZeRO-3's gathered parameters (stage3_max_live_parameters + prefetch)
A plan fits when the total stays under (1 - headroom) of the card: the allocator's fragmentation, the device
runtime's own memory and CUDA autocast's float32 layer norms (the fits count the CPU's cast lists) take the rest.
Images per card are the worst case of the sampler: the S in data.img_nums whose (max_img_per_gpu // S) samples of
S frames need the most memory (with unfused attention, more frames per sample cost more at equal images).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch

from vggt_train import kernels
from vggt_train.errors import TrainingError
from vggt_train.model import VGGT, preset_config
from vggt_train.train.activation_memory import predict, score_elements, workload_kind
from vggt_train.train.config import TrainConfig
from vggt_train.train.memory import STRATEGIES, model_state_bytes

FITS_PATH = Path(__file__).with_name("activation_fits.json")
GIB = 2**30
DEFAULT_HEADROOM = 0.1
# the shipped ds_configs/zero{1,2,3}.json, in elements (float32 buckets)
ZERO_BUCKET_ELEMENTS = {"zero1": 2 * 50_000_000, "zero2": 2 * 50_000_000, "zero3": 50_000_000 + 50_000_000 + 200_000_000}
# no float32 fits were measured: without autocast the saved activations are float32 rather than bf16, at most 2x
FP32_ACTIVATION_FACTOR = 2.0


class PlanError(ValueError):
    """The plan cannot be made (a preset without fits); the message says what to run."""


def load_fits(path: Path = FITS_PATH) -> Dict:
    """{preset: {workload: {base, per_token, max_rel_error, points}}} from the data file."""
    try:
        return json.loads(path.read_text())["fits"]
    except (OSError, ValueError, KeyError) as exc:
        raise PlanError(f"{path}: cannot read the activation fits ({exc}); regenerate with python bench/activation_memory.py --write") from None


def param_counts(preset: str, disable_heads, frozen_globs) -> tuple:
    """(trainable, frozen) parameter counts of the preset as the config builds it (meta device, no memory)."""
    config = preset_config(preset)
    for head in disable_heads:
        setattr(config, head, None)
    with torch.device("meta"):
        model = VGGT(config)
    trainable = frozen = 0
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, g) for g in frozen_globs):
            frozen += p.numel()
        else:
            trainable += p.numel()
    return trainable, frozen


def tokens_per_image(preset: str, img_size: int, aspect_high: float = 1.0) -> int:
    """Aggregator tokens of one image: patches of img_size x (img_size x aspect) + camera + register tokens."""
    agg = preset_config(preset).aggregator
    height = max(1, int(img_size * aspect_high) // agg.patch_size)
    return (img_size // agg.patch_size) * height + 1 + agg.num_register_tokens


def worst_images(max_img_per_gpu: int, img_nums) -> int:
    """Most images one card gets: the sampler puts max_img_per_gpu // S samples of S frames on a card."""
    return max((max_img_per_gpu // s) * s for s in range(img_nums[0], img_nums[1] + 1))


def _largest(fits_at, lowest: int) -> int:
    """The largest n >= lowest with fits_at(n) (monotone: true up to some n), 0 when not even `lowest` fits."""
    if not fits_at(lowest):
        return 0
    low, high = lowest, 2 * lowest
    while fits_at(high) and high < 10**7:
        low, high = high, 2 * high
    while high - low > 1:  # fits_at(low), not fits_at(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits_at(mid) else (low, mid)
    return low


@dataclass
class Plan:
    """Bytes per card of one config on `cards` cards under `strategy`, against a card of `card_bytes`."""

    strategy: str
    cards: int
    card_bytes: float
    headroom: float
    weights: float
    grads: float
    optimizer: float
    activations: float
    buffers: float
    images: int
    workload: str
    max_img_per_gpu: Dict[str, int] = field(default_factory=dict)
    notes: list = field(default_factory=list)
    attention: str = "fused"  # fused | reference (its score matrices planned)

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.buffers

    @property
    def usable(self) -> float:
        return self.card_bytes * (1 - self.headroom)

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def as_json(self) -> Dict:
        parts = {k: getattr(self, k) / GIB for k in ("weights", "grads", "optimizer", "activations", "buffers", "total")}
        return {"per_card_gib": parts, "card_gib": self.card_bytes / GIB, "fits": self.fits,
                "max_img_per_gpu": self.max_img_per_gpu, "strategy": self.strategy, "cards": self.cards,
                "images_per_card": self.images, "workload": self.workload, "headroom": self.headroom, "notes": self.notes}


def _buffers(strategy: str, cards: int, trainable: int, model_buffers: int) -> float:
    if strategy == "ddp":
        return model_buffers + (4 * trainable if cards > 1 else 0)
    return model_buffers + 4 * ZERO_BUCKET_ELEMENTS[strategy]


def plan(cfg: TrainConfig, cards: int, card_gib: float, strategy: str = "ddp", headroom: float = DEFAULT_HEADROOM,
         fits: Optional[Dict] = None, attention: Optional[str] = None) -> Plan:
    """The per-card plan of `cfg` on `cards` cards of `card_gib` GiB under ddp / zero1 / zero2 / zero3, with the
    largest max_img_per_gpu that fits for every strategy (0: not even one sample). attention: the attention backend
    the run uses (kernels.selected; "reference" plans its score matrices), default the config's kernels.attention."""
    if strategy not in STRATEGIES:
        raise PlanError(f"strategy {strategy!r}: choose from {', '.join(STRATEGIES)}")
    if cards < 1 or not card_gib > 0 or not 0 <= headroom < 1:
        raise PlanError(f"need cards >= 1 (got {cards}), card size > 0 (got {card_gib}) and 0 <= headroom < 1 (got {headroom})")
    m, d = cfg.model, cfg.data
    fits = load_fits() if fits is None else fits
    kind = workload_kind(m.frozen, m.gradient_checkpointing)
    if m.preset not in fits or kind not in fits[m.preset]:
        raise PlanError(f"no activation fit for model.preset={m.preset} ({kind}); measure it with "
                        f"python bench/activation_memory.py --presets {m.preset} --write")
    fit = fits[m.preset][kind]
    trainable, frozen = param_counts(m.preset, m.disable_heads, m.frozen)
    per_image = tokens_per_image(m.preset, d.img_size, max(d.aspect_range))
    factor = 1.0 if cfg.train.mixed_precision == "bf16" else FP32_ACTIVATION_FACTOR
    notes = [] if factor == 1.0 else ["train.mixed_precision=no: activations estimated as 2x the bf16 fit"]
    if cfg.train.deepspeed_bf16:
        notes.append("train.deepspeed_bf16: bf16 weights and gradients under ZeRO (DDP does not run it); activations "
                     "as measured with float32 weights (their autocast copies included: an upper bound)")
    fit = _adjusted(fit, m, notes)
    unfused = (attention or cfg.kernels.get("attention")) == "reference"
    if unfused and "per_global_score" not in fit:
        notes.append("kernels.attention=reference keeps tokens^2 score matrices, which this preset's fit does not "
                     "model (measure with bench/activation_memory.py --write): expect more")
    chunk = m.head_chunk_frames if m.head_checkpointing else None
    model_buffers = 4 * 64  # the image mean / std: a few floats

    def activations(images: int, frames: int) -> float:
        scores = score_elements(images // frames, frames, per_image) if unfused else (0.0, 0.0)
        return factor * predict(fit, images, per_image, chunk, scores)

    def worst(max_img: int) -> tuple:  # (activations, images) of the sampler's most demanding batch
        shapes = [((max_img // f) * f, f) for f in range(d.img_nums[0], d.img_nums[1] + 1) if max_img >= f]
        return max((activations(i, f), i) for i, f in shapes) if shapes else (0.0, 0)

    def states(s: str) -> tuple:
        # float32 weights and gradients (bf16 comes from autocast), or DeepSpeed's bf16 mode under ZeRO
        precision = "bf16" if cfg.train.deepspeed_bf16 and s != "ddp" else "fp32"
        st = model_state_bytes(trainable, frozen, s, cards, precision)
        return st, _buffers(s, cards, trainable, model_buffers)

    usable = card_gib * GIB * (1 - headroom)
    best = {}
    for s in STRATEGIES:
        st, buf = states(s)
        best[s] = _largest(lambda n: st.total + buf + worst(n)[0] <= usable, d.img_nums[1])
    acts, images = worst(d.max_img_per_gpu)
    st, buf = states(strategy)
    return Plan(strategy=strategy, cards=cards, card_bytes=card_gib * GIB, headroom=headroom, weights=st.weights,
                grads=st.grads, optimizer=st.optimizer, activations=acts, buffers=buf, images=images,
                workload=kind, max_img_per_gpu=best, notes=notes, attention="reference" if unfused else "fused")


def _adjusted(fit: Dict, m, notes: list) -> Dict:
    """The fit (measured with the camera and depth heads) for the config's dense heads: their term scaled by how
    many of depth_head / point_head are enabled (an upper bound for two: their chunks are recomputed one at a time);
    track_head activations are not in the fits."""
    dense = sum(h not in m.disable_heads for h in ("depth_head", "point_head"))
    if "track_head" not in m.disable_heads:
        notes.append("track_head: its activations are not in the fit (measured with camera + depth heads)")
    if dense == 1:
        return fit
    notes.append(f"{dense} dense heads: their activations scaled from the depth head's fit")
    heads = {k: dense * fit[k] for k in ("per_head_token", "per_head_token_whole") if k in fit}
    return {**fit, **heads}


def describe(p: Plan, cfg: TrainConfig) -> str:
    """A one-line account of a plan that does not fit, and what to change."""
    options = [f"data.max_img_per_gpu<={p.max_img_per_gpu[p.strategy]}"] if p.max_img_per_gpu[p.strategy] else []
    options += [f"ZeRO {s[-1]} (max_img_per_gpu {n})" for s, n in p.max_img_per_gpu.items()
                if STRATEGIES.index(s) > STRATEGIES.index(p.strategy) and n >= cfg.data.img_nums[1]]
    if cfg.model.gradient_checkpointing is False and p.workload == "full":
        options.append("model.gradient_checkpointing=true")
    if p.attention == "reference":
        options.append("a fused attention kernel (the reference kernel keeps tokens x tokens scores; vggt-train kernels "
                       "lists the backends)")
    options.append("fewer frames (data.img_nums) or a smaller data.img_size")
    return (f"memory plan does not fit: {p.total / GIB:.1f} GiB per card needed (weights {p.weights / GIB:.1f}, grads "
            f"{p.grads / GIB:.1f}, optimizer {p.optimizer / GIB:.1f}, activations {p.activations / GIB:.1f} for {p.images} "
            f"images of {cfg.data.img_size} px, buffers {p.buffers / GIB:.1f}; {p.strategy}, {p.cards} cards) > "
            f"{p.usable / GIB:.1f} GiB usable of the {p.card_bytes / GIB:.1f} GiB card; try {'; or '.join(options)} "
            f"(vggt-train plan-memory shows the plan; train.check_memory=false skips this check)")


def device_memory_bytes(device: torch.device) -> Optional[int]:
    """Total memory of an accelerator card (CUDA or Ascend NPU), None on the CPU or when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "npu":
        npu = getattr(torch, "npu", None)  # torch_npu registers torch.npu when the trainer set the NPU up
        if npu is not None and hasattr(npu, "get_device_properties"):
            return int(npu.get_device_properties(device).total_memory)
    return None


def check_before_training(cfg: TrainConfig, device: torch.device, cards: int, zero_stage: Optional[int]) -> Optional[str]:
    """The trainer's start-up check: None when the plan fits, the card is unknown (CPU) or train.check_memory is
    off; else the one-line reason (describe). zero_stage: DeepSpeed's stage, None for DDP."""
    if not cfg.train.check_memory:
        return None
    total = device_memory_bytes(device)
    if total is None:
        return None
    strategy = "ddp" if not zero_stage else f"zero{zero_stage}"
    try:
        p = plan(cfg, cards, total / GIB, strategy, attention=kernels.selected("attention", device.type))
    except PlanError:
        return None  # a preset without fits: nothing to check against
    return None if p.fits else describe(p, cfg)


def refuse_unfit_plan(cfg: TrainConfig, accelerator) -> None:
    """Trainer start-up: raise TrainingError (one line, the plan's numbers) when the plan cannot fit the card."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    stage = int(plugin.zero_stage) if plugin is not None else None
    problem = check_before_training(cfg, accelerator.device, accelerator.num_processes, stage)
    if problem:
        raise TrainingError(problem)


def headline(p: Plan) -> str:
    """Rounded GiB of a plan's parts, for tables."""
    return " ".join(f"{getattr(p, k) / GIB:6.1f}" for k in ("weights", "grads", "optimizer", "activations", "buffers", "total"))
