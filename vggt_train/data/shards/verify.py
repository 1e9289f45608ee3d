"""Re-read every shard of a converted dataset and check schema, counts, checksums, grouping and decodability.

Problems (damaged or missing files) make verify-dataset fail; stray files (temp files of killed runs, files no
split lists) are warnings: they waste space but `load_from_disk` never reads them.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os

import numpy as np
from PIL import Image

from vggt_train.data.pool import process_pool
from vggt_train.data.safe_names import is_plain_name
from vggt_train.data.shards.reader import ShardError, _fixed_matrix, index_problems, open_shard
from vggt_train.data.shards.schema import (
    CHECKSUM_COLUMN,
    INDEX_FILE,
    MANIFEST_FILE,
    WORK_DIR,
    arrow_schema,
    payload_checksum,
)

_SPLIT_FILES = ("state.json", "dataset_info.json", INDEX_FILE)


def verify_shard(path: str, expected: dict, decode: bool = True) -> dict:
    """Check one shard against its manifest entry. Returns {'errors': [...], 'runs': [[sequence, rows], ...]}.

    Worker-safe (spawned processes call it). `runs` lists consecutive same-sequence rows, for the index check.
    """

    name = os.path.basename(path)
    errors: list[str] = []
    runs: list[list] = []
    if not os.path.exists(path):
        return {"errors": [f"{name}: missing"], "runs": runs, "unreadable": True}
    size = os.path.getsize(path)
    if size != expected["bytes"]:
        errors.append(f"{name}: {size} bytes, manifest says {expected['bytes']} (truncated or replaced)")
    arrow_schema()  # registers datasets' Array2D extension type before reading
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if h.hexdigest() != expected["sha256"]:
        errors.append(f"{name}: sha256 {h.hexdigest()[:16]}... != manifest {expected['sha256'][:16]}...")

    try:
        table = open_shard(path)  # every record batch passes validate(full=True) before a value is read
    except ShardError as exc:
        return {"errors": errors + [str(exc).replace(path, name, 1)], "runs": runs, "unreadable": True}
    result = {"errors": errors, "runs": runs, "checksums": True}
    try:
        result["checksums"] = _check_table(table, name, expected, decode, errors, runs)
    except Exception as exc:  # never crash the whole verification on one odd shard
        errors.append(f"{name}: reading the rows failed ({type(exc).__name__}: {exc})")
    return result


def _check_table(table, name: str, expected: dict, decode: bool, errors: list, runs: list) -> bool:
    """Append what is wrong with a shard's rows to `errors`; returns whether the shard has per-row checksums."""

    expected_schema = arrow_schema()
    has_checksums = True
    if not table.schema.equals(expected_schema, check_metadata=True):
        if table.schema.equals(arrow_schema(with_checksum=False), check_metadata=True):
            has_checksums = False  # schema 1: valid, without the checksum column
        else:
            diff = [f.name for f in expected_schema if f.name not in table.schema.names or table.schema.field(f.name) != f]
            errors.append(f"{name}: schema differs from the expected one (columns {diff or 'metadata'})")
            return True
    if table.num_rows != expected["rows"]:
        errors.append(f"{name}: {table.num_rows} rows, manifest says {expected['rows']}")
    cols = {c: table.column(c) for c in ("sequence", "frame", "height", "width")}
    seqs = cols["sequence"].to_pylist()
    frames = cols["frame"].to_numpy()
    hs, ws = cols["height"].to_numpy(), cols["width"].to_numpy()
    for i, s in enumerate(seqs):
        if runs and runs[-1][0] == s:
            if frames[i] <= frames[i - 1]:
                errors.append(f"{name}: row {i}: frame {frames[i]} of {s} not after {frames[i - 1]}")
            runs[-1][1] += 1
        else:
            if any(r[0] == s for r in runs):
                errors.append(f"{name}: rows of {s} are not contiguous")
            runs.append([s, 1])

    ext = _fixed_matrix(table.column("extrinsic"), (3, 4))
    intr = _fixed_matrix(table.column("intrinsic"), (3, 3))
    bad_cam = np.flatnonzero(~(np.isfinite(ext).all((1, 2)) & np.isfinite(intr).all((1, 2))))
    if len(bad_cam):
        errors.append(f"{name}: non-finite camera in rows {bad_cam[:5].tolist()}")
    depth_col = table.column("depth")
    img_col = table.column("image").combine_chunks().field("bytes")
    sums = table.column(CHECKSUM_COLUMN).to_numpy() if has_checksums else None
    for i in range(table.num_rows):
        where = f"{name}: row {i} ({seqs[i]} frame {frames[i]})"
        buf = depth_col[i].as_buffer()
        if buf is None or buf.size not in (0, int(hs[i]) * int(ws[i]) * 2):  # 0 bytes: no depth (camera only)
            errors.append(f"{where}: depth has {None if buf is None else buf.size} bytes, expected {hs[i]}x{ws[i]}x2 or 0")
            continue
        image = img_col[i].as_buffer()
        if sums is not None and payload_checksum(image if image is not None else b"", buf, ext[i], intr[i]) != int(sums[i]):
            errors.append(f"{where}: checksum mismatch: its image/depth/camera bytes differ from what was converted")
        if decode:
            d = np.frombuffer(buf, "<f2")
            if not np.isfinite(d).all():
                errors.append(f"{where}: non-finite depth")
            try:
                with Image.open(io.BytesIO(img_col[i].as_buffer())) as im:
                    im.load()
                    if im.size != (ws[i], hs[i]):
                        errors.append(f"{where}: image {im.size[1]}x{im.size[0]} but height/width {hs[i]}x{ws[i]}")
            except Exception as exc:
                errors.append(f"{where}: image does not decode ({type(exc).__name__}: {exc})")
    return has_checksums


