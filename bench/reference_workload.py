"""Throughput, MFU, peak memory and a per-phase time breakdown of the product's training step on CUDA, NPU or CPU.

Two workloads, both through vggt_train.train.loop.Trainer.train_step (what a run executes), in bf16 autocast:
  reference  the Ascend reference benchmark (configs/ascend_reference.yaml): aggregator frozen, camera + depth
             heads, 2 views at 518 px, 15 samples per card
  full       full fine-tuning (nothing frozen, camera + depth heads) at any --preset / --frames / --batch
Batches are synthetic and already on the device (the loader is not measured) unless --data PATH, which reads a
converted dataset through the real pipeline (DataLoader workers + finishing stage; data wait then counts).
The model starts from random weights (throughput does not depend on them); --checkpoint loads real ones.

Each kernel variant (a VGGT_KERNELS value; default: the device's fused attention, then the reference attention)
is timed in the same process on the same trainer: --warmup steps, then --steps timed steps (device synchronised
around each), then one step under the profiler for the phase breakdown (data wait, aggregator forward, heads
forward, backward, optimizer, communication; backward includes gradient-checkpoint recompute, communication
overlaps backward). MFU: model FLOPs (attention included; recompute not) / step time / the device's bf16 dense
peak (--peak-tflops overrides; on the CPU: this machine's measured fp32 GEMM peak). Prints a table and one JSON line.

    python bench/reference_workload.py                          # the reference workload on this machine's accelerator
    python bench/reference_workload.py --workload full --preset vggt_1b --frames 8 --batch 2
    accelerate launch --config_file accelerate_configs/gpu_8p.yaml bench/reference_workload.py   # 8 cards
    python bench/reference_workload.py --smoke                  # CPU, tiny preset, a few steps (the test's run)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional
from unittest import mock

import torch
from torch import profiler as tprof
from torch.autograd.profiler import record_function

from vggt_train import kernels
from vggt_train.errors import TrainingError
from vggt_train.geometry import unproject_batch
from vggt_train.model import VGGT
from vggt_train.model.flops import training_flops_per_image
from vggt_train.train import data as train_data
from vggt_train.train.config import ConfigError, load_config
from vggt_train.train.loop import Trainer
from vggt_train.kernels.registry import parse_spec
from vggt_train.train.metrics import device_peak_tflops

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when run from elsewhere or under a launcher
from _common import fp32_gemm_peak_tflops  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHASES = ("data_wait", "aggregator_forward", "heads_forward", "backward", "optimizer", "communication", "other")
# profiler events of collectives: the host-side op (CPU, gloo) and the device kernels (NCCL / HCCL)
_COMM_HOST_PREFIX = "c10d::"
_COMM_KERNEL_TAGS = ("nccl", "hccl")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("reference", "full"), default="reference")
    p.add_argument("--preset", default=None, help="model preset (reference: vggt_1b; --smoke: tiny)")
    p.add_argument("--frames", type=int, default=None, help="views per sample (reference: 2)")
    p.add_argument("--batch", type=int, default=None, help="samples per card (reference: 15)")
    p.add_argument("--size", type=int, default=None, help="square image side, px (reference: 518)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per kernel variant (default 10; --smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --smoke 1)")
    p.add_argument("--variants", nargs="+", default=None, metavar="SPEC",
                   help="VGGT_KERNELS values to compare (default: 'auto' 'attention=reference')")
    p.add_argument("--data", default=None, help="a converted dataset: read it through the real pipeline (loader measured)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers with --data (default: the config's)")
    p.add_argument("--checkpoint", default=None, help="weights to load (default: random weights)")
    p.add_argument("--peak-tflops", type=float, default=None, help="per-device peak for MFU (default: the table)")
    p.add_argument("--device", default=None, help="train.device (default: accelerator; --smoke: cpu)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled step (no phase breakdown)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny preset, 28 px, 2 views x 2 samples, a few steps")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="extra config overrides (e.g. model.heads_dtype=bfloat16), before --variants")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {"preset": "tiny" if smoke else "vggt_1b", "frames": 2, "batch": 2 if smoke else 15, "size": 28 if smoke else 518,
                "steps": 2 if smoke else 10, "warmup": 1 if smoke else 3, "device": "cpu" if smoke else "accelerator",
                "variants": ["auto", "attention=reference"]}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.warmup < 0 or args.frames < 1 or args.batch < 1:
        p.error("--steps and --frames and --batch must be >= 1, --warmup >= 0")
    for spec in args.variants:
        try:
            parse_spec("" if spec == "auto" else spec, "--variants")
        except kernels.KernelError as exc:  # e.g. a config override placed after --variants
            p.error(f"{exc} (put key=value overrides before --variants)")
    return args


# -- the run's config and data --------------------------------------------------------------------------------
def build_config(args, output_dir: str):
    """The workload's TrainConfig: configs/ascend_reference.yaml, reshaped by the arguments."""
    S, B = args.frames, args.batch
    overrides = [
        f"output_dir={output_dir}", f"model.preset={args.preset}", f"data.img_size={args.size}", f"data.img_nums=[{S},{S}]",
        f"data.max_img_per_gpu={S * B}", "data.aspect_range=[1.0,1.0]", f"train.device={args.device}",
        "train.max_steps=1000000", "train.progress=false", "train.ckpt_every=0", "train.val_every=0", "train.log_every=1",
        f"data.path={args.data or 'synthetic'}",
        f"model.checkpoint={args.checkpoint or 'null'}", "model.allow_random_frozen=true",
    ]
    if args.data is None:
        overrides.append("data.categories=[]")  # the synthetic batch has no category to select
    if args.workload == "full":
        overrides.append("model.frozen=[]")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    if args.peak_tflops:
        overrides.append(f"train.peak_tflops={args.peak_tflops}")
    if args.smoke:
        # fp32 on the CPU: bf16 autocast there is an emulation, slower than fp32 and not what a device runs
        overrides += ["train.mixed_precision=no", "model.gradient_checkpointing=false", "data.num_workers=0"]
    return load_config(str(REPO / "configs" / "ascend_reference.yaml"), overrides + list(args.overrides))


