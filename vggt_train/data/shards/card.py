"""The dataset card of a converted dataset: OUT/README.md, a Hugging Face dataset card written by finalize.

The YAML front matter is what the Hub and `datasets.load_dataset(OUT or repo id)` read: `configs` maps each split
to its Arrow shards, `dataset_info` gives the features (the schema of schema.py) and split sizes, `license` is the
source dataset's. The body says where the frames come from (licence, citation), what the dataset holds (frames and
sequences per split and category), how it was converted and what was skipped (the summary of report.json).

The card is a function of OUT's bookkeeping files alone (manifest.json, report.json, the sequence indexes): no
path, time or host goes in, so rerunning finalize rewrites it byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import yaml

from vggt_train.data.shards.layout import load_json
from vggt_train.data.shards.schema import INDEX_FILE, MANIFEST_FILE, REPORT_FILE, SCHEMA_VERSION, features

CARD_FILE = "README.md"  # top level: the name the Hub shows and load_dataset reads the YAML of

CO3D = {
    "name": "Common Objects in 3D (CO3D)",
    "license": "cc-by-nc-4.0",
    "license_name": "CC BY-NC 4.0",
    "homepage": "https://github.com/facebookresearch/co3d",
    "citation": (
        "@inproceedings{reizenstein21co3d,\n"
        "  title     = {Common Objects in 3D: Large-Scale Learning and Evaluation of Real-life 3D Category "
        "Reconstruction},\n"
        "  author    = {Reizenstein, Jeremy and Shapovalov, Roman and Henzler, Philipp and Sbordone, Luca and "
        "Labatut, Patrick and Novotny, David},\n"
        "  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},\n"
        "  pages     = {10901--10911},\n"
        "  year      = {2021}\n"
        "}"),
}
VKITTI2 = {
    "name": "Virtual KITTI 2",
    "license": "cc-by-nc-sa-3.0",
    "license_name": "CC BY-NC-SA 3.0",
    "homepage": "https://europe.naverlabs.com/research/computer-vision/proxy-virtual-worlds-vkitti-2/",
    "citation": (
        "@misc{cabon2020vkitti2,\n"
        "  title         = {Virtual KITTI 2},\n"
        "  author        = {Cabon, Yohann and Murray, Naila and Humenberger, Martin},\n"
        "  year          = {2020},\n"
        "  eprint        = {2001.10773},\n"
        "  archivePrefix = {arXiv},\n"
        "  primaryClass  = {cs.CV}\n"
        "}"),
}
USER_COLMAP = {
    "name": "user COLMAP scenes",
    "license": "unknown",
    "license_name": "the scenes' owner's licence (unknown to the converter: fill it in before sharing)",
    "homepage": "",
    "citation": "",
}
SOURCES = {"co3d": CO3D, "vkitti2": VKITTI2, "colmap": USER_COLMAP}

_TAGS = ["vggt-train", "multi-view", "3d-reconstruction", "depth", "camera-pose"]


def source_info(plan: dict) -> dict:
    """The source dataset of a conversion plan: plan["source"] (a dict with name/license/citation/homepage, or a
    key of SOURCES) when the converter recorded one, else Co3D (convert-co3d's plans carry none)."""
    src = plan.get("source")
    if isinstance(src, dict):
        return {"name": "unknown source", "license": "unknown", "homepage": "", "citation": "", **src}
    if isinstance(src, str):
        return SOURCES.get(src.lower(), {**USER_COLMAP, "name": src})
    return CO3D


def _features_yaml() -> list[dict]:
    """The features of schema.py in the card's YAML form (what `datasets.Features._from_yaml_list` reads)."""
    out = []
    for name, f in features().to_dict().items():
        kind = f["_type"]
        if kind == "Value":
            dtype: Any = f["dtype"]
        elif kind == "Image":
            dtype = "image"
        elif kind == "Array2D":
            dtype = {"array2_d": {"shape": list(f["shape"]), "dtype": f["dtype"]}}
        else:  # schema.py gained a feature type this card does not know: fail loudly rather than mislabel it
            raise TypeError(f"dataset card: no YAML form for feature {name!r} of type {kind}")
        out.append({"name": name, "dtype": dtype})
    return out


def _type_name(dtype: Any) -> str:
    if isinstance(dtype, dict) and "array2_d" in dtype:
        a = dtype["array2_d"]
        return f"{a['dtype']} {a['shape']} (Array2D)"
    return str(dtype)


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def _category_counts(out_root: str, split: str) -> dict[str, list[int]] | None:
    """{category: [sequences, frames]} of a split from its sequence index (None if the index is absent)."""
    path = os.path.join(out_root, split, INDEX_FILE)
    if not os.path.exists(path):
        return None
    counts: dict[str, list[int]] = {}
    for e in load_json(path, "the sequence index")["sequences"]:
        c = counts.setdefault(e["category"], [0, 0])
        c[0] += 1
        c[1] += e["num_frames"]
    return counts


def card_text(out_root: str, info: dict) -> str:
    """The card of the dataset at `out_root` (see write_dataset_card) as text."""
    src = info["source"]
    manifest = load_json(os.path.join(out_root, MANIFEST_FILE), "the dataset manifest")
    report = load_json(os.path.join(out_root, REPORT_FILE), "the conversion report")
    splits = list(report.get("options", {}).get("splits") or manifest["splits"])
    pretty = info.get("pretty_name") or f"{src['name']}, converted by vggt-train"
    sizes = {s: sum(f["bytes"] for f in manifest["splits"][s]["shards"]) for s in splits}
    front = {
        "pretty_name": pretty,
        "license": src.get("license") or "unknown",
        "tags": list(info.get("tags") or _TAGS),
        "configs": [{"config_name": "default", "data_files": [{"split": s, "path": f"{s}/data-*.arrow"} for s in splits]}],
        "dataset_info": {
            "features": _features_yaml(),
            "splits": [{"name": s, "num_bytes": sizes[s], "num_examples": manifest["splits"][s]["num_rows"]} for s in splits],
            "download_size": sum(sizes.values()),
            "dataset_size": sum(sizes.values()),
        },
    }
    body = [f"# {pretty}", ""]
    body += [f"Frames of {src['name']} converted by vggt-train's "
             f"`{info.get('converter', 'convert-co3d')}` into sharded Arrow files (schema version {SCHEMA_VERSION}): one "
             f"row per frame, rows grouped by sequence, frames in their source order.", "",
             "```python",
             "import datasets",
             "dd = datasets.load_from_disk(\"OUT\")           # this directory, memory-mapped",
             "ds = datasets.load_dataset(\"OUT or <user>/<repo>\", split=\"train\")   # through this card's `configs`",
             "```", "",
             "For training, `MultiViewDataset(\"OUT\", \"train\")` reads a split directly (see vggt-train's docs/data.md). "
             "The `_convert/` folder is the converter's bookkeeping (resume, merging parts); leave it out when sharing.", ""]
    body += ["## Source dataset", "",
             f"- name: {src['name']}",
             f"- licence: {src.get('license_name') or src.get('license') or 'unknown'} — this converted copy is a "
             f"derivative of the source and is bound by its licence"]
    if src.get("homepage"):
        body.append(f"- homepage: {src['homepage']}")
    body.append("")
    if src.get("citation"):
        body += ["If you use these data, cite the source dataset:", "", "```bibtex", src["citation"], "```", ""]
    body += ["## Contents", ""]
    body += _table(["split", "frames", "sequences", "shards", "bytes"],
                   [[s, manifest["splits"][s]["num_rows"], manifest["splits"][s]["num_sequences"],
                     len(manifest["splits"][s]["shards"]), sizes[s]] for s in splits])
    per_split = {s: _category_counts(out_root, s) for s in splits}
    if all(c is not None for c in per_split.values()):
        cats = sorted({c for counts in per_split.values() for c in counts})
        header = ["category"] + [f"{s} {what}" for s in splits for what in ("sequences", "frames")]
        rows = [[c] + [v for s in splits for v in per_split[s].get(c, [0, 0])] for c in cats]
        body += ["", "Per category:", ""] + _table(header, rows)
    body += ["", "Columns (`depth` is little-endian float16 [height, width]; `extrinsic` is OpenCV camera-from-world; "
             "`checksum` is the xxh3-64 of the row's payload):", ""]
    body += _table(["column", "type"], [[f["name"], _type_name(f["dtype"])] for f in front["dataset_info"]["features"]])
    body += ["", "## Conversion", ""]
    opts = report.get("options", {})
    body += _table(["option", "value"], [[k, json.dumps(opts[k], sort_keys=True)] for k in sorted(opts)])
    body += ["", f"Categories: {', '.join(report.get('categories', [])) or 'none'}.",
             f"Plan fingerprint: `{manifest.get('fingerprint', '')}`.", ""]
    body += ["## Skipped input", ""]
    reasons = report.get("skipped_by_reason", {})
    below = {s: st.get("sequences_below_min_frames", 0) for s, st in report.get("splits", {}).items()}
    if reasons:
        body += _table(["reason", "records"], [[r, reasons[r]] for r in sorted(reasons)])
    else:
        body.append("Nothing was skipped.")
    body += ["", "Sequences with fewer than `min_frames` frames, left out by design: "
             + (", ".join(f"{s} {below[s]}" for s in splits if s in below) or "none") + ".",
             f"Every skipped frame, sequence and annotation file, with its path and reason: `{REPORT_FILE}`.", ""]
    text = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16)
    return "---\n" + text + "---\n\n" + "\n".join(body)


def write_dataset_card(out_root: str, info: dict) -> str:
    """Write OUT/README.md, the Hugging Face dataset card of the finalized dataset at `out_root`; returns its path.

    `info`: {"source": {"name", "license" (a Hub licence id), "citation" (BibTeX), "homepage", optional
    "license_name"}} (CO3D, VKITTI2, USER_COLMAP, or source_info(plan)), optional "pretty_name", "tags" and
    "converter" (the subcommand named in the card). Counts, options and the skip summary come from OUT's
    manifest.json, report.json and sequence indexes, which finalize writes first. Deterministic: same files,
    same bytes; the shards are not touched.
    """
    path = os.path.join(out_root, CARD_FILE)
    data = card_text(out_root, info).encode("utf-8")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path
