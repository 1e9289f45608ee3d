"""The COLMAP input format of the converter: one workspace per sequence (images/ + sparse model [+ depth])."""

from __future__ import annotations

import os
from typing import Any

from vggt_train.data.safe_names import is_plain_name
from vggt_train.data.shards.inputs import InputFormat, Loaded, Scan, build_frame, scan_sequence
from vggt_train.data.shards.layout import ConvertError, sha256_file
from vggt_train.data.sources import co3d, colmap



def _model_files(workspace: str) -> dict[str, str]:
    sparse_dir, fmt = colmap.find_sparse_dir(workspace)
    return {name: os.path.join(sparse_dir, f"{name}.{fmt}") for name in ("cameras", "images")}


class ColmapFormat(InputFormat):
    """COLMAP workspaces (undistorted: PINHOLE / SIMPLE_PINHOLE), read by vggt_train.data.sources.colmap.

    inputs: {"input": DIR (a workspace or a folder of workspaces), "name": the category, "depth_dir": a folder
    of <image stem>.npy depth maps relative to each workspace, or None for COLMAP's dense depth maps}.
    """

    name = "colmap"
    input_errors = (co3d.BadInput, colmap.ColmapInputError)

    def scan(self, opts) -> Scan:
        root, category = opts.inputs["input"], opts.inputs["name"]
        if not os.path.isdir(root):
            raise ConvertError(f"--input {root} is not a directory")
        try:
            workspaces = colmap.list_workspaces(root)
        except colmap.ColmapInputError as exc:
            raise ConvertError(str(exc)) from None
        scan = Scan(splits={}, categories=[category], source="colmap")
        split = opts.splits[0]
        rows, filtered = [], {"sequences": 0, "frames": 0}
        for name, workspace in workspaces:
            def read(name=name, workspace=workspace):
                if not is_plain_name(name):
                    raise colmap.ColmapInputError(workspace, "unsafe_path", f"sequence name {name!r} from the folder")
                frames = colmap.read_workspace(root, workspace, opts.inputs.get("depth_dir"))
                return frames, {f"{name}/{key}": path for key, path in _model_files(workspace).items()}

            scan_sequence(scan, opts, split, category, name, read, (colmap.ColmapInputError,), rows, filtered)
        depth_dir = opts.inputs.get("depth_dir")
        if depth_dir is not None and workspaces and all(p["reason"] == "missing_depth_dir" for p in scan.problems) \
                and len(scan.problems) == len(workspaces):
            # a mistyped --depth-dir would otherwise give an empty dataset
            raise ConvertError(f"--depth-dir {depth_dir!r} is not a folder of any workspace under {root} "
                               f"(looked for {scan.problems[0]['path']})")
        scan.splits[split] = rows
        scan.filtered[split] = filtered
        return scan

    def entries(self, opts, plan: dict, split: str, category: str, sequence: str) -> list:
        """The workspace's frames as plain dicts; its model must be the one the plan was made from."""
        root = opts.inputs["input"]
        try:
            workspace = dict(colmap.list_workspaces(root)).get(sequence)
            if workspace is None:
                raise ConvertError(f"the workspace {sequence!r} of the plan is gone from {root}; restart the "
                                   "conversion into a new --out")
            for key, path in _model_files(workspace).items():
                if sha256_file(path) != plan["inputs"].get(f"{sequence}/{key}"):
                    raise ConvertError(f"{path} changed since the plan was made; restart the conversion into a new --out")
            frames = colmap.read_workspace(root, workspace, opts.inputs.get("depth_dir"))
        except colmap.ColmapInputError as exc:
            raise ConvertError(f"{exc}; restart the conversion into a new --out") from None
        return [vars(f) for f in frames]

    def load(self, task: dict, entry: Any, position: int) -> Loaded:
        data = co3d._read_bytes(entry["image_path"], "missing_image")
        depth = colmap.read_depth(colmap.SceneFrame(**entry))
        frame = build_frame(data, entry["image_path"], depth, entry["extrinsic"], entry["intrinsic"], entry["size_hw"],
                            task["max_side"])
        # the row's frame is the position in name order (frames of a sequence ascend; COLMAP's image ids need not)
        return Loaded(frame, entry["filepath"], position)


FORMAT = ColmapFormat()