def synthetic_batch(B: int, S: int, H: int, W: int, device, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A finished training batch (images [B, S, 3, H, W] in [0, 1], depths, masks, points, cameras) of a plausible
    scene: views circling a surface 1-2 units away, every pixel valid."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, S, 3, H, W, generator=g)
    depths = 1.0 + torch.rand(B, S, H, W, generator=g)
    intrinsics = torch.tensor([[float(W), 0.0, W / 2], [0.0, float(W), H / 2], [0.0, 0.0, 1.0]]).expand(B, S, 3, 3).clone()
    angle = torch.linspace(0.0, 0.3, S).view(1, S).expand(B, S)
    c, s, zero, one = torch.cos(angle), torch.sin(angle), torch.zeros(B, S), torch.ones(B, S)
    rot = torch.stack([torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1), torch.stack([-s, zero, c], -1)], -2)
    trans = torch.stack([0.2 * angle, zero, zero], -1).unsqueeze(-1)
    extrinsics = torch.cat([rot, trans], dim=-1)  # camera from world; view 0 is the identity
    cam, world, _ = unproject_batch(depths, intrinsics, extrinsics)
    batch = {"images": images, "depths": depths, "point_masks": depths > 0, "cam_points": cam, "world_points": world,
             "extrinsics": extrinsics, "intrinsics": intrinsics}
    return {k: v.to(device) for k, v in batch.items()}


class SyntheticData:
    """Stands in for train.data.TrainData: one fixed batch, already on the device, for every step (no disk)."""

    train_sources = val_sources = ()

    def __init__(self, cfg):
        S = cfg.data.img_nums[1]
        self.B, self.S, self.size = cfg.data.max_img_per_gpu // S, S, cfg.data.img_size
        self.batch: Optional[Dict[str, torch.Tensor]] = None

    def nominal_samples_per_rank(self) -> int:
        return self.B

    def replaced_samples(self, batch) -> int:
        return 0

    def epoch(self, samples_seen: int) -> int:
        return 0

    def stream(self, device):
        if self.batch is None:
            self.batch = synthetic_batch(self.B, self.S, self.size, self.size, device)
        while True:
            yield self.batch


