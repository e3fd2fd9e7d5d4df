"""Flax msgpack checkpoints (what `flax.training.checkpoints.save_checkpoint` wrote for the official
MaskGIT and MAGVIT releases), read with `flax.serialization.msgpack_restore`, which decodes plain
data only, never code. PyTorch and safetensors files: `maskgen.weights.torch_files`.
`maskgen.weights.read_weights` picks the reader for a file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMATS = "a Flax msgpack checkpoint, a PyTorch .pth/.pt zip file, or a .safetensors file"


class WeightFileError(ValueError):
    """A weight file that cannot be read as any format maskgen loads."""


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _to_numpy(v) for i, v in enumerate(tree)}
    return np.asarray(tree)


def read_flax_checkpoint(path: str) -> dict:
    """A Flax msgpack checkpoint file as a nested dict of numpy arrays (lists become "0", "1", ... keys,
    as Flax's own state dicts name them)."""
    from flax import serialization

    with open(path, "rb") as f:
        data = f.read()
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as err:  # noqa: BLE001 - msgpack raises several types for non-msgpack bytes
        raise WeightFileError(f"{path} is not a Flax msgpack checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(tree, dict):
        raise WeightFileError(f"{path} holds a {type(tree).__name__}, not a tree of named arrays")
    return _to_numpy(tree)


def write_flax_checkpoint(path: str, tree: dict) -> None:
    """Writes `tree` (nested dicts of arrays) in the msgpack layout `read_flax_checkpoint` reads (for tests
    and for converting files between tools)."""
    from flax import serialization

    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(_to_numpy(tree)))
