"""The start-up banner: where a run trains, on what, with what; printed by rank 0, kept as run_info.json.

One block before the first step, so that a log says in its first lines whether the run is the one that was
meant: device type and count, accelerate's distributed type, world size and nodes, ZeRO stage (or DDP / none),
precision, trainable and frozen parameters per top-level module, the kernel backend per op, the data, the global
batch and the starting weights. The same facts go to `<output_dir>/run_info.json` and to TensorBoard.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from vggt_train import kernels
from vggt_train.train.mix_config import entry_name

LARGE_ON_CPU = {"vggt_1b"}  # presets that take hours a step on a CPU: `auto` landing there gets a loud warning


def device_warnings(device_type: str, requested: str, preset: str) -> List[str]:
    """What the banner must shout about: a large preset that train.device=auto put on the CPU."""
    if device_type == "cpu" and requested == "auto" and preset in LARGE_ON_CPU:
        return [f"train.device=auto found no NPU or GPU: training {preset} on the CPU will take hours a step. "
                f"Set train.device=accelerator to refuse that, or train.device=cpu to mean it"]
    return []


def parameter_table(model: torch.nn.Module) -> Dict[str, Dict[str, int]]:
    """{top-level module: {"trainable": n, "frozen": n}} in registration order (ZeRO-3 placeholders counted by
    their full size, `ds_numel`)."""
    table: Dict[str, Dict[str, int]] = {}
    for name, param in model.named_parameters():
        row = table.setdefault(name.split(".")[0], {"trainable": 0, "frozen": 0})
        row["trainable" if param.requires_grad else "frozen"] += int(getattr(param, "ds_numel", param.numel()))
    return table


def distributed_strategy(accelerator) -> str:
    """"DeepSpeed ZeRO-<stage>[, offload ...]", "DDP" or "none" for this accelerator."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        zero = plugin.deepspeed_config.get("zero_optimization", {}) or {}
        text = f"DeepSpeed ZeRO-{zero.get('stage', 0)}"
        offload = [what for what in ("optimizer", "param") if (zero.get(f"offload_{what}") or {}).get("device") not in (None, "none")]
        return text + (f", offload {'+'.join(offload)}" if offload else "")
    return "DDP" if accelerator.num_processes > 1 else "none"


def _precision(cfg, model) -> str:
    """What the step computes in: autocast or not, the weights' dtype as the model holds them, the heads' dtype."""
    if next(model.parameters()).dtype == torch.bfloat16:  # DeepSpeed's bf16 mode cast the model
        text = "DeepSpeed bf16: bfloat16 weights and gradients, float32 master weights in the optimizer"
    elif cfg.train.mixed_precision != "no":
        text = f"{cfg.train.mixed_precision} autocast, float32 weights and optimizer state"
    else:
        text = "float32"
    if cfg.model.heads_dtype != "float32":
        text += f", heads in {cfg.model.heads_dtype}"
    return text + (f", aggregator blocks compiled ({cfg.model.compile_blocks})" if cfg.model.compile_blocks else "")


