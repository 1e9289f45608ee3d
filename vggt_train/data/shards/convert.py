"""Convert raw Co3D into sharded Arrow datasets (`datasets.load_from_disk` layout), streaming and resumable.

Flow: plan (annotations only) -> convert this part's shards (workers decode sequences, the main process writes)
-> finalize (state.json, dataset_info.json, sequence index, manifest, report) once every shard of the plan exists.

Determinism: the plan fixes which sequences go to which shard from the annotations and one size probe per
category, independently of --workers and --part; sequences are sorted by name, results are written in plan
order, Arrow is written uncompressed without timestamps. Hence a single run, a resumed run and n merged parts
produce byte-identical shards.

Resume: a shard is written to `<name>.tmp-<pid>` and renamed when complete; only then is it added, with its
size, mtime and sha256, to this part's manifest in O/_convert/. A restarted run skips shards that a manifest lists
and whose file still has the recorded size and mtime; when only the mtime changed (copied, touched, edited in
place) the shard is re-hashed, and `--rehash-finished` re-hashes every one (a read of the shard: ~0.4 s per 512 MB
here). Anything else is rewritten. Temp files that killed runs left next to this part's shards are removed first.

Test hook: VGGT_TRAIN_TEST_EXIT_AFTER_SHARDS=N makes the process `os._exit(75)` right after committing its N-th
shard, as a kill would (used by the resume tests; never set it in production).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

from vggt_train.data import co3d
from vggt_train.data.schema import SHARD_PATTERN, WORK_DIR, payload_checksum

EXIT_HOOK_ENV = "VGGT_TRAIN_TEST_EXIT_AFTER_SHARDS"
# Seconds between progress lines when stderr is not a terminal (Slurm logs); tests set it small.
PROGRESS_INTERVAL_ENV = "VGGT_TRAIN_PROGRESS_INTERVAL"
ROWS_PER_BATCH = 64  # Arrow record batch size; keeps binary offsets far from int32 limits for huge sequences
_FALLBACK_FRAME_BYTES = 1.2e6  # size estimate when a category's probe frame is unreadable
_PLAN_VERSION = 1


class ConvertError(Exception):
    """A user-fixable problem; the CLI turns it into a one-line CLIError."""


@dataclass
class Options:
    co3d_dir: str
    annotation_dir: str
    out: str
    categories: str = "all"  # "all" | "train41" | "a,b,c"
    splits: tuple[str, ...] = ("train", "test")
    min_frames: int = 24
    max_side: int | None = None
    shard_size_mb: float = 512.0
    workers: int = 1
    part: tuple[int, int] = (0, 1)
    strict: bool = False
    quiet: bool = False
    rehash_finished: bool = False

    def output_key(self) -> dict:
        """The options that change the output bytes (not workers/part/strict/quiet/rehash_finished)."""
        return {"splits": list(self.splits), "min_frames": self.min_frames, "max_side": self.max_side,
                "shard_size_mb": self.shard_size_mb}


# ----------------------------------------------------------------------------------------------- planning
def resolve_categories(opts: Options) -> list[str]:
    """The categories to convert; a requested category without any annotation file is an error."""
    if not os.path.isdir(opts.annotation_dir):
        raise ConvertError(f"annotation dir {opts.annotation_dir} does not exist")
    if not os.path.isdir(opts.co3d_dir):
        raise ConvertError(f"Co3D dir {opts.co3d_dir} does not exist")
    found = co3d.find_categories(opts.annotation_dir, opts.splits)
    if opts.categories == "all":
        if not found:
            raise ConvertError(f"no <category>_<{'|'.join(opts.splits)}>.jgz annotation files in {opts.annotation_dir}")
        return found
    wanted = co3d.CO3D_TRAIN_CATEGORIES if opts.categories == "train41" else [c.strip() for c in opts.categories.split(",") if c.strip()]
    if not wanted:
        raise ConvertError("--categories is empty")
    missing = [c for c in wanted if c not in found]
    if missing:
        raise ConvertError(f"requested categories not found in {opts.annotation_dir} (no "
                           f"<category>_{{{','.join(opts.splits)}}}.jgz): {', '.join(missing)}")
    return sorted(set(wanted))


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _record(split: str, category: str, sequence: str | None, frame: int | None, path: str, reason: str, detail: str = "") -> dict:
    return {"split": split, "category": category, "sequence": sequence, "frame": frame, "path": path,
            "reason": reason, "detail": detail}


def make_plan(opts: Options) -> dict:
    """Deterministic shard plan: {split: [shard: [[category, sequence, n_annotated], ...]]} plus input problems.

    Reads every annotation file once (then drops it, so memory stays small) and probes one frame per category
    for a bytes-per-frame estimate that sets how many sequences fill a --shard-size-mb shard.
    """
    categories = resolve_categories(opts)
    target = opts.shard_size_mb * 1e6
    plan: dict[str, Any] = {"version": _PLAN_VERSION, "options": opts.output_key(), "categories": categories,
                            "inputs": {}, "splits": {}, "problems": [], "filtered": {}}
    for split in opts.splits:
        shards: list[list] = [[]]
        size = 0.0
        filtered = {"sequences": 0, "frames": 0}
        # Rows, the sequence index and Co3DSplit are keyed by sequence name alone, so a name must be unique per split.
        owner: dict[str, str] = {}
        for category in categories:
            path = co3d.annotation_path(opts.annotation_dir, category, split)
            if not os.path.exists(path):
                if opts.strict:
                    raise ConvertError(f"{path}: missing_annotation_file [--strict]")
                plan["problems"].append(_record(split, category, None, None, path, "missing_annotation_file"))
                continue
            try:
                co3d.check_regular_file(path, "missing_annotation_file")  # a FIFO would hang the hash below
                plan["inputs"][os.path.basename(path)] = _sha256_file(path)
                annotation = co3d.load_annotation_file(path)
            except co3d.BadInput as exc:
                if opts.strict:
                    raise ConvertError(f"{exc} [--strict]") from None
                plan["problems"].append(_record(split, category, None, None, exc.path, exc.reason, exc.detail))
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
                    plan["problems"].append(_record(split, category, name, None, path, "duplicate_sequence",
                                                    f"{name} is also in {owner[name]}, which is kept"))
                    continue
                owner[name] = path
                est = per_frame * len(annotation[name])
                if shards[-1] and size + est > target:
                    shards.append([])
                    size = 0.0
                shards[-1].append([category, name, len(annotation[name])])
                size += est
            del annotation
        plan["splits"][split] = shards
        plan["filtered"][split] = filtered
    plan["fingerprint"] = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:32]
    return plan


def shard_jobs(plan: dict) -> list[tuple[str, int]]:
    """Every (split, shard index) of the plan, in write order."""
    # Iterate the --splits order stored in the options: plan.json is written with sorted keys.
    return [(split, k) for split in plan["options"]["splits"] for k in range(len(plan["splits"][split]))]


def part_jobs(plan: dict, part: tuple[int, int]) -> list[tuple[str, int]]:
    """The contiguous slice of shard_jobs that part i of n converts (parts are disjoint and cover the plan)."""
    jobs = shard_jobs(plan)
    i, n = part
    return jobs[i * len(jobs) // n:(i + 1) * len(jobs) // n]


def shard_relpath(plan: dict, split: str, k: int) -> str:
    return f"{split}/" + SHARD_PATTERN.format(index=k, count=len(plan["splits"][split]))


# ----------------------------------------------------------------------------------------------- manifests
def work_dir(out: str) -> str:
    return os.path.join(out, WORK_DIR)


def manifest_path(out: str, part: tuple[int, int]) -> str:
    return os.path.join(work_dir(out), f"manifest-part-{part[0]:05d}-of-{part[1]:05d}.json")


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON so that a reader (or a crash) only ever sees the old or the complete new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk fails inside write(), whose error names no file: name the one being written
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


def write_json_exclusive(path: str, obj: Any) -> bool:
    """Publish a complete JSON file at `path` unless one exists (atomic: of two writers exactly one wins).
    Returns whether this call created it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    write_json_atomic(tmp, obj)
    try:
        os.link(tmp, path)  # fails if path exists, unlike a rename
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create (a reader may see it half-written)
        try:
            with open(tmp) as src, open(path, "x") as f:
                f.write(src.read())
            return True
        except FileExistsError:
            return False
    finally:
        os.remove(tmp)