def build_trainer(cfg, synthetic: bool):
    """The product's Trainer; with synthetic=True its dataset is SyntheticData (no data.path is opened)."""
    patch = mock.patch.object(train_data, "TrainData", SyntheticData) if synthetic else contextlib.nullcontext()
    with patch:
        return Trainer(cfg)


# -- measuring ------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "npu":
        torch.npu.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    """max_memory_allocated on CUDA/NPU (since the last reset); on the CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if device.type == "npu":
        return torch.npu.max_memory_allocated(device) / 2**30
    import resource  # POSIX only, and only the CPU path needs it

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


@contextlib.contextmanager
def phase_ranges(trainer):
    """record_function ranges around the phases of the trainer's step: module hooks for the forward parts, the
    backward / optimizer calls wrapped on their instances (the product's code runs unchanged)."""
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    handles, open_ranges, patched = [], {}, []

    def enter(name):
        def hook(module, *_):
            rf = record_function(f"phase/{name}")
            rf.__enter__()
            open_ranges.setdefault(id(module), []).append(rf)
        return hook

    def leave(module, *_):
        open_ranges[id(module)].pop().__exit__(None, None, None)

    targets = [("aggregator_forward", model.aggregator)] + [
        ("heads_forward", getattr(model, h)) for h in ("camera_head", "depth_head", "point_head", "track_head") if getattr(model, h) is not None]
    for name, module in targets:
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]

    def wrap(obj, attr, name):
        original = getattr(obj, attr)

        def wrapped(*a, **kw):
            with record_function(f"phase/{name}"):
                return original(*a, **kw)
        setattr(obj, attr, wrapped)
        patched.append((obj, attr))

    if trainer.deepspeed:  # accelerate's backward runs engine.backward then engine.step (the optimizer)
        wrap(trainer.model, "backward", "backward")
        wrap(trainer.model, "step", "optimizer")
    else:
        wrap(acc, "backward", "backward")
        wrap(trainer.optimizer, "step", "optimizer")
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for obj, attr in patched:
            delattr(obj, attr)  # the class's method shows through again


def _device_time_us(evt) -> float:
    for attr in ("device_time_total", "cuda_time_total", "npu_time_total"):  # renamed across torch releases
        value = getattr(evt, attr, None)
        if value:
            return float(value)
    return 0.0


def profile_step(trainer, stream, device: torch.device) -> Optional[Dict[str, float]]:
    """One step under the profiler: seconds per phase (device time of each range's kernels on an accelerator, host
    time on the CPU), or None where no profiler can run here."""
    activities, prof_mod = [tprof.ProfilerActivity.CPU], tprof
    if device.type == "cuda":
        activities.append(tprof.ProfilerActivity.CUDA)
    elif device.type == "npu":
        try:
            import torch_npu.profiler as prof_mod  # Ascend's profiler: device timings of NPU kernels

            activities = [prof_mod.ProfilerActivity.CPU, prof_mod.ProfilerActivity.NPU]
        except (ImportError, AttributeError):
            pass
    _sync(device)
    t0 = time.perf_counter()
    try:
        with phase_ranges(trainer), prof_mod.profile(activities=activities) as prof:
            record = trainer.train_step(stream)
            _sync(device)
        wall = time.perf_counter() - t0
        events = prof.key_averages()
    except (RuntimeError, AttributeError) as exc:  # e.g. a profiler build without key_averages
        print(f"[bench] profiler unavailable here ({type(exc).__name__}: {exc}); no phase breakdown", file=sys.stderr)
        return None
    trainer.state.step += 1
    on_device = device.type != "cpu"
    phases = dict.fromkeys(PHASES, 0.0)
    comm_host = comm_device = 0.0
    for evt in events:
        name = evt.key
        if name.startswith("phase/"):
            us = _device_time_us(evt) if on_device else float(evt.cpu_time_total)
            phases[name[len("phase/"):]] += us / 1e6
        elif name.startswith(_COMM_HOST_PREFIX):
            comm_host += float(evt.cpu_time_total) / 1e6
        elif on_device and any(tag in name.lower() for tag in _COMM_KERNEL_TAGS):
            comm_device += (float(getattr(evt, "self_device_time_total", 0.0) or 0.0) or _device_time_us(evt)) / 1e6
    phases["communication"] = comm_device if on_device else comm_host
    phases["data_wait"] = float(record["data_time"])
    # communication overlaps backward: it is not subtracted from what is left
    accounted = sum(v for k, v in phases.items() if k not in ("communication", "other"))
    phases["other"] = max(0.0, wall - accounted)
    phases["step_wall"] = wall
    return phases


