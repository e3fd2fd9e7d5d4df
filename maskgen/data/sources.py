"""Random-access example sources (digits, prepared ArrayRecord dirs, on-disk TFDS) for grain.

Every source supports len() and integer indexing, returns {"image": uint8 [H, W, C],
"label": np.int32} and pickles cheaply (file paths only), so it can be passed to
grain.MapDataset.source(...) and to grain worker processes.
"""

from __future__ import annotations

import operator
import os
import re

import numpy as np

from maskgen.data import digits, records

VALID_NAMES = ("digits", "array_record", "tfds:<dataset>[/<config>][:<version>]", "tokens")


def _check_index(index, length: int) -> int:
    i = operator.index(index)
    if not -length <= i < length:
        raise IndexError(f"index {i} out of range for a source of {length} examples")
    return i % length


class ArrayRecordSource:
    """One split of a directory written by maskgen.data.prepare."""

    def __init__(self, data_dir: str, split: str):
        metadata = records.read_metadata(data_dir)
        splits = metadata.get("splits", {})
        if split not in splits:
            raise ValueError(f"split {split!r} not in {data_dir!r}; valid splits are {sorted(splits)}")
        paths = [os.path.join(data_dir, name) for name in splits[split]["shards"]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"shards listed in {data_dir}/metadata.json are missing: {missing}")
        self.data_dir = data_dir
        self.split = split
        self._paths = paths
        self._source = records.open_shards(paths, self._remedy())
        expected = splits[split]["num_examples"]
        if len(self._source) != expected:
            raise ValueError(
                f"{data_dir!r} split {split!r}: shards hold {len(self._source)} records "
                f"but metadata.json says {expected}; re-run `maskgen prepare`"
            )

    def __len__(self) -> int:
        return len(self._source)

    def _remedy(self) -> str:
        return f"re-run the `maskgen prepare` that wrote {self.data_dir} to rewrite it"

    def _read_one(self, index: int) -> dict:
        return records.decode_example(self._source[index])

    def _read_error(self, indices: list[int], err: BaseException) -> ValueError:
        return records.read_error(self._paths, indices, self._read_one, err,
                                  lambda i: f"example {i} of split {self.split!r}", self._remedy())

    def __getitem__(self, index) -> dict:
        index = _check_index(index, len(self))
        try:
            return records.decode_example(self._source[index])
        except records.SHARD_ERRORS as err:  # a corrupt shard: name the file and the record
            raise self._read_error([index], err) from err

    def __getitems__(self, indices) -> list[dict]:
        n = len(self)
        keys = [_check_index(i, n) for i in indices]
        try:
            return [records.decode_example(r) for r in self._source.__getitems__(keys)]
        except records.SHARD_ERRORS as err:
            raise self._read_error(keys, err) from err

    def __repr__(self) -> str:
        return f"ArrayRecordSource(data_dir={self.data_dir!r}, split={self.split!r}, num_examples={len(self)})"


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "reading tfds:<name> datasets needs tensorflow-datasets: pip install maskgen[tfds] "
            f"(TensorFlow itself is not needed) [{e}]"
        ) from e
    return tfds


_VERSION_RE = re.compile(r"\d+\.\d+\.\d+")


def _versions_in(path: str) -> list[str]:
    if not os.path.isdir(path):
        return []
    found = [
        d for d in os.listdir(path)
        if _VERSION_RE.fullmatch(d) and os.path.isfile(os.path.join(path, d, "dataset_info.json"))
    ]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def resolve_tfds_dir(ds_name: str, data_dir: str | None) -> str:
    """Finds the prepared dataset directory (the one with dataset_info.json) for ds_name.

    ds_name is "name", "name/config", "name:1.0.0" or "name/config:1.0.0". data_dir may be
    the TFDS data root (default: $TFDS_DATA_DIR or ~/tensorflow_datasets) or the versioned
    dataset directory itself. Without a version the newest prepared one is used.
    """
    name, _, version = ds_name.partition(":")
    if not name:
        raise ValueError("empty tfds dataset name; use tfds:<dataset>[/<config>][:<version>]")
    if data_dir is None:
        from tensorflow_datasets.core import constants

        data_dir = constants.get_default_data_dir()
    data_dir = os.path.expanduser(os.fspath(data_dir))
    if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        return data_dir
    base = os.path.join(data_dir, *name.split("/"))
    versions = _versions_in(base)
    if version:
        if version in versions:
            return os.path.join(base, version)
        looked = os.path.join(base, version)
    elif versions:
        return os.path.join(base, versions[-1])
    else:
        looked = os.path.join(base, "<version>")
        entries = sorted(os.listdir(base)) if os.path.isdir(base) else []
        configs = [d for d in entries if _versions_in(os.path.join(base, d))]
        if configs:
            raise FileNotFoundError(
                f"tfds dataset {name!r} in {base} has configs {configs}; name one, e.g. tfds:{name}/{configs[0]}"
            )
    raise FileNotFoundError(
        f"tfds dataset {ds_name!r} is not prepared on disk: looked for {looked}/dataset_info.json "
        f"(prepared versions there: {versions or 'none'}). maskgen never downloads data; prepare the "
        "dataset with tensorflow-datasets (file_format='array_record') and pass its data_dir."
    )


