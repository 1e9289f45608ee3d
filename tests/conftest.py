"""Shared test helpers: where the parity fixtures live, and small deterministic settings for a 2-core CPU."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
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


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory) -> Path:
    """A tiny synthetic Co3D (tv: 2 train + 1 test sequences x 24 frames, 42x56) converted to shards, shared by the
    tests that launch training runs."""
    root = tmp_path_factory.mktemp("train_shards")
    for args in (
        ["make-synthetic-co3d", "--out", str(root / "raw"), "--categories", "tv", "--sequences", "2", "--test-sequences", "1",
         "--frames", "24", "--size", "42x56", "--seed", "3"],
        ["convert-co3d", "--co3d-dir", str(root / "raw" / "co3d"), "--annotation-dir", str(root / "raw" / "annotations"),
         "--out", str(root / "shards"), "--quiet"],
    ):
        subprocess.run([sys.executable, "-m", "vggt_train", *args], check=True, capture_output=True, timeout=400)
    return root / "shards"


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for a launcher's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_command(cmd: list, timeout: float, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with captured text output; a command that runs past `timeout` fails the test with the tail
    of what it printed until then (a hung multi-process launch says where it stopped)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        def tail(stream):
            text = stream.decode(errors="replace") if isinstance(stream, bytes) else (stream or "")
            return text[-6000:]
        pytest.fail(f"timed out after {timeout} s: {' '.join(map(str, cmd))}\n--- stdout ---\n{tail(exc.stdout)}\n"
                    f"--- stderr ---\n{tail(exc.stderr)}", pytrace=False)


def write_accelerate_config(path: Path, ds_config, processes: int, machines: int = 1, rank: int = 0,
                            port: int = 29500) -> Path:
    """An accelerate launch config for `processes` CPU processes per machine under DeepSpeed with `ds_config`."""
    path.write_text(textwrap.dedent(
        f"""
        compute_environment: LOCAL_MACHINE
        distributed_type: DEEPSPEED
        deepspeed_config:
          deepspeed_config_file: {ds_config}
          zero3_init_flag: false
          deepspeed_multinode_launcher: standard
        machine_rank: {rank}
        main_process_ip: 127.0.0.1
        main_process_port: {port}
        num_machines: {machines}
        num_processes: {processes}
        rdzv_backend: static
        same_network: true
        use_cpu: true
        main_training_function: main
        """
    ))
    return path