def time_variant(trainer, stream, device, spec: str, warmup: int, steps: int, profile: bool) -> Dict:
    """Warm-up, timed steps and (optionally) one profiled step with VGGT_KERNELS=spec ('auto': the default choice)."""
    os.environ[kernels.ENV_VAR] = "" if spec == "auto" else spec
    for _ in range(warmup):
        trainer.train_step(stream)
        trainer.state.step += 1
    _sync(device)
    _reset_peak(device)
    times, losses, data_times = [], [], []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        record = trainer.train_step(stream)
        _sync(device)
        times.append(time.perf_counter() - t0)
        trainer.state.step += 1
        losses.append(record["loss"])
        data_times.append(record["data_time"])
    peak = _peak_gib(device)
    phases = profile_step(trainer, stream, device) if profile else None
    return {"kernels": spec, "attention": kernels.selected("attention", device.type), "rope": kernels.selected("rope", device.type),
            "step_s": statistics.median(times), "step_s_mean": statistics.fmean(times), "data_wait_s": statistics.fmean(data_times),
            "peak_mem_gib": peak, "loss_last": losses[-1], "phases_s": phases}


def planned_memory_gib(cfg, world_size: int, zero_stage: Optional[int], attention: str = "auto") -> Optional[float]:
    """`vggt-train plan-memory`'s per-card prediction (GiB) for this config with the attention kernel a variant ran
    (reference: the score matrices are planned too), or None where it has no fit (e.g. a preset it was not
    measured for)."""
    from vggt_train.train import plan_memory

    strategy = "ddp" if not zero_stage else f"zero{zero_stage}"
    if attention == "reference":
        cfg = dataclasses.replace(cfg, kernels={**cfg.kernels, "attention": "reference"})
    try:
        return plan_memory.plan(cfg, cards=world_size, card_gib=1e6, strategy=strategy).total / 2**30
    except plan_memory.PlanError:
        return None


def flops_per_sample(trainer, S: int, size: int) -> float:
    """Model FLOPs of one training step per sample (attention included), counted on the meta device."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    frozen = not any(p.requires_grad for p in model.aggregator.parameters())
    with torch.device("meta"):
        meta = VGGT(model.config)
    return training_flops_per_image(meta, S, size, size, frozen_aggregator=frozen) * S


def peak_tflops(trainer, args) -> tuple:
    """(TFLOP/s, where it came from): --peak-tflops, the table of bf16 dense peaks, or the CPU's measured GEMM."""
    device = trainer.accelerator.device
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    value = device_peak_tflops(device)
    if value:
        return value, "bf16 dense table (vggt_train/train/metrics.py)"
    if device.type == "cpu":
        return fp32_gemm_peak_tflops(n=1024 if args.smoke else 2048), "measured fp32 GEMM of this CPU"
    return float("nan"), "unknown device: pass --peak-tflops"