def collect(trainer, checkpoint: Optional[str], resumed_from: Optional[str], warnings_: List[str]) -> Dict[str, Any]:
    """The run's facts as plain JSON data (see the module docstring)."""
    cfg, acc, choice = trainer.cfg, trainer.accelerator, trainer.device_choice
    world = acc.num_processes
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
    model = acc.unwrap_model(trainer.model)
    params = parameter_table(model)
    data = trainer.data
    train_info = data.train_set.index_info()
    d = cfg.data
    s_min, s_max = d.img_nums
    batch = {f"S={s}": data.planner.global_samples(s, world, cfg.train.grad_accum_steps) for s in sorted({s_min, s_max})}
    info = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": socket.gethostname(),
        "device": {"type": choice.type, "requested": cfg.train.device, "per_node": choice.local_count if choice.type != "cpu" else 1,
                   "this_rank": str(acc.device)},
        "distributed": {"accelerate": str(acc.distributed_type).split(".")[-1], "world_size": world,
                        "nodes": max(1, world // max(1, local_world)), "strategy": distributed_strategy(acc)},
        "precision": _precision(cfg, model),
        "torch": torch.__version__,
        "parameters": params,
        "kernels": {op: kernels.selected(op, choice.type) for op in kernels.OPS},
        "data": {"path": d.path if not d.mix else "mixture of " + ", ".join(f"{entry_name(e)} x{e.weight:g} ({e.path})" for e in d.mix),
                 "split": d.train_split, "sequences": len(train_info.sequences),
                 "frames": int(sum(train_info.num_frames)), "categories": list(d.categories) or "all",
                 "img_size": d.img_size, "img_nums": list(d.img_nums), "resample_on": data.resample,
                 "val_split": d.val_split if data.val_set is not None else None,
                 "val_sequences": len(data.val_set.index_info().sequences) if data.val_set is not None else 0},
        "global_batch": {"samples_per_step": batch, "max_img_per_gpu": d.max_img_per_gpu,
                         "grad_accum_steps": cfg.train.grad_accum_steps},
        "model": {"preset": cfg.model.preset, "checkpoint": checkpoint or "none: random initialisation",
                  "frozen": list(cfg.model.frozen), "disabled_heads": list(cfg.model.disable_heads)},
        "resumed_from": resumed_from,
        "output_dir": str(Path(cfg.output_dir).resolve()),
        "warnings": warnings_,
    }
    return info


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_banner(info: Dict[str, Any]) -> str:
    """The banner's text: one block of `key: value` lines, warnings last and loud."""
    dev, dist, data, m = info["device"], info["distributed"], info["data"], info["model"]
    if dev["type"] == "cpu":
        device = "cpu" + (f" ({dist['world_size']} processes)" if dist["world_size"] > 1 else "")
    else:
        device = f"{dev['type']} x{dist['world_size']}"
    params = ", ".join(f"{name} {_count(row['trainable'])} trainable" + (f" / {_count(row['frozen'])} frozen" if row["frozen"] else "")
                       for name, row in info["parameters"].items())
    batch = ", ".join(f"{k}: {v} samples" for k, v in info["global_batch"]["samples_per_step"].items())
    lines = [
        "=" * 100,
        f"vggt-train run on {info['host']} at {info['time']}",
        f"  device       {device} (train.device={dev['requested']}; this rank on {dev['this_rank']})",
        f"  distributed  accelerate {dist['accelerate']}, world size {dist['world_size']} on {dist['nodes']} node(s), {dist['strategy']}",
        f"  precision    {info['precision']} (torch {info['torch']})",
        f"  parameters   {params}",
        "  kernels      " + ", ".join(f"{op}={backend}" for op, backend in info["kernels"].items()),
        f"  data         {data['path']} split {data['split']}: {data['sequences']} sequences, {data['frames']} frames"
        f" (categories: {data['categories'] if isinstance(data['categories'], str) else ','.join(data['categories'])});"
        f" validation: {data['val_split'] + ' (' + str(data['val_sequences']) + ' sequences)' if data['val_split'] else 'none'}",
        f"  batch        {batch} per step (max_img_per_gpu {info['global_batch']['max_img_per_gpu']}, "
        f"grad_accum_steps {info['global_batch']['grad_accum_steps']}); {data['img_size']} px, {data['img_nums'][0]}-{data['img_nums'][1]} views",
        f"  model        {m['preset']} from {m['checkpoint']}" + (f"; frozen {','.join(m['frozen'])}" if m["frozen"] else ""),
    ]
    if info.get("resumed_from"):
        lines.append(f"  resumed      {info['resumed_from']}")
    lines.append(f"  output       {info['output_dir']}")
    for text in info.get("warnings", []):
        lines.append(f"  WARNING      {text}")
    lines.append("=" * 100)
    return "\n".join(lines)


def write_json(info: Dict[str, Any], output_dir: str) -> Path:
    """<output_dir>/run_info.json (replaced atomically)."""
    path = Path(output_dir) / "run_info.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def flat_hparams(info: Dict[str, Any], config: Dict[str, Any]) -> Dict[str, Any]:
    """Scalars for TensorBoard's hparams: the config and the run facts flattened to `a/b` keys, lists as text."""
    out: Dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        elif value is None:
            out[prefix] = "none"
        else:
            out[prefix] = json.dumps(value, default=str)

    walk("config", config)
    walk("run", {k: v for k, v in info.items() if k not in ("parameters", "warnings", "time")})
    return out
