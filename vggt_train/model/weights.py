"""Reading and writing VGGT checkpoints in the official format (.pt/.pth state dicts and .safetensors)."""

from __future__ import annotations

import inspect
import json
import os
import struct
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


def _torch_load(path: Path, kwargs: dict):
    try:
        return torch.load(str(path), **kwargs)
    except RuntimeError as exc:
        # files written with the pre-1.6 (non-zip) serialisation cannot be memory-mapped; they still load,
        # just without mmap (and are not the format the official checkpoint uses)
        if not kwargs.get("mmap") or "mmap" not in str(exc):
            raise
        return torch.load(str(path), **{k: v for k, v in kwargs.items() if k != "mmap"})


def _unwrap(obj, path: Path) -> Dict[str, torch.Tensor]:
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


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


_SAFETENSORS_ITEMSIZE = {name: torch.empty(0, dtype=dtype).element_size() for name, dtype in _SAFETENSORS_DTYPES.items()}


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _validate_safetensors_header(path: Path, header, data_size: int) -> Dict[str, dict]:
    """Check a parsed safetensors header completely before anything is allocated from it.

    Every tensor needs a known dtype, a shape of non-negative ints and data_offsets [begin, end] inside the data
    section whose length is exactly dtype size x number of elements; no two tensors may share bytes. Any
    violation is a ValueError naming the file and the tensor. Returns {name: entry} without "__metadata__".
    """
    def bad(what: str):
        return ValueError(f"cannot read checkpoint {path}: {what}")

    if not isinstance(header, dict):
        raise bad(f"the safetensors header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise bad("the safetensors __metadata__ is not an object of strings")
    entries = {k: e for k, e in header.items() if k != "__metadata__"}
    spans = []
    for name, e in entries.items():
        if not isinstance(e, dict):
            raise bad(f"tensor {name!r} is described by a JSON {type(e).__name__}, not an object")
        dtype, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if dtype not in _SAFETENSORS_DTYPES:
            raise bad(f"tensor {name!r} has an unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(_is_index(d) for d in shape)):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r} (need a list of non-negative ints)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_index(o) for o in offsets)):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r} (need [begin, end], non-negative ints)")
        begin, end = offsets
        if begin > end or end > data_size:
            raise bad(f"tensor {name!r} has data_offsets [{begin}, {end}] outside the {data_size}-byte data section (truncated file?)"
                      if begin <= end else f"tensor {name!r} has data_offsets [{begin}, {end}] with begin after end")
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * _SAFETENSORS_ITEMSIZE[dtype]:
            raise bad(f"tensor {name!r} declares shape {shape} of {dtype} ({numel * _SAFETENSORS_ITEMSIZE[dtype]} bytes) "
                      f"but data_offsets [{begin}, {end}] hold {end - begin} bytes")
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise bad(f"tensors {n0!r} and {n1!r} overlap (data_offsets [{b0}, {e0}] and [{b1}, {e1}])")
    return entries


class _SafetensorsFile:
    """Reads tensors of a .safetensors file straight into caller memory (no mmap, no intermediate copy).

    The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
    then the raw little-endian data. Reading with readinto() keeps the process's memory at one model copy.
    """

    MAX_HEADER = 100 * 2**20

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"cannot read checkpoint {path}: file too short for a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > self.MAX_HEADER:
                raise ValueError(f"cannot read checkpoint {path}: implausible safetensors header size {n}")
            if 8 + n > size:
                raise ValueError(f"cannot read checkpoint {path}: safetensors header of {n} bytes lies past the end of the {size}-byte file (truncated file?)")
            try:
                header = json.loads(f.read(n), object_pairs_hook=_no_duplicate_keys)
            except ValueError as exc:
                raise ValueError(f"cannot read checkpoint {path}: corrupt safetensors header ({exc})") from None
        self.data_start = 8 + n
        self.entries = _validate_safetensors_header(path, header, size - self.data_start)
        self.shapes = {k: tuple(e["shape"]) for k, e in self.entries.items()}

    def read_into(self, key: str, target: torch.Tensor) -> None:
        e = self.entries[key]
        start, end = e["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[e["dtype"]]
        direct = target.dtype == dtype and target.is_contiguous() and target.device.type == "cpu"
        buf = target if direct else torch.empty(tuple(e["shape"]), dtype=dtype)
        # reshape(-1) first: a 0-d tensor cannot be viewed as bytes (view(uint8) needs a dimension to widen)
        view = memoryview(buf.reshape(-1).view(torch.uint8).numpy() if buf.numel() else bytearray())
        with self.path.open("rb") as f:
            f.seek(self.data_start + start)
            if f.readinto(view) != end - start:
                raise ValueError(f"cannot read checkpoint {self.path}: tensor {key} is truncated")
        if not direct:
            target.copy_(buf)

    def get(self, key: str) -> torch.Tensor:
        e = self.entries[key]
        out = torch.empty(tuple(e["shape"]), dtype=_SAFETENSORS_DTYPES[e["dtype"]])
        self.read_into(key, out)
        return out


class _CheckpointReader:
    """Key -> tensor access to a checkpoint without materialising all of it at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.path}")
        if self.path.suffix == ".safetensors":
            self._st = _SafetensorsFile(self.path)
            self._tensors = None
            self.shapes = self._st.shapes
        else:
            kwargs = _torch_load_kwargs()  # outside the try: an unsafe torch is not a bad checkpoint
            try:
                obj = _torch_load(self.path, kwargs)
            except Exception as exc:  # pickle.UnpicklingError for code, RuntimeError for a corrupt zip, ...
                raise ValueError(f"cannot read checkpoint {self.path}: {exc}") from exc
            self._tensors = _unwrap(obj, self.path)
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._st.get(key) if self._tensors is None else self._tensors[key]

    def read_into(self, key: str, target: torch.Tensor) -> None:
        if self._tensors is None:
            self._st.read_into(key, target)
        else:
            target.copy_(self._tensors[key])


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, never executing code from it.

    .safetensors is parsed here (header, then each tensor read into its own buffer); .pt/.pth go through
    torch.load(weights_only=True, mmap=True) and may hold the state dict directly or under a "model" (or
    "state_dict") key.
    """
    reader = _CheckpointReader(path)
    return {k: reader.get(k) for k in reader.shapes}


def compare_state_dict(model: nn.Module, state: Dict[str, torch.Tensor] | Dict[str, tuple]) -> LoadReport:
    """Key and shape differences between a model and a state dict (or a dict of key -> shape)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state.items()}
    report = LoadReport()
    report.missing = sorted(k for k in expected if k not in found)
    report.unexpected = sorted(k for k in found if k not in expected)
    report.mismatched = sorted((k, found[k], expected[k]) for k in found if k in expected and found[k] != expected[k])
    return report


def load_pretrained(model: nn.Module, path: str | os.PathLike, strict: bool = True, ignore_prefixes: tuple = ()) -> LoadReport:
    """Load official VGGT weights (.pt/.pth/.safetensors) into `model`.

    strict: any missing, unexpected or shape-mismatched key raises CheckpointMismatchError listing them by name,
    and nothing is loaded. Non-strict: loads the matching keys and warns with the report. Returns the LoadReport.
    ignore_prefixes: checkpoint keys under these prefixes are skipped silently (e.g. "track_head." when the
    model was built without its track head).
    Tensors are read one at a time straight into the parameters (safetensors) or copied from a memory-mapped
    .pt (or assigned, for a model built on the meta device), so a 1.2B checkpoint is never held in memory next
    to a full copy of the model. After assigning, parameters keep their requires_grad and the non-persistent
    buffers are recomputed on the checkpoint's device; a tensor left on meta is an error naming it.
    """
    reader = _CheckpointReader(path)
    shapes = {k: v for k, v in reader.shapes.items() if not k.startswith(tuple(ignore_prefixes))}
    report = compare_state_dict(model, shapes)
    if not report.ok:
        message = f"checkpoint {path} does not match the model:\n{report.describe()}"
        if strict:
            raise CheckpointMismatchError(message)
        warnings.warn(message, stacklevel=2)
    skip = {k for k, _, _ in report.mismatched}
    targets = model.state_dict()
    keys = [k for k in shapes if k in targets and k not in skip]
    if any(t.is_meta for t in targets.values()):
        _assign_state_dict(model, {k: reader.get(k) for k in keys})
        return report
    with torch.no_grad():
        for key in keys:
            reader.read_into(key, targets[key])
    return report


def _assign_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Make the checkpoint's tensors the model's own (a model built on the meta device has no storage to copy into)."""
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.load_state_dict(state, strict=False, assign=True)
    # older torch (2.1) wraps each assigned tensor in a new Parameter with requires_grad=True, which would
    # silently unfreeze parameters the caller froze before loading
    for name, p in model.named_parameters():
        if name in requires_grad and p.requires_grad != requires_grad[name]:
            p.requires_grad_(requires_grad[name])
    device = next(iter(state.values())).device if state else torch.device("cpu")
    # non-persistent buffers (e.g. the image normalisation constants) are not in any checkpoint: on a meta-built
    # model they are still shape-only, so the modules that own them recompute them where the weights now live
    for module in model.modules():
        dtypes = {n: b.dtype for n, b in module._buffers.items() if b is not None and b.is_meta and n in module._non_persistent_buffers_set}
        reset = getattr(module, "reset_non_persistent_buffers", None)
        if dtypes and reset is not None:
            reset(device)
            for name, dtype in dtypes.items():  # keep a cast the model had before loading (e.g. .bfloat16())
                if module._buffers.get(name) is not None:
                    module._buffers[name] = module._buffers[name].to(dtype)
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        shown = ", ".join(still_meta[:20]) + (f", ... ({len(still_meta) - 20} more)" if len(still_meta) > 20 else "")
        raise RuntimeError(
            f"after loading into a model built on the meta device, {len(still_meta)} tensor(s) still have no data "
            f"(not in the checkpoint, and not recomputable by their module): {shown}. Build the model on a real "
            "device, or materialise it with model.to_empty(device=...) before loading."
        )


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
