"""Shared test helpers: where the parity fixtures live, and small deterministic settings for a 2-core CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# Tensors produced by the official implementation (see tests/fixtures/parity/README.md), kept in the repository.
PARITY_DIR = Path(__file__).resolve().parent / "fixtures" / "parity"

torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not PARITY_DIR.is_dir():
        pytest.fail(f"parity fixtures not found at {PARITY_DIR}: the checkout is incomplete")
    return PARITY_DIR


def load_fixture(name: str):
    """(config dict, weights, inputs, outputs) of one parity fixture."""
    from safetensors.torch import load_file

    root = PARITY_DIR / name
    config = json.loads((root / "config.json").read_text())
    return config, load_file(str(root / "weights.safetensors")), load_file(str(root / "inputs.safetensors")), load_file(str(root / "outputs.safetensors"))


@pytest.fixture
def clean_kernel_registry(monkeypatch):
    """No VGGT_KERNELS override and an empty selection cache, before and after the test."""
    from vggt_train import kernels

    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    kernels.reset()
    yield
    kernels.reset()


@pytest.fixture
def npu(monkeypatch, clean_kernel_registry):
    """The documented stand-in torch_npu (tests/fake_torch_npu.py) installed in sys.modules; returns it."""
    import fake_torch_npu
    from vggt_train import kernels

    fake = fake_torch_npu.install(monkeypatch)
    kernels.reset()  # forget a failed import of the real torch_npu
    return fake
