"""How the trainer uses the kernel registry: NPU set-up and the HCCL backend, the optimiser built on the
accelerator's device, never NpuFusedAdamW under DeepSpeed. Unit level with the stand-in torch_npu; the
launcher tests (test_train_distributed.py) run the trainer itself."""

from __future__ import annotations

import warnings

import pytest
import torch

from vggt_train import kernels
from vggt_train.train.config import load_config
from vggt_train.train.optim import build_optimizer


pytestmark = pytest.mark.usefixtures("clean_kernel_registry")


def _model():
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))


def _optim_cfg():
    return load_config(None, ["data.path=/d"]).optim


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA wins over an NPU")
def test_process_group_backend_is_hccl_with_an_npu(npu):
    from vggt_train.train.accelerator import _process_group_backend

    assert _process_group_backend() == "gloo"
    npu.npu.available = True
    assert _process_group_backend() == kernels.HCCL_BACKEND == "hccl"


class _StopAfterSetUp(Exception):
    pass


@pytest.mark.parametrize("present", [True, False])
def test_trainer_sets_up_the_npu_before_anything_else(npu, monkeypatch, tmp_path, present):
    from vggt_train.train import data as train_data
    from vggt_train.train.loop import Trainer

    def stop(cfg):  # the dataset is opened right after the device set-up, before the accelerator
        raise _StopAfterSetUp

    monkeypatch.setattr(train_data, "TrainData", stop)
    monkeypatch.setenv("LOCAL_RANK", "1")
    npu.npu.available = present
    with pytest.raises(_StopAfterSetUp):
        Trainer(load_config(None, [f"data.path={tmp_path}", f"output_dir={tmp_path}"]))
    if present:
        assert npu.npu.current_device == 1 and npu.npu.config.allow_internal_format is False
    else:  # no NPU: torch_npu is not touched
        assert npu.npu.current_device is None and npu.npu.config.allow_internal_format is True


def test_build_optimizer_places_the_model_first_so_selection_sees_the_device():
    model = _model()
    cpu = build_optimizer(model, _optim_cfg())
    assert cpu.defaults.get("foreach") is not False  # the cpu backend (fused, or foreach on old torch)
    opt = build_optimizer(model, _optim_cfg(), device=torch.device("meta"))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert opt.defaults["foreach"] is False  # no meta backend: the reference, chosen by the moved parameters


def test_build_optimizer_under_deepspeed_never_uses_npu_fused_adamw(npu, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "adamw=npu")
    assert isinstance(build_optimizer(_model(), _optim_cfg()), npu.NpuFusedAdamW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = build_optimizer(_model(), _optim_cfg(), sharded=True)
    assert type(opt) is torch.optim.AdamW
    assert any(issubclass(w.category, kernels.KernelFallbackWarning) and "DeepSpeed" in str(w.message) for w in caught)
