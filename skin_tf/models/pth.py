"""Read a PyTorch state dict (`torch.save`, legacy or zip format) into numpy, without PyTorch.

`read_pth_state_dict(path)` returns `{name: np.ndarray}` in PyTorch's shapes and order. It is the
idea of `torch.load(weights_only=True)` with numpy and the standard library only:

- No pickled code runs. One restricted Unpickler reads every pickle in the file and resolves only
  `collections.OrderedDict`, `torch._utils._rebuild_tensor(_v2)`, `_rebuild_parameter` and the
  `torch.*Storage` names; any other global (`os.system`, `builtins.eval`, an nn.Module...) raises
  `pickle.UnpicklingError("refusing to load global ...")` before anything is called.
- Tensors are rebuilt from their storage, offset, shape and stride (checkpoints converted from
  TensorFlow are often not contiguous), bounds-checked, and copied to C-contiguous arrays.
  bfloat16 is widened to float32; other dtypes keep their numpy equivalent.
- Legacy format (torch < 1.6, or `_use_new_zipfile_serialization=False`): pickles of the magic
  number, protocol version, sys_info, the object and the storage keys, then each storage as an
  int64 element count followed by its little-endian bytes.
- Zip format: `<root>/data.pkl`, and each storage's bytes in `<root>/data/<key>`.
- Big-endian files are refused.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save file
_LEGACY_PROTOCOL = 1001
# torch storage class -> numpy dtype of one element (little-endian on disk). BFloat16 has no numpy
# dtype: it is read as raw uint16 and widened to float32.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}  # fmt: skip


@dataclass(frozen=True)
class _Storage:
    """A storage the pickle refers to; its bytes come later (legacy) or from another file (zip)."""

    key: str
    kind: str  # a key of _STORAGE_DTYPES
    numel: int
    view_offset: int = 0  # legacy storage views start this many elements into the storage


@dataclass(frozen=True)
class _TensorRef:
    """What torch._utils._rebuild_tensor_v2 was asked to build, kept until the data is read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> _TensorRef:
    """Stands in for torch._utils._rebuild_tensor(_v2); requires_grad, hooks, metadata dropped."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return _TensorRef(storage, int(offset), tuple(map(int, size)), tuple(map(int, stride)))


class _StorageKind(str):
    """What find_class returns for `torch.FloatStorage` and friends: just the name."""


class _TensorOnlyUnpickler(pickle.Unpickler):
    """An Unpickler that can only rebuild tensors, storages and (ordered) dicts.

    Every other global (os.system, builtins.eval, torch.nn modules...) is refused, so a hostile
    file cannot run code: the idea behind `torch.load(weights_only=True)`, without torch.
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): lambda data, *_ignored: data,
    }

    def __init__(self, file: io.BytesIO, storages: dict[str, _Storage] | None) -> None:
        super().__init__(file)
        self.storages = storages  # None: this pickle may not reference storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(name)
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a weights file may only hold tensors "
            "(torch._utils._rebuild_tensor_v2, torch.*Storage, collections.OrderedDict)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        # ("storage", kind, key, location, numel[, view_metadata]); view_metadata is legacy only.
        ok = self.storages is not None and isinstance(pid, tuple) and len(pid) in (5, 6)
        if not (ok and pid[0] in ("storage", b"storage") and isinstance(pid[1], _StorageKind)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        key = str(pid[2])
        known = self.storages.setdefault(key, _Storage(key, str(pid[1]), int(pid[4])))
        if known.kind != pid[1]:
            raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
        view = pid[5] if len(pid) == 6 else None
        return known if view is None else _Storage(key, known.kind, known.numel, int(view[1]))


def _load_pickle(f: io.BytesIO, storages: dict[str, _Storage] | None = None) -> Any:
    return _TensorOnlyUnpickler(f, storages).load()


def _materialize(ref: _TensorRef, buffers: dict[str, np.ndarray]) -> np.ndarray:
    """Copy a (possibly strided, offset) view of a storage into a C-contiguous numpy array.

    >>> buf = {"0": np.arange(6, dtype="<f4")}
    >>> _materialize(_TensorRef(_Storage("0", "FloatStorage", 6), 0, (2, 3), (1, 2)), buf)
    array([[0., 2., 4.],
           [1., 3., 5.]], dtype=float32)
    """
    if (flat := buffers.get(ref.storage.key)) is None:
        raise ValueError(f"the file has no data for storage {ref.storage.key}")
    start = ref.storage.view_offset + ref.offset
    if min(ref.stride, default=0) < 0 or len(ref.stride) != len(ref.shape) or start < 0:
        raise ValueError(f"bad tensor layout {ref}")
    if math.prod(ref.shape) == 0:
        out = np.zeros(ref.shape, flat.dtype)
    else:
        last = start + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
        if last >= flat.size:  # as_strided would read past the buffer
            raise ValueError(f"tensor {ref} reaches past its storage of {flat.size} elements")
        steps = tuple(s * flat.itemsize for s in ref.stride)
        view = np.lib.stride_tricks.as_strided(flat[start:], ref.shape, steps, writeable=False)
        out = np.array(view, order="C")  # a copy that owns its memory
    if ref.storage.kind == "BFloat16Storage":  # bfloat16 = the high half of a float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out.astype(out.dtype.newbyteorder("="), copy=False)  # "<f4" -> native float32


def _read_legacy(f: io.BytesIO) -> tuple[Any, dict[str, np.ndarray]]:
    """Legacy torch.save: magic, protocol, sys_info, the object, storage keys, then raw storages."""
    if _load_pickle(f) != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch file (wrong magic number)")
    if _load_pickle(f) != _LEGACY_PROTOCOL:
        raise ValueError("unsupported legacy PyTorch protocol version")
    if not (isinstance(info := _load_pickle(f), dict) and info.get("little_endian", False)):
        raise ValueError("big-endian PyTorch files are not supported")
    storages: dict[str, _Storage] = {}
    obj = _load_pickle(f, storages)
    buffers: dict[str, np.ndarray] = {}
    for key in _load_pickle(f):
        if (storage := storages.get(str(key))) is None:
            raise ValueError(f"storage {key} is listed but no tensor uses it")
        dtype = np.dtype(_STORAGE_DTYPES[storage.kind])
        head = f.read(8)  # element count, then the elements
        count = struct.unpack("<q", head)[0] if len(head) == 8 else -1
        data = f.read(max(count, 0) * dtype.itemsize)
        if count != storage.numel or len(data) != count * dtype.itemsize:
            raise ValueError(f"file ends inside storage {key}, or its size disagrees")
        buffers[storage.key] = np.frombuffer(data, dtype)
    return obj, buffers


def _read_zip(f: io.BytesIO) -> tuple[Any, dict[str, np.ndarray]]:
    """Zip torch.save (torch >= 1.6): <root>/data.pkl, and each storage in <root>/data/<key>."""
    with zipfile.ZipFile(f) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError("zip file is not a torch.save archive (no single data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        if root + "byteorder" in names and archive.read(root + "byteorder") != b"little":
            raise ValueError("big-endian PyTorch files are not supported")
        storages: dict[str, _Storage] = {}
        obj = _load_pickle(io.BytesIO(archive.read(pickles[0])), storages)
        buffers: dict[str, np.ndarray] = {}
        for key, storage in storages.items():
            if (member := f"{root}data/{key}") not in names:
                raise ValueError(f"the archive has no data for storage {key}")
            data = archive.read(member)
            buffers[key] = np.frombuffer(data, _STORAGE_DTYPES[storage.kind])
            if buffers[key].size != storage.numel:
                raise ValueError(f"storage {key} has {len(data)} bytes, not {storage.numel} items")
    return obj, buffers


def read_pth_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (`torch.save`, legacy or zip format) into numpy arrays.

    No PyTorch needed and no pickled code runs: globals other than the tensor-rebuild ones raise
    `pickle.UnpicklingError`. Arrays come back C-contiguous, in PyTorch's shapes and order.

    >>> sd = read_pth_state_dict("efficientnet-lite0-57934424.pth")  # doctest: +SKIP
    >>> sd["_conv_stem.weight"].shape  # doctest: +SKIP
    (32, 3, 3, 3)
    """
    raw = Path(path).read_bytes()
    reader = _read_zip if raw[:4] == b"PK\x03\x04" else _read_legacy
    obj, buffers = reader(io.BytesIO(raw))
    if not isinstance(obj, dict) or not all(isinstance(v, _TensorRef) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {str(name): _materialize(ref, buffers) for name, ref in obj.items()}
