"""The NPU route, driven on CPU tensors through a stand-in `torch_npu` (tests/fake_torch_npu.py).

Forcing `npu` runs the wrappers whatever the tensors' device; the stand-in follows torch_npu's documented
signatures and constraints, records every call, and computes the documented function.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from vggt_train import kernels
from vggt_train.kernels.check import run_check


pytestmark = pytest.mark.usefixtures("clean_kernel_registry")


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
        for step in grads:  # as the trainer drives it: backward accumulates, kernels.zero_grad clears
            sum((p * g).sum() for p, g in zip(params, step)).backward()
            opt.step()
            kernels.zero_grad(opt)
        finals.append([p.detach().clone() for p in params])
    assert len(npu.NpuFusedAdamW.instances) == 1 and npu.NpuFusedAdamW.instances[0].steps == 4
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b)


def _torch_adamw_run(init, grads, **hp):
    p = torch.nn.Parameter(init.clone())
    opt = torch.optim.AdamW([p], **hp)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_fake_npu_fused_adamw_behaves_like_torch_npus_combined_buffers(npu):
    """What torch_npu's source does (optim/npu_fused_optim_base.py), which the wrappers must live with."""
    torch.manual_seed(5)
    init, g1, g2 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    hp = dict(lr=0.1, weight_decay=0.01)

    def fused_after(update_second_gradient):
        p = torch.nn.Parameter(init.clone())
        opt = npu.optim.NpuFusedAdamW([p], **hp)
        assert opt.is_fused_optimizer and kernels.is_fused_optimizer(opt)
        p.grad = g1.clone()
        opt.step()
        # parameters and gradients now live in the combined buffers
        assert p.untyped_storage().data_ptr() == opt.get_combined_params()[0].untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == opt.get_combined_grads()[0].untyped_storage().data_ptr()
        update_second_gradient(p)
        opt.step()
        return p.detach()

    rebound = fused_after(lambda p: setattr(p, "grad", g2.clone()))
    in_place = fused_after(lambda p: p.grad.copy_(g2))
    torch.testing.assert_close(rebound, _torch_adamw_run(init, [g1, g1], **hp))  # the rebound g2 was never read
    torch.testing.assert_close(in_place, _torch_adamw_run(init, [g1, g2], **hp))

    p = torch.nn.Parameter(init.clone())
    opt = npu.optim.NpuFusedAdamW([p], **hp)
    p.grad = g1.clone()
    opt.step()
    with pytest.raises(ValueError, match="set_to_none is not supported"):
        opt.zero_grad(set_to_none=True)
    opt.zero_grad(set_to_none=False)
    assert torch.count_nonzero(opt.get_combined_grads()[0]) == 0 and p.grad is not None


def test_fake_npu_fused_adamw_rejects_bf16_parameters_at_the_first_step(npu):
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
    opt = npu.optim.NpuFusedAdamW([p])  # the constructor accepts them, as torch_npu's does
    p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match="float32 or float16"):
        opt.step()


def test_fake_npu_fused_adamw_never_steps_a_parameter_without_a_gradient_at_its_first_step(npu):
    used, late = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3))
    opt = npu.optim.NpuFusedAdamW([used, late], lr=0.1)
    used.grad = torch.ones(3)
    opt.step()
    late.grad = torch.ones(3)
    with pytest.raises(KeyError):  # its state was never created
        opt.step()


def test_zero_grad_keeps_fused_gradients_in_place_and_frees_others(npu):
    class Wrapper:  # accelerate's AcceleratedOptimizer: holds the optimiser as .optimizer, set_to_none None -> True
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def zero_grad(self, set_to_none=None):
            self.optimizer.zero_grad(set_to_none=True if set_to_none is None else set_to_none)

    p = torch.nn.Parameter(torch.randn(3))
    fused = Wrapper(npu.optim.NpuFusedAdamW([p], lr=0.1))
    (p * 2).sum().backward()
    fused.optimizer.step()
    with pytest.raises(ValueError):
        fused.zero_grad()  # what the trainer did before kernels.zero_grad
    kernels.zero_grad(fused)
    assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    (p * 3).sum().backward()  # backward accumulates into the combined buffer
    assert torch.count_nonzero(fused.optimizer.get_combined_grads()[0] - 3) == 0

    q = torch.nn.Parameter(torch.randn(3))
    plain = Wrapper(torch.optim.AdamW([q]))
    q.sum().backward()
    assert not kernels.is_fused_optimizer(plain)
    kernels.zero_grad(plain)
    assert q.grad is None


