"""Portable converted datasets: the dataset card (README.md), the sequence index rebuilt when it is missing, and
splits re-saved by `datasets` itself (save_to_disk, through parquet, shuffled) reading the same samples."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from pipeline_data import tiny_dataset
from vggt_train.data.pipeline.dataset import MultiViewDataset
from vggt_train.data.pipeline.finish import finish_batch
from vggt_train.data.pipeline.loader import RankBatchStream
from vggt_train.data.pipeline.sampler import StepPlanner
from vggt_train.data.shards.card import CO3D, SOURCES, USER_COLMAP, VKITTI2, source_info, write_dataset_card
from vggt_train.data.shards.finalize import finalize
from vggt_train.data.shards.index_rebuild import rebuild_index
from vggt_train.data.shards.reader import Co3DSplit
from vggt_train.data.shards.schema import features


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.getbasetemp())["root"]


def front_matter(path):
    text = open(path, encoding="utf-8").read()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def tree_bytes(root):
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x != "_convert"]
        for f in files:
            out[os.path.relpath(os.path.join(d, f), root)] = open(os.path.join(d, f), "rb").read()
    return out


# -- the card ----------------------------------------------------------------------------------------------------

def test_finalize_writes_a_card_with_the_hub_front_matter(root):
    import datasets
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    meta, body = front_matter(os.path.join(root, "README.md"))
    assert meta["license"] == "cc-by-nc-4.0" and meta["pretty_name"] and "vggt-train" in meta["tags"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "train/data-*.arrow"}, {"split": "test", "path": "test/data-*.arrow"}]}]
    # the feature list is our Arrow schema, as datasets reads it back from a card
    assert datasets.Features._from_yaml_list(meta["dataset_info"]["features"]) == features()
    card = DatasetCard.load(os.path.join(root, "README.md"))
    assert MetadataConfigs.from_dataset_card_data(card.data)["default"]["data_files"][0]["split"] == "train"
    splits = DatasetInfosDict.from_dataset_card_data(card.data)["default"].splits
    assert {s: splits[s].num_examples for s in splits} == {"train": 96, "test": 48}
    # the body: licence, citation, counts per split and category, options, skip summary
    assert "CC BY-NC 4.0" in body and "Reizenstein" in body and "```bibtex" in body
    assert "| train | 96 | 4 | 1 |" in body and "| apple | 2 | 48 | 1 | 24 |" in body
    assert "| min_frames | 24 |" in body and "Nothing was skipped." in body and "report.json" in body


def test_load_dataset_reads_the_shards_through_the_card(root, tmp_path):
    import datasets

    ds = datasets.load_dataset(root, split="train", cache_dir=str(tmp_path / "cache"))
    ref = datasets.load_from_disk(os.path.join(root, "train"))
    assert ds.features == ref.features and ds.data.table.equals(ref.data.table)


def test_rerunning_finalize_rewrites_the_card_and_leaves_the_shards_alone(root, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(root, out)
    before = tree_bytes(out)
    os.remove(out / "README.md")
    finalize(str(out))
    assert tree_bytes(out) == before  # same card, byte for byte; shards and bookkeeping untouched


def test_sources_and_skip_summary(root, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(root, out)
    report = (out / "report.json").read_text().replace('"skipped_by_reason": {}', '"skipped_by_reason": {"bad_depth": 3}')
    (out / "report.json").write_text(report)
    write_dataset_card(str(out), {"source": VKITTI2})
    meta, body = front_matter(out / "README.md")
    assert meta["license"] == "cc-by-nc-sa-3.0" and "Cabon" in body and "| bad_depth | 3 |" in body
    write_dataset_card(str(out), {"source": source_info({"source": "colmap"})})
    meta, body = front_matter(out / "README.md")
    assert meta["license"] == "unknown" and "unknown to the converter" in body and "bibtex" not in body
    assert source_info({}) is CO3D and source_info({"source": "vkitti2"}) is VKITTI2 and SOURCES["colmap"] is USER_COLMAP
    mine = source_info({"source": {"name": "my scans", "license": "cc-by-4.0"}})
    assert mine["license"] == "cc-by-4.0" and mine["citation"] == ""


# -- the sequence index, rebuilt ----------------------------------------------------------------------------------

def table_of(seqs, frames):
    return pa.table({"sequence": seqs, "category": [s.split("_")[0] for s in seqs], "frame": pa.array(frames, pa.int32())})


def test_rebuild_contiguous_matches_what_finalize_writes():
    t = table_of(["a_1"] * 3 + ["b_2"] * 2 + ["a_3"], [0, 1, 2, 0, 1, 0])
    index = rebuild_index(t, shard_rows=[4, 2])
    assert index["contiguous"] and index["num_rows"] == 6
    assert index["sequences"] == [
        {"sequence": "a_1", "category": "a", "start": 0, "num_frames": 3, "shard": 0},
        {"sequence": "b_2", "category": "b", "start": 3, "num_frames": 2, "shard": 0},
        {"sequence": "a_3", "category": "a", "start": 5, "num_frames": 1, "shard": 1}]


def test_rebuild_groups_scattered_rows_by_sequence_in_frame_order():
    t = table_of(["b_2", "a_1", "b_2", "a_1", "a_1"], [1, 2, 0, 0, 1])
    index = rebuild_index(t)
    assert not index["contiguous"]
    (b, a) = index["sequences"]  # in order of first appearance
    assert (b["sequence"], b["category"], b["num_frames"], list(b["rows"])) == ("b_2", "b", 2, [2, 0])
    assert (a["sequence"], a["num_frames"], list(a["rows"])) == ("a_1", 3, [3, 4, 1])
    # one run, frames out of order: grouped too, so positions follow `frame`
    assert list(rebuild_index(table_of(["a_1"] * 3, [2, 0, 1]))["sequences"][0]["rows"]) == [1, 2, 0]


def test_a_split_without_its_index_is_rebuilt_with_a_log_line(root, tmp_path, caplog):
    split = tmp_path / "train"
    shutil.copytree(os.path.join(root, "train"), split)
    os.remove(split / "sequence_index.json")
    ref = Co3DSplit(os.path.join(root, "train"))
    with caplog.at_level(logging.INFO, logger="vggt_train.data"):
        sp = Co3DSplit(str(split))
    assert "rebuilt it from the 'sequence' column" in caplog.text and "contiguous" in caplog.text
    assert sp.sequences == ref.sequences and all(sp._index[s] == ref._index[s] for s in ref.sequences)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vggt_train.data"):
        again = pickle.loads(pickle.dumps(sp))  # workers get the rebuilt index, they do not rebuild it
    assert "rebuilt" not in caplog.text and again.sequences == sp.sequences


# -- splits written by `datasets` --------------------------------------------------------------------------------

def resaved(root, tmp_path, shuffle: bool):
    """convert -> load_from_disk -> to_parquet -> load_dataset("parquet") -> (shuffle) -> save_to_disk(new/train)."""
    import datasets

    pq = tmp_path / "parquet" / "train.parquet"
    pq.parent.mkdir()
    datasets.load_from_disk(root)["train"].to_parquet(str(pq))
    ds = datasets.load_dataset("parquet", data_files={"train": str(pq)}, cache_dir=str(tmp_path / "cache"))["train"]
    if shuffle:
        ds = ds.shuffle(seed=1).flatten_indices()
    new = tmp_path / "new"
    ds.save_to_disk(str(new / "train"))
    assert not (new / "train" / "sequence_index.json").exists()
    return str(new)


def assert_same_samples(a: MultiViewDataset, b: MultiViewDataset):
    assert a.sequences == b.sequences or sorted(a.sequences) == sorted(b.sequences)
    for seq in a.sequences:
        assert a.num_frames(seq) == b.num_frames(seq)
        ids = [0, 5, a.num_frames(seq) - 1]
        sa, sb = a.get_sample(seq, ids, 0.75, aug_seed=3), b.get_sample(seq, ids, 0.75, aug_seed=3)
        for k, v in sa.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, sb[k]), (seq, k)
            else:
                assert v == sb[k], (seq, k)


@pytest.mark.parametrize("shuffle", [False, True], ids=["parquet", "parquet-shuffled"])
def test_a_split_resaved_by_datasets_reads_the_same_samples(root, tmp_path, shuffle):
    import datasets

    new = resaved(root, tmp_path, shuffle)
    table = datasets.load_from_disk(os.path.join(new, "train")).data.table
    assert "checksum" in table.column_names and table.schema.field("checksum").type == pa.uint64()
    ref = MultiViewDataset(root, "train", img_size=42)
    got = MultiViewDataset(new, "train", img_size=42)
    assert got.source.has_checksums  # the per-row checksum survived the round trip and is checked on every read
    assert got.source.split.rebuilt_index["contiguous"] is (not shuffle)
    assert_same_samples(ref, got)
    if not shuffle:  # same sequence order: the training batches are the same too
        assert ref.sequences == got.sequences

        def planner(ds):
            return StepPlanner(ds.index_info(), img_nums=(2, 4), max_img_per_gpu=8, aspect_range=(0.5, 1.0), seed=5)

        sa, sb = RankBatchStream(ref, planner(ref), 0, 1, 1), RankBatchStream(got, planner(got), 0, 1, 1)
        for step in range(2):
            ba, bb = finish_batch(sa.batch(step)), finish_batch(sb.batch(step))
            assert ba["seq_names"] == bb["seq_names"] and ba["images"].numel()
            for k, v in ba.items():
                assert torch.equal(v, bb[k]) if isinstance(v, torch.Tensor) else v == bb[k], k
        # a worker's copy of the dataset carries the rebuilt index
        assert pickle.loads(pickle.dumps(got)).source.split.rebuilt_index is not None


def test_a_resaved_split_with_a_damaged_row_is_still_caught(root, tmp_path):
    import datasets
    from datasets.table import InMemoryTable

    new = resaved(root, tmp_path, shuffle=False)
    table = datasets.load_from_disk(os.path.join(new, "train")).data.table
    checksum = table.column("checksum").to_numpy().copy()
    checksum[7] ^= np.uint64(1)  # row 7 no longer matches its payload
    table = table.set_column(table.column_names.index("checksum"), "checksum", pa.array(checksum, pa.uint64()))
    datasets.Dataset(InMemoryTable(table)).save_to_disk(str(tmp_path / "damaged" / "train"))
    got = MultiViewDataset(str(tmp_path / "damaged"), "train", img_size=42)
    seq = got.sequences[0]
    assert got.source.split.rows(seq)[7] == 7
    with pytest.raises(Exception, match="checksum"):
        got.source.read_frame(seq, 7)
    assert np.asarray(got.source.read_frame(seq, 6).depth).size


def test_two_training_steps_run_on_a_resaved_split(root, tmp_path):
    # One run, the resaved one: that its batches equal the original's is the RankBatchStream check above.
    new, out = resaved(root, tmp_path, shuffle=False), tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "vggt_train.train", f"output_dir={out}", f"data.path={new}", "data.val_split=null",
         "model.preset=tiny", "model.gradient_checkpointing=false", "data.img_size=28", "data.augment=false",
         "data.img_nums=[2,3]", "data.max_img_per_gpu=6", "data.num_workers=1", "data.len_train=64",
         "train.max_steps=2", "train.mixed_precision=no", "train.log_every=1", "train.ckpt_every=0",
         "train.val_every=0", "train.progress=false", "train.seed=7"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert "rebuilt it from the 'sequence' column" in result.stderr
