"""Convert a raw dataset into sharded Arrow datasets (`datasets.load_from_disk` layout), streaming and resumable.

Inputs: Co3D, COLMAP workspaces, Virtual KITTI 2 (the formats of inputs.py). Flow: plan (the input's index
only) -> convert this part's shards (workers decode sequences, the main process writes) -> finalize (state.json,
dataset_info.json, sequence index, manifest, report) once every shard of the plan exists.

Determinism: the plan fixes which sequences go to which shard from the input's index and a size probe,
independently of --workers and --part; sequences are sorted by name, results are written in plan order, Arrow is written uncompressed without timestamps. Hence a single run, a resumed run and n merged parts
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

import collections
import os
import sys
import time
from typing import Iterator

from vggt_train import run_lock
from vggt_train.data.pool import process_pool
from vggt_train.data.shards.finalize import finalize
from vggt_train.data.shards.inputs import get_format
from vggt_train.data.shards.layout import (
    ConvertError,
    lock_path,
    manifest_path,
    part_jobs,
    read_manifests,
    record,
    remove_stale_temps,
    sha256_file,
    shard_relpath,
    summarize,
    write_json_atomic,
)
from vggt_train.data.shards.plan import Options, make_plan, save_plan
from vggt_train.data.shards.progress import progress_bar
from vggt_train.data.shards.schema import arrow_schema, frame_columns, payload_checksum
from vggt_train.errors import describe_os_error, output_dir_problem

EXIT_HOOK_ENV = "VGGT_TRAIN_TEST_EXIT_AFTER_SHARDS"
ROWS_PER_BATCH = 64  # Arrow record batch size; keeps binary offsets far from int32 limits for huge sequences


def process_sequence(task: dict) -> dict:
    """Worker: load every frame of one sequence. Returns {'rows': [...], 'skipped': [...], 'dropped': record|None}.

    Runs in spawned processes, so it only takes and returns picklable plain data.
    """
    fmt = get_format(task["format"])
    rows, skipped = [], []
    split, category, name = task["split"], task["category"], task["sequence"]
    for i, entry in enumerate(task["entries"]):
        try:
            loaded = fmt.load(task, entry, i)
        except fmt.input_errors as exc:
            skipped.append(record(split, category, name, i, exc.path, exc.reason, exc.detail))
            if task["strict"]:
                break
            continue
        except Exception as exc:  # a bug or an unforeseen input: name the frame (the parent names the sequence)
            where = entry.get("filepath") if isinstance(entry, dict) else None
            raise FrameError(f"frame {i} ({where}): {type(exc).__name__}: {exc}") from exc
        fr = loaded.frame
        h, w = fr.size
        # a camera-only frame (no depth) stores an empty depth: see schema.py
        depth = b"" if fr.depth is None else fr.depth.astype("<f2", copy=False).tobytes()
        rows.append({
            "sequence": name, "category": category, "frame": loaded.frame_index, "filepath": loaded.filepath,
            "image": fr.image_jpeg, "depth": depth, "height": h, "width": w,
            "original_height": fr.original_size[0], "original_width": fr.original_size[1],
            "extrinsic": fr.extrinsic, "intrinsic": fr.intrinsic,
            "checksum": payload_checksum(fr.image_jpeg, depth, fr.extrinsic, fr.intrinsic),  # in the worker: parallel
        })
    dropped = None
    if len(rows) < task["min_frames"] and not (task["strict"] and skipped):
        dropped = record(split, category, name, None, f"{category}/{name}", "too_few_frames",
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


class ShardWriter:
    """Streams record batches into `<final>.tmp-<pid>`; `commit()` fsyncs, renames and returns size and sha256."""

    def __init__(self, final_path: str):
        import pyarrow as pa  # here: the conversion workers import this module and never write Arrow

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
        return ConvertError(f"writing {self.tmp} failed: {describe_os_error(exc)}")

    def write(self, rows: list[dict]) -> None:
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
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(self.final), "rows": self.rows}

    def abort(self) -> None:
        for obj in (self.writer, self.sink):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def convert(opts: Options) -> dict:
    """Convert this part's shards (skipping finished ones); finalize when the run is the whole plan (part 0/1).

    Returns a summary {'splits': {split: stats}, 'reused_shards', 'written_shards', 'seconds', 'frames'}.
    """

    t0 = time.perf_counter()
    problem = output_dir_problem(opts.out)
    if problem:
        raise ConvertError(f"cannot write --out {opts.out}: {problem}")

    what = f"convert-{opts.input_format} part {opts.part[0]}/{opts.part[1]}"
    try:
        with run_lock.hold(lock_path(opts.out, f"part-{opts.part[0]:05d}-of-{opts.part[1]:05d}"), what, opts.out):
            merging = run_lock.holder_of(lock_path(opts.out, "merge"))
            if merging is not None:
                raise ConvertError(f"{opts.out} is being merged by {run_lock.describe(merging)}; convert after it ends")
            return _convert(opts, t0)
    except run_lock.LockHeldError as exc:
        raise ConvertError(str(exc)) from None


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

    fmt = get_format(opts.input_format)

    def tasks() -> Iterator[dict]:
        for split, k in todo:
            for category, name, _n in plan["splits"][split][k]:
                yield {"format": opts.input_format, "split": split, "shard": k, "category": category,
                       "sequence": name, "entries": fmt.entries(opts, plan, split, category, name),
                       "co3d_dir": opts.co3d_dir, "inputs": opts.inputs, "max_side": opts.max_side,
                       "min_frames": opts.min_frames, "strict": opts.strict}

    remaining = {(s, k): len(plan["splits"][s][k]) for s, k in todo}
    bar = progress_bar(sum(n for s, k in todo for _c, _q, n in plan["splits"][s][k]), opts.quiet,
                       f"convert-{opts.input_format}")
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
        finalize(opts.out)
    return summary


def _commit(writer: ShardWriter, content: dict, manifest: dict, mpath: str, rel: str) -> None:
    entry = writer.commit()
    entry.update(content)
    manifest["shards"][rel] = entry
    write_json_atomic(mpath, manifest)
