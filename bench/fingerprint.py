"""Fingerprint what this checkout computes: converted bytes, finished batches and training losses, as one JSON line.

Run it on two checkouts (e.g. before and after a refactoring) and compare the lines: equal lines mean the
conversion wrote the same shard bytes, the pipeline built the same batches bit for bit, and 3 AdamW steps of the
tiny model gave the same losses. Uses the public API and the CLI only, so older checkouts run it too.

    python bench/fingerprint.py --workdir /tmp/fp_a > a.json      # in checkout A
    python bench/fingerprint.py --workdir /tmp/fp_b > b.json      # in checkout B
    cmp a.json b.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _digest(batch, prefix: str, digests: dict) -> None:
    import torch

    for key, value in sorted(batch.items()):
        if torch.is_tensor(value):
            digests[prefix + key] = _sha(value.contiguous().numpy().tobytes())


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vggt_train", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/vggt_fingerprint")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    raw, out = os.path.join(args.workdir, "raw"), os.path.join(args.workdir, "shards")
    _cli("make-synthetic-co3d", "--out", raw, "--categories", "apple,tv", "--sequences", "2", "--test-sequences", "1",
         "--frames", "12", "--size", "48x64", "--seed", "3")
    _cli("convert-co3d", "--co3d-dir", os.path.join(raw, "co3d"), "--annotation-dir", os.path.join(raw, "annotations"),
         "--out", out, "--workers", "1", "--min-frames", "4", "--shard-size-mb", "0.05", "--quiet")
    files = {}
    for root, dirs, names in os.walk(out):
        dirs[:] = sorted(d for d in dirs if d != "_convert")
        for name in sorted(names):
            if name.endswith(".arrow") or name in ("sequence_index.json", "state.json"):
                path = os.path.join(root, name)
                files[os.path.relpath(path, out)] = _sha(open(path, "rb").read())

    import torch

    from vggt_train.data import MultiViewDataset, RankBatchStream, StepPlanner, finish_batch
    from vggt_train.losses import MultitaskLoss
    from vggt_train.model import VGGT

    torch.manual_seed(0)
    ds = MultiViewDataset(out, "train", img_size=56, augment=True)
    planner = StepPlanner(ds.index_info(), img_nums=(2, 3), max_img_per_gpu=6, seed=5)
    stream = RankBatchStream(ds, planner)
    batches, digests = [], {}
    for step in range(args.steps):
        batch = finish_batch(stream.batch(step))
        batches.append(batch)
        _digest(batch, f"{step}/", digests)
    # the other pipeline paths: the resize deferred to the finishing stage, and no batch normalisation
    for resample, normalize in (("device", True), ("worker", False)):
        other = MultiViewDataset(out, "train", img_size=56, augment=True, resample=resample)
        other_stream = RankBatchStream(other, planner, normalize=normalize)
        for step in range(args.steps):
            _digest(finish_batch(other_stream.batch(step)), f"{resample}-{int(normalize)}/{step}/", digests)
    model = VGGT.from_preset("tiny", track_head=None, point_head=None).train()
    loss_fn = MultitaskLoss(camera={"weight": 5.0}, depth={"weight": 1.0})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for batch in batches:
        objective = loss_fn(model(batch["images"]), batch)["objective"]
        opt.zero_grad()
        objective.backward()
        opt.step()
        losses.append(objective.item().hex())
    print(json.dumps({"files": files, "batches": digests, "losses": losses}, sort_keys=True))


if __name__ == "__main__":
    main()
