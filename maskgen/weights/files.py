"""Flax msgpack checkpoints (the single-file format Flax's older checkpoint helpers wrote for the
official MaskGIT and MAGVIT releases), read with `flax.serialization.msgpack_restore`, which decodes plain
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


def tree_array(params: dict, path: str, what: str, ndim: int | None = None) -> np.ndarray:
    """The array at `path` ("a/b/c") of a released checkpoint's `params` tree, or a WeightFileError
    that names `what` file it is, the missing key and what its parent holds."""
    node = params
    for i, part in enumerate(path.split("/")):
        if not isinstance(node, dict) or part not in node:
            where = "/".join(path.split("/")[:i]) or "the top level"
            have = sorted(node)[:10] if isinstance(node, dict) else type(node).__name__
            raise WeightFileError(f"the {what} checkpoint has no params/{path} (under {where}: {have})")
        node = node[part]
    if isinstance(node, dict):
        raise WeightFileError(f"params/{path} is a group ({sorted(node)[:6]}), expected an array")
    array = np.asarray(node)
    if ndim is not None and array.ndim != ndim:
        raise WeightFileError(f"params/{path} has shape {array.shape}, expected {ndim} dimensions")
    return array


def tree_shapes(tree: dict, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} of every array in a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(tree_shapes(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = tuple(np.shape(value))
    return out


def shape_differences(got: dict[str, tuple], want: dict[str, tuple], *, prefix: str = "", limit: int = 10) -> str:
    """"" when two {path: shape} maps agree; else the missing, unexpected and misshaped paths (the
    first `limit`, then a count), for an error message."""
    problems = [f"missing {prefix}{p} {want[p]}" for p in sorted(set(want) - set(got))]
    problems += [f"unexpected {prefix}{p} {got[p]}" for p in sorted(set(got) - set(want))]
    problems += [f"{prefix}{p} is {got[p]}, expected {want[p]}" for p in sorted(set(got) & set(want))
                 if got[p] != want[p]]
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more
