"""A run's start: the device it may use, the weights it starts from (local or Hub), loss terms it can supervise,
paths from any directory, the banner / run_info.json / TensorBoard record, and error.txt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import free_port, write_accelerate_config
from vggt_train import cli, kernels
from vggt_train.model.hub import CheckpointSourceError, HubRef, parse_hub_ref, resolve_checkpoint
from vggt_train.train import paths
from vggt_train.train.config import ConfigError, load_config
from vggt_train.train.device import DeviceError, resolve_device
from vggt_train.train.run_info import device_warnings, format_banner

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 400
NO_GPU = not torch.cuda.is_available()


# -- train.device --------------------------------------------------------------------------------------------------
@pytest.fixture
def broken_torch_npu(tmp_path, monkeypatch, clean_kernel_registry):
    """A torch_npu that fails to import as it does when CANN's set_env.sh was not sourced."""
    pkg = tmp_path / "site" / "torch_npu"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        'raise OSError("libhccl.so: cannot open shared object file: No such file or directory")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    kernels.reset()
    yield
    sys.modules.pop("torch_npu", None)


def test_cpu_is_always_usable():
    choice = resolve_device("cpu")
    assert (choice.type, choice.local_count) == ("cpu", 1)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_an_accelerator_that_cannot_load_is_refused_with_the_import_error(broken_torch_npu):
    for requested in ("npu", "accelerator"):
        with pytest.raises(DeviceError) as info:
            resolve_device(requested)
        text = str(info.value)
        assert f"train.device={requested}" in text and "libhccl.so" in text and "set_env.sh" in text
        assert "\n" not in text
    with pytest.raises(DeviceError, match="train.device=cuda but no GPU is usable: torch .* (a build without CUDA|sees no GPU)"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"  # auto falls back, and the banner says so


def test_a_working_npu_is_chosen_and_counted(npu):
    npu.npu.available = True
    for requested in ("auto", "accelerator", "npu"):
        choice = resolve_device(requested)
        assert (choice.type, choice.local_count) == ("npu", 8)
    assert resolve_device("cpu").type == "cpu"
    npu.npu.available = False
    kernels.reset()
    with pytest.raises(DeviceError, match="torch_npu imported but sees no NPU"):
        resolve_device("npu")


def test_a_large_preset_that_auto_put_on_the_cpu_is_shouted_about():
    assert device_warnings("cpu", "auto", "vggt_1b") and "hours" in device_warnings("cpu", "auto", "vggt_1b")[0]
    assert not device_warnings("cpu", "cpu", "vggt_1b")  # asked for
    assert not device_warnings("cpu", "auto", "small") and not device_warnings("npu", "auto", "vggt_1b")


def test_the_run_stops_on_the_device_before_reading_any_data(tmp_path, capsys, broken_torch_npu):
    out = tmp_path / "run"
    code = cli.main(["train", "--config", str(REPO / "configs" / "demo_cpu.yaml"), "train.device=npu",
                     f"data.path={tmp_path / 'no_such_data'}", f"output_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("vggt-train train: error: train.device=npu but no NPU is usable") and "libhccl.so" in err
    assert (out / "error.txt").read_text().strip() == err  # for launchers that bury rank 0's stderr


# -- config guards -------------------------------------------------------------------------------------------------
def test_frozen_modules_need_a_checkpoint_unless_allowed():
    with pytest.raises(ConfigError, match=r"model.frozen=\['aggregator\*'\] without model.checkpoint.*allow_random_frozen"):
        load_config(str(REPO / "configs" / "finetune_co3d.yaml"), ["data.path=/d", "model.checkpoint=null"])
    cfg = load_config(str(REPO / "configs" / "finetune_co3d.yaml"),
                      ["data.path=/d", "model.checkpoint=null", "model.allow_random_frozen=true"])
    assert cfg.model.checkpoint is None
    # the shipped recipes start from the released weights and ask for an accelerator
    for name in ("finetune_co3d", "ascend_reference"):
        cfg = load_config(str(REPO / "configs" / f"{name}.yaml"), ["data.path=/d"])
        assert cfg.model.checkpoint == "facebook/VGGT-1B" and cfg.train.device == "accelerator"
    assert load_config(str(REPO / "configs" / "demo_cpu.yaml"), ["data.path=/d"]).train.device == "cpu"


@pytest.mark.parametrize("overrides, message", [
    (["loss.track={weight: 1}", "model.disable_heads=[point_head]"],
     "loss.track is enabled but the training data provides no tracks, track_vis_mask"),
    (["loss.point={weight: 1}"], "loss.point is enabled but model.disable_heads contains point_head"),
    (["train.device=gpu"], "train.device='gpu'; choose from auto, accelerator, npu, cuda, cpu"),
])
def test_loss_terms_without_supervision_and_bad_devices_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(None, ["data.path=/d", *overrides])


# -- model.checkpoint from the Hub -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, ref", [
    ("facebook/VGGT-1B", HubRef("facebook/VGGT-1B")),
    ("facebook/VGGT-1B@v1.0", HubRef("facebook/VGGT-1B", "v1.0")),
    ("facebook/VGGT-1B/model.pt", HubRef("facebook/VGGT-1B", None, "model.pt")),
    ("facebook/VGGT-1B@0123abc/sub/model.safetensors", HubRef("facebook/VGGT-1B", "0123abc", "sub/model.safetensors")),
    ("hf://facebook/VGGT-1B", HubRef("facebook/VGGT-1B")),
    ("ckpt/model.pt", None),  # a missing local file, not a repo called model.pt
    ("/abs/model.pt", None),
    ("./facebook/VGGT-1B", None),
    ("model.pt", None),
])
def test_hub_references_are_told_from_local_paths(text, ref):
    assert parse_hub_ref(text) == ref


def test_a_local_path_that_exists_wins_over_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "facebook").mkdir()
    (tmp_path / "facebook" / "VGGT-1B").write_bytes(b"x")
    assert parse_hub_ref("facebook/VGGT-1B") is None
    assert resolve_checkpoint("facebook/VGGT-1B").path == Path("facebook/VGGT-1B")
    with pytest.raises(CheckpointSourceError, match="expected hf://owner/name"):
        parse_hub_ref("hf://not a repo")


