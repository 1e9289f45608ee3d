"""A stand-in for `torch_npu` on CPU: the documented semantics of the ops we call, and a recorder of the calls.

Follows torch_npu's `_op_plugin_docs.py` (2.1.0.post17 .. 2.14.0):
- npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None,
  scale=1., keep_prob=1., pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0, prefix=None,
  actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False,
  softmax_layout="") -> (attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, mask_length):
  y = softmax(scale * q k^T) v; layouts BSH, SBH, BSND, BNSD (TND needs the varlen arguments: not modelled);
  the default scale is 1.0, not 1/sqrt(D).
- npu_rotary_mul(input, r1, r2, rotary_mode='half'): half mode output = r1 * input + r2 * cat(-x2, x1).
- optim.NpuFusedAdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
  p *= 1 - lr * wd; moments; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps); float32/float16 params only.
Inputs the real kernels reject (documented constraints) raise here too, so a wrapper passing them is caught.
Everything is differentiable through plain torch ops (the real ops have registered backwards).
"""

from __future__ import annotations

import math
import types
from typing import List, Tuple

import torch

__version__ = "0.0.0+fake"
calls: List[Tuple[str, dict]] = []  # (op name, summary of the arguments) per call


def reset_calls() -> None:
    calls.clear()


def count(name: str) -> int:
    return sum(1 for c, _ in calls if c == name)


_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _to_bnsd(t: torch.Tensor, layout: str, head_num: int) -> torch.Tensor:
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "BSH":
        b, s, h = t.shape
        return t.reshape(b, s, head_num, h // head_num).transpose(1, 2)
    if layout == "SBH":
        s, b, h = t.shape
        return t.reshape(s, b, head_num, h // head_num).permute(1, 2, 0, 3)
    raise ValueError(f"fake npu_fusion_attention: layout {layout!r} not modelled")


def _from_bnsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    b, n, s, d = t.shape
    if layout == "BSH":
        return t.transpose(1, 2).reshape(b, s, n * d)
    return t.permute(2, 0, 1, 3).reshape(s, b, n * d)  # SBH


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None,
                         scale=1.0, keep_prob=1.0, pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0,
                         prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0,
                         gen_mask_parallel=True, sync=False, softmax_layout=""):
    calls.append(("npu_fusion_attention", {
        "shape": tuple(query.shape), "kv_shape": tuple(key.shape), "dtype": query.dtype, "head_num": head_num,
        "input_layout": input_layout, "scale": scale, "keep_prob": keep_prob,
    }))
    if input_layout not in ("BSH", "SBH", "BSND", "BNSD", "TND"):
        raise RuntimeError(f"npu_fusion_attention: unsupported input_layout {input_layout!r}")
    if not (query.dtype == key.dtype == value.dtype) or query.dtype not in _DTYPES:
        raise RuntimeError("npu_fusion_attention: query/key/value must share one of float16/bfloat16/float32")
    if key.shape != value.shape:
        raise RuntimeError("npu_fusion_attention: key and value shapes must be equal")
    if not isinstance(head_num, int) or isinstance(head_num, bool):
        raise TypeError(f"npu_fusion_attention: head_num must be int, got {type(head_num).__name__}")
    if not 0.0 < keep_prob <= 1.0:
        raise RuntimeError("npu_fusion_attention: keep_prob must be in (0, 1]")
    if pse is not None or atten_mask is not None or padding_mask is not None or keep_prob != 1.0:
        raise NotImplementedError("fake npu_fusion_attention models the unmasked, dropout-free case only")
    q = _to_bnsd(query, input_layout, head_num)
    nkv = key.shape[1] if input_layout == "BNSD" else (key.shape[2] if input_layout == "BSND" else head_num)
    k = _to_bnsd(key, input_layout, nkv if input_layout in ("BNSD", "BSND") else head_num)
    v = _to_bnsd(value, input_layout, nkv if input_layout in ("BNSD", "BSND") else head_num)
    if q.shape[1] != head_num:
        raise RuntimeError(f"npu_fusion_attention: head_num {head_num} does not match the query's {q.shape[1]} heads")
    d = q.shape[-1]
    if not 1 <= d <= 768 or k.shape[-1] != d:
        raise RuntimeError(f"npu_fusion_attention: head dim {d} outside [1, 768] or Dq != Dk")
    if not 1 <= head_num <= 256 or head_num % k.shape[1]:
        raise RuntimeError("npu_fusion_attention: Nq must be in [1, 256] and a multiple of Nkv")
    if k.shape[1] != head_num:  # GQA: each kv head serves Nq / Nkv query heads
        rep = head_num // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale
    softmax_max = scores.amax(dim=-1, keepdim=True)
    softmax_sum = (scores - softmax_max).exp().sum(dim=-1, keepdim=True)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v.float()).to(query.dtype)
    # softmax_max / softmax_sum are float32 [B, N, Sq, 8] in the real op (the value repeated 8 times)
    return (_from_bnsd(out, input_layout), softmax_max.expand(*softmax_max.shape[:-1], 8).detach(),
            softmax_sum.expand(*softmax_sum.shape[:-1], 8).detach(), torch.empty(0), 0, 0, 0)


