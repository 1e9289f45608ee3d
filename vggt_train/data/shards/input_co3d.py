"""The Co3D input format of the converter: annotation files (<category>_<split>.jgz) plus the raw frame folders."""

from __future__ import annotations

import collections
import os
from typing import Any

from vggt_train.data.shards.inputs import InputFormat, Loaded, Scan
from vggt_train.data.shards.layout import ConvertError, record, sha256_file
from vggt_train.data.sources import co3d
from vggt_train.data.sources.select import parse_categories, select_categories

_FALLBACK_FRAME_BYTES = 1.2e6  # size estimate when a category's probe frame is unreadable



def resolve_categories(opts) -> list[str]:
    """The categories to convert; a requested category without any annotation file is an error."""
    if not os.path.isdir(opts.annotation_dir):
        raise ConvertError(f"annotation dir {opts.annotation_dir} does not exist")
    if not os.path.isdir(opts.co3d_dir):
        raise ConvertError(f"Co3D dir {opts.co3d_dir} does not exist")
    found = co3d.find_categories(opts.annotation_dir, opts.splits)
    if not opts.categories.replace(",", "").strip():
        raise ConvertError("--categories is empty")
    try:
        chosen = select_categories(opts.categories, found)
    except ValueError:
        missing = [c for c in parse_categories(opts.categories) if c not in found]
        raise ConvertError(f"requested categories not found in {opts.annotation_dir} (no "
                           f"<category>_{{{','.join(opts.splits)}}}.jgz): {', '.join(missing)}") from None
    if not chosen:
        raise ConvertError(f"no <category>_<{'|'.join(opts.splits)}>.jgz annotation files in {opts.annotation_dir}")
    return chosen


class Co3DFormat(InputFormat):
    """Co3D: one annotation file per category and split; frames are its entries (filepath, extri, intri)."""

    name = "co3d"
    input_errors = (co3d.BadInput,)

    def __init__(self):
        # annotation files re-read on demand for the tasks (the plan keeps none in memory); at most two cached
        self._cache: collections.OrderedDict = collections.OrderedDict()

    def scan(self, opts) -> Scan:
        """Reads every annotation file once (then drops it, so memory stays small) and probes up to 3 frames per
        category for a bytes-per-frame estimate."""
        categories = resolve_categories(opts)
        scan = Scan(splits={}, categories=categories, source="co3d")
        for split in opts.splits:
            rows: list = []
            filtered = {"sequences": 0, "frames": 0}
            # Rows, the sequence index and Co3DSplit are keyed by sequence name alone: unique per split.
            owner: dict[str, str] = {}
            for category in categories:
                path = co3d.annotation_path(opts.annotation_dir, category, split)
                if not os.path.exists(path):
                    if opts.strict:
                        raise ConvertError(f"{path}: missing_annotation_file [--strict]")
                    scan.problems.append(record(split, category, None, None, path, "missing_annotation_file"))
                    continue
                try:
                    co3d.check_regular_file(path, "missing_annotation_file")  # a FIFO would hang the hash below
                    scan.inputs[os.path.basename(path)] = sha256_file(path)
                    annotation = co3d.load_annotation_file(path)
                except co3d.BadInput as exc:
                    if opts.strict:
                        raise ConvertError(f"{exc} [--strict]") from None
                    scan.problems.append(record(split, category, None, None, exc.path, exc.reason, exc.detail))
                    continue
                names = [n for n in sorted(annotation) if len(annotation[n]) >= opts.min_frames]
                filtered["sequences"] += len(annotation) - len(names)
                filtered["frames"] += sum(len(annotation[n]) for n in annotation if len(annotation[n]) < opts.min_frames)
                per_frame = None
                for name in names[:3]:
                    for entry in annotation[name][:3]:
                        per_frame = per_frame or co3d.probe_frame_bytes(opts.co3d_dir, entry, opts.max_side)
                per_frame = per_frame or _FALLBACK_FRAME_BYTES
                for name in names:
                    if name in owner:
                        if opts.strict:
                            raise ConvertError(f"{path}: duplicate_sequence ({name} is also in {owner[name]}) [--strict]")
                        scan.problems.append(record(split, category, name, None, path, "duplicate_sequence",
                                                    f"{name} is also in {owner[name]}, which is kept"))
                        continue
                    owner[name] = path
                    rows.append((category, name, len(annotation[name]), per_frame))
                del annotation
            scan.splits[split] = rows
            scan.filtered[split] = filtered
        return scan

    def entries(self, opts, plan: dict, split: str, category: str, sequence: str) -> list:
        """The annotation entries of one sequence; the file must be the one the plan was made from."""
        key = (plan["fingerprint"], split, category)  # the fingerprint covers the annotation files' hashes
        if key not in self._cache:
            path = co3d.annotation_path(opts.annotation_dir, category, split)
            try:
                co3d.check_regular_file(path, "missing_annotation_file")
            except co3d.BadInput as exc:
                raise ConvertError(f"{exc}; restart the conversion into a new --out") from None
            if sha256_file(path) != plan["inputs"].get(os.path.basename(path)):
                raise ConvertError(f"{path} changed since the plan was made; restart the conversion into a new --out")
            self._cache[key] = co3d.load_annotation_file(path)
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return self._cache[key][sequence]

    def load(self, task: dict, entry: Any, position: int) -> Loaded:
        fr = co3d.load_frame(task["co3d_dir"], entry, task["max_side"], task["category"])
        return Loaded(fr, entry["filepath"], position)


FORMAT = Co3DFormat()