# -- report ---------------------------------------------------------------------------------------------------
def report(args, cfg, trainer, results: List[Dict], fps: float, peak, plan_gib) -> Dict:
    acc = trainer.accelerator
    device, world = acc.device, acc.num_processes
    S, B = args.frames, args.batch
    peak_value, peak_source = peak
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (device.type if device.type != "npu" else "npu")
    mp = cfg.train.mixed_precision
    print(f"{args.workload} workload: {cfg.model.preset}, {B} samples x {S} views x {args.size} px per card, {world} "
          f"process(es) on {name}, {mp} autocast, frozen={cfg.model.frozen or 'none'}, data={'--data ' + args.data if args.data else 'synthetic (in memory)'}")
    print(f"  model FLOPs per sample {fps / 1e9:.2f} GFLOP; peak {peak_value:.1f} TFLOP/s ({peak_source}); "
          f"median of {args.steps} steps; plan GiB: vggt-train plan-memory's prediction for the variant's attention")
    head = (f"  {'kernels (VGGT_KERNELS)':24s} {'attention':>9s} {'samples/s':>10s} {'step s':>8s} {'MFU':>7s} {'peak GiB':>9s} "
            f"{'plan GiB':>9s}")
    print(head)
    for r in results:
        planned = "n/a" if r.get("plan_gib") is None else f"{r['plan_gib']:.2f}"
        print(f"  {r['kernels']:24s} {r['attention']:>9s} {r['samples_per_s']:10.2f} {r['step_s']:8.4f} {r['mfu']:7.2%} "
              f"{r['peak_mem_gib']:9.2f} {planned:>9s}")
    profiled = [r for r in results if r["phases_s"]]
    if profiled:
        print(f"  phase ms (one profiled step; {'device' if device.type != 'cpu' else 'host'} time; communication overlaps backward)")
        print("  " + f"{'phase':20s}" + "".join(f"{r['kernels'][:16]:>18s}" for r in profiled))
        for phase in PHASES + ("step_wall",):
            print("  " + f"{phase:20s}" + "".join(f"{r['phases_s'][phase] * 1e3:18.2f}" for r in profiled))
    out = {"bench": "reference_workload", "workload": args.workload, "preset": cfg.model.preset, "frames": S,
           "batch_per_device": B, "size": args.size, "device": device.type, "device_name": name, "world_size": world,
           "mixed_precision": mp, "frozen": cfg.model.frozen, "data": args.data or "synthetic", "steps": args.steps,
           "flops_per_sample": fps, "peak_tflops": peak_value, "peak_source": peak_source,
           "plan_memory_gib": plan_gib, "variants": results, "torch": torch.__version__, "smoke": args.smoke}
    print(json.dumps(out, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v)))
    return out


def main(argv=None) -> Dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg = build_config(args, str(Path(tmp) / "run"))
            trainer = build_trainer(cfg, synthetic=args.data is None)
        except (ConfigError, TrainingError) as exc:
            sys.exit(f"reference_workload: {exc}")
        acc = trainer.accelerator
        device = acc.device
        if args.data is None:
            stream = trainer.data.stream(device)
        else:
            stream = trainer.data.train_stream(acc.process_index, acc.num_processes)
        fps = flops_per_sample(trainer, args.frames, args.size)
        peak = peak_tflops(trainer, args)
        results = []
        for spec in args.variants:
            r = time_variant(trainer, stream, device, spec, args.warmup, args.steps, profile=not args.no_profile)
            r["samples_per_s"] = args.batch * acc.num_processes / r["step_s"]
            r["mfu"] = fps * args.batch / r["step_s"] / (peak[0] * 1e12)
            results.append(r)
        plugin = getattr(acc.state, "deepspeed_plugin", None)
        stage = plugin.deepspeed_config.get("zero_optimization", {}).get("stage") if plugin is not None else None
        for r in results:
            r["plan_gib"] = planned_memory_gib(cfg, acc.num_processes, stage, r["attention"])
        plan_gib = planned_memory_gib(cfg, acc.num_processes, stage)
        out = None
        if acc.is_main_process:
            out = report(args, cfg, trainer, results, fps, peak, plan_gib)
        acc.end_training()
    return out


if __name__ == "__main__":
    main()
