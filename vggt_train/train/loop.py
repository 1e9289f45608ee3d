"""The training loop: accelerate (+ DeepSpeed ZeRO) over VGGT, the official recipe, robust to bad steps and crashes.

Reads top to bottom like the recipe: set up the accelerator -> build model, optimiser, loss -> prepare ->
resume -> for each step: lr, micro-batches (forward, loss, backward), step, log, validate, checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Union

import torch
from tqdm.auto import tqdm

from vggt_train import kernels
from vggt_train.data.pipeline.batch import WorkerBatch
from vggt_train.data.pipeline.finish import finish_batch
from vggt_train.errors import TrainingError
from vggt_train.losses import MultitaskLoss, term_sample_counts
from vggt_train.model import VGGT, CheckpointMismatchError, load_pretrained, preset_config
from vggt_train.model.flops import training_flops_per_image
from vggt_train.model.hub import ResolvedCheckpoint, resolve_checkpoint
from vggt_train.train import checkpoints, clipping, compat
from vggt_train.train import data as train_data
from vggt_train.train import plan_memory, run_info, safe_load, trackers, val_metrics, visuals
from vggt_train.train.accelerator import build_accelerator
from vggt_train.train.config import TrainConfig, to_dict
from vggt_train.train.device import check_placement, resolve_device
from vggt_train.train.metrics import MetricsLog, device_peak_tflops
from vggt_train.train.optim import build_optimizer, clip_gradients, freeze_modules, lr_at, param_group_layout, set_lr

# Test hooks (never set them otherwise): simulate a crash after a step, a NaN loss on rank 0 at given steps, or
# weights turned non-finite after a step (what a checkpoint must then refuse to save).
_CRASH_AFTER_STEP = os.environ.get("VGGT_TRAIN_TEST_CRASH_AFTER_STEP")
_CORRUPT_AFTER_STEP = os.environ.get("VGGT_TRAIN_TEST_CORRUPT_WEIGHTS_AFTER_STEP")
_NAN_AT_STEPS = {int(s) for s in os.environ.get("VGGT_TRAIN_TEST_NAN_AT_STEPS", "").split(",") if s.strip()}
_COUNTED_TERMS = ("camera", "depth", "point")


@dataclass
class TrainerState:
    step: int = 0  # the next optimiser step to run
    skipped_steps: int = 0
    nonfinite_in_row: int = 0
    samples_seen: int = 0
    extra: Dict = field(default_factory=dict)


# -- set-up ---------------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, checkpoint: Optional[str] = None):
    """VGGT from the preset, the official weights (`checkpoint`: a local file, default model.checkpoint), frozen
    modules, checkpointing switch, heads dtype, compiled blocks."""

    config = preset_config(cfg.model.preset)
    for head in cfg.model.disable_heads:
        setattr(config, head, None)
    model = VGGT(config)
    checkpoint = checkpoint or cfg.model.checkpoint
    if checkpoint:
        try:
            load_pretrained(model, checkpoint, strict=cfg.model.strict_load, ignore_prefixes=tuple(f"{h}." for h in cfg.model.disable_heads))
        except (CheckpointMismatchError, ValueError, OSError) as exc:
            text = " ".join(str(exc).split())
            raise TrainingError(f"model.checkpoint: cannot load {checkpoint}: {text[:2000]}") from None
    model.gradient_checkpointing = cfg.model.gradient_checkpointing
    model.heads_autocast = cfg.model.heads_dtype == "bfloat16"
    if cfg.model.compile_blocks:
        model.aggregator.compile_blocks(cfg.model.compile_blocks)
    model.head_checkpointing = cfg.model.head_checkpointing
    model.head_chunk_frames = cfg.model.head_chunk_frames
    model.frozen_inference_mode = cfg.model.frozen_inference_mode
    freeze_modules(model, cfg.model.frozen)
    return model


def _autocast(device: torch.device, mixed_precision: str):
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(batch: Union[WorkerBatch, Dict], device: torch.device) -> Union[WorkerBatch, Dict]:
    """A stream's batch on the training device: a WorkerBatch moves itself, a finished dict tensor by tensor."""
    if isinstance(batch, WorkerBatch):
        return batch.to(device, non_blocking=True)
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _all_mean(accelerator, value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor (every rank holds the same shape); one collective for all loss terms."""
    value = value.detach().float().to(accelerator.device)
    return accelerator.reduce(value, reduction="mean") if accelerator.num_processes > 1 else value


def _any_rank(accelerator, flag: bool) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return bool(t.item() > 0)


def _local_weights(model) -> Iterator[torch.Tensor]:
    """The weight values this rank holds: under ZeRO-3 a parameter is an empty placeholder and its values are
    the real elements of this rank's partition (`ds_tensor`). A partition is padded to an equal size on every rank
    and the padding is never written (uninitialised memory, which may hold NaN), so it is left out."""
    dist = torch.distributed
    initialized = dist.is_available() and dist.is_initialized()
    for p in model.parameters():
        part = getattr(p, "ds_tensor", None)
        if part is None:
            yield p
            continue
        rank = dist.get_rank(group=getattr(p, "ds_process_group", None)) if initialized else 0  # its partition index
        size = part.numel()
        real = max(0, min(size, int(getattr(p, "ds_numel", size)) - rank * size))
        yield part.reshape(-1)[:real]


def _params_finite(model) -> bool:
    return all(bool(torch.isfinite(w).all()) for w in _local_weights(model))


# -- the loop -------------------------------------------------------------------------------------------------
class Trainer:
    """Owns the run: construction, the step, validation, checkpoints. `fit()` runs it to max_steps."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        # first of all: a run that asked for an NPU/GPU and cannot have one stops here, before any data is read
        self.device_choice = resolve_device(cfg.train.device)
        kernels.configure(cfg.kernels)
        if self.device_choice.type == "npu":
            # before any process group: HCCL communicators bind to the current card, and the ND-format/binary-kernel
            # options must hold before the first NPU tensor is made
            kernels.setup_npu()
        # a Hub repo id is downloaded (or found in the hub cache) before the data is opened: a typo fails fast
        self.checkpoint: Optional[ResolvedCheckpoint] = resolve_checkpoint(cfg.model.checkpoint) if cfg.model.checkpoint else None
        self.data = train_data.TrainData(cfg)  # opens the dataset: a bad data.path fails before any model is built
        self.accelerator = build_accelerator(cfg, self.data.nominal_samples_per_rank(), self.device_choice)
        acc = self.accelerator
        check_placement(self.device_choice, acc.device)
        plan_memory.refuse_unfit_plan(cfg, acc)  # a card too small fails here, not at the first step's OOM
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg, str(self.checkpoint.path) if self.checkpoint else None)
        self.loss_fn = MultitaskLoss(**{k: v for k, v in vars(cfg.loss).items()})
        # on the accelerator first: the kernel registry picks AdamW by parameter device; under DeepSpeed it must
        # not pick one that keeps gradient buffers (DeepSpeed rebinds its partitions' .grad every step)
        optimizer = build_optimizer(self.model, cfg.optim, device=acc.device,
                                    sharded=getattr(acc.state, "deepspeed_plugin", None) is not None)
        self.deepspeed = getattr(acc.state, "deepspeed_plugin", None) is not None
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        # under DeepSpeed, per-group clipping hooks into its ZeRO optimizer (fails clearly where it cannot)
        self.clipper = clipping.install(self.model, cfg.optim.clip_groups) if self.deepspeed and cfg.optim.clip_mode == "per_group" else None
        if self.deepspeed:  # a step the trainer found non-finite is skipped by every DeepSpeed release (see compat)
            compat.arm_nonfinite_skip(self.model.optimizer)
        self.state = TrainerState()
        self.log = MetricsLog(cfg.output_dir, enabled=acc.is_main_process)
        self.resumed_from: Optional[str] = None
        self._flops_cache: Dict[tuple, float] = {}
        self.peak_tflops = cfg.train.peak_tflops or device_peak_tflops(acc.device)

    # -- resume / checkpoint ----------------------------------------------------------------------------------
    def maybe_resume(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        if cfg.resume is None:
            return
        path = checkpoints.latest_complete(cfg.output_dir) if cfg.resume == "auto" else checkpoints.Path(cfg.resume)
        if path is None:
            acc.print(f"[train] resume=auto: no complete checkpoint under {checkpoints.checkpoint_root(cfg.output_dir)}; starting fresh")
            return
        saved = checkpoints.read_trainer_state(path)
        if self.deepspeed and saved.get("world_size", acc.num_processes) != acc.num_processes:
            raise TrainingError(f"{path} was written by {saved['world_size']} processes and this run has "
                                f"{acc.num_processes}: DeepSpeed's sharded optimizer state cannot be re-split. Keep the "
                                f"process count, or start a new run from the weights: vggt-train export {path} "
                                f"model.safetensors, then model.checkpoint=model.safetensors (the optimizer restarts)")
        layout, saved_layout = param_group_layout(cfg.optim, self.deepspeed), saved.get("param_groups", "by decay")
        if layout != saved_layout:  # checkpoints from before per-group clipping under DeepSpeed split by decay only
            raise TrainingError(f"{path} holds an optimizer whose param groups are split {saved_layout}, and this run "
                                f"splits them {layout} (optim.clip_mode=per_group under DeepSpeed splits them by clip "
                                f"group): the optimizer state cannot be loaded. Resume with the optim.clip_mode and "
                                f"optim.clip_groups it was saved with (global clips all gradients together), or start a new "
                                f"run from the weights: vggt-train export {path} model.safetensors, then "
                                f"model.checkpoint=model.safetensors (the optimizer restarts)")
        try:  # tensors only: every pickle is checked before anything loads, and each load is weights-only
            safe_load.check_directory(path)
            with safe_load.restricted_loads():
                acc.load_state(str(path))
        except safe_load.UnsafeCheckpointError as exc:
            raise TrainingError(str(exc)) from None
        self.state = TrainerState(**{k: saved[k] for k in ("step", "skipped_steps", "nonfinite_in_row", "samples_seen")})
        self.data.load_state_dict(saved.get("data", {}))
        self.log.truncate_after(self.state.step)
        self.resumed_from = f"{path} (step {self.state.step})"
        acc.print(f"[train] resumed from {path} at step {self.state.step}")

    def save_checkpoint(self) -> None:
        acc, cfg, step = self.accelerator, self.cfg, self.state.step
        if _any_rank(acc, not _params_finite(self.model)):
            raise TrainingError(f"refusing to write the checkpoint of step {step}: the model has non-finite weights")
        tmp, final = checkpoints.temporary_dir(cfg.output_dir, step), checkpoints.step_dir(cfg.output_dir, step)
        if acc.is_main_process:
            checkpoints.shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {**vars(self.state), "data": self.data.state_dict(), "config": to_dict(cfg), "world_size": acc.num_processes,
                     "param_groups": param_group_layout(cfg.optim, self.deepspeed), "time": time.time()}
            checkpoints.finalize(tmp, final, state)
            checkpoints.prune(cfg.output_dir, cfg.train.keep_last)
        acc.wait_for_everyone()

    # -- one step ---------------------------------------------------------------------------------------------
    def _forward_loss(self, batch: Dict) -> Dict[str, torch.Tensor]:
        with _autocast(self.accelerator.device, self.cfg.train.mixed_precision):
            preds = self.model(batch["images"], query_points=batch.get("query_points"))
        return self.loss_fn(preds, batch)

    def train_step(self, stream: Iterator[Dict]) -> Dict[str, float]:
        acc, cfg = self.accelerator, self.cfg
        lr = lr_at(self.state.step, cfg.train.max_steps, cfg.optim)
        set_lr(self.optimizer, lr)
        self.model.train()
        terms: Dict[str, float] = {}
        data_time = 0.0
        skipped = False
        samples = images = replaced = 0
        supervised = dict.fromkeys(_COUNTED_TERMS, 0)  # samples each loss term saw (camera-only data: camera only)
        start = time.perf_counter()
        accum = cfg.train.grad_accum_steps
        for micro in range(accum):
            t0 = time.perf_counter()
            batch = finish_batch(_to_device(next(stream), acc.device))  # the recipe's float part, on the device
            data_time += time.perf_counter() - t0
            replaced += self.data.replaced_samples(batch)
            for term, n in term_sample_counts(batch).items():
                supervised[term] += n
            B, S = batch["images"].shape[:2]
            samples += B
            images += B * S
            # accumulate() decides the boundary: DDP skips the all-reduce and DeepSpeed the step until the last
            # micro-batch; accelerate divides the loss by the accumulation steps (DeepSpeed does it itself)
            with acc.accumulate(self.model):
                losses = self._forward_loss(batch)
                if self.state.step + 1 in _NAN_AT_STEPS and acc.is_main_process:
                    losses["objective"] = losses["objective"] * float("nan")
                objective = losses["objective"]
                if _any_rank(acc, not bool(torch.isfinite(objective))):
                    skipped = True
                if self.deepspeed:
                    # a NaN gradient makes DeepSpeed's overflow check drop the step on every rank together with
                    # the gradients accumulated so far: how a non-finite micro-batch skips the whole step (the flag
                    # does the same where DeepSpeed checks only fp16 steps)
                    compat.flag_nonfinite_step(self.model.optimizer, skipped)
                    acc.backward(objective * float("nan") if skipped else objective)
                elif not skipped:
                    acc.backward(objective)
            names = sorted(losses)
            means = _all_mean(acc, torch.stack([losses[k].detach().float() for k in names]))
            for k, v in zip(names, means.tolist()):
                terms[k] = terms.get(k, 0.0) + v / accum
        grad_norm = float("nan")
        group_norms: Dict[str, float] = {}  # pre-clip norm of each clip group (per_group clipping)
        if self.deepspeed:
            engine = self.model
            applied = engine.was_step_applied() if hasattr(engine, "was_step_applied") else True
            skipped = skipped or not applied
            norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
            grad_norm = float(norm) if norm is not None else float("nan")
            if self.clipper is not None:
                if not skipped:
                    self.clipper.check_step()
                group_norms = self.clipper.take_norms()
            if skipped and not _params_finite(self.model):
                import deepspeed

                raise TrainingError(f"DeepSpeed {deepspeed.__version__} applied a non-finite update although the step "
                                    f"was to be skipped; the weights are lost from here: resume from the last checkpoint")
        else:
            if not skipped:
                norms = clip_gradients(acc.unwrap_model(self.model), cfg.optim)
                grad_norm = norms["total"]
                group_norms = {k: v for k, v in norms.items() if k != "total"}
                skipped = _any_rank(acc, not math.isfinite(grad_norm))
            if not skipped:
                self.optimizer.step()
            kernels.zero_grad(self.optimizer)  # set_to_none except for torch_npu's fused optimisers, which reject it
        step_time = time.perf_counter() - start
        global_samples = samples * acc.num_processes
        self.state.samples_seen += global_samples
        if skipped:
            self.state.skipped_steps += 1
            self.state.nonfinite_in_row += 1
            if self.state.nonfinite_in_row >= cfg.train.max_nonfinite_in_row:
                raise TrainingError(f"{self.state.nonfinite_in_row} steps in a row had a non-finite loss or gradient "
                                    f"(last at step {self.state.step}); stopping. The last good checkpoint is kept.")
        else:
            self.state.nonfinite_in_row = 0
        record = {"step": self.state.step + 1, "split": "train", "loss": terms.get("objective", float("nan")), **terms,
                  "lr": lr, "grad_norm": grad_norm, "skipped": skipped, "data_time": data_time, "step_time": step_time,
                  "samples_per_s": global_samples / step_time, "images_per_s": images * acc.num_processes / step_time,
                  "num_images": int(S), "samples": global_samples, "epoch": self.data.epoch(self.state.samples_seen)}
        counts = _all_mean(acc, torch.tensor([float(replaced)] + [float(supervised[t]) for t in _COUNTED_TERMS]))
        totals = [round(float(c) * acc.num_processes) for c in counts]  # the mean over ranks times their number
        record["replaced_samples"] = totals[0]
        record.update({f"samples_{t}": n for t, n in zip(_COUNTED_TERMS, totals[1:]) if getattr(self.loss_fn, t) is not None})
        if not skipped:
            record.update({f"grad_norm_{k}": v for k, v in group_norms.items()})
        mfu = self._mfu(int(S), batch["images"].shape[-2:], images * acc.num_processes / step_time / acc.num_processes)
        if mfu is not None:
            record["mfu"] = mfu
        record["peak_mem_gib"] = self._peak_memory_gib()
        return record

    def _peak_memory_gib(self) -> float:
        """Peak memory of the most loaded rank: device memory on GPU/NPU, process RSS on the CPU."""
        dev = self.accelerator.device
        if dev.type == "cuda":
            local = torch.cuda.max_memory_allocated(dev)
        elif dev.type == "npu":
            local = torch.npu.max_memory_allocated(dev)
        else:
            local = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        value = torch.tensor([local / 2**30], device=dev, dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)  # accelerate.reduce has no "max"
        return float(value)

    def _mfu(self, S: int, hw, images_per_s_per_device: float) -> Optional[float]:
        if not self.peak_tflops:
            return None
        key = (S, int(hw[0]), int(hw[1]))
        if key not in self._flops_cache:
            with torch.device("meta"):
                meta = VGGT(self.accelerator.unwrap_model(self.model).config)
            frozen = not any(p.requires_grad for p in self.accelerator.unwrap_model(self.model).aggregator.parameters())
            self._flops_cache[key] = training_flops_per_image(meta, S, key[1], key[2], frozen_aggregator=frozen)
        return self._flops_cache[key] * images_per_s_per_device / (self.peak_tflops * 1e12)

    # -- validation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> Optional[Dict[str, float]]:
        """Losses and metrics over the fixed validation draw (val_metrics.py), the same on any number of processes;
        the trackers get the image of its first sample (visuals.py)."""
        acc = self.accelerator
        draw = self.data.val_draw(acc.process_index, acc.num_processes)
        if draw is None:
            return None
        self.model.eval()
        records, grid = [], None
        for index, batch, counted in draw:
            batch = finish_batch(_to_device(batch, acc.device))
            with _autocast(acc.device, self.cfg.train.mixed_precision):
                preds = self.model(batch["images"])
            if not counted:  # a repeat, run only so that every rank runs the same forwards
                continue
            records.append(val_metrics.score_item(index, self.loss_fn, preds, batch, self.data.val_sources))
            if index == 0 and trackers.wants_images(acc):
                grid = visuals.sample_grid(batch, preds)
        self.model.train()
        out = val_metrics.merge(val_metrics.gather(acc, records), self.data.val_sources)
        if grid is not None:
            trackers.log_image(acc, "val/sample", grid, self.state.step)
        if out is None:
            return None
        return {"step": self.state.step, "split": "val", "loss": out.get("objective", float("nan")), **out}

    # -- driver -----------------------------------------------------------------------------------------------
    def announce(self) -> dict:
        """The start-up banner on rank 0 (stdout), run_info.json and the trackers' hparams (+ TensorBoard's text);
        returns the facts."""
        acc = self.accelerator
        warned = run_info.device_warnings(self.device_choice.type, self.cfg.train.device, self.cfg.model.preset)
        info = run_info.collect(self, self.checkpoint.describe() if self.checkpoint else None, self.resumed_from, warned)
        if acc.is_main_process:
            banner = run_info.format_banner(info)
            print(banner, flush=True)
            for text in info["warnings"]:
                warnings.warn(text, stacklevel=2)
            run_info.write_json(info, self.cfg.output_dir)
            trackers.start(acc, run_info.flat_hparams(info, to_dict(self.cfg)), banner)
        return info

    def fit(self) -> TrainerState:
        acc, cfg = self.accelerator, self.cfg
        self.maybe_resume()
        self.announce()
        stream = self.data.train_stream(acc.process_index, acc.num_processes, start_step=self.state.step)
        progress = None
        if acc.is_main_process and cfg.train.progress:
            # redraw often on a terminal; in a log file (no TTY) a line every 30 s is enough
            interactive = sys.stderr.isatty()
            progress = tqdm(total=cfg.train.max_steps, initial=self.state.step, desc="train", unit="step", dynamic_ncols=True,
                            mininterval=0.1 if interactive else 30.0)
        try:
            while self.state.step < cfg.train.max_steps:
                record = self.train_step(stream)  # its "step" is the number of steps completed with it
                self.state.step += 1
                self.data.advance(self.state.step)
                if progress is not None:
                    # refresh=False: the bar redraws on update() at most every mininterval (30 s in a log file)
                    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", sps=f"{record['samples_per_s']:.1f}", refresh=False)
                    progress.update(1)
                if self.state.step % cfg.train.log_every == 0 or self.state.step == cfg.train.max_steps or record["skipped"]:
                    self.log.write(record)
                    acc.log({f"train/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=record["step"])
                if cfg.train.val_every and self.state.step % cfg.train.val_every == 0:
                    val = self.validate()
                    if val is not None:
                        self.log.write(val)
                        acc.log({f"val/{k}": v for k, v in val.items() if isinstance(v, (int, float)) and k != "step"}, step=val["step"])
                if _CORRUPT_AFTER_STEP and self.state.step == int(_CORRUPT_AFTER_STEP):
                    with torch.no_grad():
                        next(iter(acc.unwrap_model(self.model).camera_head.parameters())).fill_(float("nan"))
                if cfg.train.ckpt_every and (self.state.step % cfg.train.ckpt_every == 0 or self.state.step == cfg.train.max_steps):
                    self.save_checkpoint()
                if _CRASH_AFTER_STEP and self.state.step == int(_CRASH_AFTER_STEP):
                    os._exit(3)
        finally:
            if progress is not None:
                progress.close()
            acc.end_training()
        return self.state
