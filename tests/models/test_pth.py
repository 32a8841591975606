"""The torch-free PyTorch checkpoint reader: torch's own files, strided layouts, hostile pickles.

No PyTorch needed: real torch output (a tiny state dict saved by torch 2.13 in both formats) lives
in lite_reference_logits.npz (tests/models/make_lite_reference_logits.py); the other files are
built here by hand.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from skin_tf.models.pth import read_pth_state_dict

FIXTURE = Path(__file__).with_name("lite_reference_logits.npz")
LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001  # torch/serialization.py


@pytest.fixture(scope="module")
def torch_files() -> np.lib.npyio.NpzFile:
    return np.load(FIXTURE, allow_pickle=False)


@pytest.mark.parametrize("key", ["pth_legacy", "pth_zip"])
def test_reads_what_torch_wrote(key, torch_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch would now fail
    path = tmp_path / "tiny.pth"
    path.write_bytes(torch_files[key].tobytes())
    state_dict = read_pth_state_dict(path)
    prefix = "pth_expected__"
    expected = {k.removeprefix(prefix): torch_files[k] for k in torch_files if k.startswith(prefix)}
    assert list(state_dict) == list(expected)  # torch's order
    for name, value in expected.items():  # shared storage, offsets, strides, channels_last...
        assert state_dict[name].dtype == value.dtype, name
        np.testing.assert_array_equal(state_dict[name], value, err_msg=name)
        assert state_dict[name].flags.c_contiguous and state_dict[name].flags.writeable


# --- hand-built files: torch's pickle layout, written without torch ------------------------------
# The pickles reference torch globals by name; pickle writes a global as `c<module>\n<name>\n`
# (protocol 2), so stand-ins defined here are pickled and then renamed in the bytes.


class FloatStorage:  # stands in for torch.FloatStorage
    pass


def _rebuild_tensor_v2(*args):  # stands in for torch._utils._rebuild_tensor_v2
    raise AssertionError("never called")


_RENAMES = {
    f"c{__name__}\nFloatStorage\n": "ctorch\nFloatStorage\n",
    f"c{__name__}\n_rebuild_tensor_v2\n": "ctorch._utils\n_rebuild_tensor_v2\n",
}


class _Tensor:
    """Pickles like a torch tensor: a view of storage "0" with this offset, shape and stride."""

    def __init__(self, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = offset, shape, stride

    def __reduce__(self):
        return _rebuild_tensor_v2, ("storage0", *self.args, False, collections.OrderedDict())


def torch_pickle(obj: object, numel: int, legacy: bool) -> bytes:
    """pickle.dumps(obj) with the storage "0" (numel floats) as torch's persistent id."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            if value == "storage0":  # (tag, type, key, location, numel[, view metadata])
                return ("storage", FloatStorage, "0", "cpu", numel) + ((None,) if legacy else ())
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(obj)
    data = buffer.getvalue()
    for old, new in _RENAMES.items():
        data = data.replace(old.encode(), new.encode())
    return data


def hand_built(tensors: dict[str, _Tensor], storage: np.ndarray, legacy: bool) -> bytes:
    state = collections.OrderedDict(tensors)
    obj = torch_pickle(state, storage.size, legacy)
    raw = storage.astype("<f4").tobytes()
    if legacy:
        info = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}
        head = b"".join(pickle.dumps(x, 2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, info))
        return head + obj + pickle.dumps(["0"], 2) + struct.pack("<q", storage.size) + raw
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("tiny/data.pkl", obj)
        archive.writestr("tiny/byteorder", "little")
        archive.writestr("tiny/data/0", raw)
    return out.getvalue()


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_strided_views_of_one_storage(legacy, tmp_path):
    storage = np.arange(24, dtype=np.float32)
    tensors = {  # what a TF-converted conv kernel looks like: OIHW shape, HWIO memory order
        "conv.weight": _Tensor(0, (4, 3, 1, 2), (1, 8, 2, 4)),
        "offset_rows": _Tensor(5, (2, 3), (6, 2)),
        "all": _Tensor(0, (24,), (1,)),
    }
    path = tmp_path / "hand.pth"
    path.write_bytes(hand_built(tensors, storage, legacy))
    state_dict = read_pth_state_dict(path)
    expected = np.lib.stride_tricks.as_strided
    np.testing.assert_array_equal(
        state_dict["conv.weight"], expected(storage, (4, 3, 1, 2), (4, 32, 8, 16))
    )
    np.testing.assert_array_equal(state_dict["offset_rows"], [[5, 7, 9], [11, 13, 15]])
    np.testing.assert_array_equal(state_dict["all"], storage)
    state_dict["all"][0] = 99  # a copy that owns its memory, not a view of the file
    assert state_dict["conv.weight"][0, 0, 0, 0] == 0


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_tensor_reaching_past_its_storage_is_refused(legacy, tmp_path):
    path = tmp_path / "overrun.pth"
    path.write_bytes(hand_built({"w": _Tensor(2, (3, 4), (4, 1))}, np.zeros(12), legacy))
    with pytest.raises(ValueError, match="reaches past its storage"):
        read_pth_state_dict(path)


# --- hostile and damaged files --------------------------------------------------------------------


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return os.system, (f"touch {self.flag}",)


def legacy_file(*objects: object) -> bytes:
    return b"".join(pickle.dumps(obj, protocol=2) for obj in objects)


def test_refuses_to_run_pickled_code(tmp_path):
    flag = tmp_path / "pwned"
    exploit = _Exploit(flag)
    header = (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True})
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(exploit, protocol=2))
    payloads = {
        "first pickle": legacy_file(exploit),
        "state dict": legacy_file(*header, collections.OrderedDict(w=exploit), []),
        "zip": zipped.getvalue(),
    }
    for where, payload in payloads.items():
        path = tmp_path / f"{where}.pth"
        path.write_bytes(payload)
        with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|os)"):
            read_pth_state_dict(path)
        assert not flag.exists(), where


def test_rejects_damaged_or_foreign_files(torch_files, tmp_path):
    path = tmp_path / "bad.pth"
    cases = {
        "wrong magic": legacy_file(12345),
        "ends inside": torch_files["pth_legacy"].tobytes()[:-10],
        "no single data.pkl": zipfile_bytes({"archive/other.txt": b"x"}),
        "does not hold a state dict": legacy_file(
            LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}, [1, 2], []
        ),
        "big-endian": legacy_file(LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": False}),
        "no data for storage": zipfile_bytes(
            {"a/data.pkl": torch_pickle({"w": _Tensor(0, (2,), (1,))}, 2, legacy=False)}
        ),
    }
    for message, payload in cases.items():
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=message):
            read_pth_state_dict(path)


def zipfile_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_reader_needs_neither_keras_nor_torch():
    code = "import sys, skin_tf.models.pth; print(sorted({'keras', 'torch'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
