"""bench/reference_workload.py --smoke on the CPU: the product's step timed per kernel variant, and its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from vggt_train.geometry import depth_to_world_points

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from reference_workload import synthetic_batch  # noqa: E402  (bench/ is no package)

PHASES = {"data_wait", "aggregator_forward", "heads_forward", "backward", "optimizer", "communication", "other", "step_wall"}


def _smoke(*extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("VGGT_KERNELS", None)
    result = subprocess.run([sys.executable, str(REPO / "bench" / "reference_workload.py"), "--smoke", *extra], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1, result.stdout
    assert "samples/s" in result.stdout and "phase ms" in result.stdout  # the table
    return json.loads(lines[0])


def test_smoke_reports_every_variant_with_throughput_mfu_memory_and_phases():
    out = _smoke()
    assert out["bench"] == "reference_workload" and out["smoke"] is True
    assert (out["workload"], out["preset"], out["frames"], out["batch_per_device"], out["device"]) == ("reference", "tiny", 2, 2, "cpu")
    assert out["frozen"] == ["aggregator*"] and out["data"] == "synthetic" and out["world_size"] == 1
    assert out["flops_per_sample"] > 0 and out["peak_tflops"] > 0 and out["peak_source"]
    assert "plan_memory_gib" in out  # a number where vggt_train.train.plan_memory exists, else null
    # per variant too: the reference kernel keeps the score matrices, which the plan counts
    planned = {v["attention"]: v["plan_gib"] for v in out["variants"]}
    assert planned["reference"] >= planned["cpu"] > 0
    fused, reference = out["variants"]
    # both kernel choices ran in the one process: the CPU's SDPA backend, then the plain reference
    assert (fused["kernels"], fused["attention"]) == ("auto", "cpu")
    assert (reference["kernels"], reference["attention"]) == ("attention=reference", "reference")
    for v in out["variants"]:
        assert v["step_s"] > 0 and v["samples_per_s"] > 0 and 0 < v["mfu"] < 1 and v["peak_mem_gib"] > 0
        assert abs(v["samples_per_s"] * v["step_s"] - 2) < 1e-6  # 2 samples per step, one process
        assert set(v["phases_s"]) == PHASES
        # the ranges around the product's step were entered: each compute phase took time
        for phase in ("aggregator_forward", "heads_forward", "backward", "optimizer"):
            assert v["phases_s"][phase] > 0, (v["kernels"], phase)
        assert v["phases_s"]["communication"] == 0  # one process: no collective
        assert v["loss_last"] == v["loss_last"]  # finite loss from the synthetic batch


def test_synthetic_batch_is_a_consistent_scene():
    b = synthetic_batch(2, 3, 28, 28, "cpu")
    assert b["images"].shape == (2, 3, 3, 28, 28) and bool(b["point_masks"].all())
    assert torch.equal(b["extrinsics"][:, 0], torch.eye(3, 4).expand(2, 3, 4))  # view 0 is the world frame
    world = depth_to_world_points(b["depths"][0], b["extrinsics"][0], b["intrinsics"][0])
    assert torch.allclose(world, b["world_points"][0], atol=1e-5)
