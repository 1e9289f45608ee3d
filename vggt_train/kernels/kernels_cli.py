"""`vggt-train kernels`: the op x backend table (available, selected); `--check` runs the self-check.

    vggt-train kernels                      # what runs where on this machine, and why a backend is unavailable
    vggt-train kernels --check              # every available backend vs the reference; exit 1 on a mismatch
                                            # or a forced backend that cannot run
    vggt-train kernels --check --op attention --backend npu
"""

from __future__ import annotations

import argparse
import os

import torch

from vggt_train import kernels
from vggt_train.errors import CLIError
from vggt_train.kernels.check import format_rows, run_check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="run every available backend against the reference (forward, backward; fp32 and bf16); "
                             "exit status 1 on a mismatch or a forced backend that cannot run")
    parser.add_argument("--op", action="append", metavar="OP", help="limit --check to this op (repeatable)")
    parser.add_argument("--backend", action="append", metavar="BACKEND",
                        help="limit --check to this backend (repeatable); an unavailable one is an error")
    parser.add_argument("--device", default=None,
                        help="run the checked backends on this device instead of their own (e.g. cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


def _format_table(rows) -> str:
    header = ("op", "backend", "available", "selected for")
    body = []
    for r in rows:
        avail = "yes" if r["available"] else f"no: {r['why_not']}"
        selected = ", ".join(r["selected_for"]) + r["note"] + (" UNUSABLE (see below)" if r["error"] else "") if r["selected_for"] else ""
        body.append((r["op"], r["backend"], avail, selected))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        rows = kernels.table()
    except kernels.KernelError as exc:  # a malformed VGGT_KERNELS
        raise CLIError(str(exc)) from None
    print(f"torch {torch.__version__}; {kernels.ENV_VAR}={os.environ.get(kernels.ENV_VAR, '')!r}")
    print(_format_table(rows))
    errors = [r["error"] for r in rows if r["error"]]
    for error in errors:
        print(f"error: {error}")
    if not args.check:
        return 1 if errors else 0
    print()
    try:
        results = run_check(ops=args.op, backends=args.backend, device=args.device, seed=args.seed)
    except kernels.KernelError as exc:
        raise CLIError(str(exc)) from None
    print(format_rows(results))
    failed = [r for r in results if r.failed]
    checked = [r for r in results if r.status != "skipped"]
    if failed:
        print(f"\nkernel check FAILED: {len(failed)} of {len(checked)} checks outside tolerance "
              f"({', '.join(sorted({f'{r.op}/{r.backend}' for r in failed}))})")
        return 1
    if errors:  # the checked backends agree, but training with this selection would fail at the first forward
        print(f"\nkernel check FAILED: {len(errors)} forced backend(s) cannot run here (see the errors above)")
        return 1
    print(f"\nkernel check passed: {len(checked)} checks"
          + (f", {len(results) - len(checked)} skipped" if len(results) > len(checked) else ""))
    return 0
