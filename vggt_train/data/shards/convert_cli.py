"""`vggt-train convert-co3d`: the command line of convert.py, and the output flags every converter shares."""

from __future__ import annotations

import argparse
import os

from vggt_train.data.safe_names import is_plain_name
from vggt_train.data.shards.convert import convert
from vggt_train.data.shards.layout import ConvertError
from vggt_train.data.shards.plan import Options
from vggt_train.data.shards.progress import format_summary
from vggt_train.errors import CLIError


def _parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if n < 1 or not 0 <= i < n:
        raise CLIError(f"--part must be i/n with 0 <= i < n (e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT), got {text!r}")
    return i, n


def add_output_arguments(parser: argparse.ArgumentParser, min_frames: int, command: str) -> None:
    """The flags of every converter: output, size, parallelism, parts, bad-input policy, progress."""
    parser.add_argument("--out", required=True, help="output root; each split goes to OUT/<split> (datasets.load_from_disk opens it)")
    parser.add_argument("--min-frames", type=int, default=min_frames,
                        help=f"drop sequences with fewer frames, or fewer valid frames after skipping bad ones [default: {min_frames}]")
    parser.add_argument("--max-side", type=int, default=None,
                        help="downscale so the longer side is at most N pixels (intrinsics and depth follow; images are "
                             "re-encoded as JPEG) [default: keep size and the original image bytes]")
    parser.add_argument("--shard-size-mb", type=float, default=512.0,
                        help="target shard size in MB (planned from a size probe; a sequence never spans shards) [default: 512]")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="decoding processes; 1 decodes in the main process [default: min(8, CPUs)]")
    parser.add_argument("--part", default="0/1",
                        help="convert only part i of n (0-based) of the shards, for n machines writing to one OUT or to "
                             "n directories; join with `vggt-train merge-shards` [default: 0/1, the whole dataset]")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad input (naming the file and the reason) instead of skipping it and "
                             "recording it in OUT/report.json")
    parser.add_argument("--rehash-finished", action="store_true",
                        help="when resuming, re-hash every shard listed as finished before trusting it (a read of each "
                             "shard); by default a shard is re-hashed only if its mtime changed since it was written")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress (a bar on a terminal, a line every 30 s in logs) and no summary table")
    parser.epilog = (f"Resumable: rerun the same `vggt-train {command}` after a crash and finished shards are kept. "
                     f"Check the result with `vggt-train verify-dataset OUT`.")


def output_options(args: argparse.Namespace, splits: tuple[str, ...], **fields) -> Options:
    """Options from the shared flags (checked, one line naming the flag) plus the format's `fields`."""
    for split in splits:  # split names become directories under OUT
        if not is_plain_name(split):
            raise CLIError(f"--split {split!r} must be a plain name (it becomes the folder OUT/{split})")
    if args.min_frames < 1 or args.shard_size_mb <= 0 or args.workers < 1 or (args.max_side is not None and args.max_side < 8):
        raise CLIError("need --min-frames >= 1, --shard-size-mb > 0, --workers >= 1 and --max-side >= 8")
    fields.setdefault("co3d_dir", "")
    fields.setdefault("annotation_dir", "")
    return Options(out=args.out, splits=splits, min_frames=args.min_frames, max_side=args.max_side,
                   shard_size_mb=args.shard_size_mb, workers=args.workers, part=_parse_part(args.part),
                   strict=args.strict, quiet=args.quiet, rehash_finished=args.rehash_finished, **fields)


def run_conversion(opts: Options) -> int:
    """Convert and print the summary (unless --quiet); a ConvertError becomes the command's one-line error."""
    try:
        summary = convert(opts)
    except ConvertError as exc:
        # Chained, so that VGGT_TRAIN_DEBUG=1 shows where it came from (e.g. a worker's traceback).
        raise CLIError(str(exc)) from exc
    if not opts.quiet:
        print(format_summary(summary, opts.min_frames))
        if opts.part[1] == 1:
            print(f"wrote {opts.out} (report: {os.path.join(opts.out, 'report.json')})")
        else:
            print(f"part {opts.part[0]}/{opts.part[1]} done; when all parts are, run: vggt-train merge-shards {opts.out} [PART_DIRS...]")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--co3d-dir", required=True, help="raw Co3D root: <category>/<sequence>/{images,depths,depth_masks}/")
    parser.add_argument("--annotation-dir", required=True, help="directory of <category>_<split>.jgz annotation files")
    parser.add_argument("--categories", default="all",
                        help="'all' (every category with annotation files), 'train41' (the 41 VGGT training categories) "
                             "or a comma list like tv,apple; a requested category without annotations is an error [default: all]")
    parser.add_argument("--splits", default="train,test", help="comma list of splits [default: train,test]")
    add_output_arguments(parser, 24, "convert-co3d")


def options_from_args(args: argparse.Namespace) -> Options:
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    if not splits or len(set(splits)) != len(splits):
        raise CLIError(f"--splits must be a comma list of distinct names, got {args.splits!r}")
    return output_options(args, splits, co3d_dir=args.co3d_dir, annotation_dir=args.annotation_dir,
                          categories=args.categories)


def run(args: argparse.Namespace) -> int:
    return run_conversion(options_from_args(args))
