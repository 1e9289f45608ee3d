"""Typed training configuration: YAML file + dotted `key=value` overrides, validated before any worker starts."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import importlib.util
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, get_args, get_origin, get_type_hints

import yaml

from vggt_train.data.pipeline.augment_config import AugmentConfig
from vggt_train.model.config import HEADS
from vggt_train.model.hub import CheckpointSourceError, parse_hub_ref
from vggt_train.train import paths
from vggt_train.train.mix_config import MixEntry, mix_problem


LOG_WITH = ("tensorboard", "wandb", "all", "none")  # train.log_with


class ConfigError(ValueError):
    """A configuration problem; the message names the field."""


@dataclass
class ModelConfig:
    preset: str = "vggt_1b"  # vggt_1b | small | tiny
    # official weights to start from: a local .pt/.pth/.safetensors, or a Hugging Face Hub repo id such as
    # facebook/VGGT-1B (optionally @revision and /file; see vggt_train/model/hub.py)
    checkpoint: Optional[str] = None
    strict_load: bool = True
    frozen: List[str] = field(default_factory=list)  # module-name globs, e.g. ["aggregator*"]
    # frozen modules without model.checkpoint would stay at their random initialisation for the whole run:
    # refused unless this says it is meant
    allow_random_frozen: bool = False
    # heads not built at all; the official fine-tuning trains camera + depth only
    disable_heads: List[str] = field(default_factory=lambda: ["point_head", "track_head"])
    gradient_checkpointing: bool = True
    # float32: the heads compute in float32 inside the bf16 autocast region (the official recipe); bfloat16: in
    # the autocast dtype too (faster; weights stay float32). Under train.deepspeed_bf16 every weight is bf16 anyway
    heads_dtype: str = "float32"
    # a torch.compile backend (inductor, aot_eager, ...) for every aggregator block; null: not compiled
    compile_blocks: Optional[str] = None
    # recompute the depth / point heads in backward, head_chunk_frames frames (of all samples together) at a time:
    # their full-resolution float32 maps are most of a frozen-aggregator step's activations (docs/model.md)
    head_checkpointing: bool = True
    head_chunk_frames: int = 4
    # a frozen aggregator runs without a graph under torch.no_grad; true: under torch.inference_mode (less host
    # bookkeeping; its outputs are copied into normal tensors where the heads need them)
    frozen_inference_mode: bool = False


@dataclass
class DataConfig:
    path: Optional[str] = None  # converted dataset root (vggt-train convert-co3d --out), or a raw Co3D dir (below)
    # several converted datasets instead of data.path, each sample's drawn by weight: [{path, weight, name,
    # categories, train_split, val_split}, ...] (train/mix_config.py)
    mix: Optional[List[MixEntry]] = None
    # set to the Co3D annotation dir (*.jgz) to train straight from the raw Co3D layout at data.path (no conversion;
    # the same samples, read more slowly: see docs/pipeline.md)
    raw_annotation_dir: Optional[str] = None
    # train and validate on these Co3D categories only ([] = every category in the data; [train41] = the 41 VGGT
    # training categories); e.g. the Ascend reference benchmark's [tv]
    categories: List[str] = field(default_factory=list)
    train_split: str = "train"
    val_split: Optional[str] = "test"
    img_size: int = 518
    patch_size: int = 14
    augment: bool = True
    aug: AugmentConfig = field(default_factory=AugmentConfig)  # the recipe's random parts (data/augment_config.py)
    img_nums: List[int] = field(default_factory=lambda: [2, 24])
    max_img_per_gpu: int = 48
    aspect_range: List[float] = field(default_factory=lambda: [1.0, 1.0])
    len_train: int = 100000  # samples per epoch: only counts epochs (the "epoch" of the training log)
    frame_sampling: str = "random"  # random | nearby
    expand_ratio: float = 2.0  # nearby: frames within +-int(S x expand_ratio) of the anchor
    # where the resize runs: worker (PIL in the DataLoader workers) | device (bit-identical, in the finishing stage
    # on the training device) | auto (device when an accelerator is present)
    resample_on: str = "auto"
    num_workers: int = 4
    prefetch_factor: int = 2


@dataclass
class OptimConfig:
    lr: float = 5e-5
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_ratio: float = 0.05
    start_lr: float = 1e-8
    end_lr: float = 1e-8
    # gradient clipping: max-norm per top-level module group, as the official recipe does (per_group), or the
    # norm of all gradients together at the smallest of them (global). Under DeepSpeed ZeRO-1/2/3 per_group
    # clips each group on the partitions each rank holds (train/clipping.py; it fails clearly where it cannot)
    clip_groups: Dict[str, float] = field(default_factory=lambda: {"aggregator": 1.0, "depth_head": 1.0, "camera_head": 1.0})
    clip_mode: str = "per_group"  # per_group | global


@dataclass
class LossConfig:
    camera: Optional[Dict[str, Any]] = field(default_factory=lambda: {"weight": 5.0, "loss_type": "l1"})
    depth: Optional[Dict[str, Any]] = field(default_factory=lambda: {"weight": 1.0, "gradient_loss_fn": "grad", "valid_range": 0.98})
    point: Optional[Dict[str, Any]] = None
    track: Optional[Dict[str, Any]] = None


@dataclass
class TrainLoopConfig:
    max_steps: int = 1000
    seed: int = 42
    grad_accum_steps: int = 1
    mixed_precision: str = "bf16"  # bf16 | no (autocast; weights and optimizer state stay float32)
    # under DeepSpeed only: its bf16 mode, bf16 weights and gradients with float32 master weights in the
    # optimizer (less memory and communication; the heads then run in bf16 too). false: float32 weights + autocast
    deepspeed_bf16: bool = False
    log_every: int = 10
    val_every: int = 0  # 0: no validation
    val_steps: int = 10  # validation micro-batches in all (the same draw at every validation, split over the ranks)
    # experiment trackers (accelerate): tensorboard | wandb (pip install .[wandb]) | all (both) | none
    log_with: str = "tensorboard"
    ckpt_every: int = 500
    keep_last: int = 3
    max_nonfinite_in_row: int = 5
    peak_tflops: Optional[float] = None  # per device, for MFU; None: a table by device type
    # auto (NPU, else GPU, else CPU) | accelerator (NPU or GPU, never the CPU) | npu | cuda | cpu; a device asked
    # for and not usable stops the run before any data is read, naming why
    device: str = "auto"
    progress: bool = True
    # on a GPU/NPU, refuse to start when the memory plan (train/plan_memory.py) does not fit the card
    check_memory: bool = True


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    resume: Optional[str] = None  # None | "auto" | a checkpoint directory
    # DeepSpeed JSON for runs started by the deepspeed launcher (accelerate launch takes it from its own config)
    deepspeed: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    kernels: Dict[str, str] = field(default_factory=dict)  # op -> backend, e.g. {attention: npu}


# ---------------------------------------------------------------------------------------------------------------
def _type_of(cls, name: str):
    return get_type_hints(cls)[name]


def _coerce(value: Any, typ, where: str):
    """Check/convert a YAML or override value to the dataclass field's type."""
    origin = get_origin(typ)
    if origin is Optional or (origin is not None and type(None) in get_args(typ)):
        if value is None:
            return None
        inner = [a for a in get_args(typ) if a is not type(None)][0]
        return _coerce(value, inner, where)
    if is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return _build(typ, value, where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (inner,) = get_args(typ) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        inner = get_args(typ)
        if not isinstance(value, (list, tuple)) or len(value) != len(inner):
            raise ConfigError(f"{where} must be a list of {len(inner)}, got {value!r}")
        return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, inner)))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        kt, vt = get_args(typ) or (Any, Any)
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare no/yes/off/on as a boolean (mixed_precision: no)
            value = "no" if value is False else "yes"
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _build(cls, data: dict, where: str = ""):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key(s) {', '.join(prefix + u for u in unknown)}; valid keys of {where or 'the config'}: {', '.join(sorted(known))}")
    # keyword construction: frozen dataclasses (the augmentation settings) take their values this way too
    return cls(**{name: _coerce(value, _type_of(cls, name), f"{where}.{name}" if where else name) for name, value in data.items()})


