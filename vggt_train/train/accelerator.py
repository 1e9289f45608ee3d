"""The accelerate Accelerator of a run: process group backend, DeepSpeed plugin and its config filled from ours."""

from __future__ import annotations

import datetime
import os
from typing import Optional

import torch

from vggt_train import kernels
from vggt_train.errors import TrainingError
from vggt_train.train import paths, trackers
from vggt_train.train.config import TrainConfig
from vggt_train.train.device import DeviceChoice, resolve_device


def _process_group_backend(device_type: Optional[str] = None) -> str:
    """The torch.distributed backend for this device type (default: the one train.device=auto picks here)."""
    device_type = device_type or resolve_device("auto").type
    return {"cuda": "nccl", "npu": kernels.HCCL_BACKEND}.get(device_type, "gloo")  # CPU: not an accelerator's


def _torch_release() -> tuple:
    return tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])


def build_accelerator(cfg: TrainConfig, samples_per_rank_nominal: int, device: Optional[DeviceChoice] = None):
    """An Accelerator on `device` (default: train.device resolved here) whose DeepSpeed config (when launched with
    one) is filled from our config."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    device = device or resolve_device(cfg.train.device)
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would otherwise take a GPU it finds
        from vggt_train.train import compat

        compat.ensure_cpu_set_device()  # accelerate calls torch.cpu.set_device, which torch 2.1 lacks
    try:  # accelerate launch passes its config's deepspeed_config_file relative to where it was started
        paths.resolve_env_file("ACCELERATE_DEEPSPEED_CONFIG_FILE", "the accelerate config's deepspeed_config_file")
    except FileNotFoundError as exc:
        raise TrainingError(f"{exc}; give an absolute path or launch from the repository root") from None
    handlers = []
    if "RANK" in os.environ or "LOCAL_RANK" in os.environ:  # started by a launcher: a process group is wanted
        handlers.append(InitProcessGroupKwargs(backend=_process_group_backend(device.type), timeout=datetime.timedelta(minutes=60)))
    plugin_kwargs = {}
    if cfg.deepspeed and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true":
        # started by the deepspeed launcher rather than accelerate launch: bring our own plugin
        from accelerate.utils import DeepSpeedPlugin

        plugin_kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=cfg.deepspeed)
    accelerator = Accelerator(
        **plugin_kwargs,
        # without an accelerator, accelerate sets up multi-process DDP (gloo) only when told it runs on the CPU;
        # under DeepSpeed that flag would replace DeepSpeed by DDP
        cpu=device.type == "cpu" and not plugin_kwargs and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true",
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        mixed_precision="no",  # we autocast ourselves so the heads can stay in float32 with fp32 master weights
        log_with=trackers.accelerate_log_with(cfg.train.log_with, cfg.output_dir),
        project_dir=cfg.output_dir,
        kwargs_handlers=handlers,
    )
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and accelerator.distributed_type == DistributedType.NO:
        raise TrainingError(f"started as one of WORLD_SIZE={world} processes, but accelerate set up no distributed "
                            f"training (distributed_type={accelerator.distributed_type}): each process would train its "
                            f"own copy. Launch with accelerate launch and a config from accelerate_configs/, or torchrun "
                            f"on a machine with GPUs/NPUs")
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if cfg.train.deepspeed_bf16 and plugin is None:
        raise TrainingError("train.deepspeed_bf16=true is DeepSpeed's bf16 mode: launch with DeepSpeed (accelerate launch "
                            "with a config from accelerate_configs/ naming a ds_configs/ file), or set it to false")
    if cfg.train.deepspeed_bf16 and device.type == "cpu" and _torch_release() < (2, 2):
        # measured: torch 2.1.2's gloo fails DeepSpeed's first broadcast of bf16 weights ("Invalid scalar type")
        raise TrainingError(f"train.deepspeed_bf16=true on the CPU needs torch >= 2.2: the gloo backend of torch "
                            f"{torch.__version__} cannot send bfloat16 tensors (NCCL and HCCL can)")
    stage = plugin.deepspeed_config.get("zero_optimization", {}).get("stage") if plugin is not None else None
    if cfg.model.frozen_inference_mode and stage == 3 and _torch_release() < (2, 2):
        # measured on torch 2.1.2: ZeRO-3 gathers the frozen weights inside inference mode, then updates them in
        # place outside it, which that torch refuses ("Inplace update to inference tensor outside InferenceMode")
        raise TrainingError(f"model.frozen_inference_mode=true under ZeRO-3 needs torch >= 2.2 (here {torch.__version__}): "
                            f"set it to false (the frozen aggregator then runs under torch.no_grad) or use ZeRO-1/2")
    if plugin is not None:
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = samples_per_rank_nominal
        ds["gradient_accumulation_steps"] = cfg.train.grad_accum_steps
        ds["train_batch_size"] = samples_per_rank_nominal * cfg.train.grad_accum_steps * accelerator.num_processes
        # per_group: DeepSpeed clips nothing itself, clipping.install() clips each group inside its step
        ds["gradient_clipping"] = min(cfg.optim.clip_groups.values()) if cfg.optim.clip_groups and cfg.optim.clip_mode == "global" else 0.0
        # train.deepspeed_bf16: DeepSpeed casts the model to bf16 and its optimizer keeps float32 master weights;
        # otherwise it must not cast the model: weights stay fp32, activations go bf16 through autocast
        ds.setdefault("bf16", {})["enabled"] = cfg.train.deepspeed_bf16
        ds.setdefault("fp16", {})["enabled"] = False
        ds.setdefault("steps_per_print", 10**9)
        plugin.gradient_accumulation_steps = cfg.train.grad_accum_steps
        from vggt_train.train import compat  # an older torch's gloo lacks collectives ZeRO uses: built from others

        problem = compat.deepspeed_accumulation_problem(cfg.train.grad_accum_steps)
        if problem:
            raise TrainingError(problem)
        compat.fit_deepspeed_to_gloo()
    return accelerator
