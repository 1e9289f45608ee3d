"""Self-check: every available backend against the reference on random inputs, forward and backward.

The ground truth is the reference evaluated in float64 on the CPU from the very same (dtype-rounded) inputs,
so a backend is judged by its own error, not by the reference's rounding. Errors are relative to the largest
ground-truth magnitude: max|out - truth| / max|truth|, for the output and every input gradient.

Tolerances: float32 1e-3 (exact fp32 kernels land near 1e-6; this still admits TF32/HF32-class internal
matmuls and fails any wrong scale, layout or rotation, which are O(1)); bfloat16 3e-2 (the reference itself
computed in bf16 lands at about 1e-2). The optimiser is checked in float32 over three steps with two groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from vggt_train.kernels.registry import OPS, Backend, KernelError, availability, library_error

TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2}
DTYPES = (torch.float32, torch.bfloat16)


@dataclass
class CheckRow:
    op: str
    backend: str
    device: str
    dtype: str
    case: str
    fwd_err: float = float("nan")
    bwd_err: float = float("nan")
    tol: float = float("nan")
    status: str = "ok"  # ok | FAIL | skipped
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def _rel_err(out: torch.Tensor, truth: torch.Tensor) -> float:
    out = out.detach().to("cpu", torch.float64)
    if out.shape != truth.shape:
        return float("inf")
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - truth).abs().max() / truth.abs().max().clamp_min(1e-30)).item()


def _run_autograd(fn: Callable, inputs: Sequence[torch.Tensor], grad_idx: Sequence[int], extra: tuple, grad_out: torch.Tensor):
    """fn(*inputs, *extra) and d(out . grad_out)/d inputs[grad_idx]."""
    leaves = [t.detach().clone().requires_grad_(i in grad_idx) for i, t in enumerate(inputs)]
    out = fn(*leaves, *extra)
    out.backward(grad_out.to(out.device, out.dtype))
    return out, [leaves[i].grad for i in grad_idx]


def _cases(op: str, gen: torch.Generator) -> List[dict]:
    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    if op == "attention":
        # VGGT-like head dim 64; odd lengths catch tiling bugs; the second case is cross-attention with a scale
        return [
            {"name": "self B2 H4 N77 D64", "inputs": [randn(2, 4, 77, 64) for _ in range(3)], "grad": (0, 1, 2), "extra": (None,)},
            {"name": "cross Nq77 Nk61 scale0.2", "inputs": [randn(2, 4, 77, 64), randn(2, 4, 61, 64), randn(2, 4, 61, 64)],
             "grad": (0, 1, 2), "extra": (0.2,)},
        ]
    if op == "rope":
        # VGGT's rope halves: D = head_dim / 2 = 32; cos/sin from real angles, shared [1,1,S,D] or per batch [B,1,S,D]
        def tables(b):
            angles = torch.rand(b, 1, 77, 16, generator=gen) * 2 * math.pi
            angles = torch.cat([angles, angles], dim=-1)
            return angles.cos(), angles.sin()

        return [
            {"name": "x B2 H4 N77 D32, cos 11SD", "inputs": [randn(2, 4, 77, 32), *tables(1)], "grad": (0,), "extra": ()},
            {"name": "x B2 H4 N77 D32, cos B1SD", "inputs": [randn(2, 4, 77, 32), *tables(2)], "grad": (0,), "extra": ()},
        ]
    raise KeyError(op)


def _check_differentiable(op_name: str, backend_name: str, fn: Callable, limits, device: str, gen: torch.Generator) -> List[CheckRow]:
    reference = OPS[op_name].reference
    rows = []
    for case in _cases(op_name, gen):
        for dtype in DTYPES:
            row = CheckRow(op_name, backend_name, device, str(dtype).replace("torch.", ""), case["name"], tol=TOLERANCE[dtype])
            rows.append(row)
            inputs = [t.to(dtype) for t in case["inputs"]]  # rounded once: backend and truth see the same values
            grad_out_shape = inputs[0].shape[:-1] + (inputs[2].shape[-1],) if op_name == "attention" else inputs[0].shape
            grad_out = torch.randn(*grad_out_shape, generator=gen).to(dtype)
            truth, truth_grads = _run_autograd(reference, [t.double() for t in inputs], case["grad"], case["extra"], grad_out.double())
            dev_inputs = [t.to(device) for t in inputs]
            if limits is not None:
                outside = limits(*[t.detach() for t in dev_inputs], *case["extra"])
                if outside is not None:
                    row.status, row.note = "skipped", f"outside the kernel's limits ({outside[0]}: {outside[1]})"
                    continue
            try:
                out, grads = _run_autograd(fn, dev_inputs, case["grad"], case["extra"], grad_out)
            except Exception as exc:
                row.status, row.note = "FAIL", f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                continue
            row.fwd_err = _rel_err(out, truth.detach())
            row.bwd_err = max((_rel_err(g, t) if g is not None else float("inf")) for g, t in zip(grads, truth_grads))
            if out.dtype != dtype:
                row.status, row.note = "FAIL", f"output dtype {out.dtype} != input dtype {dtype}"
            elif not (row.fwd_err <= row.tol and row.bwd_err <= row.tol):
                row.status = "FAIL"
    return rows


def _check_adamw(backend_name: str, fn: Callable, limits, device: str, gen: torch.Generator) -> List[CheckRow]:
    row = CheckRow("adamw", backend_name, device, "float32", "3 steps, 2 groups (wd 0.1 / 0)", tol=1e-4)
    shapes = [(64, 48), (48,), (3, 5, 7), (128,)]
    init = [0.1 * torch.randn(*s, generator=gen) for s in shapes]
    grads = [[torch.randn(*s, generator=gen) for s in shapes] for _ in range(3)]
    hp = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)

    def params_on(dev: str, dtype: torch.dtype):
        params = [torch.nn.Parameter(p.to(dev, dtype, copy=True)) for p in init]
        return params, [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]

    def run(make: Callable, params, groups):
        opt = make(groups, hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"])
        for step in grads:
            for p, g in zip(params, step):
                # in place after the first step, as backward does: NpuFusedAdamW reads gradients from buffers it
                # combined at its first step and would silently ignore a rebound .grad
                if p.grad is None:
                    p.grad = g.to(p.device, p.dtype, copy=True)
                else:
                    p.grad.copy_(g)
            opt.step()
        return [p.detach() for p in params]

    truth = run(OPS["adamw"].reference, *params_on("cpu", torch.float64))
    params, groups = params_on(device, torch.float32)
    outside = limits(groups) if limits is not None else None
    if outside is not None:
        row.status, row.note = "skipped", f"outside the kernel's limits ({outside[0]}: {outside[1]})"
        return [row]
    try:
        got = run(fn, params, groups)
    except Exception as exc:
        row.status, row.note = "FAIL", f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return [row]
    # compare the updates (p - p0): the parameters themselves would hide update errors below their own rounding
    row.fwd_err = max(_rel_err(g.cpu().double() - p0.double(), t - p0.double()) for g, t, p0 in zip(got, truth, init))
    row.status = "ok" if row.fwd_err <= row.tol else "FAIL"
    return [row]


def run_check(ops: Optional[Sequence[str]] = None, backends: Optional[Sequence[str]] = None, device: Optional[str] = None,
              seed: int = 0) -> List[CheckRow]:
    """Check `ops` (default all) x `backends` (default: every available one, the reference included).

    device: run every checked backend on this device instead of its own (e.g. "cpu" to drive a forced NPU
    wrapper with a stand-in torch_npu); then only the backend's library must import. A backend asked for by
    name that cannot run raises KernelError naming the missing module or device.
    """
    ops = list(ops or OPS)
    for name in ops:
        if name not in OPS:
            raise KernelError(f"unknown kernel op {name!r}; ops are {', '.join(OPS)}")
    rows: List[CheckRow] = []
    for name in ops:
        op = OPS[name]
        candidates: Dict[str, Optional[Backend]] = {"reference": None, **op.backends}
        wanted = list(backends) if backends else list(candidates)
        for backend_name in wanted:
            if backend_name not in candidates:
                if backends and backend_name in ("reference", "cpu", "cuda", "npu"):
                    continue  # asked for npu across ops, this op has none
                raise KernelError(f"unknown backend {backend_name!r}")
            backend = candidates[backend_name]
            if backend is None:
                fn, limits, dev = op.reference, None, device or "cpu"
            else:
                if device is not None:
                    error = library_error(backend.library)
                    ok, why = (error is None, f"{backend.library} not importable ({error})")
                else:
                    ok, why = availability(backend)
                if not ok:
                    if backends:
                        raise KernelError(f"kernel op {name!r}: backend {backend_name!r} cannot run here: {why}")
                    continue
                fn, limits, dev = backend.fn, backend.limits, device or backend.name
            gen = torch.Generator().manual_seed(seed)
            if name == "adamw":
                rows += _check_adamw(backend_name, fn, limits, dev, gen)
            else:
                rows += _check_differentiable(name, backend_name, fn, limits, dev, gen)
    return rows


def format_rows(rows: Sequence[CheckRow]) -> str:
    header = ("op", "backend", "device", "dtype", "case", "fwd err", "bwd err", "tol", "result")
    body = [
        (r.op, r.backend, r.device, r.dtype, r.case,
         "-" if math.isnan(r.fwd_err) else f"{r.fwd_err:.1e}", "-" if math.isnan(r.bwd_err) else f"{r.bwd_err:.1e}",
         f"{r.tol:.0e}", r.status + (f" ({r.note})" if r.note else ""))
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)
