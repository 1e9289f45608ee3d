"""Turn a training checkpoint into an official-format model.pt / .safetensors (the library of `vggt-train export`).

The checkpoint is a checkpoint directory (runs/x/checkpoints/step_00001000) or a run's output_dir (its newest complete
checkpoint is used). DeepSpeed ZeRO-1/2/3 shards are consolidated to full fp32 weights; heads the run was
built without are filled from the run's starting checkpoint (model.checkpoint) when it had them, so the output
is a complete checkpoint the official code loads with strict=True.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

from vggt_train.model import VGGT, export_official, preset_config, read_state_dict
from vggt_train.model.vggt import build_head
from vggt_train.model.weights import compare_state_dict
from vggt_train.train import checkpoints, safe_load


def _resolve(path: Path) -> Path:
    if checkpoints.is_complete(path):
        return path
    latest = checkpoints.latest_complete(path)
    if latest is None:
        raise FileNotFoundError(f"{path} is neither a complete checkpoint directory (with {checkpoints.STATE_FILE}) "
                                f"nor a run directory holding one")
    return latest


def consolidated_state_dict(ckpt: Path) -> Dict[str, torch.Tensor]:
    """Full fp32 model weights of a checkpoint written by accelerate's save_state (DeepSpeed or not)."""

    ds_dirs = [p for p in ckpt.iterdir() if p.is_dir() and any(p.glob("*model_states.pt"))]
    if ds_dirs:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # DeepSpeed's consolidation uses torch.load(weights_only=False): check every shard first, then force the
        # loads to be weights-only with the small allow-list (safe_load), so no code from a shard ever runs
        safe_load.check_directory(ds_dirs[0])
        with safe_load.restricted_loads():
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=ds_dirs[0].name)
    elif (ckpt / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(ckpt / "model.safetensors"))
    elif (ckpt / "pytorch_model.bin").is_file():
        state = torch.load(str(ckpt / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no model weights found in {ckpt} (expected DeepSpeed shards or model.safetensors)")
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def export_checkpoint(checkpoint: str | Path, out: str | Path, fill_missing: bool = True) -> Path:
    """Consolidate `checkpoint` and write an official checkpoint to `out`; returns the written path."""

    ckpt = _resolve(Path(checkpoint))
    trainer_state = checkpoints.read_trainer_state(ckpt)
    model_cfg = trainer_state["config"]["model"]
    state = consolidated_state_dict(ckpt)
    config = preset_config(model_cfg["preset"])
    start = model_cfg.get("checkpoint")
    if fill_missing:
        if start and Path(start).is_file():
            for key, value in read_state_dict(start).items():
                state.setdefault(key, value)
        # a head no starting checkpoint had: the official code still needs every key to load strictly, so the
        # heads the run was built without get their (seeded) initialisation, untrained
        for head in model_cfg.get("disable_heads", []):
            if any(k.startswith(f"{head}.") for k in state):
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                module = build_head(config, head)
            if module is not None:
                print(f"note: {head} was not part of this run and no starting checkpoint has it: "
                      f"written with its initial (untrained) weights so the file loads strictly (--no-fill leaves it out)")
                state.update({f"{head}.{k}": v for k, v in module.state_dict().items()})
    else:
        for head in model_cfg.get("disable_heads", []):
            setattr(config, head, None)
    with torch.device("meta"):
        model = VGGT(config)
    report = compare_state_dict(model, state)
    if not report.ok:
        raise ValueError(f"checkpoint {ckpt} does not match the {model_cfg['preset']} architecture:\n{report.describe()}")
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    return export_official(model, out)
