"""Training metrics: the metrics.jsonl log, throughput and MFU (validation metrics: val_metrics.py)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, Optional

import torch

# Dense bf16/fp16 peak per device, TFLOP/s, for MFU when train.peak_tflops is not set.
PEAK_TFLOPS = {
    "Ascend910B": 313.0,  # Atlas 800T A2 (910B1/B2 class) fp16/bf16 cube peak
    # matched in this order against the device name: the PCIe and NVL cards before the SXM figure
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "H800": 989.0,
}


def device_peak_tflops(device: torch.device) -> Optional[float]:
    """Best-known dense half-precision peak of this device, or None (CPU and unknown devices)."""
    name = ""
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
    elif device.type == "npu":
        try:
            name = torch.npu.get_device_name(device)  # provided by torch_npu
        except Exception:
            name = "Ascend910B"
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


def _json_value(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricsLog:
    """Appends one JSON object per line to <output_dir>/metrics.jsonl (rank 0), flushed every write."""

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Dict) -> None:
        """Append one record; NaN/inf become null so every line is strict JSON (jq, pandas, other languages)."""
        if not self.enabled:
            return
        clean = {k: _json_value(float(v) if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run rewrites them, so the log has no duplicates), and a last line
        cut short by a crash."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