def load_json(path: str, what: str) -> Any:
    """JSON content of one of our bookkeeping files; a damaged one is a ConvertError naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConvertError(f"{path}: {what} is not valid JSON ({exc}); it was damaged or edited by hand") from exc


def load_part_manifest(path: str) -> dict:
    """A part manifest, checked to have the structure this module writes."""
    manifest = load_json(path, "part manifest")
    ok = isinstance(manifest, dict) and isinstance(manifest.get("shards"), dict) and all(
        isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
        and isinstance(e.get("rows"), int) and all(isinstance(e.get(k), list) for k in ("sequences", "skipped", "dropped"))
        for e in manifest["shards"].values())
    if not ok:
        raise ConvertError(f"{path}: part manifest lacks the expected {{'fingerprint', 'shards': {{path: {{'bytes', "
                           f"'sha256', 'rows', 'sequences', ...}}}}}} structure; it was damaged or edited by hand")
    from vggt_train.data.safe_names import safe_join

    for rel in manifest["shards"]:  # keys are paths under OUT: resume stats them, merge-shards renames them
        safe_join(".", rel, path, ConvertError)
    return manifest


def check_finished(path: str, entry: dict, rehash: bool = False) -> tuple[dict | None, str]:
    """(entry, '') if the shard at `path` is the one `entry` describes, else (None, why).

    Size and mtime unchanged since the commit: trusted without reading (a resume stays O(shards)). Otherwise, or
    with `rehash`, the file is re-hashed; the returned entry then carries the file's current mtime.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "missing"
    if st.st_size != entry["bytes"]:
        return None, f"{st.st_size} bytes, the manifest says {entry['bytes']}"
    if rehash or entry.get("mtime_ns") != st.st_mtime_ns:
        if _sha256_file(path) != entry["sha256"]:
            return None, "its sha256 differs from the manifest's (modified after it was written)"
        entry = dict(entry, mtime_ns=st.st_mtime_ns)
    return entry, ""


