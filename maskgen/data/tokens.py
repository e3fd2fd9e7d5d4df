"""Token datasets written by `maskgen tokenize`: ArrayRecord shards of named arrays + metadata.json.

Record v2 (written now) is a msgpack map {"v": 2, "arrays": {name: {"dtype": "int32" | "float32",
"shape": [...], "data": raw bytes}}, "label": int (only when the dataset has labels)}: int32
codes [..., K] of a K-level quantizer, float32 latents [..., D], or several of them. Record v1
(older maskgen; still read) is {"v": 1, "tokens": raw int32 bytes, "shape": [h, w(, K)], "label": int}.

metadata.json ("format": "maskgen.tokens.v2") holds "fields" (one spec per stored array and the
label, maskgen.data.specs), "num_classes", "splits", "tokenizer" (the run that made it) and, when
there is a token field, the keys v1 had: "token_shape", "codebook_size", "num_levels". So a model
can check its config against the data before compiling anything. v1 metadata (no "fields") is
read as {"tokens": TokenSpec, "label": LabelSpec}.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Iterable, Sequence

import msgpack
import numpy as np

from maskgen.data.records import shard_name
from maskgen.data.specs import LabelSpec, Spec, TokenSpec, fields_from_json, fields_to_json, first_field

FORMAT = "maskgen.tokens.v2"
FORMAT_V1 = "maskgen.tokens.v1"
METADATA_FILE = "metadata.json"
_DTYPES = {"int32": np.int32, "float32": np.float32}


class TokenMetadataError(ValueError):
    """A token dataset that does not fit the model that wants to read it."""


def encode_tokens(tokens: np.ndarray, label: int) -> bytes:
    """A v1 record, as maskgen wrote before v2 (kept so tests can build old datasets)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    return msgpack.packb({"v": 1, "tokens": tokens.tobytes(), "shape": list(tokens.shape), "label": int(label)},
                         use_bin_type=True)


def _stored_dtype(name: str, value) -> np.ndarray:
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return np.ascontiguousarray(array, np.int32)
    if np.issubdtype(array.dtype, np.floating):
        return np.ascontiguousarray(array, np.float32)
    raise ValueError(f"field {name!r}: token records hold int or float arrays, got {array.dtype}")


def encode_record(example: dict) -> bytes:
    """A v2 record of {name: int or float array, optional "label": int}."""
    arrays = {}
    for name, value in example.items():
        if name == "label":
            continue
        array = _stored_dtype(name, value)
        arrays[name] = {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.tobytes()}
    payload: dict[str, Any] = {"v": 2, "arrays": arrays}
    if "label" in example:
        payload["label"] = int(example["label"])
    return msgpack.packb(payload, use_bin_type=True)


def decode_record(record: bytes) -> dict:
    """A v1 or v2 record -> {name: array (writable), "label": np.int32 if stored}."""
    try:
        payload = msgpack.unpackb(record, raw=False)
        if payload["v"] == 1:
            out = {"tokens": np.frombuffer(payload["tokens"], np.int32).reshape(payload["shape"]).copy()}
        elif payload["v"] == 2:
            out = {name: np.frombuffer(a["data"], _DTYPES[a["dtype"]]).reshape(a["shape"]).copy()
                   for name, a in payload["arrays"].items()}
        else:
            raise ValueError(f"unknown record version {payload['v']!r}")
        if "label" in payload:
            out["label"] = np.int32(payload["label"])
    except Exception as err:  # noqa: BLE001 - msgpack raises many types on garbage
        raise ValueError(f"not a maskgen token record ({len(record)} bytes): {err}") from err
    return out


def decode_tokens(record: bytes) -> dict:
    """Kept name of decode_record."""
    return decode_record(record)