def _parse_override(text: str):
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip(), value


def _set_dotted(data: dict, key: str, value: Any, cls) -> None:
    parts = key.split(".")
    node, node_cls = data, cls
    for i, part in enumerate(parts):
        names = {f.name: f for f in fields(node_cls)} if is_dataclass(node_cls) else None
        if names is not None and part not in names:
            where = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"unknown key {key!r}: {where} has no {part!r}; valid keys: {', '.join(sorted(names))}")
        if i == len(parts) - 1:
            node[part] = value
            return
        sub_type = _type_of(node_cls, part) if names is not None else Any
        inner = [a for a in get_args(sub_type) if a is not type(None)]
        sub_cls = inner[0] if get_origin(sub_type) is not None and inner and is_dataclass(inner[0]) else sub_type
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node, node_cls = node[part], sub_cls if is_dataclass(sub_cls) else Any
        if node_cls is Any:  # a free-form mapping (kernels, loss terms): the rest of the path is one key
            node[".".join(parts[i + 1:])] = value
            return


def _deep_merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def _yaml_error_where(path: Path, exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> TrainConfig:
    """TrainConfig from a YAML file (optional) plus `key.sub=value` overrides, validated."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{_yaml_error_where(p, exc)}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
    # YAML and overrides refine the defaults: a mapping-valued field (loss terms, kernels) keeps the keys
    # it does not mention; `null` disables a section
    data = _deep_merge(to_dict(TrainConfig()), copy.deepcopy(data))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(data, key, value, TrainConfig)
    config = _build(TrainConfig, data)
    _resolve_paths(config, path)
    validate(config)
    return config


def _resolve_paths(c: TrainConfig, config_file: Optional[str]) -> None:
    """Relative input paths made absolute by train/paths.py's lookup, so a run works from any directory; a file the
    run needs and no lookup finds is an error naming the directories tried."""

    dirs = paths.search_dirs(config_file)

    def look(key: str, value: Optional[str], required: bool) -> Optional[str]:
        if value is None:
            return None
        found = paths.locate(value, dirs)
        if found is not None:
            return str(found)
        if required:
            raise ConfigError(paths.not_found(key, value, dirs))
        return value  # data.path: TrainData says what is missing there

    c.data.path = look("data.path", c.data.path, False)
    for i, entry in enumerate(c.data.mix or []):
        entry.path = look(f"data.mix[{i}].path", entry.path, False)
    c.data.raw_annotation_dir = look("data.raw_annotation_dir", c.data.raw_annotation_dir, True)
    c.deepspeed = look("deepspeed", c.deepspeed, True)
    if c.resume not in (None, "auto"):
        c.resume = look("resume", c.resume, True)
    if c.model.checkpoint:
        found = paths.locate(c.model.checkpoint, dirs)
        if found is not None and found.is_file():
            c.model.checkpoint = str(found)
        else:
            try:
                is_hub = parse_hub_ref(c.model.checkpoint) is not None
            except CheckpointSourceError as exc:
                raise ConfigError(str(exc)) from None
            if not is_hub:
                raise ConfigError(paths.not_found("model.checkpoint", c.model.checkpoint, dirs))


def _torch_at_least(major: int, minor: int) -> bool:
    import torch  # heavy: only a config that asks for compilation pays for it

    found = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return found >= (major, minor)


def compile_backends() -> List[str]:
    """The torch.compile backends this torch offers (empty where it has no torch.compile)."""
    import torch  # heavy: only a config that asks for compilation pays for it

    if not hasattr(torch, "compile"):
        return []
    from torch._dynamo import list_backends  # part of torch.compile; loaded with it

    return sorted(list_backends(exclude_tags=()))


def validate(c: TrainConfig) -> None:
    """Reject values that would fail later (or silently misbehave), naming the field."""
    # torch-heavy modules: imported when a config is validated, so reading one (--print-config) stays light
    from vggt_train.data.pipeline.batch import TARGET_KEYS
    from vggt_train.losses import SUPERVISION, MultitaskLoss
    from vggt_train.model.config import PRESETS, preset_config
    from vggt_train.model.hub import CheckpointSourceError, parse_hub_ref
    from vggt_train.train.device import CHOICES as DEVICE_CHOICES

    def need(cond: bool, message: str) -> None:
        if not cond:
            raise ConfigError(message)

    need(c.model.preset in PRESETS, f"model.preset={c.model.preset!r} is unknown; choose from {sorted(PRESETS)}")
    if c.model.checkpoint:
        try:
            hub_ref = parse_hub_ref(c.model.checkpoint)
        except CheckpointSourceError as exc:
            raise ConfigError(str(exc)) from None
        if hub_ref is None:  # a local file; a Hub repo id is resolved (downloaded or taken from the cache) at start-up
            need(Path(c.model.checkpoint).expanduser().is_file(), f"model.checkpoint={c.model.checkpoint!r}: file not found")
    elif c.model.frozen and not c.model.allow_random_frozen:
        need(False, f"model.frozen={c.model.frozen} without model.checkpoint: the frozen modules would keep their random "
                    f"initialisation for the whole run. Set model.checkpoint (a file, or a Hub repo id such as "
                    f"facebook/VGGT-1B), or model.allow_random_frozen=true if that is what you want")
    need(c.model.heads_dtype in ("float32", "bfloat16"), f"model.heads_dtype={c.model.heads_dtype!r}; choose float32 or bfloat16")
    need(c.model.heads_dtype == "float32" or c.train.mixed_precision == "bf16",
         f"model.heads_dtype=bfloat16 computes the heads in the autocast dtype: it needs train.mixed_precision=bf16, "
         f"not {c.train.mixed_precision!r}")
    need(c.model.heads_dtype == "float32" or _torch_at_least(2, 2),
         "model.heads_dtype=bfloat16 needs torch >= 2.2: on older torch the bf16 heads did not train within 5 % of "
         "float32 heads (measured 7.8 % on torch 2.1); set it to float32")
    if c.model.compile_blocks is not None:
        need(_torch_at_least(2, 2), f"model.compile_blocks={c.model.compile_blocks!r} needs torch >= 2.2: torch.compile of "
                                    f"the blocks fails on this torch (FX cannot trace the compiled blocks); set it to null")
        backends = compile_backends()
        need(c.model.compile_blocks in backends, f"model.compile_blocks={c.model.compile_blocks!r}: not a torch.compile "
                                                 f"backend here; choose from {backends} (or null: not compiled)")
    need(c.model.head_chunk_frames >= 1, f"model.head_chunk_frames={c.model.head_chunk_frames} must be >= 1")
    heads = set(HEADS)
    bad = sorted(set(c.model.disable_heads) - heads)
    need(not bad, f"model.disable_heads has {bad}; valid: {sorted(heads)}")
    d = c.data
    need(d.path is not None or d.mix is not None, "data.path is required: the dataset written by `vggt-train convert-co3d "
                                                  "--out` (or, with data.raw_annotation_dir, a raw Co3D dir; or data.mix)")
    problem = mix_problem(d.mix, d.path, d.raw_annotation_dir)
    need(problem is None, str(problem))
    if d.raw_annotation_dir is not None:
        need(Path(d.raw_annotation_dir).is_dir(), f"data.raw_annotation_dir={d.raw_annotation_dir!r}: directory not found")
        need(Path(d.path).is_dir(), f"data.path={d.path!r}: the raw Co3D directory was not found")
    model_patch = preset_config(c.model.preset).aggregator.patch_size
    need(d.patch_size == model_patch, f"data.patch_size={d.patch_size} must be the model's patch size ({model_patch} for "
                                      f"model.preset={c.model.preset})")
    need(d.img_size > 0 and d.img_size % d.patch_size == 0, f"data.img_size={d.img_size} must be a positive multiple of data.patch_size={d.patch_size}")
    need(len(d.img_nums) == 2 and 1 <= d.img_nums[0] <= d.img_nums[1], f"data.img_nums={d.img_nums} must be [min, max] with 1 <= min <= max")
    need(d.max_img_per_gpu >= d.img_nums[1], f"data.max_img_per_gpu={d.max_img_per_gpu} must be >= data.img_nums max {d.img_nums[1]} (at least one sample per GPU)")
    need(len(d.aspect_range) == 2 and 0 < d.aspect_range[0] <= d.aspect_range[1], f"data.aspect_range={d.aspect_range} must be [low, high] with 0 < low <= high")
    # the image height is floor(img_size x aspect / patch) patches: the lowest aspect must leave at least one
    min_aspect = d.patch_size / d.img_size
    need(int(d.img_size * d.aspect_range[0]) // d.patch_size >= 1,
         f"data.aspect_range={d.aspect_range}: low {d.aspect_range[0]} gives images less than one patch high at "
         f"data.img_size={d.img_size} (need low >= {min_aspect:.4g} = data.patch_size / data.img_size)")
    need(d.frame_sampling in ("random", "nearby"), f"data.frame_sampling={d.frame_sampling!r}; choose random or nearby")
    need(d.expand_ratio > 0, f"data.expand_ratio={d.expand_ratio} must be > 0")
    need(d.resample_on in ("auto", "worker", "device"), f"data.resample_on={d.resample_on!r}; choose auto, worker or device")
    need(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0")
    need(d.prefetch_factor >= 1, f"data.prefetch_factor={d.prefetch_factor} must be >= 1")
    need(d.len_train > 0, f"data.len_train={d.len_train} must be > 0")
    a = d.aug
    if a.scale_range is not None:
        need(len(a.scale_range) == 2 and 0 < a.scale_range[0] <= a.scale_range[1],
             f"data.aug.scale_range={a.scale_range} must be [low, high] with 0 < low <= high (or null)")
    need(0 <= a.cojitter_ratio <= 1, f"data.aug.cojitter_ratio={a.cojitter_ratio} must be in [0, 1]")
    need(0 <= a.grayscale_p <= 1, f"data.aug.grayscale_p={a.grayscale_p} must be in [0, 1]")
    if a.color_jitter is not None:
        j = a.color_jitter
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(j, name)
            need(0 <= value <= 1, f"data.aug.color_jitter.{name}={value} must be in [0, 1] (factors 1 +- it stay >= 0)")
        need(0 <= j.hue <= 0.5, f"data.aug.color_jitter.hue={j.hue} must be in [0, 0.5]")
        need(0 <= j.p <= 1, f"data.aug.color_jitter.p={j.p} must be in [0, 1]")
    o = c.optim
    # nan compares false with everything, so each range check also refuses nan; inf is refused explicitly
    need(math.isfinite(o.lr) and o.lr > 0, f"optim.lr={o.lr} must be a finite number > 0")
    for name in ("start_lr", "end_lr"):
        value = getattr(o, name)
        need(math.isfinite(value) and value >= 0, f"optim.{name}={value} must be a finite number >= 0 (a negative "
                                                  f"learning rate climbs the loss)")
    need(math.isfinite(o.eps) and o.eps > 0, f"optim.eps={o.eps} must be a finite number > 0")
    need(math.isfinite(o.weight_decay) and o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be a finite number >= 0")
    need(0 <= o.warmup_ratio < 1, f"optim.warmup_ratio={o.warmup_ratio} must be in [0, 1)")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas={o.betas} must be two numbers in [0, 1)")
    need(all(math.isfinite(v) and v > 0 for v in o.clip_groups.values()), f"optim.clip_groups={o.clip_groups}: max norms must be finite and > 0")
    need(o.clip_mode in ("per_group", "global"), f"optim.clip_mode={o.clip_mode!r}; choose per_group or global")
    t = c.train
    need(t.max_steps > 0, f"train.max_steps={t.max_steps} must be > 0")
    need(0 <= t.seed < 2**32, f"train.seed={t.seed} must be in [0, 2**32)")
    need(t.val_every >= 0 and t.val_steps >= 1, f"train.val_every={t.val_every} must be >= 0 and train.val_steps={t.val_steps} >= 1")
    if t.peak_tflops is not None:
        need(math.isfinite(t.peak_tflops) and t.peak_tflops > 0, f"train.peak_tflops={t.peak_tflops} must be a finite number > 0 (or null)")
    out = Path(c.output_dir)
    need(not out.exists() or out.is_dir(), f"output_dir={c.output_dir!r} exists and is not a directory")
    need(t.grad_accum_steps >= 1, f"train.grad_accum_steps={t.grad_accum_steps} must be >= 1")
    need(t.mixed_precision != "fp16", "train.mixed_precision=fp16 is not supported: float16 gradients underflow without "
                                      "loss scaling, which this trainer does not do; use bf16 (Ascend 910B, A100/H100) or no")
    need(t.mixed_precision in ("bf16", "no"), f"train.mixed_precision={t.mixed_precision!r}; choose bf16 or no")
    need(t.log_every >= 1, f"train.log_every={t.log_every} must be >= 1")
    need(t.ckpt_every >= 0 and t.keep_last >= 1, "train.ckpt_every must be >= 0 and train.keep_last >= 1")
    need(t.max_nonfinite_in_row >= 1, f"train.max_nonfinite_in_row={t.max_nonfinite_in_row} must be >= 1")
    need(t.log_with in LOG_WITH, f"train.log_with={t.log_with!r}; choose from {', '.join(LOG_WITH)}")
    need(t.log_with not in ("wandb", "all") or importlib.util.find_spec("wandb") is not None,
         f"train.log_with={t.log_with} needs the wandb package: pip install 'vggt-train[wandb]' (or train.log_with=tensorboard)")
    need(t.device in DEVICE_CHOICES, f"train.device={t.device!r}; choose from {', '.join(DEVICE_CHOICES)}")
    need(c.deepspeed is None or Path(c.deepspeed).is_file(), f"deepspeed={c.deepspeed!r}: DeepSpeed config file not found")
    need(c.resume in (None, "auto") or Path(c.resume).is_dir(), f"resume={c.resume!r}: use auto or an existing checkpoint directory")
    enabled = [name for name in ("camera", "depth", "point", "track") if getattr(c.loss, name)]
    need(bool(enabled), "loss: enable at least one of camera, depth, point, track")
    head_of = {"camera": "camera_head", "depth": "depth_head", "point": "point_head", "track": "track_head"}
    for name in enabled:
        need(head_of[name] not in c.model.disable_heads, f"loss.{name} is enabled but model.disable_heads contains {head_of[name]}")
    for name, head in head_of.items():
        if name in enabled or head in c.model.disable_heads or any(fnmatch.fnmatchcase(f"{head}.x", g) for g in c.model.frozen):
            continue
        # its outputs would be computed for nothing and its parameters get no gradient, which DDP rejects
        need(False, f"model builds {head} but loss.{name} is off: add {head} to model.disable_heads (or enable "
                    f"loss.{name}, or freeze it with model.frozen)")
    for name in enabled:  # a term whose ground truth the batches never carry would silently be no loss at all
        missing = [k for k in SUPERVISION[name].targets if k not in TARGET_KEYS]
        need(not missing, f"loss.{name} is enabled but the training data provides no {', '.join(missing)} (its "
                          f"supervision; batches carry {', '.join(TARGET_KEYS)}): set loss.{name}=null")
    try:
        MultitaskLoss(**vars(c.loss))  # unknown options and bad weights fail here, not after the model is built
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"loss: {exc}") from None


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_dict(c: TrainConfig) -> dict:
    """The config as plain YAML/JSON data (tuples as lists)."""
    return _plain(dataclasses.asdict(c))