def read_manifests(out: str, fingerprint: str, rehash: bool = False,
                   only: set[str] | None = None) -> tuple[dict[str, dict], dict[str, str]]:
    """Finished shards of this plan in every part manifest: ({relpath: entry} of intact ones, {relpath: why not}
    of listed ones that are missing or changed) -- see check_finished. `only` limits the check to those shards
    (a part leaves the shards that other parts may be writing alone)."""
    entries: dict[str, dict] = {}
    rejected: dict[str, str] = {}
    wdir = work_dir(out)
    if not os.path.isdir(wdir):
        return entries, rejected
    for name in sorted(os.listdir(wdir)):
        if not (name.startswith("manifest-part-") and name.endswith(".json")):
            continue
        manifest = load_part_manifest(os.path.join(wdir, name))
        if manifest.get("fingerprint") != fingerprint:
            continue
        for rel, entry in manifest["shards"].items():
            if rel in entries or (only is not None and rel not in only):
                continue
            ok, why = check_finished(os.path.join(out, rel), entry, rehash)
            if ok is None:
                rejected[rel] = why
            else:
                entries[rel] = ok
                rejected.pop(rel, None)
    return entries, rejected


def remove_stale_temps(out: str, rels: list[str], part: tuple[int, int]) -> list[str]:
    """Delete `<shard>.tmp-<pid>` (and this part's manifest temps) that a killed run of this part left behind.

    Only this part's files: another part may be writing its own right now. Two runs of one part at once are not
    supported anyway (they would write the same shards).
    """
    patterns = [glob.escape(os.path.join(out, rel)) + ".tmp-*" for rel in rels]
    patterns.append(glob.escape(manifest_path(out, part)) + ".tmp-*")
    removed = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            os.remove(path)
            removed.append(path)
    return removed