def write_records(out_dir: str, split: str, records: Sequence[bytes], num_shards: int = 1) -> dict:
    """Encoded records of one split, in order, over `num_shards` shards; returns {"num_examples", "shards"}."""
    from array_record.python.array_record_module import ArrayRecordWriter

    names = [shard_name(split, i, num_shards) for i in range(num_shards)]
    per_shard = -(-len(records) // num_shards) if records else 0
    for i, name in enumerate(names):
        writer = ArrayRecordWriter(os.path.join(out_dir, name), "group_size:1")
        for record in records[i * per_shard:(i + 1) * per_shard]:
            writer.write(record)
        writer.close()
    return {"num_examples": len(records), "shards": names}


def write_token_split(out_dir: str, split: str, examples: Iterable[dict], num_shards: int = 1) -> dict:
    """Writes one split: `examples` are dicts of numpy arrays (int -> int32 codes, float -> float32
    latents) plus an optional int "label", all with the same keys. Returns {"num_examples", "shards"}
    for write_token_metadata's `splits`. (A (tokens, label) tuple, the v1 writer's row, is taken as
    {"tokens": tokens, "label": label}.)"""
    records, keys = [], None
    for i, example in enumerate(examples):
        if isinstance(example, tuple):
            example = {"tokens": example[0], "label": example[1]}
        if keys is None:
            keys = sorted(example)
        elif sorted(example) != keys:
            raise ValueError(f"{split} example {i} has fields {sorted(example)}, example 0 has {keys}")
        records.append(encode_record(example))
    return write_records(out_dir, split, records, num_shards)


def write_token_metadata(out_dir: str, *, fields: dict[str, Spec] | None = None, num_classes: int, splits: dict,
                         tokenizer: dict[str, Any], token_shape: Sequence[int] | None = None,
                         codebook_size: int | None = None, num_levels: int | None = None) -> dict:
    """Writes metadata.json (last, so a half-written dataset has none); returns it.

    fields: a spec per stored array (maskgen.data.specs); a label spec is added when
    num_classes > 0. The v1 keywords (token_shape, codebook_size, num_levels) instead of
    `fields` describe one token field named "tokens".
    """
    if fields is None:
        if token_shape is None or codebook_size is None:
            raise ValueError("write_token_metadata needs fields= (or token_shape= and codebook_size=)")
        fields = {"tokens": TokenSpec(tuple(token_shape), int(codebook_size), int(num_levels or 1))}
    elif token_shape is not None or codebook_size is not None or num_levels is not None:
        raise ValueError("give write_token_metadata either fields= or the v1 token_shape/codebook_size/num_levels")
    fields = {name: spec for name, spec in fields.items() if spec.kind != "label"}
    if num_classes > 0:
        fields["label"] = LabelSpec(int(num_classes))
    metadata: dict[str, Any] = {"format": FORMAT, "fields": fields_to_json(fields)}
    _, tokens = first_field(fields, "tokens", "text")
    if tokens is not None:
        metadata.update(token_shape=list(tokens.shape), codebook_size=int(tokens.vocab_size),
                        num_levels=int(getattr(tokens, "num_levels", 1)))
    metadata.update(num_classes=int(num_classes), splits=splits, tokenizer=tokenizer,
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat())
    tmp = os.path.join(out_dir, METADATA_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(metadata, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, METADATA_FILE))  # last, so a half-written dataset has none
    return metadata


def metadata_fields(metadata: dict) -> dict[str, Spec]:
    """The field specs of v2 metadata, or those v1 metadata implies (tokens + label)."""
    if "fields" in metadata:
        return fields_from_json(metadata["fields"])
    fields: dict[str, Spec] = {"tokens": TokenSpec(tuple(metadata["token_shape"]), metadata["codebook_size"],
                                                   metadata.get("num_levels", 1))}
    if metadata.get("num_classes", 0) > 0:
        fields["label"] = LabelSpec(metadata["num_classes"])
    return fields


def read_token_metadata(data_dir: str) -> dict:
    path = os.path.join(data_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {data_dir!r} a directory written by `maskgen tokenize`?")
    with open(path) as f:
        metadata = json.load(f)
    if metadata.get("format") not in (FORMAT, FORMAT_V1):
        raise TokenMetadataError(f"{path}: format {metadata.get('format')!r} is not {FORMAT!r} (or {FORMAT_V1!r})")
    return metadata


def check_token_metadata(metadata: dict, *, codebook_size: int, token_shape: Sequence[int], where: str = "config") -> None:
    """Fails with a message naming both sides if a model's token settings disagree with the data."""
    if "codebook_size" not in metadata:
        raise TokenMetadataError(f"the dataset has no token field (its fields: {sorted(metadata.get('fields', {}))}); "
                                 f"{where} expects token ids")
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
    """Random access to one split of a token dataset, for grain: exactly the stored fields
    (`self.fields`, from metadata.json), e.g. {"tokens": int32 grid, "label": int32}."""

    kind = "tokens"  # read by maskgen.data.pipeline's legacy keyword path only

    def __init__(self, data_dir: str, split: str):
        from maskgen.data import records

        metadata = read_token_metadata(data_dir)
        if split not in metadata["splits"]:
            raise ValueError(f"split {split!r} not in {data_dir!r}; valid splits are {sorted(metadata['splits'])}")
        self.metadata = metadata
        self.fields = metadata_fields(metadata)
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

    def _read_one(self, index: int) -> dict:
        example = decode_record(self._source[index])
        missing = [name for name in self.fields if name not in example]
        if missing:
            raise ValueError(f"{self.data_dir!r} example {index} of split {self.split!r} lacks the fields "
                             f"{missing} that metadata.json lists; re-run `maskgen tokenize`")
        return {name: example[name] for name in self.fields}

    def __getitem__(self, index: int) -> dict:
        from maskgen.data import records

        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a source of {n} examples")
        index %= n
        try:
            return self._read_one(index)
        except records.SHARD_ERRORS as err:  # a corrupt shard: name the file and the record
            raise records.read_error(self._paths, [index], self._read_one, err,
                                     lambda i: f"example {i} of split {self.split!r}", self._remedy()) from err

    def __repr__(self) -> str:
        return f"TokenSource(data_dir={self.data_dir!r}, split={self.split!r}, num_examples={len(self)})"
