"""`vggt-train verify-dataset ROOT`: the command line of verify.py (re-read every shard, print what is wrong)."""

from __future__ import annotations

import argparse
import os

from vggt_train.data.shards.verify import verify_dataset
from vggt_train.errors import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="dataset root written by convert-co3d / merge-shards")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding every image and scanning depths (checksums and structure only)")
    parser.add_argument("--workers", type=int, default=1, help="processes, one shard each [default: 1]")


def run(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.root):
        raise CLIError(f"{args.root} is not a directory")
    result = verify_dataset(args.root, decode=not args.no_decode, workers=max(1, args.workers))
    for split, st in result["splits"].items():
        seqs = "?" if st["sequences"] is None else st["sequences"]
        print(f"{split}: {st['rows']} frames, {seqs} sequences, {st['shards']} shards")
    for w in result["warnings"]:
        print(f"WARNING {w}")
    strays = sum("stray file" in w for w in result["warnings"])
    others = len(result["warnings"]) - strays
    warned = (f" and {strays} stray file(s)" if strays else "") + (f" and {others} warning(s)" if others else "")
    if result["errors"]:
        for e in result["errors"]:
            print(f"ERROR {e}")
        print(f"verify-dataset: {len(result['errors'])} problem(s){warned} in {args.root}")
        return 1
    print(f"verify-dataset: OK ({args.root}){warned.replace(' and', ', but')}")
    return 0
