"""Load training checkpoints as tensors only: no code from a checkpoint file ever runs.

Resume (accelerate's `load_state`, DeepSpeed's `engine.load_checkpoint`) and `vggt-train export` (DeepSpeed's
ZeRO consolidation) read pickled files with `torch.load`, DeepSpeed with `weights_only=False`. Here:

1. `check_directory(path)` scans every pickle-bearing file of a checkpoint directory (.pt/.pth/.bin/.pkl/...)
   before anything loads it: each global the pickle names (read with `pickletools`, nothing executed) must be
   one torch's weights-only unpickler allows or one of the few entries of `ALLOWED` below. A file naming
   anything else is refused with `UnsafeCheckpointError`, one line naming the file and the global.
2. `restricted_loads()` is a context manager that, while it is open, routes every `torch.load` through the same
   check and then loads with `weights_only=True` plus `ALLOWED` (torch >= 2.4: `safe_globals`). On an older
   torch without that API (2.1, the Ascend stack) it loads with a `pickle.Unpickler` whose `find_class`
   returns only torch's own weights-only globals and `ALLOWED`.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import importlib
import inspect
import io
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import _compat_pickle
import numpy as np
import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class UnsafeCheckpointError(ValueError):
    """A checkpoint file needs a Python global that is not a tensor type: it is not loaded."""


def _enum_member(cls, name):
    """What a checkpoint's `builtins.getattr` may do: some Python versions pickle an Enum member (DeepSpeed's
    ZeroStageEnum) as getattr(EnumClass, "NAME"). Only a member of an allow-listed Enum is returned; any other use
    of getattr is refused."""
    if (isinstance(cls, type) and issubclass(cls, enum.Enum) and isinstance(name, str) and name in cls.__members__
            and any(cls is obj for obj in _resolved_allowed().values())):
        return cls[name]
    raise pickle.UnpicklingError(f"it needs builtins.getattr({getattr(cls, '__qualname__', type(cls).__name__)}, {name!r}), "
                                 f"which is not a member of an allowed enum")


# registered under the name the pickle uses, so the loaders resolve "builtins.getattr" to this guard
_enum_member.__module__, _enum_member.__qualname__, _enum_member.__name__ = "builtins", "getattr", "getattr"


def _allowed_entries() -> List[Tuple[str, Callable[[], object]]]:
    """(qualified name, how to import it) for every non-torch global a checkpoint of ours may name, and why."""

    def numpy_attr(*names):
        def get():
            obj = np
            for n in names:
                obj = getattr(obj, n)
            return obj
        return get

    def deepspeed_attr(module, name):
        def get():
            return getattr(importlib.import_module(module), name)
        return get

    def np_core_reconstruct():
        # the module where the function lives in this numpy (numpy 1.26 also has a numpy._core shim package whose
        # submodules are attributes only once imported: never take the path from what happens to be imported)
        real = "numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core.multiarray"
        return importlib.import_module(real)._reconstruct

    entries = [
        # accelerate's random_states_*.pkl: numpy's RNG state holds a uint32 array (rebuilt from its raw bytes;
        # an array's data are numbers, never objects of ours, and nested objects stay under this same unpickler)
        ("numpy.core.multiarray._reconstruct", np_core_reconstruct),
        ("numpy._core.multiarray._reconstruct", np_core_reconstruct),
        ("numpy.ndarray", numpy_attr("ndarray")),
        ("numpy.dtype", numpy_attr("dtype")),
        ("numpy.dtypes.UInt32DType", numpy_attr("dtypes", "UInt32DType")),
        # DeepSpeed's *_optim_states.pt: the ZeRO stage (an IntEnum) and the loss scaler (plain attributes:
        # scale, flags, counters; restored with setattr, no method runs)
        ("deepspeed.runtime.zero.config.ZeroStageEnum", deepspeed_attr("deepspeed.runtime.zero.config", "ZeroStageEnum")),
        # how Python 3.11.0-3.11.? pickle an Enum member: getattr(cls, name), answered by _enum_member only
        ("builtins.getattr", lambda: _enum_member),
        ("deepspeed.runtime.fp16.loss_scaler.LossScaler", deepspeed_attr("deepspeed.runtime.fp16.loss_scaler", "LossScaler")),
        ("deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
         deepspeed_attr("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler")),
        # ZeRO-1/2 optim states: where each parameter lies in the flat partition (a dataclass of two ints)
        ("deepspeed.utils.tensor_fragment.fragment_address", deepspeed_attr("deepspeed.utils.tensor_fragment", "fragment_address")),
    ]
    return entries


def _latin1_encode(text, encoding="utf-8"):
    """What a checkpoint's `_codecs.encode` may do: protocol-2 pickles (torch.save's default) store bytes, e.g. a
    numpy array's raw data, as encode(str, "latin1"). Any other use is refused."""
    if isinstance(text, str) and encoding in ("latin1", "latin-1"):
        return text.encode("latin1")
    raise pickle.UnpicklingError(f"it needs _codecs.encode(..., {encoding!r}), which is not a latin-1 byte string")