class TfdsSource:
    """One split of a TFDS dataset already on disk, read without TensorFlow."""

    def __init__(self, ds_name: str, split: str, data_dir: str | None = None):
        tfds = _import_tfds()
        self.ds_name = ds_name
        self.split = split
        self.builder_dir = resolve_tfds_dir(ds_name, data_dir)
        builder = tfds.builder_from_directory(self.builder_dir)
        _check_tfds_features(builder, self.builder_dir)
        valid = sorted(builder.info.splits.keys())
        for part in split.split("+"):
            if part.split("[")[0].strip() not in valid:
                raise ValueError(f"split {split!r} not in tfds dataset at {self.builder_dir}; valid splits are {valid}")
        try:
            self._source = builder.as_data_source(split)
        except NotImplementedError as e:
            file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
            raise ValueError(
                f"tfds dataset at {self.builder_dir} is stored as {file_format}; random access "
                "without TensorFlow needs file_format='array_record' (re-prepare or convert it where "
                f"TensorFlow is installed) [{e}]"
            ) from e

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index) -> dict:
        return _tfds_item_to_example(self._source[_check_index(index, len(self))])

    def __repr__(self) -> str:
        return f"TfdsSource(ds_name={self.ds_name!r}, split={self.split!r}, builder_dir={self.builder_dir!r})"


def _check_tfds_features(builder, builder_dir: str) -> None:
    features = builder.info.features
    names = list(features.keys()) if hasattr(features, "keys") else []
    if "image" not in names or "label" not in names:
        raise ValueError(f"tfds dataset at {builder_dir} needs 'image' and 'label' features, has {names}")


def _tfds_item_to_example(item: dict) -> dict:
    image = np.asarray(item["image"])
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"tfds image must be uint8 [H, W] or [H, W, C], got {image.dtype} {list(image.shape)}")
    return {"image": image, "label": np.int32(item["label"])}


def make_source(name: str, split: str, data_dir: str | None = None):
    """Random-access source for `split` of dataset `name` (see VALID_NAMES)."""
    if name == "digits":
        return digits.DigitsSource(split)
    if name == "array_record":
        return ArrayRecordSource(data_dir, split)
    if isinstance(name, str) and name.startswith("tfds:"):
        return TfdsSource(name[len("tfds:"):], split, data_dir)
    if name == "tokens":
        from maskgen.data.tokens import TokenSource

        if not data_dir:
            raise ValueError("data source 'tokens' needs data_dir: the --out directory of `maskgen tokenize`")
        return TokenSource(data_dir, split)
    raise ValueError(f"unknown data source {name!r}; valid names are {list(VALID_NAMES)}")


def source_info(name: str, data_dir: str | None = None) -> dict:
    """{"image_shape": (H, W, C), "num_classes": K, "splits": {split: num_examples}}, from metadata only.

    For tfds datasets with variable-size images, H and W are None. Token datasets (`maskgen
    tokenize`) have no image shape; they add "token_shape", "codebook_size", "num_levels" and
    "tokenizer" (the run that made them) from their metadata.json.
    """
    if name == "tokens":
        from maskgen.data.tokens import read_token_metadata

        if not data_dir:
            raise ValueError("data source 'tokens' needs data_dir: the --out directory of `maskgen tokenize`")
        metadata = read_token_metadata(data_dir)
        return {
            "image_shape": None, "num_classes": metadata["num_classes"],
            "splits": {s: v["num_examples"] for s, v in metadata["splits"].items()},
            "token_shape": tuple(metadata["token_shape"]), "codebook_size": metadata["codebook_size"],
            "num_levels": metadata["num_levels"], "tokenizer": metadata.get("tokenizer", {}),
        }
    if name == "digits":
        return {
            "image_shape": digits.IMAGE_SHAPE,
            "num_classes": digits.NUM_CLASSES,
            "splits": {s: len(digits.split_indices(s)) for s in digits.SPLITS},
        }
    if name == "array_record":
        metadata = records.read_metadata(data_dir)
        return {
            "image_shape": tuple(metadata["image_shape"]),
            "num_classes": metadata["num_classes"],
            "splits": {s: v["num_examples"] for s, v in metadata["splits"].items()},
        }
    if isinstance(name, str) and name.startswith("tfds:"):
        tfds = _import_tfds()
        builder_dir = resolve_tfds_dir(name[len("tfds:"):], data_dir)
        builder = tfds.builder_from_directory(builder_dir)
        _check_tfds_features(builder, builder_dir)
        features = builder.info.features
        shape = tuple(features["image"].shape)
        if len(shape) == 2:
            shape = shape + (1,)
        num_classes = getattr(features["label"], "num_classes", None)
        if num_classes is None:
            raise ValueError(f"tfds dataset at {builder_dir}: 'label' must be a ClassLabel feature")
        return {
            "image_shape": shape,
            "num_classes": num_classes,
            "splits": {s: v.num_examples for s, v in builder.info.splits.items()},
        }
    raise ValueError(f"unknown data source {name!r}; valid names are {list(VALID_NAMES)}")
