"""Example serialization and the on-disk ArrayRecord dataset layout (shards + metadata.json).

A record is a msgpack map (no pickle): {"v": 1, "shape": [H, W, C], "dtype": "uint8",
"image": raw bytes in C order, "label": int}; an audio record is {"v": 1, "kind": "audio",
"shape": [T, C], "dtype": "int16", "audio": 16-bit PCM bytes (float x 32768, rounded and clipped),
"label": int, and optional extra integer labels such as "voice"}. A prepared directory holds, per split,
shards named f"{split}.array_record-{i:05d}-of-{n:05d}" (written with group_size:1,
as grain's random access wants), and a metadata.json that is written last.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable

import msgpack
import numpy as np

FORMAT = "maskgen.array_record.v1"
METADATA_FILE = "metadata.json"
RECORD_VERSION = 1
WRITER_OPTIONS = "group_size:1"


AUDIO_EXTRA_LABELS = ("voice",)  # integer fields an audio record may carry besides "label"


def _encode_audio(example: dict) -> bytes:
    audio = np.asarray(example["audio"])
    if audio.ndim != 2 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"example audio must be float [T, C] in [-1, 1], got {audio.dtype} {list(audio.shape)}")
    pcm = np.clip(np.rint(audio.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    payload = {"v": RECORD_VERSION, "kind": "audio", "shape": list(audio.shape), "dtype": "int16",
               "audio": np.ascontiguousarray(pcm).tobytes(), "label": int(example["label"])}
    payload.update({k: int(example[k]) for k in AUDIO_EXTRA_LABELS if k in example})
    return msgpack.packb(payload, use_bin_type=True)


def _decode_audio(payload: dict) -> dict:
    if payload.get("dtype") != "int16":
        raise ValueError(f"unsupported audio record dtype {payload.get('dtype')!r}")
    pcm = np.frombuffer(payload["audio"], dtype="<i2")
    if pcm.size != int(np.prod(payload["shape"])):
        raise ValueError(f"record audio has {pcm.size} samples but shape {payload['shape']}")
    out = {"audio": pcm.reshape(payload["shape"]).astype(np.float32) / np.float32(32768.0),
           "label": np.int32(payload["label"])}
    out.update({k: np.int32(payload[k]) for k in AUDIO_EXTRA_LABELS if k in payload})
    return out


def encode_example(example: dict) -> bytes:
    """Serializes {"image": uint8 [H, W, C], "label": int} (or {"audio": float [T, C], "label": int,
    optional "voice": int}, stored as 16-bit PCM) to bytes."""
    if isinstance(example, dict) and "audio" in example and "label" in example:
        return _encode_audio(example)
    if not isinstance(example, dict) or "image" not in example or "label" not in example:
        raise ValueError(f"an example must be a dict with 'image' and 'label', got {type(example).__name__}")
    image = np.asarray(example["image"])
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"example image must be uint8 [H, W, C], got {image.dtype} {list(image.shape)}")
    label = np.asarray(example["label"])
    if label.ndim != 0 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"example label must be an integer scalar, got {label.dtype} {list(label.shape)}")
    payload = {
        "v": RECORD_VERSION,
        "shape": list(image.shape),
        "dtype": "uint8",
        "image": np.ascontiguousarray(image).tobytes(),
        "label": int(label),
    }
    return msgpack.packb(payload, use_bin_type=True)


def decode_example(record: bytes) -> dict:
    """Inverse of encode_example: returns {"image": uint8 [H, W, C] (writable), "label": np.int32}, or
    for audio records {"audio": float32 [T, C], "label": np.int32, ...}."""
    try:
        payload = msgpack.unpackb(record, raw=False)
        field = "audio" if payload.get("kind") == "audio" else "image"
        version, shape, data, label = payload["v"], payload["shape"], payload[field], payload["label"]
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"not a maskgen example record ({len(record)} bytes): {e}") from e
    if field == "audio" and version == RECORD_VERSION:
        return _decode_audio(payload)
    if version != RECORD_VERSION or payload.get("dtype") != "uint8":
        raise ValueError(f"unsupported record version {version!r} / dtype {payload.get('dtype')!r}")
    image = np.frombuffer(data, dtype=np.uint8)
    if image.size != int(np.prod(shape)):
        raise ValueError(f"record image has {image.size} bytes but shape {shape}")
    return {"image": image.reshape(shape).copy(), "label": np.int32(label)}


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}.array_record-{index:05d}-of-{num_shards:05d}"


def _shard_pattern(split: str) -> re.Pattern:
    return re.compile(re.escape(split) + r"\.array_record-\d{5}-of-\d{5}")


def remove_shards(out_dir: str, split: str) -> None:
    """Deletes every file in out_dir named like a shard of `split` (and nothing else)."""
    if not os.path.isdir(out_dir):
        return
    pattern = _shard_pattern(split)
    for name in os.listdir(out_dir):
        if pattern.fullmatch(name):
            os.remove(os.path.join(out_dir, name))


def write_shards(
    examples_iter: Iterable[dict],
    out_dir: str,
    split: str,
    num_shards: int,
    expected_count: int | None = None,
) -> list[str]:
    """Writes examples in order to `num_shards` ArrayRecord files; returns their file names.

    Shard i holds a contiguous block, so reading the shards in order gives the input
    order back. Block sizes come from `expected_count` (or len(examples_iter)); when
    neither is known the encoded records are buffered in memory first. Extra records
    beyond expected_count go to the last shard, and fewer records leave trailing
    shards short or empty (an empty shard is a valid file). Old shards of this split
    are removed first; on error the shards written so far are deleted.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"split name must be letters, digits or '_', got {split!r}")
    if expected_count is None and hasattr(examples_iter, "__len__"):
        expected_count = len(examples_iter)
    records = (encode_example(ex) for ex in examples_iter)
    if expected_count is None:
        records = list(records)
        expected_count = len(records)
    # Shard i takes records [bounds[i], bounds[i+1]); the last shard takes any overflow.
    bounds = [expected_count * i // num_shards for i in range(num_shards + 1)]

    os.makedirs(out_dir, exist_ok=True)
    remove_shards(out_dir, split)
    names = [shard_name(split, i, num_shards) for i in range(num_shards)]
    shard, writer, count = 0, None, 0
    try:
        writer = ArrayRecordWriter(os.path.join(out_dir, names[0]), WRITER_OPTIONS)
        for record in records:
            while shard < num_shards - 1 and count >= bounds[shard + 1]:
                writer.close()
                shard += 1
                writer = ArrayRecordWriter(os.path.join(out_dir, names[shard]), WRITER_OPTIONS)
            writer.write(record)
            count += 1
        writer.close()
        writer = None
        for shard in range(shard + 1, num_shards):  # too few records: still write every shard
            ArrayRecordWriter(os.path.join(out_dir, names[shard]), WRITER_OPTIONS).close()
    except BaseException:
        if writer is not None:
            writer.close()
        remove_shards(out_dir, split)
        raise
    return names


# array_record's C++ reader raises RuntimeError (on a truncated file, one with no message) that
# names neither the file nor the record. The helpers below add both; they run only once a read
# has failed, so the per-record path stays a plain read + decode.
SHARD_ERRORS = (RuntimeError, OSError, ValueError)


def _reason(err: BaseException) -> str:
    if str(err):
        return f"{type(err).__name__}: {err}"
    return f"{type(err).__name__} with no message (the reader fails this way on a truncated file)"


def _shard_failure(path: str) -> str | None:
    """Why `path` cannot be opened as an ArrayRecord file, or None if it can."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(path)
        reader.num_records()
        reader.close()
    except SHARD_ERRORS as err:
        return _reason(err)
    return None


def open_shards(paths: list[str], remedy: str):
    """array_record's ArrayRecordDataSource over `paths` (in order); a shard that cannot be opened
    raises ValueError naming it, its size and what is wrong, followed by `remedy`."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    try:
        return ArrayRecordDataSource(paths)
    except SHARD_ERRORS as err:
        for path in paths:  # the data source opens shards on threads and does not say which failed
            failure = _shard_failure(path)
            if failure:
                raise ValueError(f"corrupt ArrayRecord shard {path} ({os.path.getsize(path)} bytes): cannot open it: "
                                 f"{failure}; {remedy}") from err
        raise ValueError(f"cannot open the ArrayRecord shards {paths}: {_reason(err)}; {remedy}") from err


def _locate(paths: list[str], index: int) -> tuple[str, int] | None:
    """(shard path, position in it) of record `index` counted over `paths` in order."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        for path in paths:
            reader = ArrayRecordReader(path)
            count = reader.num_records()
            reader.close()
            if index < count:
                return path, index
            index -= count
    except SHARD_ERRORS:  # a shard changed since it was opened
        pass
    return None


def read_error(paths: list[str], indices: list[int], read_one, err: BaseException, what,
               remedy: str) -> ValueError:
    """The error to raise after reading `indices` (over all shards of `paths`) failed with `err`.

    Finds the first of `indices` that `read_one(index)` (read + decode one record) fails on and
    names its shard, its position there and `what(index)` it is (e.g. "example 5 of split 'test'").
    """
    for index in indices:
        try:
            read_one(index)
        except SHARD_ERRORS as one_err:
            path, position = _locate(paths, index) or (f"among {paths}", index)
            return ValueError(f"corrupt ArrayRecord shard {path}: cannot read its record {position} "
                              f"({what(index)}): {_reason(one_err)}; {remedy}")
    return ValueError(f"cannot read records {list(indices)[:8]} of the shards {paths}: {_reason(err)}; {remedy}")


def write_metadata(out_dir: str, metadata: dict) -> str:
    """Writes metadata.json atomically (temp file + rename); returns its path."""
    path = os.path.join(out_dir, METADATA_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_metadata(data_dir: str) -> dict:
    """Reads and checks data_dir/metadata.json of a directory written by maskgen prepare."""
    if data_dir is None:
        raise ValueError("the array_record source needs data_dir, the directory written by `maskgen prepare`")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"array_record data_dir {data_dir!r} does not exist (run `maskgen prepare` first)")
    path = os.path.join(data_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir!r} is not a finished `maskgen prepare` output "
            "(metadata.json is written last, so a failed or running prepare has none)"
        )
    with open(path) as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} has format {metadata.get('format')!r}, expected {FORMAT!r}")
    return metadata