def _hub_cache(root: Path, repo: str, files: dict, revisions: dict) -> Path:
    """A Hugging Face hub cache laid out as huggingface_hub writes it: refs/<revision> -> commit, snapshots/<commit>/."""
    base = root / ("models--" + repo.replace("/", "--"))
    for revision, commit in revisions.items():
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / revision).write_text(commit)
        snapshot = base / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for name, data in files.get(revision, {}).items():
            (snapshot / name).write_bytes(data)
    return root


def test_hub_ids_resolve_offline_from_the_local_cache(tmp_path):
    cache = _hub_cache(tmp_path / "hub", "test-org/vggt-tiny",
                       {"main": {"model.pt": b"pt"}, "v2": {"model.safetensors": b"st", "model.pt": b"pt2"}},
                       {"main": "a" * 40, "v2": "b" * 40})
    script = textwrap.dedent("""
        import sys
        from vggt_train.model.hub import CheckpointSourceError, resolve_checkpoint
        for text in sys.argv[1:]:
            try:
                r = resolve_checkpoint(text)
                print(text, "->", r.source, r.path.read_bytes().decode())
            except CheckpointSourceError as exc:
                print(text, "-> error:", exc)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", script, "test-org/vggt-tiny", "test-org/vggt-tiny@v2",
                             "test-org/vggt-tiny@v2/model.pt", "hf://test-org/vggt-tiny/model.safetensors", "test-org/absent"],
                            capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[0] == "test-org/vggt-tiny -> hub pt"  # main has no model.safetensors: model.pt
    assert lines[1] == "test-org/vggt-tiny@v2 -> hub st"  # safetensors first
    assert lines[2] == "test-org/vggt-tiny@v2/model.pt -> hub pt2"
    assert lines[3].startswith("hf://test-org/vggt-tiny/model.safetensors -> error: model.checkpoint=test-org/vggt-tiny/model.safetensors: not a local file")
    assert lines[4].startswith("test-org/absent -> error: model.checkpoint=test-org/absent: not a local file")


# -- paths from anywhere -------------------------------------------------------------------------------------------
def test_relative_paths_resolve_from_the_config_and_the_repository(tmp_path, monkeypatch):
    configs = tmp_path / "exp"
    configs.mkdir()
    (configs / "my_ds.json").write_text("{}")
    (configs / "run.yaml").write_text("deepspeed: my_ds.json\ndata: {path: data}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(str(configs / "run.yaml"))
    assert cfg.deepspeed == str(configs / "my_ds.json")  # next to the config
    assert cfg.data.path == "data"  # not found anywhere: left for the dataset's own error
    cfg = load_config(str(configs / "run.yaml"), ["deepspeed=ds_configs/zero2.json"])
    assert cfg.deepspeed == str(REPO / "ds_configs" / "zero2.json")  # the repository's
    with pytest.raises(ConfigError) as info:
        load_config(str(configs / "run.yaml"), ["deepspeed=ds_configs/zero9.json"])
    assert str(info.value) == (f"deepspeed='ds_configs/zero9.json': not found (looked in {elsewhere}, {configs}, {REPO})")
    (elsewhere / "data").mkdir()
    assert load_config(str(configs / "run.yaml")).data.path == str(elsewhere / "data")  # the current directory first


def test_accelerates_relative_deepspeed_file_is_found_or_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds_configs/zero3.json")
    paths.resolve_env_file("ACCELERATE_DEEPSPEED_CONFIG_FILE", "deepspeed_config_file")
    assert os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(REPO / "ds_configs" / "zero3.json")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds_configs/nope.json")
    with pytest.raises(FileNotFoundError, match=f"deepspeed_config_file='ds_configs/nope.json': not found \\(looked in {tmp_path}, {REPO}\\)"):
        paths.resolve_env_file("ACCELERATE_DEEPSPEED_CONFIG_FILE", "deepspeed_config_file")


def test_a_bad_config_leaves_error_txt_in_output_dir(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(REPO / "configs" / "demo_cpu.yaml"), f"output_dir={out}", "optim.clip_mode=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vggt-train train: error: bad config: optim.clip_mode='x'")
    assert (out / "error.txt").read_text().strip() == err


# -- a whole start: 2 DeepSpeed processes launched from outside the repository, weights from the hub cache ---------
def test_a_launch_from_elsewhere_announces_itself_and_starts_from_the_hub_weights(train_shards, tmp_path):
    dataset = train_shards
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from vggt_train.model import VGGT, export_official

    torch.manual_seed(11)
    weights = export_official(VGGT.from_preset("tiny"), tmp_path / "model.safetensors")
    cache = _hub_cache(tmp_path / "hub", "test-org/vggt-tiny", {"v1": {"model.safetensors": weights.read_bytes()}},
                       {"v1": "c" * 40})
    # relative to the repository, launched from tmp_path: found through train/paths.py's lookup
    accel = write_accelerate_config(tmp_path / "accel.yaml", "ds_configs/zero2.json", processes=2, port=free_port())
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accel),
           "-m", "vggt_train.train", "--config", str(REPO / "configs" / "demo_cpu.yaml"), f"data.path={dataset}",
           f"output_dir={out}", "model.checkpoint=test-org/vggt-tiny@v1", "model.frozen=[aggregator*]", "data.img_size=28",
           "data.img_nums=[2,2]", "data.max_img_per_gpu=2", "train.max_steps=1", "train.val_every=0", "train.ckpt_every=1",
           "train.progress=false", "optim.clip_mode=global"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    banner = result.stdout
    assert banner.count("vggt-train run on") == 1  # rank 0 only
    for line in ("  device       cpu (2 processes) (train.device=cpu",
                 "  distributed  accelerate DEEPSPEED, world size 2 on 1 node(s), DeepSpeed ZeRO-2",
                 "  precision    float32",
                 "  kernels      attention=cpu, rope=reference, adamw=",
                 f"  data         {dataset} split train: 2 sequences, 48 frames",
                 "  batch        S=2: 2 samples per step",
                 "  model        tiny from test-org/vggt-tiny@v1 (Hugging Face Hub) -> "):
        assert line in banner, line
    assert "aggregator 0 trainable / " in banner and "camera_head " in banner
    info = json.loads((out / "run_info.json").read_text())
    assert info["distributed"]["strategy"] == "DeepSpeed ZeRO-2" and info["distributed"]["world_size"] == 2
    assert info["parameters"]["aggregator"]["trainable"] == 0 and info["parameters"]["aggregator"]["frozen"] > 0
    assert info["data"]["sequences"] == 2 and info["model"]["checkpoint"].endswith("/snapshots/" + "c" * 40 + "/model.safetensors")
    # TensorBoard holds the banner as text and the config as hparams
    tags = {value.tag for events in (out / "tensorboard").rglob("events.out.tfevents.*")
            for event in EventFileLoader(str(events)).Load() for value in event.summary.value}
    assert {"run_info/text_summary", "_hparams_/session_start_info", "train/loss"} <= tags
    # the frozen aggregator is the hub file's, so the weights did come from there
    export = subprocess.run([sys.executable, "-m", "vggt_train", "export", str(out), str(tmp_path / "after.safetensors")],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert export.returncode == 0, export.stderr
    before, after = load_file(str(weights)), load_file(str(tmp_path / "after.safetensors"))
    aggregator = [k for k in before if k.startswith("aggregator.")]
    assert aggregator and all(torch.equal(before[k], after[k]) for k in aggregator)
    assert not (out / "error.txt").exists()


def test_the_banner_names_a_warning_loudly():
    info = {"host": "h", "time": "t", "device": {"type": "cpu", "requested": "auto", "per_node": 1, "this_rank": "cpu"},
            "distributed": {"accelerate": "NO", "world_size": 1, "nodes": 1, "strategy": "none"}, "precision": "bf16",
            "torch": "x", "parameters": {"aggregator": {"trainable": 10, "frozen": 0}}, "kernels": {"attention": "reference"},
            "data": {"path": "/d", "split": "train", "sequences": 1, "frames": 2, "categories": "all", "img_size": 518,
                     "img_nums": [2, 2], "val_split": None, "val_sequences": 0},
            "global_batch": {"samples_per_step": {"S=2": 1}, "max_img_per_gpu": 2, "grad_accum_steps": 1},
            "model": {"preset": "vggt_1b", "checkpoint": "none: random initialisation", "frozen": []},
            "output_dir": "/o", "warnings": device_warnings("cpu", "auto", "vggt_1b")}
    text = format_banner(info)
    assert "  WARNING      train.device=auto found no NPU or GPU: training vggt_1b on the CPU" in text
    assert text.splitlines()[0] == text.splitlines()[-1] == "=" * 100
