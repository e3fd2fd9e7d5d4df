"""Weights-only readers for PyTorch `.pth`/`.pt` files and `.safetensors`, with no torch and no code run.

A `.pth` written by `torch.save` (PyTorch >= 1.6) is a zip archive: `<name>/data.pkl` (a pickle of
the object tree), `<name>/data/<key>` (one raw little-endian buffer per storage) and, in newer
files, `<name>/byteorder`. Unpickling with the standard `pickle.load` can run any function the file
names, so a downloaded checkpoint could execute code on load. `read_torch_file` uses a restricted
unpickler instead: `find_class` resolves only what a state dict needs, to harmless stand-ins:

- `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` (rebuilt here
  as numpy arrays from the storage, its offset, size and strides), `torch.<Type>Storage` (the dtype),
  `torch.Size`, and `argparse.Namespace` (the `args` some training scripts save next to the model;
  read as plain attributes, never argparse's class).

Anything else (`os.system`, `builtins.eval`, numpy objects, custom classes) raises
`UnsafePickleError` before it is called, saying that only weights-only state dicts are loaded.
The legacy non-zip format (torch < 1.6) is refused with the same advice: re-save the state dict.

`read_torch_state_dict` unwraps the usual containers ({"model": ...} as facebookresearch/mae saves,
{"state_dict": ...}, {"model_state": ...}, a "module." prefix from DistributedDataParallel) into flat
`name -> np.ndarray`. `read_safetensors` reads the safetensors format (an 8-byte little-endian
header length, a JSON header, raw buffers) with no dependency; bfloat16/float8 come from ml_dtypes.

Used by `maskgen import-weights --format mae --weights mae_pretrain_vit_base.pth --workdir OUT`
(maskgen.weights.mae_torch).
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from maskgen.weights.files import WeightFileError


class UnsafePickleError(WeightFileError):
    """The file's pickle names something other than tensors and containers."""


# torch.<Name>Storage -> the numpy dtype of its elements.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,
}


