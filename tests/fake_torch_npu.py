"""A stand-in for `torch_npu` on CPU: the documented semantics of the ops we call, and a recorder of the calls.

Follows torch_npu's `_op_plugin_docs.py` (2.1.0.post17 .. 2.14.0):
- npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None,
  scale=1., keep_prob=1., pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0, prefix=None,
  actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False,
  softmax_layout="") -> (attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, mask_length):
  y = softmax(scale * q k^T) v; layouts BSH, SBH, BSND, BNSD (TND needs the varlen arguments: not modelled);
  the default scale is 1.0, not 1/sqrt(D).
- npu_rotary_mul(input, r1, r2, rotary_mode='half', rotate=None) (`rotate` since the 2.14.0 docs): half mode
  output = r1 * input + r2 * cat(-x2, x1); r1/r2 in the documented broadcast layouts.
- optim.NpuFusedAdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
  p *= 1 - lr * wd; moments; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps); float32/float16 params only;
  combined parameter/gradient/state buffers from the first step on (see the class), as torch_npu's source does.
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


def _rotary_table_ok(x_shape, r_shape, rotary_mode) -> bool:
    """The documented r1/r2 shapes for a 4-D input; the op cannot tell BNSD from BSND/SBND, so any of the three
    readings of the input's dims counts (half mode: 11SD/B1SD/BNSD, 1S1D/BS1D/BSND, S11D/SB1D/SBND; interleave
    mode: 11SD, 1S1D, S11D only)."""
    a, b, c, d = x_shape
    if rotary_mode == "half":
        allowed = {(1, 1, c, d), (a, 1, c, d), (1, b, 1, d), (a, b, 1, d), (a, 1, 1, d), (a, b, c, d)}
    else:
        allowed = {(1, 1, c, d), (1, b, 1, d), (a, 1, 1, d)}
    return tuple(r_shape) in allowed


def npu_rotary_mul(input, r1, r2, rotary_mode="half", rotate=None):
    """`rotate` (an optional 2-D [D, D] matrix: x_new = input @ rotate, no gradient through it) is in the
    2.14.0 signature, not in 2.1.0.post17's; the stand-in takes both calls."""
    calls.append(("npu_rotary_mul", {"shape": tuple(input.shape), "cos_shape": tuple(r1.shape), "dtype": input.dtype,
                                     "rotary_mode": rotary_mode, "rotate": None if rotate is None else tuple(rotate.shape)}))
    if input.dim() != 4 or r1.dim() != 4 or r2.dim() != 4:
        raise RuntimeError("npu_rotary_mul: input, r1 and r2 must be 4-D")
    for name, t in (("input", input), ("r1", r1), ("r2", r2)):
        if t.dtype not in _DTYPES:
            raise RuntimeError(f"npu_rotary_mul: {name} dtype {t.dtype} not in float16/bfloat16/float32")
    if not (input.dtype == r1.dtype == r2.dtype):
        # the wrapper never mixes them (rope casts the tables to x's dtype); a regression must not pass here
        raise RuntimeError(f"npu_rotary_mul: input/r1/r2 dtypes {input.dtype}/{r1.dtype}/{r2.dtype} differ")
    b, n, s, d = input.shape
    if npu.jit_compile:
        if rotary_mode != "half" or d != 128 or b > 1000 or n > 1000:
            raise RuntimeError(f"npu_rotary_mul (jit_compile=True): half mode, D = 128, B, N <= 1000 only; got "
                               f"{rotary_mode} {tuple(input.shape)}")
    elif d % 2 or d >= 896 or b >= 1000 or n >= 1000:
        raise RuntimeError(f"npu_rotary_mul: shape {tuple(input.shape)} outside D even < 896, B, N < 1000")
    if rotary_mode not in ("half", "interleave"):
        raise RuntimeError(f"npu_rotary_mul: rotary_mode {rotary_mode!r}")
    for name, t in (("r1", r1), ("r2", r2)):
        if not _rotary_table_ok(input.shape, t.shape, rotary_mode):
            raise RuntimeError(f"npu_rotary_mul: {name} {tuple(t.shape)} is not a documented {rotary_mode}-mode "
                               f"layout for input {tuple(input.shape)}")
    if rotary_mode == "interleave" and b * n >= 1000:
        raise RuntimeError(f"npu_rotary_mul: interleave mode needs B * N < 1000, got {b * n}")
    if (r1.requires_grad or r2.requires_grad) and b * n > 1024:
        raise RuntimeError(f"npu_rotary_mul: r1/r2 gradients need B * N <= 1024, got {b * n}")
    if rotate is not None:
        if rotate.dim() != 2 or tuple(rotate.shape) != (d, d) or rotate.dtype not in _DTYPES:
            raise RuntimeError(f"npu_rotary_mul: rotate must be a [{d}, {d}] float16/bfloat16/float32 matrix")
        x_new = input @ rotate.detach().to(input.dtype)
    elif rotary_mode == "half":
        x1, x2 = torch.chunk(input, 2, -1)
        x_new = torch.cat((-x2, x1), dim=-1)
    else:
        x1, x2 = input[..., ::2], input[..., 1::2]
        x_new = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return r1 * input + r2 * x_new