_latin1_encode.__module__, _latin1_encode.__qualname__, _latin1_encode.__name__ = "_codecs", "encode", "encode"


def _newer_torch_defaults() -> Dict[str, object]:
    """Plain data types that newer torch's weights-only unpickler allows and torch 2.1's lacks (the same checkpoint
    must load on both stacks): every torch dtype, torch.device, set/bytearray/complex/Counter, latin-1 bytes."""

    out: Dict[str, object] = {f"torch.{name}": obj for name, obj in vars(torch).items() if isinstance(obj, torch.dtype)}
    out.update({"torch.device": torch.device, "builtins.set": set, "builtins.bytearray": bytearray,
                "builtins.complex": complex, "collections.Counter": collections.Counter, "_codecs.encode": _latin1_encode})
    return out


def _torch_allowed() -> Dict[str, object]:
    """torch's own weights-only allow-list, completed with what newer releases added (see _newer_torch_defaults)."""
    try:  # a private module of torch, hence here and guarded
        from torch._weights_only_unpickler import _get_allowed_globals

        found = dict(_get_allowed_globals())
    except Exception:  # pragma: no cover - every torch we support has it
        found = {}
    return {**found, **_newer_torch_defaults()}  # ours last: the latin-1-only encode replaces the general one


def allowed_names() -> set:
    """Every global a checkpoint may name: torch's weights-only defaults plus ALLOWED."""
    return set(_torch_allowed()) | {name for name, _ in _allowed_entries()}


def _resolved_allowed() -> Dict[str, object]:
    out = {}
    for name, get in _allowed_entries():
        try:
            out[name] = get()
        except (ImportError, AttributeError):  # e.g. no deepspeed installed, numpy 1.x without np._core
            pass
    return out


# -- scanning (nothing is executed: the pickle opcodes are only read) --------------------------------------------

def _globals_of_pickle(stream: io.BytesIO) -> Iterator[str]:
    """The qualified names of the globals one pickle in `stream` refers to (stream left after its STOP)."""
    memo: Dict[int, object] = {}
    stack: List[object] = []  # only strings matter (STACK_GLOBAL's operands); everything else is a placeholder
    other = object()
    proto = 0
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name == "PROTO":
            proto = arg
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            if proto < 3:  # as the unpickler does (fix_imports): Python 2 names map onto Python 3 ones
                module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (_compat_pickle.IMPORT_MAPPING.get(module, module), attr))
            yield f"{module}.{attr}"
            stack.append(other)
        elif name == "STACK_GLOBAL":
            attr = stack.pop() if stack else other
            module = stack.pop() if stack else other
            if not (isinstance(module, str) and isinstance(attr, str)):
                yield "<a global whose name is computed>"
            else:
                yield f"{module}.{attr}"
            stack.append(other)
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"):
            stack.append(arg if isinstance(arg, str) else other)
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else other
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else other
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, other))
        elif name == "OBJ":
            yield "<an OBJ opcode (class from the stack)>"
        elif name in ("EXT1", "EXT2", "EXT4"):
            yield f"<copyreg extension {arg}>"
        elif name in ("STOP",):
            return
        else:
            # any other opcode: the stack shape no longer matters for globals except through STACK_GLOBAL, whose
            # operands we only accept when they are literal strings pushed right before it
            stack.append(other)