# -- adamw under DeepSpeed ------------------------------------------------------------------------------------------
def test_npu_adamw_is_never_selected_for_deepspeed_partitions(npu):
    params = [torch.nn.Parameter(torch.randn(4))]
    assert isinstance(kernels.make_adamw(params, lr=1e-3, device="npu"), npu.NpuFusedAdamW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = kernels.make_adamw(params, lr=1e-3, device="npu:0", sharded=True)
    assert type(opt) is torch.optim.AdamW and len(npu.NpuFusedAdamW.instances) == 1
    assert not _fallbacks(caught)  # automatic: torch's AdamW by design, nothing to warn about


def test_forced_npu_adamw_under_deepspeed_falls_back_with_one_warning(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "adamw=npu")
    params = [torch.nn.Parameter(torch.randn(4))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = kernels.make_adamw(params, lr=1e-3, sharded=True)
        kernels.make_adamw(params, lr=1e-3, sharded=True)
    assert type(first) is torch.optim.AdamW and not npu.NpuFusedAdamW.instances
    messages = _fallbacks(caught)
    assert len(messages) == 1 and "DeepSpeed" in messages[0] and "'adamw'" in messages[0]
    assert isinstance(kernels.make_adamw(params, lr=1e-3), npu.NpuFusedAdamW)  # without DeepSpeed: as forced


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


# -- autocast and mixed dtypes --------------------------------------------------------------------------------------
class _Float32LayerNorm(torch.nn.LayerNorm):
    """LayerNorm as CUDA autocast runs it (its float32 list); CPU autocast returns bf16 instead."""

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float())


@pytest.mark.parametrize("norm", ["cpu autocast", "float32 as on cuda"])
def test_qk_norm_block_under_cpu_autocast_runs_the_fused_npu_kernels(npu, monkeypatch, norm):
    """Under autocast q/k reach the ops in float32 (QK-LayerNorm in float32 on CUDA; bf16 q/k rotated by float32
    tables promote on CPU) while v is bf16: the ops cast as autocast casts SDPA and rope computes in x's dtype,
    so the fused kernels run instead of falling back to the reference on a dtype mismatch."""
    from vggt_train.model.layers import Attention
    from vggt_train.model.rope import patch_positions, rotary_tables

    torch.manual_seed(6)
    block = Attention(128, 2, qk_norm=True)  # head dim 64: rope halves of 32, 32-byte aligned in bf16 and fp32
    if norm != "cpu autocast":
        for name in ("q_norm", "k_norm"):
            fp32 = _Float32LayerNorm(64)
            fp32.load_state_dict(getattr(block, name).state_dict())
            setattr(block, name, fp32)
    positions = patch_positions(3, 4, 1)
    tables = rotary_tables(positions, 64, 100.0, torch.float32)
    x = torch.randn(2, positions.shape[0], 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = block(x, rotary=tables)  # automatic: SDPA and the reference rope
        monkeypatch.setenv(kernels.ENV_VAR, "attention=npu,rope=npu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = block(x, rotary=tables)
    assert not _fallbacks(caught), _fallbacks(caught)
    assert npu.count("npu_fusion_attention") == 1 and npu.count("npu_rotary_mul") == 4
    assert [args["dtype"] for name, args in npu.calls if name == "npu_fusion_attention"] == [torch.bfloat16]
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_attention_casts_mixed_dtypes_only_under_autocast(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "attention=npu")
    q, k = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    v = torch.randn(1, 2, 5, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.attention(q, k, v)
    assert out.dtype == torch.bfloat16 and npu.count("npu_fusion_attention") == 1
    with pytest.warns(kernels.KernelFallbackWarning, match="dtype"):  # outside autocast nothing is cast
        kernels.attention(q, k, v)
    assert npu.count("npu_fusion_attention") == 1


def test_attention_casts_to_torch_npus_autocast_dtype_on_npu(npu):
    from vggt_train.kernels.amp import autocast_dtype

    assert autocast_dtype("npu") is None
    npu.npu.autocast_enabled, npu.npu.autocast_dtype = True, torch.bfloat16
    assert autocast_dtype("npu") is torch.bfloat16


def test_rope_casts_tables_to_the_dtype_of_x_and_runs_the_fused_kernel(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "rope=npu")
    x = torch.randn(2, 3, 7, 32, dtype=torch.bfloat16)
    angles = torch.rand(1, 1, 7, 16) * 6.28
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)  # float32 tables
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = kernels.rotary_mul(x, cos, sin)
    assert not _fallbacks(caught) and npu.count("npu_rotary_mul") == 1
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, kernels.rotary_reference(x, cos.bfloat16(), sin.bfloat16()))


# -- the stand-in's npu_rotary_mul follows both documented signatures --------------------------------------------------
def test_fake_rotary_mul_takes_rotate_and_enforces_table_layouts_and_dtypes(npu):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 5, 8)
    r1, r2 = torch.rand(1, 1, 5, 8), torch.rand(1, 1, 5, 8)
    half = npu.npu_rotary_mul(x, r1, r2)
    rotate = torch.zeros(8, 8)  # the documented half-mode rotation matrix: x @ rotate = cat(-x2, x1)
    rotate[:4, 4:] = torch.eye(4)
    rotate[4:, :4] = -torch.eye(4)
    torch.testing.assert_close(npu.npu_rotary_mul(x, r1, r2, "half", rotate), half)
    torch.testing.assert_close(npu.npu_rotary_mul(x, r1, r2, rotate=rotate), half)
    npu.npu_rotary_mul(x, torch.rand(1, 3, 1, 8), torch.rand(1, 3, 1, 8))  # 1S1D of a BSND reading (the docs' example)
    with pytest.raises(RuntimeError, match="layout"):
        npu.npu_rotary_mul(x, torch.rand(1, 3, 5, 1), r2)  # not a broadcast the kernel takes
    with pytest.raises(RuntimeError, match="layout"):
        npu.npu_rotary_mul(x, torch.rand(2, 3, 5, 8), torch.rand(2, 3, 5, 8), "interleave")  # interleave: 11SD & co only
    with pytest.raises(RuntimeError, match="differ"):
        npu.npu_rotary_mul(x.bfloat16(), r1, r2)
    with pytest.raises(RuntimeError, match="dtype"):
        npu.npu_rotary_mul(x.double(), r1.double(), r2.double())
    with pytest.raises(RuntimeError, match=r"\[8, 8\]"):
        npu.npu_rotary_mul(x, r1, r2, rotate=torch.eye(4))


def test_jit_compile_is_probed_once_and_setup_npu_updates_it(npu, monkeypatch):
    from vggt_train.kernels import npu as npu_setup

    monkeypatch.setenv(kernels.ENV_VAR, "rope=npu")
    probes = []
    real = npu.npu.is_jit_compile_false
    monkeypatch.setattr(npu.npu, "is_jit_compile_false", lambda: probes.append(1) or real(), raising=False)
    x, cos, sin = torch.randn(1, 2, 3, 32), torch.ones(1, 1, 3, 32), torch.zeros(1, 1, 3, 32)
    for _ in range(3):
        kernels.rotary_mul(x, cos, sin)
    assert probes == [1] and npu.count("npu_rotary_mul") == 3
    npu.npu.available = True
    kernels.setup_npu(jit_compile=True)  # what setup_npu sets is what the limits see, without a new probe
    assert npu_setup.jit_compile_enabled() is True and probes == [1]
    with pytest.warns(kernels.KernelFallbackWarning, match="jit_compile"):
        kernels.rotary_mul(x, cos, sin)
