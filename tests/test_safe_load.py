"""safe_load: checkpoint files are scanned before loading and every torch.load is forced weights-only with a
small allow-list, so no code from a file ever runs (also DeepSpeed's and accelerate's loads)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from vggt_train.train import safe_load


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _hostile(path, marker, legacy=False):
    torch.save({"weights": torch.ones(2), "payload": _Evil(marker)}, str(path), _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_that_runs_code_is_refused_in_one_line_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = _hostile(tmp_path / "mp_rank_00_model_states.pt", marker, legacy)
    with pytest.raises(safe_load.UnsafeCheckpointError, match="mp_rank_00_model_states.pt: it needs builtins.exec, which is not a tensor type") as info:
        safe_load.check_directory(tmp_path)
    assert "\n" not in str(info.value)
    # DeepSpeed passes weights_only=False: inside restricted_loads it is weights-only anyway
    with safe_load.restricted_loads(), pytest.raises(safe_load.UnsafeCheckpointError, match="builtins.exec"):
        torch.load(str(path), map_location="cpu", weights_only=False)
    with safe_load.restricted_loads(), pytest.raises(safe_load.UnsafeCheckpointError):
        torch.serialization.load(open(path, "rb"), weights_only=False)  # a file object skips the scan: torch refuses
    assert not marker.exists()
    assert torch.load.__name__ == "load"  # restored


def test_a_plain_pickle_with_stack_global_is_refused(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "random_states_0.pkl").write_bytes(pickle.dumps(_Evil(marker), protocol=5))
    with pytest.raises(safe_load.UnsafeCheckpointError, match="random_states_0.pkl: it needs builtins.exec"):
        safe_load.check_directory(tmp_path)
    assert not marker.exists()


def test_the_allow_listed_objects_load(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    obj = {"rng": np.random.get_state(), "torch": torch.get_rng_state(), "stage": ZeroStageEnum.gradients,
           "scaler": LossScaler(4.0), "frag": fragment_address(numel=3, start=5), "t": torch.arange(3)}
    torch.save(obj, str(tmp_path / "x.pt"))
    safe_load.check_directory(tmp_path)
    with safe_load.restricted_loads():
        back = torch.load(str(tmp_path / "x.pt"), weights_only=False)
    assert back["stage"] is ZeroStageEnum.gradients and back["scaler"].cur_scale == 4.0
    assert back["frag"] == fragment_address(numel=3, start=5) and np.array_equal(back["rng"][1], obj["rng"][1])


def test_without_safe_globals_a_restricted_unpickler_is_used(tmp_path, monkeypatch):
    """torch 2.1 (the Ascend stack) has no add_safe_globals: the same allow-list goes through find_class."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    monkeypatch.setattr(safe_load, "_has_safe_globals", lambda: False)
    torch.save({"stage": ZeroStageEnum.gradients, "t": torch.ones(2), "rng": np.random.get_state()}, str(tmp_path / "ok.pt"))
    with safe_load.restricted_loads():
        assert torch.load(str(tmp_path / "ok.pt"))["stage"] is ZeroStageEnum.gradients
    marker = tmp_path / "marker"
    path = _hostile(tmp_path / "bad.pt", marker)
    monkeypatch.setattr(safe_load, "check_file", lambda *a, **k: None)  # the unpickler alone must refuse too
    with safe_load.restricted_loads(), pytest.raises(safe_load.UnsafeCheckpointError, match="bad.pt: it needs builtins.exec"):
        torch.load(str(path), weights_only=False)
    assert not marker.exists()


def test_benign_files_of_every_format_pass_and_garbage_is_refused(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    torch.save(state, str(tmp_path / "zip.pt"))
    torch.save(state, str(tmp_path / "legacy.pt"), _use_new_zipfile_serialization=False)
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": [1, 2.0, "x"]}, protocol=5))
    safe_load.check_directory(tmp_path)
    with safe_load.restricted_loads():
        for name in ("zip.pt", "legacy.pt"):
            assert torch.equal(torch.load(str(tmp_path / name))["w"], state["w"])
    (tmp_path / "cut.pt").write_bytes((tmp_path / "plain.pkl").read_bytes()[:-3])
    with pytest.raises(safe_load.UnsafeCheckpointError, match="cut.pt: not a readable pickle"):
        safe_load.check_file(tmp_path / "cut.pt")
    (tmp_path / "fake.pt").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(safe_load.UnsafeCheckpointError, match="fake.pt: not a readable torch zip file"):
        safe_load.check_file(tmp_path / "fake.pt")


class _EnumByGetattr:
    """Pickles as getattr(cls, name), the way some Python versions pickle an Enum member."""

    def __init__(self, cls, name):
        self.cls, self.name = cls, name

    def __reduce__(self):
        return getattr, (self.cls, self.name)


def test_getattr_in_a_pickle_only_yields_members_of_allowed_enums(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    torch.save({"stage": _EnumByGetattr(ZeroStageEnum, "gradients")}, tmp_path / "ok.pt")
    torch.save({"x": _EnumByGetattr(ZeroStageEnum, "__class__")}, tmp_path / "attr.pt")
    safe_load.check_file(tmp_path / "ok.pt")
    with safe_load.restricted_loads():
        assert torch.load(tmp_path / "ok.pt")["stage"] is ZeroStageEnum.gradients
        with pytest.raises(safe_load.UnsafeCheckpointError, match="refusing to load .*attr.pt"):
            torch.load(tmp_path / "attr.pt")


class _Encoded:
    def __init__(self, encoding):
        self.encoding = encoding

    def __reduce__(self):
        import _codecs

        return _codecs.encode, ("abc", self.encoding)


def test_older_torch_loads_what_newer_torch_allows_and_codecs_only_as_latin1(tmp_path, monkeypatch):
    """torch 2.1's own allow-list lacks set, bfloat16 and the latin-1 bytes of a protocol-2 numpy array: the
    fallback unpickler adds them, and `_codecs.encode` decodes nothing but latin-1."""
    monkeypatch.setattr(safe_load, "_has_safe_globals", lambda: False)
    obj = {"s": {1, 2}, "dtype": torch.bfloat16, "dev": torch.device("cpu"), "rng": np.random.get_state()}
    torch.save(obj, str(tmp_path / "ok.pt"))
    with safe_load.restricted_loads():
        back = torch.load(str(tmp_path / "ok.pt"))
    assert back["s"] == {1, 2} and back["dtype"] is torch.bfloat16 and back["dev"] == torch.device("cpu")
    assert np.array_equal(back["rng"][1], obj["rng"][1])
    import io

    assert safe_load._RestrictedUnpickler(io.BytesIO(pickle.dumps(_Encoded("latin1"), protocol=2))).load() == b"abc"
    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        safe_load._RestrictedUnpickler(io.BytesIO(pickle.dumps(_Encoded("rot13"), protocol=2))).load()


def test_numpy_arrays_load_whatever_numpy_modules_were_imported_before():
    """numpy 1.26 ships a numpy._core shim package: once something imported it, np._core exists without its
    submodules. The allow-list must still resolve numpy's array rebuild under both of its pickled names."""
    import importlib

    with pytest.MonkeyPatch.context() as mp:
        try:
            shim = importlib.import_module("numpy._core")
            if not hasattr(np, "_core"):
                mp.setattr(np, "_core", shim, raising=False)
        except ImportError:
            pass
        resolved = safe_load._resolved_allowed()
    assert resolved["numpy.core.multiarray._reconstruct"] is resolved["numpy._core.multiarray._reconstruct"]
    assert callable(resolved["numpy.core.multiarray._reconstruct"])
