"""The weights-only PyTorch and safetensors readers: exact read-back, and no code run on load."""

import collections
import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy_safetensors

from maskgen.weights.files import WeightFileError
from maskgen.weights.torch_files import (UnsafePickleError, read_safetensors, read_torch_file,
                                         read_torch_state_dict)


def _tensors():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    return collections.OrderedDict(
        f32=torch.randn(3, 4, generator=gen),
        f16=torch.randn(7, generator=gen).half(),
        bf16=torch.randn(2, 3, generator=gen).bfloat16(),
        f64=torch.randn(2, 2, generator=gen).double(),
        i64=torch.arange(-3, 9).reshape(3, 4),
        i32=torch.arange(5, dtype=torch.int32),
        u8=torch.arange(250, 256, dtype=torch.uint8),
        flags=torch.tensor([True, False, True]),
        scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 3),
        transposed=base.t(),  # strides (1, 5)
        strided_slice=base[1:, ::2],  # a storage offset and a step
        shares_storage=base[2],  # the same storage as the two above
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()


def test_torch_saved_tensors_read_back_identical(tmp_path):
    tensors = _tensors()
    path = str(tmp_path / "w.pth")
    torch.save(tensors, path)
    got = read_torch_state_dict(path)
    assert list(got) == list(tensors)
    for name, tensor in tensors.items():
        want = _numpy(tensor)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_wrappers_namespace_args_and_ddp_prefix(tmp_path):
    import argparse

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    path = str(tmp_path / "checkpoint.pth")
    # main_pretrain.py's checkpoint: the model, optimizer state, epoch and argparse args.
    torch.save({"model": model.state_dict(), "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
                "epoch": 799, "args": argparse.Namespace(lr=1.5e-4, model="mae_vit_base_patch16")}, path)
    state = read_torch_state_dict(path)
    assert sorted(state) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    np.testing.assert_array_equal(state["0.weight"], model[0].weight.detach().numpy())
    whole = read_torch_file(path)
    assert whole["epoch"] == 799 and vars(whole["args"]) == {"lr": 1.5e-4, "model": "mae_vit_base_patch16"}
    ddp = str(tmp_path / "ddp.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ddp)
    assert sorted(read_torch_state_dict(ddp)) == sorted(state)
    torch.save({"epoch": 3, "opt": [1, 2]}, str(tmp_path / "no_weights.pth"))
    with pytest.raises(WeightFileError, match="not a state dict of tensors"):
        read_torch_state_dict(str(tmp_path / "no_weights.pth"))


def test_big_endian_archive(tmp_path):
    """A file whose byteorder record says "big" (torch.save on a big-endian machine): buffers swapped."""
    tensors = {"f32": torch.randn(3, 2), "i64": torch.arange(6), "bf16": torch.randn(4).bfloat16(),
               "f16": torch.randn(5).half()}
    little = str(tmp_path / "little.pth")
    torch.save(tensors, little)
    big = str(tmp_path / "big.pth")
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        sizes = {"f32": 4, "i64": 8, "bf16": 2, "f16": 2}
        keys = [info for info in src.namelist() if "/data/" in info]
        # Storage keys follow the order tensors are pickled in, which is the dict's order.
        itemsize = dict(zip(sorted(keys, key=lambda n: int(n.rsplit("/", 1)[1])), sizes.values()))
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif name in itemsize:
                data = np.frombuffer(data, f"<u{itemsize[name]}").astype(f">u{itemsize[name]}").tobytes()
            dst.writestr(name, data)
    got = read_torch_state_dict(big)
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(got[name], _numpy(tensor), err_msg=name)


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        import builtins

        return builtins.eval, (self.code,)


def _zip_with_pickle(path: str, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "legacy_pickle", "inside_state_dict"])
def test_malicious_pickle_is_refused_without_running(tmp_path, attack):
    sentinel = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    if attack == "os.system":
        _zip_with_pickle(path, pickle.dumps({"model": {"w": _System(f"touch {sentinel}")}}, protocol=2))
    elif attack == "builtins.eval":
        _zip_with_pickle(path, pickle.dumps(_Eval(f"open({str(sentinel)!r}, 'w').close()"), protocol=2))
    elif attack == "legacy_pickle":  # a bare pickle (the pre-1.6 format) is never unpickled at all
        with open(path, "wb") as f:
            f.write(pickle.dumps(_System(f"touch {sentinel}"), protocol=2))
    else:  # a real torch.save file whose pickle also carries a payload next to the tensors
        buffer = io.BytesIO()
        torch.save({"w": torch.ones(2)}, buffer)
        with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
            for name in src.namelist():
                data = src.read(name)
                if name.endswith("data.pkl"):
                    data = pickle.dumps({"extra": _System(f"touch {sentinel}")}, protocol=2)
                dst.writestr(name, data)
    with pytest.raises(UnsafePickleError, match="only loads weights-only state dicts") as err:
        read_torch_state_dict(path)
    if attack != "legacy_pickle":
        assert "refused" in str(err.value) and ("posix.system" in str(err.value) or "eval" in str(err.value))
    assert not sentinel.exists()