def _split_tasks(root: str, split: str, info: dict) -> list[tuple[str, dict]]:
    return [(os.path.join(root, split, f["filename"]), f) for f in info["shards"]]


def _read_json(path: str, rel: str, errors: list[str]):
    """Parsed JSON, or None after appending why not (missing, unreadable, invalid) to `errors`."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        errors.append(f"{rel}: missing")
    except (OSError, ValueError) as exc:
        errors.append(f"{rel}: not readable JSON ({type(exc).__name__}: {exc})")
    return None


def _manifest_ok(manifest) -> bool:
    def shard_ok(f):
        return (isinstance(f, dict) and is_plain_name(f.get("filename"))
                and isinstance(f.get("bytes"), int) and isinstance(f.get("sha256"), str) and isinstance(f.get("rows"), int))

    return isinstance(manifest, dict) and isinstance(manifest.get("splits"), dict) and all(
        is_plain_name(split) and isinstance(info, dict)
        and isinstance(info.get("num_rows"), int) and isinstance(info.get("shards"), list) and all(map(shard_ok, info["shards"]))
        for split, info in manifest["splits"].items())


def stray_files(root: str, manifest: dict) -> list[str]:
    """Files under `root` that are no part of the dataset: temp files of killed runs, files no split lists."""
    stray = []
    for split, info in manifest["splits"].items():
        sdir = os.path.join(root, split)
        if not os.path.isdir(sdir):
            continue
        known = set(_SPLIT_FILES) | {f["filename"] for f in info["shards"]}
        stray += [f"{split}/{name}" for name in sorted(os.listdir(sdir)) if name not in known]
    for sub in ("", WORK_DIR):  # other files at the top are the user's; temp files there are ours
        d = os.path.join(root, sub)
        if os.path.isdir(d):
            stray += [os.path.join(sub, n) if sub else n for n in sorted(os.listdir(d)) if ".tmp-" in n]
    return stray


def verify_dataset(root: str, decode: bool = True, workers: int = 1) -> dict:
    """Verify every split of `root`.

    Returns {'errors': [...], 'warnings': [...], 'splits': {split: {'rows', 'sequences', 'shards'}}}; 'sequences'
    is None when the split's sequence index cannot be read.
    """

    errors: list[str] = []
    mpath = os.path.join(root, MANIFEST_FILE)
    if not os.path.exists(mpath):
        return {"errors": [f"{root}: no {MANIFEST_FILE} (not a finished converter output; run merge-shards?)"],
                "warnings": [], "splits": {}}
    manifest = _read_json(mpath, MANIFEST_FILE, errors)
    if manifest is None:
        return {"errors": errors, "warnings": [], "splits": {}}
    if isinstance(manifest, dict) and isinstance(manifest.get("splits"), dict):
        names = [(split, "split") for split in manifest["splits"]] + [
            (f.get("filename"), "shard") for info in manifest["splits"].values() if isinstance(info, dict)
            for f in (info.get("shards") if isinstance(info.get("shards"), list) else []) if isinstance(f, dict)]
        unsafe = [(n, what) for n, what in names if isinstance(n, str) and not is_plain_name(n)]
        if unsafe:  # never opened: it would leave the dataset directory
            return {"errors": [f"{MANIFEST_FILE}: unsafe {unsafe[0][1]} name {unsafe[0][0]!r} (must be a plain file "
                               f"name inside the dataset)"], "warnings": [], "splits": {}}
    if not _manifest_ok(manifest):
        return {"errors": [f"{MANIFEST_FILE}: lacks the expected {{'splits': {{split: {{'num_rows', 'shards': [{{'filename', "
                           f"'bytes', 'sha256', 'rows'}}]}}}}}} structure"], "warnings": [], "splits": {}}
    tasks = [(split, path, entry) for split, info in manifest["splits"].items() for path, entry in _split_tasks(root, split, info)]
    if workers > 1 and len(tasks) > 1:
        with process_pool(workers) as pool:
            results = list(pool.map(verify_shard, [t[1] for t in tasks], [t[2] for t in tasks], [decode] * len(tasks)))
    else:
        results = [verify_shard(p, e, decode) for _s, p, e in tasks]
    per_split: dict[str, dict] = {}
    by_split: dict[str, list] = {}
    unreadable: set[str] = set()  # splits with a shard that could not be read: their rows are unknown
    no_checksums: list[str] = []
    for (split, _p, _e), res in zip(tasks, results):
        errors += [f"{split}/{e}" for e in res["errors"]]
        if not res.get("checksums", True) and split not in no_checksums:
            no_checksums.append(split)
        by_split.setdefault(split, []).append(res["runs"])
        if res.get("unreadable"):
            unreadable.add(split)
    for split, info in manifest["splits"].items():
        sdir = os.path.join(root, split)
        state = _read_json(os.path.join(sdir, "state.json"), f"{split}/state.json", errors)
        state_ok = False
        if state is not None:
            try:
                names = [d["filename"] for d in state["_data_files"]]
            except (KeyError, TypeError):
                names = None
            unsafe = [n for n in names or [] if not is_plain_name(n)]
            if unsafe:  # load_from_disk would open it: never
                errors.append(f"{split}/state.json: unsafe name {unsafe[0]!r} (must be a plain file name inside "
                              f"the split directory)")
            elif names != [s["filename"] for s in info["shards"]]:
                errors.append(f"{split}: state.json lists {names}, manifest lists {[s['filename'] for s in info['shards']]}")
            else:
                state_ok = True
        index = _read_json(os.path.join(sdir, INDEX_FILE), f"{split}/{INDEX_FILE}", errors)
        expect = None
        if index is not None:
            problems = index_problems(index, info["num_rows"], f"{split}/{INDEX_FILE}", len(info["shards"]))
            errors += problems
            if not problems:
                expect = [[s["sequence"], s["num_frames"]] for s in index["sequences"]]
        runs = [r for shard_runs in by_split.get(split, []) for r in shard_runs]
        if expect is not None and split not in unreadable and runs != expect:
            errors.append(f"{split}: {INDEX_FILE} does not match the rows (first difference at sequence "
                          f"{next((i for i, (a, b) in enumerate(zip(runs, expect)) if a != b), min(len(runs), len(expect)))})")
        repeated = [s for s, n in collections.Counter(s for s, _n in runs).items() if n > 1]
        if repeated:
            errors.append(f"{split}: sequence {repeated[0]} appears in more than one run of rows (names must be unique "
                          f"per split)")
        if not state_ok:
            per_split[split] = {"rows": info["num_rows"], "sequences": None if expect is None else len(expect),
                                "shards": len(info["shards"])}
            continue
        try:
            import datasets

            n = len(datasets.load_from_disk(sdir))
            if n != info["num_rows"]:
                errors.append(f"{split}: load_from_disk sees {n} rows, manifest says {info['num_rows']}")
        except Exception as exc:
            errors.append(f"{split}: datasets.load_from_disk fails ({type(exc).__name__}: {exc})")
        per_split[split] = {"rows": info["num_rows"], "sequences": None if expect is None else len(expect),
                            "shards": len(info["shards"])}
    warnings = [f"{rel}: stray file (not part of the dataset; safe to delete)" for rel in stray_files(root, manifest)]
    warnings += [f"{split}: no per-row checksums (converted before schema 2): damage inside a row is only caught by "
                 f"the shard sha256 here, not in training; convert again to add them" for split in no_checksums]
    return {"errors": errors, "warnings": warnings, "splits": per_split}
