"""Token datasets written by `maskgen tokenize`: ArrayRecord shards of token grids + metadata.json.

A record is a msgpack map {"v": 1, "tokens": raw int32 bytes, "shape": [h, w(, K)], "label": int}.
`metadata.json` holds the token shape, codebook size, number of levels and the tokenizer that
made it, so a masked model can check its config against the tokens before compiling anything.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Iterable, Sequence

import msgpack
import numpy as np

from maskgen.data.records import shard_name

FORMAT = "maskgen.tokens.v1"
METADATA_FILE = "metadata.json"


class TokenMetadataError(ValueError):
    """A token dataset that does not fit the model that wants to read it."""


def encode_tokens(tokens: np.ndarray, label: int) -> bytes:
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    return msgpack.packb({"v": 1, "tokens": tokens.tobytes(), "shape": list(tokens.shape), "label": int(label)},
                         use_bin_type=True)


def decode_tokens(record: bytes) -> dict:
    try:
        payload = msgpack.unpackb(record, raw=False)
        tokens = np.frombuffer(payload["tokens"], np.int32).reshape(payload["shape"])
    except Exception as err:  # noqa: BLE001 - msgpack raises many types on garbage
        raise ValueError(f"not a maskgen token record ({len(record)} bytes): {err}") from err
    return {"tokens": tokens.copy(), "label": np.int32(payload["label"])}


def write_token_split(out_dir: str, split: str, rows: Iterable[tuple[np.ndarray, int]], num_shards: int = 1) -> dict:
    """Writes (tokens, label) rows of one split; returns {"num_examples", "shards"}."""
    from array_record.python.array_record_module import ArrayRecordWriter

    rows = list(rows)
    names = [shard_name(split, i, num_shards) for i in range(num_shards)]
    per_shard = -(-len(rows) // num_shards) if rows else 0
    for i, name in enumerate(names):
        writer = ArrayRecordWriter(os.path.join(out_dir, name), "group_size:1")
        for tokens, label in rows[i * per_shard:(i + 1) * per_shard]:
            writer.write(encode_tokens(tokens, label))
        writer.close()
    return {"num_examples": len(rows), "shards": names}


def write_token_metadata(out_dir: str, *, token_shape: Sequence[int], codebook_size: int, num_levels: int,
                         num_classes: int, splits: dict, tokenizer: dict[str, Any]) -> dict:
    metadata = {
        "format": FORMAT, "token_shape": list(token_shape), "codebook_size": int(codebook_size),
        "num_levels": int(num_levels), "num_classes": int(num_classes), "splits": splits, "tokenizer": tokenizer,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    tmp = os.path.join(out_dir, METADATA_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(metadata, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, METADATA_FILE))  # last, so a half-written dataset has none
    return metadata


def read_token_metadata(data_dir: str) -> dict:
    path = os.path.join(data_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {data_dir!r} a directory written by `maskgen tokenize`?")
    with open(path) as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT:
        raise TokenMetadataError(f"{path}: format {metadata.get('format')!r} is not {FORMAT!r}")
    return metadata


def check_token_metadata(metadata: dict, *, codebook_size: int, token_shape: Sequence[int], where: str = "config") -> None:
    """Fails with a message naming both sides if a model's token settings disagree with the data."""
    problems = []
    if int(codebook_size) != metadata["codebook_size"]:
        problems.append(f"codebook size: {where} says {codebook_size}, the tokens have {metadata['codebook_size']}")
    if tuple(token_shape) != tuple(metadata["token_shape"]):
        problems.append(f"token grid: {where} says {tuple(token_shape)}, the tokens are {tuple(metadata['token_shape'])}")
    if problems:
        made_by = metadata.get("tokenizer", {}).get("workdir", "?")
        raise TokenMetadataError(
            "the token dataset does not match the model (tokenizer run: " + made_by + "): " + "; ".join(problems)
        )


class TokenSource:
    """Random access to one split of a token dataset, for grain: {"tokens": int32 grid, "label"}."""

    kind = "tokens"  # the input pipeline passes token examples through instead of decoding images

    def __init__(self, data_dir: str, split: str):
        from maskgen.data import records

        metadata = read_token_metadata(data_dir)
        if split not in metadata["splits"]:
            raise ValueError(f"split {split!r} not in {data_dir!r}; valid splits are {sorted(metadata['splits'])}")
        self.metadata = metadata
        paths = [os.path.join(data_dir, name) for name in metadata["splits"][split]["shards"]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"token shards listed in {data_dir}/metadata.json are missing: {missing}")
        self.data_dir, self.split, self._paths = data_dir, split, paths
        self._source = records.open_shards(paths, self._remedy())
        expected = metadata["splits"][split]["num_examples"]
        if len(self._source) != expected:
            raise ValueError(f"{data_dir!r} split {split!r}: shards hold {len(self._source)} records but "
                             f"metadata.json says {expected}; re-run `maskgen tokenize`")

    def __len__(self) -> int:
        return len(self._source)

    def _remedy(self) -> str:
        return f"re-run the `maskgen tokenize` that wrote {self.data_dir} to rewrite it"

    def __getitem__(self, index: int) -> dict:
        from maskgen.data import records

        index = int(index)
        try:
            return decode_tokens(self._source[index])
        except records.SHARD_ERRORS as err:  # a corrupt shard: name the file and the record
            raise records.read_error(self._paths, [index], lambda i: decode_tokens(self._source[i]), err,
                                     lambda i: f"example {i} of split {self.split!r}", self._remedy()) from err
