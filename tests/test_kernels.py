"""Kernel registry: reference parity, selection and overrides (env, config), errors, fallbacks, the CLI listing."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from vggt_train import kernels
from vggt_train.kernels import registry
from vggt_train.kernels.attention import attention_cpu, attention_op
from vggt_train.kernels.rope import rope_op


pytestmark = pytest.mark.usefixtures("clean_kernel_registry")


def _naive_attention(q, k, v, scale):
    w = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, dim=-1)
    return (w @ v.double()).to(q.dtype)


# -- reference parity ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_reference_and_cpu_backend_match_the_definition(scale):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 11, 16), torch.randn(2, 3, 7, 16), torch.randn(2, 3, 7, 16)
    expected = _naive_attention(q, k, v, 1 / math.sqrt(16) if scale is None else scale)
    torch.testing.assert_close(kernels.attention_reference(q, k, v, scale), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attention_cpu(q, k, v, scale), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(kernels.attention(q, k, v, scale=scale), expected, atol=1e-6, rtol=1e-5)


def test_attention_reference_gradients_match_sdpa():
    torch.manual_seed(1)
    leaves = [torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    g = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    grads = []
    for fn in (kernels.attention_reference, attention_cpu):
        for t in leaves:
            t.grad = None
        fn(*leaves, 0.5).backward(g)
        grads.append([t.grad.clone() for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda q, k, v: kernels.attention_reference(q, k, v, 0.5), leaves)


def test_attention_reference_softmax_is_float32_for_bf16_inputs():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 64, 32) for _ in range(3))
    exact = _naive_attention(q, k, v, 32 ** -0.5)
    out = kernels.attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - exact).abs().max() < 3e-2


def test_rotary_reference_is_half_mode_rotation():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 5, 8)
    angles = torch.rand(1, 1, 5, 4) * 6.28
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    out = kernels.rotary_mul(x, cos, sin)
    # pairs (i, i + D/2) rotate by the angle: (a, b) -> (a cos - b sin, b cos + a sin)
    a, b = x[..., :4], x[..., 4:]
    expected = torch.cat([a * angles.cos() - b * angles.sin(), b * angles.cos() + a * angles.sin()], -1)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(kernels.rotate_half(torch.arange(4.0)), torch.tensor([-2.0, -3.0, 0.0, 1.0]))
    # a rotation keeps the norm of every pair
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))


def test_make_adamw_matches_torch_adamw_with_groups():
    torch.manual_seed(4)
    init = [torch.randn(5, 4), torch.randn(4)]
    results = []
    for make in (kernels.make_adamw, None):
        params = [torch.nn.Parameter(p.clone()) for p in init]
        groups = [{"params": [params[0]], "weight_decay": 0.1}, {"params": [params[1]], "weight_decay": 0.0}]
        opt = make(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1) if make else \
            torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = torch.full_like(p, float(step + i + 1))
            opt.step()
        results.append([p.detach() for p in params])
    assert kernels.selected("adamw") == "cpu"
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    assert not torch.equal(results[0][0], init[0])


def test_cpu_adamw_is_torchs_fused_kernel_where_torch_has_one():
    p = torch.nn.Parameter(torch.randn(3))
    opt = kernels.make_adamw([p], lr=1e-3)
    fused_cpu = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
    assert opt.defaults.get("fused") is (True if fused_cpu else None)
    assert opt.defaults.get("foreach") is (None if fused_cpu else True)
    kernels.configure({"adamw": "reference"})
    assert kernels.make_adamw([p], lr=1e-3).defaults["foreach"] is False  # the plain single-tensor loop


def test_make_adamw_accepts_a_generator_and_rejects_nothing_to_optimise():
    model = torch.nn.Linear(3, 2)
    opt = kernels.make_adamw(model.parameters(), lr=1e-3)
    assert len(opt.param_groups[0]["params"]) == 2
    assert opt.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="no parameters"):
        kernels.make_adamw(iter([]), lr=1e-3)


# -- selection ------------------------------------------------------------------------------------------------------
def test_automatic_selection_follows_the_tensor_device():
    assert kernels.selected("attention", "cpu") == "cpu"
    assert kernels.selected("rope", "cpu") == "reference"  # no faster CPU rope than the formula
    assert kernels.selected("adamw", "cpu") == "cpu"
    assert kernels.selected("attention", "meta") == "reference"  # a device without a backend
    if not torch.cuda.is_available():
        assert kernels.selected("attention", "cuda") == "cuda"  # torch is the library; the tensor brings the device


def test_env_var_overrides_per_op_and_is_reread_when_it_changes(monkeypatch):
    calls = []
    monkeypatch.setitem(attention_op.backends, "cpu", registry.Backend("cpu", lambda *a: calls.append("cpu") or kernels.attention_reference(*a)))
    q = torch.randn(1, 1, 3, 4)
    kernels.attention(q, q, q)
    assert calls == ["cpu"]
    monkeypatch.setenv(kernels.ENV_VAR, " attention = reference ,rope=reference")
    kernels.attention(q, q, q)
    assert calls == ["cpu"] and kernels.selected("attention") == "reference"
    monkeypatch.setenv(kernels.ENV_VAR, "rope=reference")
    kernels.attention(q, q, q)
    assert calls == ["cpu", "cpu"]


def test_config_overrides_and_env_wins_over_config(monkeypatch):
    kernels.configure({"attention": "reference", "adamw": "reference"})
    assert kernels.selected("attention") == "reference" and kernels.selected("adamw") == "reference"
    assert kernels.overrides() == {"attention": ("reference", "config"), "adamw": ("reference", "config")}
    monkeypatch.setenv(kernels.ENV_VAR, "attention=cpu")
    assert kernels.selected("attention") == "cpu"
    assert kernels.overrides()["attention"] == ("cpu", "env")
    kernels.configure(None)
    assert kernels.selected("adamw") == "cpu"
    kernels.configure("adamw=reference")  # the string grammar works for the config too
    assert kernels.selected("adamw") == "reference"
    kernels.configure({"adamw": "auto"})
    assert kernels.selected("adamw") == "cpu"


def test_all_sets_every_op_and_auto_clears(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "all=reference,attention=auto")
    assert kernels.selected("rope") == kernels.selected("adamw") == "reference"
    assert kernels.selected("attention") == "cpu"


@pytest.mark.parametrize("spec, message", [
    ("atention=npu", "unknown kernel op 'atention'"),
    ("attention=gpu", "unknown backend 'gpu'"),
    ("rope=cpu", "op 'rope' has no 'cpu' backend"),
    ("attention", "is not op=backend"),
])
def test_bad_specs_name_the_culprit(monkeypatch, spec, message):
    with pytest.raises(kernels.KernelError, match=message):
        kernels.configure(spec)
    monkeypatch.setenv(kernels.ENV_VAR, spec)
    with pytest.raises(kernels.KernelError, match=message):
        kernels.attention(*(torch.randn(1, 1, 2, 4) for _ in range(3)))


def test_forcing_a_backend_whose_library_is_missing_names_op_and_module(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch_npu", None)  # import torch_npu -> ImportError
    monkeypatch.setenv(kernels.ENV_VAR, "rope=npu")
    x = torch.randn(1, 1, 2, 4)
    with pytest.raises(kernels.KernelError, match=r"kernel op 'rope': backend 'npu' is forced by VGGT_KERNELS.*'torch_npu' cannot be imported"):
        kernels.rotary_mul(x, x, x)
    with pytest.raises(kernels.KernelError, match=r"kernel op 'adamw'.*kernels config.*'torch_npu'"):
        kernels.configure({"adamw": "npu"})
    # automatic selection never needs the missing library
    monkeypatch.delenv(kernels.ENV_VAR)
    assert kernels.selected("rope", "cpu") == "reference"


def test_configure_checks_the_environment_too_and_fails_at_start_up(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch_npu", None)
    monkeypatch.setenv(kernels.ENV_VAR, "attention=cpu,rope=npu")
    with pytest.raises(kernels.KernelError, match=r"kernel op 'rope': backend 'npu' is forced by VGGT_KERNELS='attention=cpu,rope=npu'.*'torch_npu' cannot be imported"):
        kernels.configure({"attention": "reference"})
    monkeypatch.setenv(kernels.ENV_VAR, "attention=tpu")
    with pytest.raises(kernels.KernelError, match=f"{kernels.ENV_VAR}: unknown backend 'tpu'"):
        kernels.configure(None)
    monkeypatch.setenv(kernels.ENV_VAR, "rope=reference")
    kernels.configure(None)
    assert kernels.overrides() == {"rope": ("reference", "env")}


def test_selection_is_cached_per_op_and_device(monkeypatch):
    x = torch.randn(1, 1, 2, 4)
    kernels.attention(x, x, x)

    def must_not_run(*args):
        raise AssertionError("selection was recomputed on a cached call")

    monkeypatch.setattr(registry, "library_error", must_not_run)
    for _ in range(3):
        kernels.attention(x, x, x)  # cached: no re-resolution
    monkeypatch.setenv(kernels.ENV_VAR, "rope=reference")  # a new env value clears the cache
    with pytest.raises(AssertionError, match="recomputed"):
        kernels.attention(x, x, x)


# -- fallbacks ------------------------------------------------------------------------------------------------------
def test_inputs_outside_a_backends_limits_run_the_reference_with_one_warning(monkeypatch):
    used = []
    limits = lambda x, cos, sin: ("head dim", f"D={x.shape[-1]}") if x.shape[-1] > 4 else None  # noqa: E731
    monkeypatch.setitem(rope_op.backends, "cpu", registry.Backend("cpu", lambda *a: used.append(a[0].shape) or kernels.rotary_reference(*a), limits=limits))
    small, big = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernels.rotary_mul(small, small, small)
        out = kernels.rotary_mul(big, big, big)
        kernels.rotary_mul(torch.randn(1, 1, 2, 16), *(torch.randn(1, 1, 2, 16),) * 2)
    assert used == [small.shape]
    torch.testing.assert_close(out, kernels.rotary_reference(big, big, big))
    fallback = [w for w in caught if issubclass(w.category, kernels.KernelFallbackWarning)]
    assert len(fallback) == 1 and "head dim" in str(fallback[0].message) and "'rope'" in str(fallback[0].message)


# -- listing and CLI ------------------------------------------------------------------------------------------------
def test_table_lists_every_op_and_backend_with_availability_and_selection():
    rows = {(r["op"], r["backend"]): r for r in kernels.table(["cpu"])}
    assert set(rows) == {("attention", b) for b in ("reference", "cpu", "cuda", "npu")} | {
        ("rope", "reference"), ("rope", "npu")} | {("adamw", b) for b in ("reference", "cpu", "cuda", "npu")}
    assert rows[("attention", "cpu")]["selected_for"] == ["cpu"]
    assert rows[("rope", "reference")]["selected_for"] == ["cpu"]
    assert rows[("attention", "reference")]["available"]


def test_cli_lists_and_checks(capsys):
    from vggt_train.cli import main

    assert main(["kernels"]) == 0
    out = capsys.readouterr().out
    assert "attention" in out and "selected for" in out and "npu" in out
    assert main(["kernels", "--check", "--op", "rope"]) == 0
    out = capsys.readouterr().out
    assert "kernel check passed" in out and "bfloat16" in out


def test_cli_check_fails_when_a_forced_backend_cannot_load(monkeypatch, capsys):
    from vggt_train.cli import main

    monkeypatch.setitem(__import__("sys").modules, "torch_npu", None)
    monkeypatch.setenv(kernels.ENV_VAR, "rope=npu")
    assert main(["kernels", "--check", "--op", "rope"]) == 1  # the reference itself checks out fine
    out = capsys.readouterr().out
    assert "forced backend(s) cannot run" in out and "'torch_npu' cannot be imported" in out
    assert "kernel check passed" not in out


def test_cli_reports_a_bad_env_var_as_a_user_error(monkeypatch, capsys):
    from vggt_train.cli import main

    monkeypatch.setenv(kernels.ENV_VAR, "attention=tpu")
    assert main(["kernels"]) == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize("bug, expect_cross", [
    (lambda q, k, v, scale=None: attention_cpu(q, k, v, None), ["FAIL", "FAIL"]),  # ignores the scale
    (lambda q, k, v, scale=None: attention_cpu(q, k, v, scale and scale * 1.01), ["FAIL", "ok"]),  # 1%: fp32 only
])
def test_check_fails_on_a_wrong_backend(monkeypatch, bug, expect_cross):
    from vggt_train.kernels.check import run_check

    monkeypatch.setitem(attention_op.backends, "cpu", registry.Backend("cpu", bug))
    rows = run_check(ops=["attention"], backends=["cpu"])
    assert [r.status for r in rows if r.case.startswith("self")] == ["ok", "ok"]  # default scale: no bug to see
    assert [(r.dtype, r.status) for r in rows if r.case.startswith("cross")] == list(zip(["float32", "bfloat16"], expect_cross))


def test_compiled_model_code_traces_through_the_registry():
    def f(q, k, v, cos, sin):
        return kernels.attention(kernels.rotary_mul(q, cos, sin), k, v, scale=0.5)

    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    cos, sin = torch.ones(1, 1, 6, 8), torch.zeros(1, 1, 6, 8)
    compiled = torch.compile(f, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(q, k, v, cos, sin), f(q, k, v, cos, sin))


def test_forced_cuda_attention_runs_fused_sdpa_and_falls_back_outside_it(monkeypatch):
    import sys

    attention_module = sys.modules["vggt_train.kernels.attention"]  # the package attribute is the function

    monkeypatch.setenv(kernels.ENV_VAR, "attention=cuda")  # forced: runs on these CPU tensors too
    q, k, v = (torch.randn(1, 2, 5, 16) for _ in range(3))
    torch.testing.assert_close(kernels.attention(q, k, v), kernels.attention_reference(q, k, v))
    odd = [torch.randn(1, 2, 5, 12) for _ in range(3)]  # head dim not a multiple of 8
    with pytest.warns(kernels.KernelFallbackWarning, match="head dim"):
        torch.testing.assert_close(kernels.attention(*odd), kernels.attention_reference(*odd))

    def no_kernel(*args):
        raise RuntimeError("No available kernel. Aborting execution.")

    monkeypatch.setattr(attention_module, "_sdpa", no_kernel)
    with pytest.warns(kernels.KernelFallbackWarning, match="no fused SDPA kernel"):
        torch.testing.assert_close(kernels.attention(q, k, v), kernels.attention_reference(q, k, v))


# -- autocast ----------------------------------------------------------------------------------------------------------
def test_autocast_dtype_follows_the_active_autocast_per_device_type():
    from vggt_train.kernels.amp import autocast_dtype, cast_like_autocast

    assert autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype("cpu") is torch.bfloat16
        if not torch.cuda.is_available():
            assert autocast_dtype("cuda") is None
        assert autocast_dtype("meta") is None
        x, idx, exact = torch.randn(2), torch.arange(2), torch.randn(2, dtype=torch.float64)
        cast = cast_like_autocast(x, idx, exact)
        assert [t.dtype for t in cast] == [torch.bfloat16, torch.int64, torch.float64]  # autocast's eligibility rule


def test_reference_attention_under_autocast_matches_sdpa_dtype_and_value():
    torch.manual_seed(8)
    q, k = torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16)
    v = torch.randn(1, 2, 9, 16).bfloat16()
    kernels.configure({"attention": "reference"})
    sdpa_fn = torch.nn.functional.scaled_dot_product_attention
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # older torch (2.1) leaves SDPA off CPU autocast's lower-precision list: there the mixed dtypes are refused
        # and the op's cast is what makes the model run; it then equals SDPA on the cast tensors
        autocast_casts_sdpa = sdpa_fn(q[..., :1, :], k[..., :1, :], k[..., :1, :]).dtype == torch.bfloat16
        out = kernels.attention(q, k, v)
        if autocast_casts_sdpa:
            sdpa = sdpa_fn(q, k, v)  # what the official model calls
        else:
            with pytest.raises(RuntimeError, match="same dtype"):
                sdpa_fn(q, k, v)
            sdpa = sdpa_fn(q.bfloat16(), k.bfloat16(), v)
    assert out.dtype == sdpa.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), sdpa.float(), atol=2e-2, rtol=2e-2)