def _pickles_of_file(path: Path) -> Iterator[Tuple[str, bytes]]:
    """(member name, bytes) of every pickle torch.load / pickle.load would read from `path`."""
    with path.open("rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # how torch.load tells its zip format from the legacy one
    if is_zip:
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise UnsafeCheckpointError(f"refusing to load {path}: not a readable torch zip file ({exc})") from None
        with zf:
            for info in zf.infolist():
                if info.filename.endswith(".pkl"):
                    yield info.filename, zf.read(info)
        return
    yield "", path.read_bytes()


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _is_torch_legacy_magic(data: bytes) -> bool:
    return any(arg == _TORCH_LEGACY_MAGIC for _, arg, _ in pickletools.genops(io.BytesIO(data)))


def globals_of_file(path: str | Path) -> List[str]:
    """Every global the pickles of a file name (torch zip or legacy format, or a plain pickle)."""
    path = Path(path)
    found: List[str] = []
    for member, data in _pickles_of_file(path):
        stream = io.BytesIO(data)
        # a legacy torch file is up to 5 pickles in a row (magic, protocol, sys info, object, storage keys)
        # followed by raw storage bytes; a plain pickle is one
        for index in range(5 if not member else 1):
            if stream.tell() >= len(data):
                break
            try:
                found.extend(_globals_of_pickle(stream))
            except Exception as exc:  # fail closed: what cannot be scanned is not loaded
                raise UnsafeCheckpointError(f"refusing to load {path}: not a readable pickle ({exc})") from None
            if index == 0 and not member and not _is_torch_legacy_magic(data[: stream.tell()]):
                break  # a plain pickle: pickle.load reads only this one
    return found


def check_file(path: str | Path, allowed: Optional[set] = None) -> None:
    """Refuse (UnsafeCheckpointError, one line) a file whose pickles name a global outside the allow-list."""
    allowed = allowed_names() if allowed is None else allowed
    for name in globals_of_file(path):
        if name not in allowed:
            raise UnsafeCheckpointError(f"refusing to load {path}: it needs {name}, which is not a tensor type "
                                        f"(a checkpoint is loaded as tensors only; nothing from it was run)")


def check_directory(path: str | Path) -> None:
    """check_file for every pickle-bearing file under a checkpoint directory (recursively)."""
    allowed = allowed_names()
    for file in sorted(Path(path).rglob("*")):
        if file.is_file() and file.suffix in PICKLE_SUFFIXES:
            check_file(file, allowed)


# -- loading --------------------------------------------------------------------------------------------------

class _RestrictedUnpickler(pickle.Unpickler):
    """For a torch without add_safe_globals: find_class returns only the allowed globals."""

    def find_class(self, module, name):
        # Python 2 names (protocol 2, what torch.save writes) map onto Python 3 ones, as the unpickler does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        full = f"{module}.{name}"
        table = _fallback_table()
        if full not in table:
            raise pickle.UnpicklingError(f"it needs {full}, which is not a tensor type")
        return table[full]  # the object itself, never an import of the name the file gives


def _fallback_table() -> Dict[str, object]:
    return {**_torch_allowed(), **_resolved_allowed()}


class _RestrictedPickleModule:
    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    __name__ = "vggt_train.train.safe_load._RestrictedPickleModule"


def _has_safe_globals() -> bool:
    return hasattr(torch.serialization, "safe_globals") and hasattr(torch.serialization, "add_safe_globals")


def _describe(f) -> str:
    return str(f) if isinstance(f, (str, Path)) else getattr(f, "name", repr(f))


def _safe_globals_list() -> list:
    """ALLOWED plus the callables of _newer_torch_defaults that this torch's own list lacks."""
    try:  # a private module of torch, hence here and guarded
        from torch._weights_only_unpickler import _get_allowed_globals

        own = set(_get_allowed_globals())
    except Exception:  # pragma: no cover
        own = set()
    extra = [obj for name, obj in _newer_torch_defaults().items() if name not in own and callable(obj)]
    return list(_resolved_allowed().values()) + extra


def make_restricted_load(real_load: Callable) -> Callable:
    def restricted_load(f, map_location=None, pickle_module=None, *, weights_only=None, **kwargs):
        name = _describe(f)
        if isinstance(f, (str, Path)):
            check_file(f)
        kwargs.pop("weights_only", None)
        try:
            if _has_safe_globals():
                with torch.serialization.safe_globals(_safe_globals_list()):
                    return real_load(f, map_location=map_location, weights_only=True, **kwargs)
            kwargs.pop("mmap", None) if "mmap" not in _load_params(real_load) else None
            return real_load(f, map_location=map_location, pickle_module=_RestrictedPickleModule, weights_only=False, **kwargs)
        except pickle.UnpicklingError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UnsafeCheckpointError(f"refusing to load {name}: {first}") from None

    restricted_load.__wrapped__ = real_load
    return restricted_load


def _load_params(fn) -> set:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


@contextlib.contextmanager
def restricted_loads():
    """While open, every torch.load (also DeepSpeed's and accelerate's, whatever weights_only they pass) loads
    tensors and the allow-listed types only, after check_file."""
    real = torch.load
    if getattr(real, "__wrapped__", None) is not None and real.__name__ == "restricted_load":
        yield  # already inside
        return
    safe = make_restricted_load(real)
    real_serialization = torch.serialization.load
    torch.load = safe
    torch.serialization.load = safe
    try:
        yield
    finally:
        torch.load = real
        torch.serialization.load = real_serialization
