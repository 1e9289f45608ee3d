"""The kernel registry: each op declared once with a reference, backends keyed by device type, and selection.

An `Op` owns a plain-PyTorch reference (autograd-correct, runs on every device) and optional `Backend`s named
after the device type they are fast on (`cpu`, `cuda`, `npu`). Per call the op picks one:

1. forced: `VGGT_KERNELS="attention=npu,rope=reference"` (environment, wins) or `configure({"attention": "npu"})`
   (the trainer's YAML `kernels:` mapping). A forced backend runs whatever device the tensors are on (that is how
   the tests drive the NPU wrappers with CPU tensors and a stand-in `torch_npu`). Forcing a backend whose library
   does not import raises `KernelError` naming the op and the module.
2. automatic: the backend named after the tensors' device type, when its library imports; else the reference.

A backend may declare the documented limits of its kernel (dtype, head dim, layout, ...). Inputs outside them run
the reference instead, with one warning per (op, backend, rule), so a model never crashes because a fused kernel
does not cover one shape.

Selection costs one dict lookup per call: the environment variable is re-parsed only when its value changes.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

ENV_VAR = "VGGT_KERNELS"
BACKENDS = ("reference", "cpu", "cuda", "npu")
AUTO = "auto"

# A limits check returns None when the kernel covers the inputs, else (rule, detail): `rule` is a stable name
# (one warning per rule, however many shapes trip it), `detail` the values that tripped it.
LimitsFn = Callable[..., Optional[Tuple[str, str]]]


class KernelError(RuntimeError):
    """A kernel selection that cannot run: unknown op/backend name, or a forced backend whose library is missing."""


class KernelFallbackWarning(UserWarning):
    """A selected fused kernel does not cover these inputs; the reference ran instead (warned once per rule)."""


@dataclass(frozen=True)
class Backend:
    """One implementation of an op. `fn` takes the op's arguments.

    library: module that must import for the backend to exist (e.g. "torch_npu"); None: plain torch.
    device_present: whether this machine has the backend's device (for the listing and the self-check only;
        selection needs the library alone, so a forced backend runs on any tensors).
    limits: the kernel's documented limits, checked per call (see LimitsFn).
    """

    name: str
    fn: Callable
    library: Optional[str] = None
    device_present: Optional[Callable[[], bool]] = None
    limits: Optional[LimitsFn] = None


class Op:
    """A named op: `op(*args)` dispatches to the selected backend. `device_of(*args)` returns the device type.

    `prepare(*args, **kwargs) -> (args, kwargs)`, when given, normalises the arguments before selection and the
    limits check, for every backend and the reference alike (e.g. the dtype casts autocast would apply to the
    torch op the model used to call).
    """

    def __init__(self, name: str, reference: Callable, device_of: Callable[..., str], doc: str = "",
                 prepare: Optional[Callable] = None):
        self.name = name
        self.reference = reference
        self.device_of = device_of
        self.doc = doc
        self.prepare = prepare
        self.backends: Dict[str, Backend] = {}

    def register(self, name: str, *, library: Optional[str] = None, device_present: Optional[Callable[[], bool]] = None,
                 limits: Optional[LimitsFn] = None) -> Callable[[Callable], Callable]:
        """Decorator: `@op.register("npu", library="torch_npu", limits=...)` on the backend function."""
        if name not in BACKENDS or name == "reference":
            raise ValueError(f"backend name must be one of {BACKENDS[1:]}, got {name!r}")

        def wrap(fn: Callable) -> Callable:
            self.backends[name] = Backend(name, fn, library, device_present, limits)
            return fn

        return wrap

    def __call__(self, *args, **kwargs):
        if self.prepare is not None:
            args, kwargs = self.prepare(*args, **kwargs)
        return self._run(self.device_of(*args, **kwargs), args, kwargs)

    def dispatch(self, device_type: str, *args, **kwargs):
        """Run the backend selected for `device_type` (limits checked), or the reference; no `prepare`."""
        return self._run(device_type, args, kwargs)

    def _run(self, device_type: str, args: tuple, kwargs: dict):
        backend = select(self, device_type)
        if backend is None:
            return self.reference(*args, **kwargs)
        if backend.limits is not None:
            outside = backend.limits(*args, **kwargs)
            if outside is not None:
                # the caller of kernels.attention()/make_adamw() is 5 frames up from warnings.warn
                warn_fallback(self.name, backend.name, *outside, stacklevel=5)
                return self.reference(*args, **kwargs)
        return backend.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Op({self.name!r}, backends={['reference', *self.backends]})"


# -- the registry and its selection state ------------------------------------------------------------------------
OPS: Dict[str, Op] = {}


def declare(name: str, reference: Callable, device_of: Callable[..., str], doc: str = "",
            prepare: Optional[Callable] = None) -> Op:
    """Declare an op once, with its reference implementation."""
    if name in OPS:
        raise ValueError(f"kernel op {name!r} declared twice")
    OPS[name] = op = Op(name, reference, device_of, doc, prepare)
    return op


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.env_raw: Optional[str] = None  # the VGGT_KERNELS value the cache was built from
        self.env: Dict[str, str] = {}
        self.config: Dict[str, str] = {}
        self.cache: Dict[Tuple[str, str], Optional[Backend]] = {}  # (op, device type) -> backend (None: reference)
        self.warned: set = set()
        self.import_errors: Dict[str, str] = {}
        self.memo: Dict[str, object] = {}  # runtime probes too slow to repeat per call (see memo())


_state = _State()


def parse_spec(spec: str | Mapping[str, str] | None, source: str) -> Dict[str, str]:
    """`"attention=npu, rope=reference"` or a mapping -> {op: backend}; `all=` sets every op; `auto` clears.

    Raises KernelError naming the bad entry and `source` (the env var or the config) on an unknown op or backend.
    """
    if not spec:
        return {}
    if isinstance(spec, str):
        items = []
        for entry in spec.split(","):
            entry = entry.strip()
            if not entry:
                continue
            if "=" not in entry:
                raise KernelError(f"{source}: entry {entry!r} is not op=backend (e.g. {ENV_VAR}=\"attention=npu,rope=reference\")")
            op, backend = entry.split("=", 1)
            items.append((op.strip(), backend.strip()))
    else:
        items = [(str(k), str(v)) for k, v in spec.items()]
    out: Dict[str, str] = {}
    for op, backend in items:
        op, backend = op.lower(), backend.lower()
        if backend not in BACKENDS and backend != AUTO:
            raise KernelError(f"{source}: unknown backend {backend!r} for {op!r}; choose from {', '.join(BACKENDS + (AUTO,))}")
        targets = list(OPS) if op in ("all", "*") else [op]
        for target in targets:
            if target not in OPS:
                raise KernelError(f"{source}: unknown kernel op {op!r}; ops are {', '.join(OPS)} (or all)")
            if backend != "reference" and backend != AUTO and backend not in OPS[target].backends:
                if op in ("all", "*"):
                    continue  # `all=npu` forces npu where an op has it
                have = ", ".join(["reference", *OPS[target].backends])
                raise KernelError(f"{source}: op {target!r} has no {backend!r} backend; it has {have}")
            if backend == AUTO:
                out.pop(target, None)
            else:
                out[target] = backend
    return out


def configure(spec: str | Mapping[str, str] | None = None) -> None:
    """Set the config-level overrides ({op: backend}; None/{} clears them). `VGGT_KERNELS` still wins per op.

    Validates the names and that every forced backend's library imports, of the config and of `VGGT_KERNELS`
    alike, so a bad selection fails at start-up rather than at the first forward.
    """
    parsed = parse_spec(spec, "kernels config")
    for op, backend in parsed.items():
        if backend != "reference":
            require_library(OPS[op], OPS[op].backends[backend], "kernels config")
    _sync_env()
    for op, backend in _state.env.items():
        if backend != "reference":
            require_library(OPS[op], OPS[op].backends[backend], f"{ENV_VAR}={_state.env_raw!r}")
    with _state.lock:
        _state.config = parsed
        _state.cache.clear()


def reset() -> None:
    """Forget config overrides, cached selections, import failures and which warnings were given (tests)."""
    with _state.lock:
        _state.config = {}
        _state.env_raw = None
        _state.env = {}
        _state.cache.clear()
        _state.warned.clear()
        _state.import_errors.clear()
        _state.memo.clear()


def overrides() -> Dict[str, Tuple[str, str]]:
    """{op: (backend, source)} of every forced op, source "env" or "config"."""
    _sync_env()
    out = {op: (b, "config") for op, b in _state.config.items()}
    out.update({op: (b, "env") for op, b in _state.env.items()})
    return out


def _sync_env() -> None:
    raw = os.environ.get(ENV_VAR, "")
    if raw != _state.env_raw:
        parsed = parse_spec(raw, ENV_VAR)  # raises before anything is cached
        with _state.lock:
            _state.env, _state.env_raw = parsed, raw
            _state.cache.clear()


def select(op: Op, device_type: str) -> Optional[Backend]:
    """The backend `op` runs on tensors of `device_type` (None: the reference). Cached per (op, device type)."""
    if os.environ.get(ENV_VAR, "") != _state.env_raw:
        _sync_env()
    key = (op.name, device_type)
    try:
        return _state.cache[key]
    except KeyError:
        pass
    forced = _state.env.get(op.name) or _state.config.get(op.name)
    if forced is not None:
        source = f"{ENV_VAR}={_state.env_raw!r}" if op.name in _state.env else "kernels config"
        backend = None if forced == "reference" else op.backends[forced]
        if backend is not None:
            require_library(op, backend, source)
    else:
        backend = op.backends.get(device_type)
        if backend is not None and library_error(backend.library) is not None:
            backend = None
    _state.cache[key] = backend
    return backend


# -- libraries -------------------------------------------------------------------------------------------------
def library_error(module: Optional[str]) -> Optional[str]:
    """None when `module` imports (or is None), else why not. A failed import is remembered until reset()."""
    if module is None or sys.modules.get(module) is not None:
        return None
    if module in _state.import_errors:
        return _state.import_errors[module]
    try:
        importlib.import_module(module)
        return None
    except Exception as exc:  # torch_npu raises ImportError/OSError/RuntimeError without CANN
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        _state.import_errors[module] = msg
        return msg


def require_library(op: Op, backend: Backend, source: str) -> None:
    error = library_error(backend.library)
    if error is not None:
        raise KernelError(
            f"kernel op {op.name!r}: backend {backend.name!r} is forced by {source} but its library "
            f"{backend.library!r} cannot be imported ({error}); install it or select another backend"
        )


def memo(key: str, compute: Callable[[], object]) -> object:
    """`compute()` once until reset() (or `set_memo`): for runtime probes that cost a Python call per op."""
    try:
        return _state.memo[key]
    except KeyError:
        value = _state.memo[key] = compute()
        return value


def set_memo(key: str, value: object) -> None:
    _state.memo[key] = value


def load(module: str):
    """The imported module (cheap after the first call); used by backends at call time."""
    mod = sys.modules.get(module)
    return mod if mod is not None else importlib.import_module(module)


# -- fallbacks -----------------------------------------------------------------------------------------------------
def warn_fallback(op: str, backend: str, rule: str, detail: str, stacklevel: int = 4) -> None:
    key = (op, backend, rule)
    if key in _state.warned:
        return
    _state.warned.add(key)
    warnings.warn(
        f"kernel op {op!r}: backend {backend!r} does not cover these inputs ({rule}: {detail}); "
        f"running the reference instead (warned once per rule)",
        KernelFallbackWarning,
        stacklevel=stacklevel,
    )


# -- listing -------------------------------------------------------------------------------------------------------
def availability(backend: Backend) -> Tuple[bool, str]:
    """(usable here, why not): the library imports and the machine has the device."""
    error = library_error(backend.library)
    if error is not None:
        return False, f"{backend.library} not importable ({error})"
    if backend.device_present is not None:
        try:
            present = bool(backend.device_present())
        except Exception as exc:
            return False, f"device query failed ({type(exc).__name__}: {exc})"
        if not present:
            return False, f"no {backend.name} device"
    return True, ""


def local_device_types() -> List[str]:
    """Device types tensors can live on here: cpu, plus cuda/npu when present."""
    types = ["cpu"]
    for op in OPS.values():
        for backend in op.backends.values():
            if backend.name != "cpu" and backend.name not in types and availability(backend)[0]:
                types.append(backend.name)
    return types


def table(device_types: Optional[Iterable[str]] = None) -> List[dict]:
    """One row per op x backend: available (and why not), and where it is selected.

    `selected_for` lists the local device types whose tensors run this backend, or ["all devices"] for a forced
    one; `error` holds the KernelError of a forced backend that cannot load (else "").
    """
    device_types = list(device_types or local_device_types())
    forced = overrides()
    rows = []
    for op in OPS.values():
        chosen: Dict[str, List[str]] = {}
        error = ""
        if op.name in forced:
            backend_name, source = forced[op.name]
            chosen[backend_name] = ["all devices"]
            try:
                select(op, "cpu")
            except KernelError as exc:
                error = str(exc)
        else:
            for dt in device_types:
                b = select(op, dt)
                chosen.setdefault("reference" if b is None else b.name, []).append(dt)
        for name in ["reference", *op.backends]:
            ok, why = (True, "") if name == "reference" else availability(op.backends[name])
            forced_here = op.name in forced and forced[op.name][0] == name
            rows.append({
                "op": op.name,
                "backend": name,
                "available": ok,
                "why_not": why,
                "selected_for": chosen.get(name, []),
                "note": f" (forced by {ENV_VAR if forced[op.name][1] == 'env' else 'config'})" if forced_here else "",
                "error": error if forced_here else "",
            })
    return rows
