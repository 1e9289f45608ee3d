"""Reading and writing VGGT checkpoints in the official format (.pt/.pth state dicts and .safetensors)."""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn as nn


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not match the model (strict loading)."""


@dataclass
class LoadReport:
    """What a load found: key names that are missing, unexpected, or of another shape ((key, file, model))."""

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        lines = []
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
                lines.append(f"{len(items)} {title} key(s): {shown}")
        if self.mismatched:
            shown = "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched[:limit])
            lines.append(f"{len(self.mismatched)} shape-mismatched key(s): {shown}")
        return "\n".join(lines) or "all keys match"


def _torch_load_kwargs() -> dict:
    params = inspect.signature(torch.load).parameters
    kwargs = {"map_location": "cpu"}
    if "weights_only" not in params:  # torch < 1.13 cannot refuse pickled code; we support >= 2.1 anyway
        raise RuntimeError("this torch cannot load checkpoints safely (no weights_only); upgrade to torch >= 2.1")
    kwargs["weights_only"] = True
    if "mmap" in params:  # torch >= 2.1: tensors stay on disk until touched, so a 1.2B model is not read twice
        kwargs["mmap"] = True
    return kwargs


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, never executing code from it.

    .safetensors is memory-mapped; .pt/.pth go through torch.load(weights_only=True, mmap=True) and may hold the
    state dict directly or under a "model" (or "state_dict") key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(str(path), **_torch_load_kwargs())
    except Exception as exc:  # pickle.UnpicklingError for code, RuntimeError for a corrupt zip, ...
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (nor one under 'model')")
    # checkpoints saved from DDP/compiled models carry wrapper prefixes
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def compare_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> LoadReport:
    """Key and shape differences between a model and a state dict."""
    expected = model.state_dict()
    report = LoadReport()
    report.missing = sorted(k for k in expected if k not in state)
    report.unexpected = sorted(k for k in state if k not in expected)
    report.mismatched = sorted(
        (k, tuple(state[k].shape), tuple(expected[k].shape)) for k in state if k in expected and state[k].shape != expected[k].shape
    )
    return report


def load_pretrained(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load official VGGT weights (.pt/.pth/.safetensors) into `model`.

    strict: any missing, unexpected or shape-mismatched key raises CheckpointMismatchError listing them by name.
    Non-strict: loads the matching keys and warns with the report. Returns the LoadReport.
    """
    state = read_state_dict(path)
    report = compare_state_dict(model, state)
    if not report.ok:
        message = f"checkpoint {path} does not match the model:\n{report.describe()}"
        if strict:
            raise CheckpointMismatchError(message)
        warnings.warn(message, stacklevel=2)
    bad = {k for k, _, _ in report.mismatched}
    usable = {k: v for k, v in state.items() if k not in bad and k not in report.unexpected}
    model.load_state_dict(usable, strict=False)
    return report


def export_official(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's weights as a checkpoint the official VGGT code loads (a plain state dict).

    `.safetensors` or `.pt`/`.pth` by suffix; tensors are saved contiguous on the CPU in their current dtype.
    Written to a temporary file and renamed, so a crash never leaves a truncated checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp))
    elif path.suffix in (".pt", ".pth"):
        torch.save(state, str(tmp))
    else:
        raise ValueError(f"export path must end in .pt, .pth or .safetensors, got {path.name}")
    os.replace(tmp, path)
    return path
