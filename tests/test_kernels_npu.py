"""The NPU route, driven on CPU tensors through a stand-in `torch_npu` (tests/fake_torch_npu.py).

Forcing `npu` runs the wrappers whatever the tensors' device; the stand-in follows torch_npu's documented
signatures and constraints, records every call, and computes the documented function.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fake_torch_npu
from vggt_train import kernels
from vggt_train.kernels.check import run_check


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    kernels.reset()
    yield
    kernels.reset()


@pytest.fixture
def npu(monkeypatch):
    fake = fake_torch_npu.install(monkeypatch)
    kernels.reset()  # forget a failed import of the real torch_npu
    return fake


def _fallbacks(caught):
    return [str(w.message) for w in caught if issubclass(w.category, kernels.KernelFallbackWarning)]


# -- the stand-in itself follows the documentation -------------------------------------------------------------------
def test_fake_fusion_attention_layouts_agree_and_default_scale_is_one(npu):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    bnsd = npu.npu_fusion_attention(q, k, v, 3, "BNSD", scale=0.5)
    assert len(bnsd) == 7
    bsh = npu.npu_fusion_attention(*(t.transpose(1, 2).reshape(2, 5, 12) for t in (q, k, v)), 3, "BSH", scale=0.5)[0]
    torch.testing.assert_close(bsh.reshape(2, 5, 3, 4).transpose(1, 2), bnsd[0])
    unscaled = npu.npu_fusion_attention(q, k, v, head_num=3, input_layout="BNSD")[0]
    torch.testing.assert_close(unscaled, kernels.attention_reference(q, k, v, scale=1.0))
    with pytest.raises(RuntimeError, match="head_num"):
        npu.npu_fusion_attention(q, k, v, head_num=2, input_layout="BNSD")


# -- attention -----------------------------------------------------------------------------------------------------
def test_forced_npu_attention_calls_npu_fusion_attention_with_documented_arguments(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "attention=npu")
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 9, 16, requires_grad=True) for _ in range(3))
    out = kernels.attention(q, k, v)  # scale None -> 1/sqrt(D), passed explicitly (torch_npu's default is 1.0)
    assert npu.count("npu_fusion_attention") == 1
    _, args = npu.calls[0]
    assert args["input_layout"] == "BNSD" and args["head_num"] == 4 and args["keep_prob"] == 1.0
    assert args["scale"] == pytest.approx(1 / math.sqrt(16))
    expected = kernels.attention_reference(q, k, v)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for a, b in zip(grads, torch.autograd.grad(expected, (q, k, v), g)):
        torch.testing.assert_close(a, b)
    kernels.attention(q, k, v, scale=0.25)
    assert npu.calls[-1][1]["scale"] == 0.25


def test_npu_attention_outside_documented_limits_falls_back_once(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "attention=npu")
    wide = [torch.randn(1, 1, 3, 1024) for _ in range(3)]  # head dim > 768
    narrow_v = [torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 4)]  # key/value shapes differ
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = kernels.attention(*wide)
        kernels.attention(*wide)
        kernels.attention(*narrow_v)
    assert npu.count("npu_fusion_attention") == 0
    torch.testing.assert_close(out, kernels.attention_reference(*wide))
    messages = _fallbacks(caught)
    assert len(messages) == 2
    assert "head dim" in messages[0] and "768" in messages[0] and "key/value shape" in messages[1]


def test_npu_is_selected_automatically_only_for_npu_tensors(npu):
    assert kernels.selected("attention", "npu") == "npu"
    assert kernels.selected("rope", "npu") == "npu"
    assert kernels.selected("adamw", "npu") == "npu"
    assert kernels.selected("attention", "cpu") == "cpu"
    x = torch.randn(1, 1, 4, 8)
    kernels.attention(x, x, x)
    kernels.rotary_mul(x, x, x)
    assert npu.calls == []


# -- rope -----------------------------------------------------------------------------------------------------------
def test_forced_npu_rope_calls_npu_rotary_mul_and_matches_reference(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "rope=npu")
    torch.manual_seed(2)
    x = torch.randn(2, 3, 7, 32, requires_grad=True)
    angles = torch.rand(1, 1, 7, 16) * 6.28
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    out = kernels.rotary_mul(x, cos, sin)
    assert npu.count("npu_rotary_mul") == 1
    assert npu.calls[0][1]["rotary_mode"] == "half" and npu.calls[0][1]["cos_shape"] == (1, 1, 7, 32)
    expected = kernels.rotary_reference(x, cos, sin)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(expected, x, g)[0])
    kernels.rotary_mul(x, cos.expand(2, 1, 7, 32), sin.expand(2, 1, 7, 32))  # B1SD is documented too
    assert npu.count("npu_rotary_mul") == 2


@pytest.mark.parametrize("x_shape, cos_shape, dtype, rule", [
    ((2, 3, 7, 8), (1, 3, 7, 8), torch.float32, "cos/sin layout"),  # 1NSD is not among 11SD/B1SD/BNSD
    ((1000, 1, 7, 8), (1, 1, 7, 8), torch.float32, "batch/heads"),  # B < 1000
    ((1, 1, 7, 10), (1, 1, 7, 10), torch.float32, "32-byte alignment"),  # 40 bytes: the documented slow path
    ((1, 1, 7, 8), (1, 1, 7, 8), torch.bfloat16, "32-byte alignment"),  # 16 bytes
    ((1, 1, 7, 7), (1, 1, 7, 7), torch.float32, "head dim"),  # odd D
    ((1, 1, 7, 8), (1, 1, 7, 8), torch.float64, "dtype"),
])
def test_npu_rope_outside_documented_limits_runs_the_reference(npu, monkeypatch, x_shape, cos_shape, dtype, rule):
    monkeypatch.setenv(kernels.ENV_VAR, "rope=npu")
    x, cos, sin = torch.randn(*x_shape, dtype=dtype), torch.rand(*cos_shape, dtype=dtype), torch.rand(*cos_shape, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = kernels.rotary_mul(x, cos, sin)
    assert npu.count("npu_rotary_mul") == 0
    torch.testing.assert_close(out, kernels.rotary_reference(x, cos, sin))
    assert any(rule in m for m in _fallbacks(caught)), _fallbacks(caught)


def test_npu_rope_with_jit_compile_needs_head_dim_128(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "rope=npu")
    npu.npu.jit_compile = True
    x = torch.randn(1, 2, 3, 32)
    with pytest.warns(kernels.KernelFallbackWarning, match="jit_compile"):
        kernels.rotary_mul(x, torch.ones(1, 1, 3, 32), torch.zeros(1, 1, 3, 32))
    x = torch.randn(1, 2, 3, 128)
    kernels.rotary_mul(x, torch.ones(1, 1, 3, 128), torch.zeros(1, 1, 3, 128))
    assert npu.count("npu_rotary_mul") == 1


# -- adamw ----------------------------------------------------------------------------------------------------------
def test_forced_npu_adamw_is_npu_fused_adamw_and_matches_torch(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "adamw=npu")
    torch.manual_seed(3)
    init = [torch.randn(6, 5), torch.randn(5)]
    grads = [[torch.randn_like(p) for p in init] for _ in range(4)]
    finals = []
    for make in (kernels.make_adamw, lambda g, **kw: torch.optim.AdamW(g, **kw)):
        params = [torch.nn.Parameter(p.clone()) for p in init]
        opt = make([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}],
                   lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        finals.append([p.detach() for p in params])
    assert len(npu.NpuFusedAdamW.instances) == 1 and npu.NpuFusedAdamW.instances[0].steps == 4
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b)


def test_npu_adamw_with_bf16_parameters_falls_back_to_the_reference(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "adamw=npu")
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
    with pytest.warns(kernels.KernelFallbackWarning, match="float32/float16"):
        opt = kernels.make_adamw([p], lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW) and not npu.NpuFusedAdamW.instances


# -- device set-up, listing, self-check -------------------------------------------------------------------------------
def test_setup_npu_binds_the_local_rank_and_sets_nd_format_and_binary_kernels(npu, monkeypatch):
    with pytest.raises(kernels.KernelError, match="sees no NPU"):
        kernels.setup_npu()
    npu.npu.available = True
    npu.npu.jit_compile = True
    monkeypatch.setenv("LOCAL_RANK", "3")
    device = kernels.setup_npu()
    assert device == "npu:3" and npu.npu.current_device == 3
    assert npu.npu.config.allow_internal_format is False
    assert npu.npu.jit_compile is False
    assert kernels.HCCL_BACKEND == "hccl"


def test_setup_npu_without_torch_npu_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch_npu", None)
    with pytest.raises(kernels.KernelError, match="torch_npu cannot be imported"):
        kernels.setup_npu()


def test_table_marks_npu_available_when_torch_npu_sees_a_device(npu, monkeypatch):
    rows = {(r["op"], r["backend"]): r for r in kernels.table(["cpu"])}
    assert not rows[("attention", "npu")]["available"] and "no npu device" in rows[("attention", "npu")]["why_not"]
    npu.npu.available = True
    rows = {(r["op"], r["backend"]): r for r in kernels.table()}  # local device types now include npu
    assert rows[("attention", "npu")]["available"] and rows[("attention", "npu")]["selected_for"] == ["npu"]
    monkeypatch.setenv(kernels.ENV_VAR, "rope=npu")
    rows = {(r["op"], r["backend"]): r for r in kernels.table()}
    assert rows[("rope", "npu")]["selected_for"] == ["all devices"] and "VGGT_KERNELS" in rows[("rope", "npu")]["note"]


def test_self_check_passes_the_npu_wrappers_and_catches_a_broken_kernel(npu, monkeypatch, capsys):
    rows = run_check(backends=["npu"], device="cpu")
    assert {r.op for r in rows} == {"attention", "rope", "adamw"}
    assert all(r.status == "ok" for r in rows), [(r.op, r.case, r.dtype, r.status, r.note) for r in rows]
    assert npu.count("npu_fusion_attention") >= 4 and npu.count("npu_rotary_mul") >= 4 and npu.NpuFusedAdamW.instances

    # a kernel that rotates the wrong way: the CLI check must fail with exit status 1
    good = npu.npu_rotary_mul
    monkeypatch.setattr(npu, "npu_rotary_mul", lambda x, r1, r2, rotary_mode="half": good(x, r1, -r2))
    from vggt_train.cli import main

    assert main(["kernels", "--check", "--backend", "npu", "--device", "cpu", "--op", "rope"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "rope/npu" in out


def test_check_of_an_npu_backend_without_torch_npu_is_a_user_error(monkeypatch, capsys):
    from vggt_train.cli import main

    monkeypatch.setitem(__import__("sys").modules, "torch_npu", None)
    assert main(["kernels", "--check", "--backend", "npu"]) == 2
    assert "torch_npu" in capsys.readouterr().err