def save_plan(out: str, plan: dict) -> None:
    """Store the plan, or check that an existing one (an earlier or parallel part) is the same plan."""
    os.makedirs(work_dir(out), exist_ok=True)
    path = os.path.join(work_dir(out), "plan.json")
    if not os.path.exists(path) and write_json_exclusive(path, plan):
        return
    # an earlier part, or one started at the same moment (write_json_exclusive lets only one create the file)
    old = load_json(path, "the conversion plan")
    if not isinstance(old, dict):
        raise ConvertError(f"{path}: the conversion plan is not a JSON object; it was damaged or edited by hand")
    if old.get("fingerprint") != plan["fingerprint"]:
        raise ConvertError(f"{out} holds a conversion with other inputs or options (plan {old.get('fingerprint')} "
                           f"!= {plan['fingerprint']}); use another --out or delete {out}")


# ----------------------------------------------------------------------------------------------- workers
def process_sequence(task: dict) -> dict:
    """Worker: load every frame of one sequence. Returns {'rows': [...], 'skipped': [...], 'dropped': record|None}.

    Runs in spawned processes, so it only takes and returns picklable plain data.
    """
    rows, skipped = [], []
    split, category, name = task["split"], task["category"], task["sequence"]
    for i, entry in enumerate(task["entries"]):
        try:
            fr = co3d.load_frame(task["co3d_dir"], entry, task["max_side"], category)
        except co3d.BadInput as exc:
            skipped.append(_record(split, category, name, i, exc.path, exc.reason, exc.detail))
            if task["strict"]:
                break
            continue
        except Exception as exc:  # a bug or an unforeseen input: name the frame (the parent names the sequence)
            where = entry.get("filepath") if isinstance(entry, dict) else None
            raise FrameError(f"frame {i} ({where}): {type(exc).__name__}: {exc}") from exc
        h, w = fr.size
        depth = fr.depth.astype("<f2", copy=False).tobytes()
        rows.append({
            "sequence": name, "category": category, "frame": i, "filepath": entry["filepath"],
            "image": fr.image_jpeg, "depth": depth, "height": h, "width": w,
            "original_height": fr.original_size[0], "original_width": fr.original_size[1],
            "extrinsic": fr.extrinsic, "intrinsic": fr.intrinsic,
            "checksum": payload_checksum(fr.image_jpeg, depth, fr.extrinsic, fr.intrinsic),  # in the worker: parallel
        })
    dropped = None
    if len(rows) < task["min_frames"] and not (task["strict"] and skipped):
        dropped = _record(split, category, name, None, f"{category}/{name}", "too_few_frames",
                          f"{len(rows)} valid of {len(task['entries'])} annotated < --min-frames {task['min_frames']}")
        rows = []
    return {"rows": rows, "skipped": skipped, "dropped": dropped}


class FrameError(Exception):
    """An unexpected exception while converting one frame (message only, so it pickles out of a worker)."""


def _result(task: dict, get) -> dict:
    """get() -> the result of `task`, or a ConvertError naming the sequence (a crashed worker included)."""
    try:
        return get()
    except Exception as exc:
        what = str(exc) if isinstance(exc, FrameError) else f"{type(exc).__name__}: {exc}"
        raise ConvertError(f"converting {task['split']} sequence {task['category']}/{task['sequence']} failed: {what} "
                           f"(set VGGT_TRAIN_DEBUG=1 for the traceback)") from exc