def test_a_file_that_is_not_a_weights_file_is_named_as_such(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("# not weights\n")
    with pytest.raises(WeightFileError, match="is not a PyTorch weights file.*zip archives and .safetensors"):
        read_torch_state_dict(str(path))


def test_tensor_view_past_its_storage_is_refused(tmp_path):
    """A crafted size/stride must not read memory outside the storage."""
    path = str(tmp_path / "w.pth")
    torch.save({"w": torch.arange(4.0)}, path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data = {n: archive.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    # Protocol-2 pickles store the size tuple (4,) as BININT1 4; make it 400 elements.
    assert data[pkl].count(b"K\x04\x85") == 1
    data[pkl] = data[pkl].replace(b"K\x04\x85", b"M\x90\x01\x85")
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in data.items():
            archive.writestr(name, value)
    with pytest.raises(WeightFileError, match="reads past its storage of 4 elements"):
        read_torch_state_dict(path)


def test_safetensors_read_back_identical(tmp_path):
    arrays = {"f32": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32),
              "f16": np.arange(6, dtype=np.float16).reshape(2, 3), "i64": np.arange(-2, 3, dtype=np.int64),
              "u8": np.arange(4, dtype=np.uint8), "flags": np.array([True, False]),
              "scalar": np.array(1.5, np.float32)}
    path = str(tmp_path / "a.safetensors")
    save_numpy_safetensors(arrays, path, metadata={"format": "np"})
    got = read_safetensors(path)
    assert sorted(got) == sorted(arrays)
    for name, value in arrays.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        np.testing.assert_array_equal(got[name], value)
    from safetensors.torch import save_file

    bf16 = torch.randn(3, 2).bfloat16()
    save_file({"bf16": bf16}, str(tmp_path / "b.safetensors"))
    np.testing.assert_array_equal(read_safetensors(str(tmp_path / "b.safetensors"))["bf16"], _numpy(bf16))


def test_safetensors_bad_files(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00")
    with pytest.raises(WeightFileError, match="too short"):
        read_safetensors(str(path))
    header = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 8)  # 8 of the 16 bytes
    with pytest.raises(WeightFileError, match=r"byte range \[0, 16\) in a 8-byte buffer"):
        read_safetensors(str(path))
    header = b'{"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 8)
    with pytest.raises(WeightFileError, match="dtype C64"):
        read_safetensors(str(path))


def test_pickle_cannot_retarget_a_storage_dtype(tmp_path):
    """BUILD on the shared torch.FloatStorage stand-in would change how later files read: refused."""
    path = str(tmp_path / "w.pth")
    # GLOBAL torch FloatStorage; EMPTY_DICT; "dtype" -> "int8" SETITEM; BUILD; STOP
    payload = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x04\x00\x00\x00int8sb."
    _zip_with_pickle(path, payload)
    with pytest.raises(UnsafePickleError, match="sets attributes of torch.FloatStorage"):
        read_torch_file(path)
    torch.save({"w": torch.ones(3)}, str(tmp_path / "ok.pth"))
    assert read_torch_state_dict(str(tmp_path / "ok.pth"))["w"].dtype == np.float32