class _StorageType:
    """Stand-in for a `torch.<Name>Storage` class: only its element dtype is used."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])

    def __setstate__(self, state):  # a pickle's BUILD must not retarget the shared dtype table
        raise UnsafePickleError(f"refused a pickle that sets attributes of torch.{self.name}: {_REFUSAL}")


class _Namespace:
    """Stand-in for `argparse.Namespace` objects saved next to the weights: plain attributes."""


class _OrderedDict(dict):
    """Stand-in for `collections.OrderedDict`: a dict that also takes the attributes a pickle sets on
    it (a state dict carries `_metadata`, the modules' versions)."""


def _size(*dims):
    return tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2`: a (copied, contiguous) view of `storage` [numel] elements."""
    if not isinstance(storage, np.ndarray):
        raise WeightFileError(f"a tensor refers to {type(storage).__name__}, not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise WeightFileError(f"a tensor has an invalid layout: size {size}, stride {stride}, offset {offset}")
    if math.prod(size) == 0:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:  # a view past the storage's end: refuse instead of reading foreign memory
        raise WeightFileError(f"a tensor of size {size}, stride {stride}, offset {offset} reads past its "
                              f"storage of {storage.size} elements")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=tuple(s * item for s in stride),
                                           writeable=False)
    return np.array(view)


def _rebuild_parameter(data, *_unused):
    """`torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)`: the data itself."""
    return data


# (module, name) -> what the restricted unpickler gives for it. Nothing here runs code from the file.
_ALLOWED = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): _size,
    ("argparse", "Namespace"): _Namespace,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}

_REFUSAL = ("this file needs pickled objects beyond tensors and containers to load; maskgen only loads "
            "weights-only state dicts and never unpickles code. Re-save the weights with "
            "`torch.save(model.state_dict(), path)` or as .safetensors")


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, load_storage, path: str):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{self._path}: refused {module}.{name}: {_REFUSAL}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"{self._path}: refused persistent object {str(pid)[:80]}: {_REFUSAL}")
        return self._load_storage(pid[1].dtype, str(pid[2]))


def _archive_prefix(names: list[str], path: str) -> str:
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise WeightFileError(f"{path} is a zip archive but not a torch.save file (no single <name>/data.pkl)")
    return pickles[0][: -len("data.pkl")]


def read_torch_file(path: str) -> Any:
    """The object tree `torch.save` wrote to `path`, with tensors as numpy arrays (module docstring).

    Raises UnsafePickleError for anything but tensors, containers and plain values.
    """
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80":  # not a pickle at all
            raise WeightFileError(f"{path} is not a PyTorch weights file (neither a torch.save zip archive nor a "
                                  "legacy pickle); maskgen reads .pth/.pt zip archives and .safetensors files")
        raise UnsafePickleError(f"{path} is the legacy (torch < 1.6) format; maskgen reads only zip-format weights "
                                f"files, since a legacy file is an arbitrary pickle: {_REFUSAL}")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        prefix = _archive_prefix(names, path)
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise WeightFileError(f"{path}: unknown byteorder record {byteorder!r}")
        storages: dict[str, np.ndarray] = {}

        def load_storage(dtype: np.dtype, key: str) -> np.ndarray:
            if key not in storages:
                name = f"{prefix}data/{key}"
                if name not in names:
                    raise WeightFileError(f"{path}: the pickle refers to storage {key!r}, which the archive lacks")
                raw = archive.read(name)
                if len(raw) % dtype.itemsize:
                    raise WeightFileError(f"{path}: storage {key} has {len(raw)} bytes, not a whole number of "
                                          f"{dtype} elements")
                order = "<" if byteorder == "little" else ">"
                stored = dtype.newbyteorder(order) if dtype.itemsize > 1 and dtype.kind != "V" else dtype
                if dtype == np.dtype(ml_dtypes.bfloat16) and byteorder == "big":
                    array = np.frombuffer(raw, ">u2").astype("<u2").view(dtype)
                else:
                    array = np.frombuffer(raw, stored).astype(dtype, copy=False)
                storages[key] = array
            if storages[key].dtype != dtype:  # one buffer seen through two dtypes (rare): reinterpret the bytes
                return storages[key].view(np.uint8).view(dtype)
            return storages[key]

        try:
            return _WeightsUnpickler(archive.read(f"{prefix}data.pkl"), load_storage, path).load()
        except WeightFileError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise WeightFileError(f"{path}: cannot read its pickle ({type(err).__name__}: {err})") from None


_WRAPPERS = ("model", "state_dict", "model_state", "module", "net")


def _is_state_dict(tree: Any) -> bool:
    return isinstance(tree, dict) and bool(tree) and all(isinstance(v, np.ndarray) for v in tree.values())


def flat_state_dict(tree: Any, path: str = "the file") -> dict[str, np.ndarray]:
    """A state dict (name -> array) from a loaded object: the object itself, or its "model" /
    "state_dict" / ... entry; a "module." prefix on every name (DDP) is dropped."""
    found = tree if _is_state_dict(tree) else None
    if found is None and isinstance(tree, dict):
        for key in _WRAPPERS:
            if _is_state_dict(tree.get(key)):
                found = tree[key]
                break
    if found is None:
        what = f"a dict with keys {sorted(map(str, tree))[:12]}" if isinstance(tree, dict) else type(tree).__name__
        raise WeightFileError(f"{path} holds {what}, not a state dict of tensors (nor one under "
                              + ", ".join(repr(k) for k in _WRAPPERS) + ")")
    names = [str(k) for k in found]
    if all(n.startswith("module.") for n in names):
        names = [n[len("module."):] for n in names]
    return dict(zip(names, found.values()))


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A `.pth`/`.pt` state dict as flat `name -> np.ndarray`, read without torch or unpickling code."""
    return flat_state_dict(read_torch_file(path), path)


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A `.safetensors` file as flat `name -> np.ndarray` (little-endian buffers, as the format fixes)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise WeightFileError(f"{path} is too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise WeightFileError(f"{path} is not a safetensors file (header length {header_len} exceeds the file)")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightFileError(f"{path} is not a safetensors file (its header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path} is not a safetensors file (its header is not a JSON object)")
    buffer = memoryview(data)[8 + header_len:]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise WeightFileError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}") from None
        if dtype_name not in _SAFETENSORS_DTYPES:
            raise WeightFileError(f"{path}: tensor {name!r} has dtype {dtype_name}, which maskgen does not read; "
                                  f"known: {', '.join(_SAFETENSORS_DTYPES)}")
        dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
        nbytes = math.prod(shape) * dtype.itemsize
        if not (0 <= begin <= end <= len(buffer)) or end - begin != nbytes:
            raise WeightFileError(f"{path}: tensor {name!r} ({dtype_name} {list(shape)}) has byte range "
                                  f"[{begin}, {end}) in a {len(buffer)}-byte buffer; it needs {nbytes} bytes")
        stored = dtype.newbyteorder("<") if dtype.itemsize > 1 and dtype.kind in "fiuc" else dtype
        out[name] = np.frombuffer(buffer[begin:end], stored).astype(dtype).reshape(shape)
    return out


__all__ = ["UnsafePickleError", "flat_state_dict", "read_safetensors", "read_torch_file", "read_torch_state_dict"]