def _ordered_results(tasks: Iterator[dict], workers: int) -> Iterator[tuple[dict, dict]]:
    """(task, result) in task order; at most ~2 sequences per worker in flight, which bounds memory."""
    if workers <= 1:
        for task in tasks:
            yield task, _result(task, lambda: process_sequence(task))
        return
    from vggt_train.data.pool import process_pool

    pool = process_pool(workers)
    pending: collections.deque = collections.deque()
    try:
        for task in tasks:
            pending.append((task, pool.submit(process_sequence, task)))
            if len(pending) >= 2 * workers:
                t, fut = pending.popleft()
                yield t, _result(t, fut.result)
        while pending:
            t, fut = pending.popleft()
            yield t, _result(t, fut.result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Annotations:
    """Re-reads annotation files on demand (the plan keeps none in memory); checks they did not change."""

    def __init__(self, opts: Options, plan: dict):
        self.opts, self.plan = opts, plan
        self.cache: collections.OrderedDict = collections.OrderedDict()

    def entries(self, split: str, category: str, sequence: str) -> list:
        key = (split, category)
        if key not in self.cache:
            path = co3d.annotation_path(self.opts.annotation_dir, category, split)
            try:
                co3d.check_regular_file(path, "missing_annotation_file")
            except co3d.BadInput as exc:
                raise ConvertError(f"{exc}; restart the conversion into a new --out") from None
            if _sha256_file(path) != self.plan["inputs"].get(os.path.basename(path)):
                raise ConvertError(f"{path} changed since the plan was made; restart the conversion into a new --out")
            self.cache[key] = co3d.load_annotation_file(path)
            while len(self.cache) > 2:
                self.cache.popitem(last=False)
        return self.cache[key][sequence]


# ----------------------------------------------------------------------------------------------- writing
class ShardWriter:
    """Streams record batches into `<final>.tmp-<pid>`; `commit()` fsyncs, renames and returns size and sha256."""

    def __init__(self, final_path: str):
        import pyarrow as pa

        from vggt_train.data.schema import arrow_schema

        self.pa = pa
        self.final = final_path
        self.tmp = f"{final_path}.tmp-{os.getpid()}"
        self.schema = arrow_schema()
        self.sink = self.writer = None
        try:
            os.makedirs(os.path.dirname(final_path), exist_ok=True)
            self.sink = pa.OSFile(self.tmp, "wb")
            self.writer = pa.ipc.new_stream(self.sink, self.schema, options=pa.ipc.IpcWriteOptions(compression=None))
        except OSError as exc:
            raise self._error(exc) from exc
        self.rows = 0

    def _error(self, exc: OSError) -> ConvertError:
        # Write errors (a full disk, a quota) often carry no path; say which file.
        from vggt_train.cli import describe_os_error

        return ConvertError(f"writing {self.tmp} failed: {describe_os_error(exc)}")

    def write(self, rows: list[dict]) -> None:
        from vggt_train.data.schema import frame_columns

        for s in range(0, len(rows), ROWS_PER_BATCH):
            table = self.pa.Table.from_pydict(frame_columns(rows[s:s + ROWS_PER_BATCH]), schema=self.schema)
            try:
                self.writer.write_table(table)
            except OSError as exc:
                raise self._error(exc) from exc
        self.rows += len(rows)

    def commit(self) -> dict:
        try:
            self.writer.close()
            self.sink.close()
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as exc:
            raise self._error(exc) from exc
        os.replace(self.tmp, self.final)
        st = os.stat(self.final)
        # mtime lets a resume trust an untouched shard without re-reading it (see check_finished).
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256_file(self.final), "rows": self.rows}

    def abort(self) -> None:
        for obj in (self.writer, self.sink):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


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


def _progress(total: int, quiet: bool):
    """A tqdm bar on a terminal, periodic log lines otherwise, nothing under --quiet."""
    from tqdm import tqdm

    if not quiet and not sys.stderr.isatty():
        return LogProgress(total, float(os.environ.get(PROGRESS_INTERVAL_ENV, "") or 30.0))
    return tqdm(total=total, unit="frame", desc="convert", dynamic_ncols=True, smoothing=0.05, disable=quiet)


def convert(opts: Options) -> dict:
    """Convert this part's shards (skipping finished ones); finalize when the run is the whole plan (part 0/1).

    Returns a summary {'splits': {split: stats}, 'reused_shards', 'written_shards', 'seconds', 'frames'}.
    """
    from vggt_train.cli import output_dir_problem

    t0 = time.perf_counter()
    problem = output_dir_problem(opts.out)
    if problem:
        raise ConvertError(f"cannot write --out {opts.out}: {problem}")
    from vggt_train import run_lock

    what = f"convert-co3d part {opts.part[0]}/{opts.part[1]}"
    try:
        with run_lock.hold(lock_path(opts.out, f"part-{opts.part[0]:05d}-of-{opts.part[1]:05d}"), what, opts.out):
            merging = run_lock.holder_of(lock_path(opts.out, "merge"))
            if merging is not None:
                raise ConvertError(f"{opts.out} is being merged by {run_lock.describe(merging)}; convert after it ends")
            return _convert(opts, t0)
    except run_lock.LockHeldError as exc:
        raise ConvertError(str(exc)) from None


