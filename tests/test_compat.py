"""The gloo stand-ins for the flat collectives an older torch's gloo lacks (vggt_train/train/compat.py), on 2 CPU
processes: they give what all_gather_into_tensor / reduce_scatter_tensor define, on every torch."""

from __future__ import annotations

import datetime
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vggt_train.train import compat


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        mine = torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * rank
        flat = torch.empty(12)
        compat.all_gather_into_tensor_by_list(flat, mine)
        stacked = torch.empty(4, 3)
        compat.all_gather_into_tensor_by_list(stacked, mine, async_op=True).wait()
        whole = torch.arange(8, dtype=torch.float32) * (rank + 1)
        part = torch.empty(4)
        compat.reduce_scatter_tensor_by_all_reduce(part, whole)
        maxed = torch.empty(4)
        compat.reduce_scatter_tensor_by_all_reduce(maxed, whole, op=dist.ReduceOp.MAX, async_op=True).wait()
        results[rank] = (flat, stacked, part, maxed)
    finally:
        dist.destroy_process_group()


def test_gloo_stand_ins_equal_the_collectives_they_replace():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
    inputs = [torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * r for r in range(2)]
    for rank in range(2):
        flat, stacked, part, maxed = results[rank]
        torch.testing.assert_close(flat, torch.cat([t.reshape(-1) for t in inputs]))
        torch.testing.assert_close(stacked, torch.cat(inputs))
        total = torch.arange(8, dtype=torch.float32) * 3  # ranks contribute x1 and x2
        torch.testing.assert_close(part, total[4 * rank:4 * rank + 4])
        torch.testing.assert_close(maxed, (torch.arange(8, dtype=torch.float32) * 2)[4 * rank:4 * rank + 4])


def test_gloo_lacks_is_probed_without_other_ranks():
    lacking = compat.gloo_lacks()  # a private one-process group: no launcher, no collective with anyone
    assert lacking <= {"all_gather_into_tensor", "reduce_scatter_tensor"}
    assert not dist.is_initialized()
    assert compat.fit_deepspeed_to_gloo() == []  # no process group: nothing to fit


def test_torch_cpu_has_a_set_device_accelerate_can_call():
    compat.ensure_cpu_set_device()
    torch.cpu.set_device(torch.device("cpu"))  # a no-op, as in newer torch
    assert compat.ensure_cpu_set_device() is False  # idempotent


class _Zero:
    """The part of a DeepSpeed ZeRO optimizer the skip relies on: step() skips when `overflow` is set, and (as
    DeepSpeed <= 0.18 does for fp32) never sets it itself."""

    def __init__(self):
        self.overflow = False
        self.applied = []

    def step(self, closure=None):
        self.applied.append(not self.overflow)


def test_a_flagged_step_is_skipped_and_the_next_one_applies():
    opt = _Zero()
    compat.arm_nonfinite_skip(opt)
    compat.arm_nonfinite_skip(opt)  # arming twice wraps once
    compat.flag_nonfinite_step(opt, False)
    opt.step()
    compat.flag_nonfinite_step(opt, True)
    opt.step()
    opt.step()  # the flag is per step: unflagged, the next one applies again
    assert opt.applied == [True, False, True]
    plain = object()
    compat.arm_nonfinite_skip(plain)  # not a ZeRO optimizer: nothing to arm, nothing raised
    compat.flag_nonfinite_step(plain, True)
