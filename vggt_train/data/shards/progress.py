"""What a conversion tells the user: a progress bar (or periodic lines in a log) and the closing summary table."""

from __future__ import annotations

import collections
import os
import sys
import time

from tqdm import tqdm

# Seconds between progress lines when stderr is not a terminal (Slurm logs); tests set it small.
PROGRESS_INTERVAL_ENV = "VGGT_TRAIN_PROGRESS_INTERVAL"


class LogProgress:
    """Progress for logs (stderr not a terminal, e.g. Slurm): a line every `interval` s, not a redrawn bar."""

    def __init__(self, total: int, interval: float, desc: str = "convert-co3d", stream=None):
        self.total, self.interval, self.desc = total, interval, desc
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.t0 = self.last = time.monotonic()
        self._print(f"{desc}: {total} frames to convert")

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @staticmethod
    def _hms(seconds: float) -> str:
        s = int(round(seconds))
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

    def update(self, n: int) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            elapsed = now - self.t0
            rate = self.n / elapsed if elapsed > 0 else 0.0
            eta = self._hms((self.total - self.n) / rate) if rate > 0 else "?"
            pct = 100.0 * self.n / self.total if self.total else 100.0
            self._print(f"{self.desc}: {self.n}/{self.total} frames ({pct:.1f}%), {rate:.1f} frames/s, "
                        f"elapsed {self._hms(elapsed)}, ETA {eta}")

    def close(self) -> None:
        pass


def progress_bar(total: int, quiet: bool, desc: str = "convert-co3d"):
    """A tqdm bar on a terminal, periodic log lines otherwise, nothing under --quiet."""
    if not quiet and not sys.stderr.isatty():
        return LogProgress(total, float(os.environ.get(PROGRESS_INTERVAL_ENV, "") or 30.0), desc)
    return tqdm(total=total, unit="frame", desc="convert", dynamic_ncols=True, smoothing=0.05, disable=quiet)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def format_summary(summary: dict, min_frames: int) -> str:
    header = ["split", "sequences", "frames", "skipped frames", "dropped seqs", f"seqs < {min_frames} frames", "shards", "bytes"]
    rows = [[s, st["sequences"], st["frames"], sum(st["skipped"].values()), st["dropped"], st["filtered"], st["shards"],
             _fmt_bytes(st["bytes"])] for s, st in summary["splits"].items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(r, widths)) for r in [header] + rows]
    reasons = collections.Counter()
    for st in summary["splits"].values():
        reasons.update(st["skipped"])
    reasons.update(p["reason"] for p in summary["problems"])
    drops = sum(st["dropped"] for st in summary["splits"].values())
    if drops:
        reasons["too_few_frames (sequences)"] = drops
    lines.append("skipped by reason: " + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none"))
    frames = sum(st["frames"] for st in summary["splits"].values())
    secs = summary.get("seconds", 0.0)
    lines.append(f"time {secs:.1f}s; {summary.get('written_shards', 0)} shards written, {summary.get('reused_shards', 0)} "
                 f"reused from an earlier run; {frames / max(secs, 1e-9):.1f} frames/s over {frames} frames")
    return "\n".join(lines)