def lock_path(out: str, slot: str) -> str:
    """The lock file of one conversion part ('part-00000-of-00004') or of a merge ('merge') in OUT."""
    return os.path.join(work_dir(out), f"lock-{slot}")


def _convert(opts: Options, t0: float) -> dict:
    plan = make_plan(opts)
    save_plan(opts.out, plan)
    mine = part_jobs(plan, opts.part)
    mine_rels = [shard_relpath(plan, s, k) for s, k in mine]
    removed = remove_stale_temps(opts.out, mine_rels, opts.part)
    if removed and not opts.quiet:
        print(f"removed {len(removed)} temp file(s) left by an interrupted run (e.g. {removed[0]})", file=sys.stderr)
    finished, rejected = read_manifests(opts.out, plan["fingerprint"], rehash=opts.rehash_finished, only=set(mine_rels))
    if rejected and not opts.quiet:
        first = min(rejected)
        print(f"rewriting {len(rejected)} shard(s) listed as finished that changed since (first: {first}: "
              f"{rejected[first]})", file=sys.stderr)
    mpath = manifest_path(opts.out, opts.part)
    manifest = {"fingerprint": plan["fingerprint"], "part": list(opts.part), "shards": {}}
    for split, k in mine:
        rel = shard_relpath(plan, split, k)
        if rel in finished:
            manifest["shards"][rel] = finished[rel]
    write_json_atomic(mpath, manifest)
    todo = [(s, k) for s, k in mine if shard_relpath(plan, s, k) not in manifest["shards"]]
    exit_after = int(os.environ.get(EXIT_HOOK_ENV, "0") or 0)

    annotations = _Annotations(opts, plan)

    def tasks() -> Iterator[dict]:
        for split, k in todo:
            for category, name, _n in plan["splits"][split][k]:
                yield {"split": split, "shard": k, "category": category, "sequence": name,
                       "entries": annotations.entries(split, category, name), "co3d_dir": opts.co3d_dir,
                       "max_side": opts.max_side, "min_frames": opts.min_frames, "strict": opts.strict}

    remaining = {(s, k): len(plan["splits"][s][k]) for s, k in todo}
    bar = _progress(sum(n for s, k in todo for _c, _q, n in plan["splits"][s][k]), opts.quiet)
    writer: ShardWriter | None = None
    current: dict | None = None
    written = 0
    try:
        for s, k in todo:  # empty shards (an empty split) have no tasks; commit them up front
            if remaining[(s, k)] == 0:
                _commit(ShardWriter(os.path.join(opts.out, shard_relpath(plan, s, k))), {"sequences": [], "skipped": [], "dropped": []},
                        manifest, mpath, shard_relpath(plan, s, k))
        for task, result in _ordered_results(tasks(), opts.workers):
            key = (task["split"], task["shard"])
            rel = shard_relpath(plan, *key)
            if writer is None:
                writer = ShardWriter(os.path.join(opts.out, rel))
                current = {"sequences": [], "skipped": [], "dropped": []}
            if opts.strict and result["skipped"]:
                bad = result["skipped"][0]
                raise ConvertError(f"{bad['path']}: {bad['reason']}" + (f" ({bad['detail']})" if bad["detail"] else "")
                                   + " [--strict]")
            writer.write(result["rows"])
            current["skipped"] += result["skipped"]
            if result["dropped"]:
                current["dropped"].append(result["dropped"])
            if result["rows"]:
                current["sequences"].append([task["category"], task["sequence"], len(result["rows"])])
            bar.update(len(task["entries"]))
            remaining[key] -= 1
            if remaining[key] == 0:
                _commit(writer, current, manifest, mpath, rel)
                writer, current = None, None
                written += 1
                if exit_after and written >= exit_after:
                    os._exit(75)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    summary = summarize(plan, manifest["shards"], mine)
    summary.update(reused_shards=len(mine) - len(todo), written_shards=len(todo), seconds=time.perf_counter() - t0)
    if opts.part[1] == 1:
        from vggt_train.data.merge import finalize

        finalize(opts.out)
    return summary


