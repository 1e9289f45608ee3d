"""The Virtual KITTI 2 input format of the converter: one sequence per (scene, variation, camera)."""

from __future__ import annotations

import os
from typing import Any

from vggt_train.data.shards.inputs import InputFormat, Loaded, Scan, build_frame, scan_sequence
from vggt_train.data.shards.layout import ConvertError, sha256_file
from vggt_train.data.sources import co3d, vkitti2



def _txt_files(root: str, scene: str, variation: str) -> dict[str, str]:
    return {n: os.path.join(root, scene, variation, f"{n}.txt") for n in ("extrinsic", "intrinsic")}


class VKitti2Format(InputFormat):
    """Virtual KITTI 2 (rgb, depth and textgt archives extracted into one folder), read by sources/vkitti2.py.

    inputs: {"input": the folder, "scenes", "variations", "cameras": comma lists or None (all)}. The category of
    a sequence is its scene; depth is the official loader's (metres, sky and > 80 m invalid).
    """

    name = "vkitti2"
    input_errors = (co3d.BadInput, vkitti2.VKittiInputError)

    def _sequences(self, opts) -> list:
        try:
            return vkitti2.list_sequences(opts.inputs["input"], opts.inputs.get("scenes"), opts.inputs.get("variations"),
                                          opts.inputs.get("cameras"))
        except vkitti2.VKittiInputError as exc:
            raise ConvertError(str(exc)) from None

    def scan(self, opts) -> Scan:
        root = opts.inputs["input"]
        sequences = self._sequences(opts)
        split = opts.splits[0]
        scan = Scan(splits={}, categories=sorted({scene for _n, scene, _v, _c in sequences}), source="vkitti2")
        rows, filtered = [], {"sequences": 0, "frames": 0}
        for name, scene, variation, camera in sequences:
            def read(scene=scene, variation=variation, camera=camera):
                frames = vkitti2.read_sequence(root, scene, variation, camera)
                return frames, {f"{scene}/{variation}/{key}": path for key, path in _txt_files(root, scene, variation).items()}

            scan_sequence(scan, opts, split, scene, name, read, (vkitti2.VKittiInputError,), rows, filtered)
        scan.splits[split] = rows
        scan.filtered[split] = filtered
        return scan

    def entries(self, opts, plan: dict, split: str, category: str, sequence: str) -> list:
        """The sequence's frames as plain dicts; its camera files must be the ones the plan was made from."""
        root = opts.inputs["input"]
        found = [s for s in self._sequences(opts) if s[0] == sequence]
        if not found:
            raise ConvertError(f"the sequence {sequence!r} of the plan is gone from {root}; restart the conversion "
                               "into a new --out")
        _name, scene, variation, camera = found[0]
        for key, path in _txt_files(root, scene, variation).items():
            if sha256_file(path) != plan["inputs"].get(f"{scene}/{variation}/{key}"):
                raise ConvertError(f"{path} changed since the plan was made; restart the conversion into a new --out")
        try:
            return [vars(f) for f in vkitti2.read_sequence(root, scene, variation, camera)]
        except vkitti2.VKittiInputError as exc:
            raise ConvertError(f"{exc}; restart the conversion into a new --out") from None

    def load(self, task: dict, entry: Any, position: int) -> Loaded:
        frame = vkitti2.SceneFrame(**entry)
        data = co3d._read_bytes(frame.image_path, "missing_image")
        depth = vkitti2.read_depth(frame) if frame.depth_path else None
        built = build_frame(data, frame.image_path, depth, frame.extrinsic, frame.intrinsic, frame.size_hw,
                            task["max_side"])
        return Loaded(built, frame.filepath, int(frame.frame))


FORMAT = VKitti2Format()