def npu_rotary_mul(input, r1, r2, rotary_mode="half"):
    calls.append(("npu_rotary_mul", {"shape": tuple(input.shape), "cos_shape": tuple(r1.shape), "dtype": input.dtype,
                                     "rotary_mode": rotary_mode}))
    if input.dim() != 4 or r1.dim() != 4 or r2.dim() != 4:
        raise RuntimeError("npu_rotary_mul: input, r1 and r2 must be 4-D")
    if input.dtype not in _DTYPES:
        raise RuntimeError(f"npu_rotary_mul: dtype {input.dtype} not supported")
    b, n, s, d = input.shape
    if d % 2 or d >= 896 or b >= 1000 or n >= 1000:
        raise RuntimeError(f"npu_rotary_mul: shape {tuple(input.shape)} outside D even < 896, B, N < 1000")
    if rotary_mode == "half":
        x1, x2 = torch.chunk(input, 2, -1)
        x_new = torch.cat((-x2, x1), dim=-1)
    elif rotary_mode == "interleave":
        x1, x2 = input[..., ::2], input[..., 1::2]
        x_new = torch.stack((-x2, x1), dim=-1).flatten(-2)
    else:
        raise RuntimeError(f"npu_rotary_mul: rotary_mode {rotary_mode!r}")
    return r1 * input + r2 * x_new


class NpuFusedAdamW(torch.optim.Optimizer):
    """The documented algorithm of torch_npu.optim.NpuFusedAdamW, per parameter instead of on combined buffers."""

    instances: List["NpuFusedAdamW"] = []

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        if lr < 0.0 or eps < 0.0 or not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0 or weight_decay < 0.0:
            raise ValueError("NpuFusedAdamW: invalid hyper-parameter")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype not in (torch.float32, torch.float16):
                    raise TypeError(f"Fused optimizer's parameters must be either float32 or float16, but received {p.dtype}")
        self.steps = 0
        NpuFusedAdamW.instances.append(self)
        calls.append(("NpuFusedAdamW", {"groups": len(self.param_groups), "lr": lr}))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.steps += 1
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                p.mul_(1 - group["lr"] * group["weight_decay"])
                bc1 = 1 - beta1 ** state["step"]
                bc2 = 1 - beta2 ** state["step"]
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                second = state["exp_avg_sq"]
                if group["amsgrad"]:
                    torch.max(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                denom = (second.sqrt() / math.sqrt(bc2)).add_(group["eps"])
                p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / bc1)
        return loss


optim = types.ModuleType("torch_npu.optim")
optim.NpuFusedAdamW = NpuFusedAdamW


class _NpuConfig:
    allow_internal_format = True


class _Npu(types.ModuleType):
    """torch_npu.npu: device queries and the runtime options setup_npu touches (recorded, not applied)."""

    def __init__(self):
        super().__init__("torch_npu.npu")
        self.available = False
        self.jit_compile = False
        self.current_device = None
        self.config = _NpuConfig()

    def is_available(self):
        return self.available

    def set_device(self, device):
        self.current_device = device

    def set_compile_mode(self, jit_compile=False):
        self.jit_compile = jit_compile

    def is_jit_compile_false(self):
        return not self.jit_compile


npu = _Npu()


def install(monkeypatch) -> "types.ModuleType":
    """Put this module into sys.modules as torch_npu (and torch_npu.optim) for one test; fresh state."""
    import sys

    module = sys.modules[__name__]
    reset_calls()
    NpuFusedAdamW.instances.clear()
    npu.available, npu.jit_compile, npu.current_device = False, False, None
    npu.config = _NpuConfig()
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    monkeypatch.setitem(sys.modules, "torch_npu.optim", optim)
    monkeypatch.setitem(sys.modules, "torch_npu.npu", npu)
    return module