def _commit(writer: ShardWriter, content: dict, manifest: dict, mpath: str, rel: str) -> None:
    entry = writer.commit()
    entry.update(content)
    manifest["shards"][rel] = entry
    write_json_atomic(mpath, manifest)


# ----------------------------------------------------------------------------------------------- summary
def summarize(plan: dict, entries: dict[str, dict], jobs: list[tuple[str, int]]) -> dict:
    """Per-split counts over `jobs` from their manifest entries (so resumed shards are counted too)."""
    splits: dict[str, dict] = {}
    for split, k in jobs:
        st = splits.setdefault(split, {"sequences": 0, "frames": 0, "skipped": collections.Counter(), "dropped": 0,
                                       "shards": 0, "bytes": 0})
        e = entries[shard_relpath(plan, split, k)]
        st["sequences"] += len(e["sequences"])
        st["frames"] += e["rows"]
        st["dropped"] += len(e["dropped"])
        st["skipped"].update(r["reason"] for r in e["skipped"])
        st["shards"] += 1
        st["bytes"] += e["bytes"]
    for split, st in splits.items():
        st["filtered"] = plan["filtered"].get(split, {}).get("sequences", 0)
    return {"splits": splits, "problems": plan["problems"]}


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


# ----------------------------------------------------------------------------------------------- CLI
def _parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if n < 1 or not 0 <= i < n:
        from vggt_train.cli import CLIError

        raise CLIError(f"--part must be i/n with 0 <= i < n (e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT), got {text!r}")
    return i, n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--co3d-dir", required=True, help="raw Co3D root: <category>/<sequence>/{images,depths,depth_masks}/")
    parser.add_argument("--annotation-dir", required=True, help="directory of <category>_<split>.jgz annotation files")
    parser.add_argument("--out", required=True, help="output root; each split goes to OUT/<split> (datasets.load_from_disk opens it)")
    parser.add_argument("--categories", default="all",
                        help="'all' (every category with annotation files), 'train41' (the 41 VGGT training categories) "
                             "or a comma list like tv,apple; a requested category without annotations is an error [default: all]")
    parser.add_argument("--splits", default="train,test", help="comma list of splits [default: train,test]")
    parser.add_argument("--min-frames", type=int, default=24,
                        help="drop sequences with fewer annotated frames, or fewer valid frames after skipping bad ones [default: 24]")
    parser.add_argument("--max-side", type=int, default=None,
                        help="downscale so the longer side is at most N pixels (intrinsics and depth follow) [default: keep size]")
    parser.add_argument("--shard-size-mb", type=float, default=512.0,
                        help="target shard size in MB (planned from a size probe per category; a sequence never spans shards) [default: 512]")
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


def options_from_args(args: argparse.Namespace) -> Options:
    from vggt_train.cli import CLIError

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    if not splits or len(set(splits)) != len(splits):
        raise CLIError(f"--splits must be a comma list of distinct names, got {args.splits!r}")
    if args.min_frames < 1 or args.shard_size_mb <= 0 or args.workers < 1 or (args.max_side is not None and args.max_side < 8):
        raise CLIError("need --min-frames >= 1, --shard-size-mb > 0, --workers >= 1 and --max-side >= 8")
    return Options(co3d_dir=args.co3d_dir, annotation_dir=args.annotation_dir, out=args.out, categories=args.categories,
                   splits=splits, min_frames=args.min_frames, max_side=args.max_side, shard_size_mb=args.shard_size_mb,
                   workers=args.workers, part=_parse_part(args.part), strict=args.strict, quiet=args.quiet,
                   rehash_finished=args.rehash_finished)


def run(args: argparse.Namespace) -> int:
    from vggt_train.cli import CLIError

    opts = options_from_args(args)
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