def _combine(tensors: List[torch.Tensor]):
    """npu_combine_tensors: one zeroed buffer; each tensor's data is copied in and the tensor re-pointed at its
    slice (torch_npu changes the data pointer; here `set_` to a view of the buffer does the same)."""
    if not tensors:
        return None
    dtype = tensors[0].dtype
    for t in tensors:
        if t.dtype != dtype:
            raise RuntimeError("Tensors to combine must have the same dtype.")
        if not t.is_contiguous():
            raise RuntimeError("Tensors to combine must be contiguous.")
    total = sum(t.numel() for t in tensors)
    if total == 0:
        return None
    combined = torch.zeros(total, dtype=dtype, device=tensors[0].device)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            value = t.clone()
            t.set_(combined[offset:offset + n].view(t.shape))
            t.copy_(value)
            offset += n
    return combined


class NpuFusedAdamW(torch.optim.Optimizer):
    """torch_npu.optim.NpuFusedAdamW as torch_npu's optim/npu_fused_optim_base.py and npu_fused_adamw.py behave.

    At the first step (or the first zero_grad) the parameters that have a gradient then, their gradients and
    then their states are moved into combined buffers (one per dtype over all groups; per-group slices), and
    every later step updates those buffers: a parameter without a gradient at that moment is never stepped, a
    gradient rebound afterwards (`p.grad = new`) is never read (the buffer keeps the old values), a parameter
    of another dtype than float32/float16 raises TypeError then (not in the constructor). zero_grad zeroes the
    buffers in place and rejects set_to_none=True. `is_fused_optimizer` is True.
    """

    instances: List["NpuFusedAdamW"] = []

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        if lr < 0.0 or eps < 0.0 or not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0 or weight_decay < 0.0:
            raise ValueError("NpuFusedAdamW: invalid hyper-parameter")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))
        self.is_fused_optimizer = True
        self.is_params_grads_combined = False
        self.is_states_combined = False
        self.params_all_group_combined = [None, None]  # [float32, float16]
        self.grads_all_group_combined = [None, None]
        self.combined_params_indexed_by_group = None
        self.combined_grads_indexed_by_group = None
        self.combined_states_indexed_by_group = None
        self.params_lists_indexed_by_group = []
        self.steps = 0
        NpuFusedAdamW.instances.append(self)
        calls.append(("NpuFusedAdamW", {"groups": len(self.param_groups), "lr": lr}))

    def _maybe_init_combined_params_and_grads(self):
        if self.is_params_grads_combined:
            return
        per_group = []
        params_all, grads_all = [[], []], [[], []]
        for group in self.param_groups:
            lists = [[], []]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dtype == torch.float32:
                    slot = 0
                elif p.dtype == torch.float16:
                    slot = 1
                else:
                    raise TypeError(f"Fused optimizer's parameters must be either float32 or float16, but received {p.dtype}")
                lists[slot].append(p)
                params_all[slot].append(p)
                grads_all[slot].append(p.grad)
            per_group.append(lists)
        self.params_lists_indexed_by_group = per_group
        for slot in range(2):
            self.params_all_group_combined[slot] = _combine(params_all[slot])
            self.grads_all_group_combined[slot] = _combine(grads_all[slot])
        offsets = [0, 0]
        self.combined_params_indexed_by_group, self.combined_grads_indexed_by_group = [], []
        for lists in per_group:
            params_parts, grads_parts = [], []
            for slot in range(2):
                size = sum(p.numel() for p in lists[slot])
                if size == 0:
                    params_parts.append(None)
                    grads_parts.append(None)
                    continue
                params_parts.append(self.params_all_group_combined[slot].narrow(0, offsets[slot], size))
                grads_parts.append(self.grads_all_group_combined[slot].narrow(0, offsets[slot], size))
                offsets[slot] += size
            self.combined_params_indexed_by_group.append(params_parts)
            self.combined_grads_indexed_by_group.append(grads_parts)
        if any(t is not None for t in self.params_all_group_combined):
            self.is_params_grads_combined = True

    def _maybe_init_combined_states(self):
        if self.is_states_combined:
            return
        self.combined_states_indexed_by_group = []
        for group, lists in zip(self.param_groups, self.params_lists_indexed_by_group):
            parts = []
            for params in lists:
                params = [p for p in params if p.grad is not None]
                for p in params:
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                        if group["amsgrad"]:
                            state["max_exp_avg_sq"] = torch.zeros_like(p)
                    else:  # loaded from a state dict: fresh tensors, as the real one copies them
                        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                            if key in state:
                                state[key] = state[key].clone()
                combined = {"step": self.state[params[0]]["step"] if params else 0}
                for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ()):
                    combined[key] = _combine([self.state[p][key] for p in params])
                parts.append(combined)
            self.combined_states_indexed_by_group.append(parts)
        self.is_states_combined = True

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if not self.is_params_grads_combined:
            self._maybe_init_combined_params_and_grads()
        if not self.is_states_combined:
            self._maybe_init_combined_states()
        self.steps += 1
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["step"] += 1  # KeyError for a parameter that had no gradient at the first step
            beta1, beta2 = group["betas"]
            for param, grad, state in zip(self.combined_params_indexed_by_group[index],
                                          self.combined_grads_indexed_by_group[index],
                                          self.combined_states_indexed_by_group[index]):
                if param is None or grad is None:
                    continue
                param.mul_(1 - group["lr"] * group["weight_decay"])
                state["step"] += 1
                bc1 = 1 - beta1 ** state["step"]
                bc2 = 1 - beta2 ** state["step"]
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                second = state["exp_avg_sq"]
                if group["amsgrad"]:
                    torch.max(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                denom = (second.sqrt() / math.sqrt(bc2)).add_(group["eps"])
                param.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / bc1)
        return loss

    def get_combined_params(self):
        return self.params_all_group_combined

    def get_combined_grads(self):
        return self.grads_all_group_combined

    @torch.no_grad()
    def zero_grad(self, set_to_none=False):
        if set_to_none:
            raise ValueError("set_to_none is not supported in fused optimizers")
        if not self.is_params_grads_combined:
            self._maybe_init_combined_params_and_grads()
            if not self.is_params_grads_combined:
                super().zero_grad(set_to_none=False)
                return
        for combined in self.grads_all_group_combined:
            if combined is not None:
                combined.zero_()


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
        self.autocast_enabled = False
        self.autocast_dtype = torch.float16

    def is_available(self):
        return self.available

    def device_count(self):
        return 8 if self.available else 0  # one Atlas 800T A2 node

    def set_device(self, device):
        self.current_device = device

    def set_compile_mode(self, jit_compile=False):
        self.jit_compile = jit_compile

    def is_jit_compile_false(self):
        return not self.jit_compile

    # torch_npu's own autocast state (npu/autocast_utils.py, 2.1.0.post17 .. 2.14.0)
    def is_autocast_enabled(self):
        return self.autocast_enabled

    def get_autocast_dtype(self):
        return self.autocast_dtype


npu = _Npu()


def install(monkeypatch) -> "types.ModuleType":
    """Put this module into sys.modules as torch_npu (and torch_npu.optim) for one test; fresh state."""
    import sys

    module = sys.modules[__name__]
    reset_calls()
    NpuFusedAdamW.instances.clear()
    npu.available, npu.jit_compile, npu.current_device = False, False, None
    npu.autocast_enabled, npu.autocast_dtype = False, torch.float16
    npu.config = _NpuConfig()
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    monkeypatch.setitem(sys.modules, "torch_npu.optim", optim)
    monkeypatch.setitem(sys.modules, "torch_npu.npu", npu)
    return module
