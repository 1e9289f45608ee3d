"""Checkpoint IO: strict loading of the official key set, clear mismatch reports, safe and lean reading, export."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from vggt_train.model import CheckpointMismatchError, VGGT, export_official, load_pretrained, read_state_dict


def test_vggt_1b_preset_has_exactly_the_official_keys_and_shapes(parity_dir):
    expected = json.loads((parity_dir / "vggt_1b_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        model = VGGT.from_preset("vggt_1b")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) == set(expected), (sorted(set(ours) - set(expected))[:5], sorted(set(expected) - set(ours))[:5])
    assert ours == expected
    assert sum(v.numel() for v in model.state_dict().values()) == 1_256_537_516


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_strict_load_round_trip(tmp_path, suffix):
    src = VGGT.from_preset("tiny")
    path = export_official(src, tmp_path / f"model{suffix}")
    dst = VGGT.from_preset("tiny")
    report = load_pretrained(dst, path, strict=True)
    assert report.ok
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_load_accepts_state_dict_nested_under_model_and_ddp_prefix(tmp_path):
    src = VGGT.from_preset("tiny")
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, tmp_path / "ckpt.pt")
    dst = VGGT.from_preset("tiny")
    load_pretrained(dst, tmp_path / "ckpt.pt")
    assert torch.equal(dst.aggregator.camera_token, src.aggregator.camera_token)


def test_strict_load_failure_names_missing_unexpected_and_misshaped_keys(tmp_path):
    state = VGGT.from_preset("tiny").state_dict()
    del state["camera_head.embed_pose.weight"]
    state["aggregator.register_token"] = torch.zeros(1, 2, 3, 32)  # model: [1, 2, 4, 32]
    state["extra.head.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "bad.pt")
    model = VGGT.from_preset("tiny")
    before = model.aggregator.camera_token.detach().clone()
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(model, tmp_path / "bad.pt", strict=True)
    text = str(err.value)
    assert "camera_head.embed_pose.weight" in text and "missing" in text
    assert "aggregator.register_token" in text and "(1, 2, 3, 32)" in text and "(1, 2, 4, 32)" in text
    assert "extra.head.weight" in text and "unexpected" in text
    assert torch.equal(model.aggregator.camera_token, before), "a failed strict load must not change the model"


def test_non_strict_load_reports_and_loads_the_rest(tmp_path):
    src = VGGT.from_preset("tiny")
    state = src.state_dict()
    del state["camera_head.embed_pose.weight"]
    torch.save(state, tmp_path / "partial.pt")
    dst = VGGT.from_preset("tiny")
    with pytest.warns(UserWarning, match="camera_head.embed_pose.weight"):
        report = load_pretrained(dst, tmp_path / "partial.pt", strict=False)
    assert report.missing == ["camera_head.embed_pose.weight"]
    assert torch.equal(dst.aggregator.camera_token, src.aggregator.camera_token)


def test_loading_never_executes_code_from_a_pickle(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {"x": torch.zeros(1)}, "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_pretrained(VGGT.from_preset("tiny"), tmp_path / "nope.safetensors")


def test_export_keys_are_the_official_ones(tmp_path, parity_dir):
    from safetensors.torch import load_file

    config = json.loads((parity_dir / "tiny_dinov2" / "config.json").read_text())
    official = load_file(str(parity_dir / "tiny_dinov2" / "weights.safetensors"))
    model = VGGT.from_config(config)
    load_pretrained(model, parity_dir / "tiny_dinov2" / "weights.safetensors")
    exported = read_state_dict(export_official(model, tmp_path / "out.pt"))
    assert set(exported) == set(official)
    assert all(torch.equal(exported[k], official[k]) for k in official)


def test_vggt_1b_strict_load_is_not_held_twice_in_memory(tmp_path):
    """Load a random 1.2B checkpoint into a materialised VGGT-1B; peak memory stays well under 2 model copies."""
    script = textwrap.dedent(
        f"""
        import resource, sys, torch
        from safetensors.torch import save_file
        from vggt_train.model import VGGT, load_pretrained
        with torch.device("meta"):
            model = VGGT.from_preset("vggt_1b")
        # a random-valued checkpoint with the official keys (values are whatever memory held: fast, still 4.8 GB)
        state = {{k: torch.empty(v.shape).uniform_(-1, 1) if v.numel() < 10 else torch.empty(v.shape) for k, v in model.state_dict().items()}}
        probe = "aggregator.camera_token"
        state[probe].uniform_(-1, 1)  # garbage memory may hold NaNs, which torch.equal never matches
        expected_probe = state[probe].clone()
        save_file(state, "{tmp_path}/vggt_1b.safetensors")
        del state
        model = model.to_empty(device="cpu")
        nbytes = sum(v.numel() * 4 for v in model.state_dict().values())
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        report = load_pretrained(model, "{tmp_path}/vggt_1b.safetensors", strict=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        assert report.ok
        assert torch.equal(model.aggregator.camera_token, expected_probe)
        print("model_gb", nbytes / 1e9, "base_gb", base / 1e9, "peak_gb", peak / 1e9)
        # the model's own pages are first touched by the load (to_empty allocates lazily): one copy is
        # expected, a second (a full state dict beside the model, or a mapped file) is not
        assert peak < base + 1.3 * nbytes, (peak, base, nbytes)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    path = export_official(VGGT.from_preset("tiny"), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors.*(truncated|past the end)"):
        load_pretrained(VGGT.from_preset("tiny"), tmp_path / "cut.safetensors")


def _tiny_checkpoint(tmp_path, suffix):
    torch.manual_seed(0)
    src = VGGT.from_preset("tiny").eval()
    return src, export_official(src, tmp_path / f"tiny{suffix}")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_load_into_a_meta_built_model_runs_the_same_forward(tmp_path, suffix):
    src, path = _tiny_checkpoint(tmp_path, suffix)
    reference = VGGT.from_preset("tiny").eval()
    load_pretrained(reference, path)
    with torch.device("meta"):
        model = VGGT.from_preset("tiny")
    load_pretrained(model.eval(), path)
    # the image mean/std buffers are in no checkpoint: they must have been recomputed, not left on meta
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert torch.equal(model.aggregator._image_mean, reference.aggregator._image_mean)
    torch.manual_seed(1)
    images, queries = torch.rand(1, 2, 3, 28, 28), torch.rand(1, 3, 2) * 20
    with torch.no_grad():
        ours, theirs = model(images, query_points=queries), reference(images, query_points=queries)
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "track", "vis", "conf"):
        assert torch.equal(ours[key], theirs[key]), key


def _emulate_torch_2_1_assign(monkeypatch):
    """torch 2.1's load_state_dict(assign=True) wraps every assigned tensor in Parameter(t): requires_grad=True."""
    real = torch.nn.Module.load_state_dict

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = real(self, state_dict, strict=strict, assign=assign)
        if assign:
            for p in self.parameters():
                p.requires_grad_(True)
        return result

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", load_state_dict)


@pytest.mark.parametrize("old_torch", [False, True], ids=["this_torch", "torch_2_1_assign"])
def test_meta_load_keeps_frozen_parameters_frozen(tmp_path, monkeypatch, old_torch):
    _, path = _tiny_checkpoint(tmp_path, ".safetensors")
    with torch.device("meta"):
        model = VGGT.from_preset("tiny")
    for p in model.aggregator.patch_embed.parameters():
        p.requires_grad_(False)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    if old_torch:
        _emulate_torch_2_1_assign(monkeypatch)
    load_pretrained(model, path)
    assert frozen and {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)
    assert not any(p.is_meta for p in model.parameters())


def test_meta_load_names_tensors_left_without_data(tmp_path):
    _, path = _tiny_checkpoint(tmp_path, ".safetensors")
    with torch.device("meta"):
        model = VGGT.from_preset("tiny")
        model.extra = torch.nn.Module()
        model.extra.register_buffer("lut", torch.zeros(4), persistent=False)  # no way to recompute it
    with pytest.raises(RuntimeError, match="still have no data.*extra.lut"):
        load_pretrained(model, path)


def test_pt_checkpoints_are_loaded_weights_only_and_memory_mapped(tmp_path, monkeypatch):
    """The .pt side of "a 1.2B checkpoint is not held twice": torch.load must map the file, not read it."""
    import functools

    _, path = _tiny_checkpoint(tmp_path, ".pt")
    real_load, calls = torch.load, []

    @functools.wraps(real_load)  # keeps torch.load's signature visible to the loader's feature checks
    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_pretrained(VGGT.from_preset("tiny"), path)
    with torch.device("meta"):
        load_pretrained(VGGT.from_preset("tiny"), path)
    assert len(calls) == 2
    for kwargs in calls:
        assert kwargs.get("weights_only") is True
        assert kwargs.get("mmap") is True  # torch >= 2.1, which this project requires


def test_torch_load_options_follow_the_installed_signature(tmp_path, monkeypatch):
    _, path = _tiny_checkpoint(tmp_path, ".pt")
    real_load, calls = torch.load, []

    def load_without_mmap(f, map_location=None, pickle_module=None, *, weights_only=False, **pickle_load_args):
        calls.append({"map_location": map_location, "weights_only": weights_only, **pickle_load_args})
        return real_load(f, map_location=map_location, weights_only=weights_only)

    monkeypatch.setattr(torch, "load", load_without_mmap)  # a torch without mmap= (< 2.1)
    load_pretrained(VGGT.from_preset("tiny"), path)
    assert calls == [{"map_location": "cpu", "weights_only": True}]

    def load_without_weights_only(f, map_location=None, pickle_module=None, **pickle_load_args):
        raise AssertionError("must not unpickle without weights_only")

    monkeypatch.setattr(torch, "load", load_without_weights_only)  # torch < 1.13 cannot refuse code
    with pytest.raises(RuntimeError, match="weights_only"):
        load_pretrained(VGGT.from_preset("tiny"), path)


def test_legacy_non_zip_pt_loads_without_mmap(tmp_path):
    src = VGGT.from_preset("tiny")
    torch.save(src.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    dst = VGGT.from_preset("tiny")
    assert load_pretrained(dst, tmp_path / "legacy.pt").ok
    assert torch.equal(dst.aggregator.camera_token, src.aggregator.camera_token)


def test_safetensors_reader_handles_0d_and_empty_tensors(tmp_path):
    from safetensors.torch import save_file

    state = {"scalar": torch.tensor(2.5), "int_scalar": torch.tensor(7, dtype=torch.int64),
             "empty": torch.zeros(0, 3), "half": torch.tensor(-1.0, dtype=torch.float16)}
    save_file(state, str(tmp_path / "s.safetensors"))
    loaded = read_state_dict(tmp_path / "s.safetensors")
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert loaded[key].shape == value.shape and loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scalar", torch.tensor(0.0))

    holder = Holder()
    load_pretrained(holder, tmp_path / "s.safetensors", strict=False, ignore_prefixes=("int_scalar", "empty", "half"))
    assert holder.scalar.item() == 2.5


def _hostile_safetensors(path, header, data: bytes, header_len=None):
    """A .safetensors file built by hand: 8-byte length, the JSON header (any JSON value), then `data`."""
    import struct

    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def _f32(offsets, shape=(1,), dtype="F32"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    "header,data,message",
    [
        ({"a": _f32([-4, 0]), "b": _f32([0, 4])}, b"\0" * 4, "'a'.*invalid data_offsets"),
        ({"a": _f32([4, 0], shape=())}, b"\0" * 4, "'a'.*begin after end"),
        ({"a": _f32([0, 8], shape=(2,)), "b": _f32([4, 8])}, b"\0" * 8, "'a' and 'b' overlap"),
        ({"a": _f32([0, 4]), "b": _f32([0, 4])}, b"\0" * 4, "overlap"),
        ({"a": _f32([0, 4], shape=(1, 2))}, b"\0" * 8, "'a' declares shape .*\\(8 bytes\\).* hold 4 bytes"),
        ({"a": _f32([0, 4], shape=(-1,))}, b"\0" * 4, "'a' has an invalid shape"),
        ({"a": _f32([0, 4], shape=(1.5,))}, b"\0" * 4, "'a' has an invalid shape"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "'a' has invalid data_offsets None"),
        ({"a": _f32([0, 4], dtype="F128")}, b"\0" * 4, "'a' has an unknown dtype 'F128'"),
        ({"a": _f32([0, 8], shape=(2,))}, b"\0" * 4, "'a'.*outside the 4-byte data section"),
        ([1, 2, 3], b"", "header is a JSON list, not an object"),
        ("weights", b"", "header is a JSON str, not an object"),
        ({"a": [0, 4]}, b"\0" * 4, "'a' is described by a JSON list, not an object"),
        ({"a": "F32"}, b"\0" * 4, "'a' is described by a JSON str"),
        ({"__metadata__": {"format": 1}, "a": _f32([0, 4])}, b"\0" * 4, "__metadata__ is not an object of strings"),
    ],
)
def test_hostile_safetensors_headers_are_refused_in_one_line(tmp_path, header, data, message):
    path = _hostile_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=f"bad.safetensors: .*{message}") as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_pretrained(VGGT.from_preset("tiny"), path, strict=False)


def test_overlapping_offsets_never_load_wrong_weights_under_strict(tmp_path):
    # two real keys of the model pointing at the same bytes: before, this loaded silently with strict=True
    model = VGGT.from_preset("tiny")
    path = export_official(model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    seen = {}
    for k, e in header.items():
        if k != "__metadata__" and e["dtype"] == "F32" and (e["dtype"], tuple(e["shape"])) in seen:
            key, other = seen[(e["dtype"], tuple(e["shape"]))], k
            break
        seen[(e["dtype"], tuple(e["shape"]))] = k
    header[other]["data_offsets"] = header[key]["data_offsets"]
    _hostile_safetensors(tmp_path / "bad.safetensors", header, raw[8 + n :])
    with pytest.raises(ValueError, match="bad.safetensors: tensors .* overlap"):
        load_pretrained(VGGT.from_preset("tiny"), tmp_path / "bad.safetensors")


def test_huge_declared_shape_over_4_bytes_fails_before_allocating(tmp_path, monkeypatch):
    path = _hostile_safetensors(tmp_path / "bad.safetensors", {"a": _f32([0, 4], shape=(4, 2**30))}, b"\0" * 4)
    real_empty = torch.empty
    allocated = []

    def guarded_empty(*args, **kwargs):
        out = real_empty(*args, **{**kwargs, "device": "meta"})
        allocated.append(out.numel())
        assert out.numel() * out.element_size() < 2**20, "allocated from an unchecked header"
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", guarded_empty)
    with pytest.raises(ValueError, match="bad.safetensors: tensor 'a' declares shape \\[4, 1073741824\\] of F32 .* hold 4 bytes"):
        read_state_dict(path)
    assert not allocated or max(allocated) < 2**18


def test_safetensors_header_length_beyond_the_file_is_refused(tmp_path):
    path = _hostile_safetensors(tmp_path / "bad.safetensors", {"a": _f32([0, 4])}, b"\0" * 4, header_len=10_000)
    with pytest.raises(ValueError, match="bad.safetensors: safetensors header of 10000 bytes lies past the end"):
        read_state_dict(path)
    path = _hostile_safetensors(tmp_path / "big.safetensors", {}, b"", header_len=2**40)
    with pytest.raises(ValueError, match="big.safetensors: implausible safetensors header size"):
        read_state_dict(path)


def test_duplicate_safetensors_keys_are_refused(tmp_path):
    import struct

    raw = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(ValueError, match="dup.safetensors: corrupt safetensors header .*duplicate key 'a'"):
        read_state_dict(path)
