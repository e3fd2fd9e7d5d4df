"""The data source registry: every dataset maskgen reads, by name, as random-access sources for grain.

A source family is registered like a recipe, `@register_source("digits")`, or for a family of
names by prefix, `@register_source("tfds:")` (names "tfds:<dataset>"). A registered class gets
the full name, declares its options (with defaults) and provides

* `info(data_dir, options)`: metadata only (cheap): {"fields": {name: spec}, "splits": {split: n},
  plus the legacy keys, see maskgen.data.specs.legacy_info};
* `open(split, data_dir, options)`: a source with len() and integer indexing whose items are
  dicts of numpy arrays as "fields" describes (labels are optional fields), that pickles cheaply
  (names and paths only), so grain.MapDataset.source(...) and grain's worker processes can use it.

`options` are the source settings of a config's data group (pipeline.data_options), e.g.
{"seq_len": 128}; names a source does not declare are an error.
"""

from __future__ import annotations

import operator
import os
import re
from typing import Any

import numpy as np

from maskgen.data import digits, moved_digits, records, text
from maskgen.data.specs import ImageSpec, LabelSpec, legacy_info

def _check_index(index, length: int) -> int:
    i = operator.index(index)
    if not -length <= i < length:
        raise IndexError(f"index {i} out of range for a source of {length} examples")
    return i % length


def _array_record_fields(metadata: dict) -> dict:
    if "fields" in metadata:  # audio datasets record their field specs; image ones only image_shape
        from maskgen.data.specs import fields_from_json

        return fields_from_json(metadata["fields"])
    return {"image": ImageSpec(tuple(metadata["image_shape"])), "label": LabelSpec(metadata["num_classes"])}


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
        self.fields = _array_record_fields(metadata)
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
    _audio_features_without_tensorflow()
    return tfds


def _audio_features_without_tensorflow() -> None:
    """Lets tfds make its `Audio` feature (speech_commands, ...) when TensorFlow is not installed.

    tfds 4.9's audio decoder converts its numpy dtype to a TensorFlow one on construction, which
    imports TensorFlow, although the eagerly decoded audio that datasets store (int16 samples,
    `lazy_decode=False`) is read as plain numpy. Without TensorFlow that conversion is all that
    fails, so it is skipped; with TensorFlow installed nothing changes.
    """
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        return
    try:
        from tensorflow_datasets.core.features import audio_feature
    except ImportError:
        return
    decoder = getattr(audio_feature, "_AudioDecoder", None)
    if decoder is None or getattr(decoder.__init__, "_maskgen_numpy_only", False):
        return

    def numpy_only_init(self, file_format, np_dtype, shape):
        self._file_format, self._np_dtype, self._dtype, self._shape = file_format, np_dtype, np_dtype, shape
        self._channels = shape[1] if len(shape) > 1 else 1

    numpy_only_init._maskgen_numpy_only = True
    decoder.__init__ = numpy_only_init


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
    """One split of a TFDS dataset already on disk, read without TensorFlow.

    Image datasets (an "image" feature) yield {"image": uint8 [H, W, C]}; text datasets (a "text"
    feature, e.g. lm1b) yield {"tokens": int32 [seq_len]}: each example's UTF-8 bytes, then EOS,
    cut or padded with EOS to seq_len (maskgen.data.text; MDLM's padded lm1b setting). Audio
    datasets (an "audio" feature, e.g. speech_commands) yield {"audio": float32 [T, 1]}: each clip
    made to fit `audio` (maskgen.data.audio_files.conform: resampled if needed and allowed, mono,
    centred in clip_seconds). A ClassLabel "label" feature adds {"label": int32}.
    """

    def __init__(self, ds_name: str, split: str, data_dir: str | None = None, seq_len: int = 128,
                 audio: dict | None = None):
        tfds = _import_tfds()
        self.ds_name = ds_name
        self.split = split
        self.seq_len = seq_len
        self.builder_dir = resolve_tfds_dir(ds_name, data_dir)
        builder = tfds.builder_from_directory(self.builder_dir)
        self.fields = _tfds_fields(builder, self.builder_dir, seq_len, audio)
        self.audio_options, self.audio_rate = _tfds_audio_options(builder, self.builder_dir, audio)
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
        item = self._source[_check_index(index, len(self))]
        out = {}
        if "audio" in self.fields:
            from maskgen.data.audio_files import conform

            out["audio"] = conform(np.asarray(item["audio"]), self.audio_rate, self.audio_options,
                                   f"tfds:{self.ds_name} {self.split}[{index}] ({self.builder_dir})")
        elif "image" in self.fields:
            image = np.asarray(item["image"])
            if image.ndim == 2:
                image = image[..., None]
            if image.dtype != np.uint8 or image.ndim != 3:
                raise ValueError(f"tfds image must be uint8 [H, W] or [H, W, C], got {image.dtype} {list(image.shape)}")
            out["image"] = image
        else:
            out["tokens"] = text.fixed_length(_as_bytes(item["text"]), self.seq_len)
        if "label" in self.fields:
            out["label"] = np.int32(item["label"])
        return out

    def __repr__(self) -> str:
        return f"TfdsSource(ds_name={self.ds_name!r}, split={self.split!r}, builder_dir={self.builder_dir!r})"


def _as_bytes(value) -> bytes:
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _tfds_audio_options(builder, builder_dir: str, audio: dict | None):
    """(AudioOptions, the dataset's sample rate) for a dataset with an "audio" feature, else (None, None).
    audio["sample_rate"] 0 means the dataset's own rate."""
    features = builder.info.features
    if "audio" not in (list(features.keys()) if hasattr(features, "keys") else []):
        return None, None
    from maskgen.data.audio_files import AudioOptions

    audio = dict(audio or {})
    native = getattr(features["audio"], "sample_rate", None)
    if not native and not audio.get("sample_rate"):
        raise ValueError(f"tfds dataset at {builder_dir}: its 'audio' feature records no sample rate; "
                         "set the source option sample_rate to the rate its clips were recorded at")
    native = int(native or audio["sample_rate"])
    wanted = int(audio.pop("sample_rate", 0) or native)
    # tfds clips vary in length (speech_commands: up to 1 s): they are padded, so no min_seconds.
    return AudioOptions(sample_rate=wanted, min_seconds=0.0, **audio), native


def _tfds_fields(builder, builder_dir: str, seq_len: int, audio: dict | None = None) -> dict:
    """The specs of what TfdsSource yields for this dataset."""
    features = builder.info.features
    names = list(features.keys()) if hasattr(features, "keys") else []
    fields: dict[str, Any] = {}
    if "audio" in names:
        from maskgen.data.audio_files import audio_fields

        fields.update(audio_fields(_tfds_audio_options(builder, builder_dir, audio)[0], 0))
    elif "image" in names:
        shape = tuple(features["image"].shape)
        fields["image"] = ImageSpec(shape + (1,) if len(shape) == 2 else shape)
    elif "text" in names:
        fields["tokens"] = text.text_spec(text.check_seq_len(seq_len))
    else:
        raise ValueError(f"tfds dataset at {builder_dir} needs an 'image', 'audio' or 'text' feature, has {names}")
    if "label" in names:
        num_classes = getattr(features["label"], "num_classes", None)
        if num_classes is None:
            raise ValueError(f"tfds dataset at {builder_dir}: 'label' must be a ClassLabel feature")
        fields["label"] = LabelSpec(num_classes)
    return fields


# ---------------------------------------------------------------- the registry


class DataSource:
    """A registered source family. `name` is the name it was asked for (for prefix families,
    the whole "tfds:<dataset>"); `options` maps each option the family takes to its default."""

    options: dict[str, Any] = {}
    usage = ""  # how the name is written in listings; the registered name unless set

    def __init__(self, name: str):
        self.name = name

    def info(self, data_dir: str | None, options: dict) -> dict:
        raise NotImplementedError

    def open(self, split: str, data_dir: str | None, options: dict):
        raise NotImplementedError


_REGISTRY: dict[str, type[DataSource]] = {}  # registration order is listing order


def register_source(name: str):
    """Class decorator: registers a DataSource subclass under `name`; a name ending in ":" is a
    prefix (the class then serves every "<prefix><rest>" name)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a source name must be a non-empty string, got {name!r}")

    def register(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"data source {name!r} is already registered to {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return register


def source_names() -> list[str]:
    """Every registered name as written in a config (prefix families with their pattern)."""
    return [cls.usage or name for name, cls in _REGISTRY.items()]


def get_source(name: str) -> DataSource:
    """The registered family serving `name`, bound to it."""
    if isinstance(name, str):
        if name in _REGISTRY and not name.endswith(":"):
            return _REGISTRY[name](name)
        for key, cls in _REGISTRY.items():
            if key.endswith(":") and name.startswith(key):
                return cls(name)
    raise ValueError(f"unknown data source {name!r}; valid names are {source_names()}")


def resolve_options(source: DataSource, options: dict | None) -> dict:
    """The family's defaults updated by `options`; names it does not take are an error."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(source.options))
    if unknown:
        valid = ", ".join(sorted(source.options)) or "none"
        raise ValueError(f"data source {source.name!r} takes no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {valid}")
    return {**source.options, **options}


def make_source(name: str, split: str, data_dir: str | None = None, options: dict | None = None):
    """Random-access source for `split` of dataset `name` (see source_names())."""
    source = get_source(name)
    return source.open(split, data_dir, resolve_options(source, options))


def source_info(name: str, data_dir: str | None = None, options: dict | None = None) -> dict:
    """The dataset's fields and split sizes from metadata only, without opening a split:
    {"fields": {name: spec}, "splits": {split: num_examples}, "image_shape": (H, W, C) or None,
    "num_classes": K (0: no label), and for token/text data "token_shape", "codebook_size",
    "num_levels", "tokenizer"} (maskgen.data.specs.legacy_info). For tfds datasets with
    variable-size images, H and W are None.
    """
    source = get_source(name)
    return source.info(data_dir, resolve_options(source, options))


@register_source("digits")
class _Digits(DataSource):
    def info(self, data_dir, options):
        return legacy_info(digits.fields(), {s: len(digits.split_indices(s)) for s in digits.SPLITS})

    def open(self, split, data_dir, options):
        return digits.DigitsSource(split)


@register_source("array_record")
class _ArrayRecord(DataSource):
    # An audio dataset written by `maskgen prepare` keeps the options it was made with, so a config
    # written for the `speech` source runs on its shards unchanged; a value given here must match.
    options = {"sample_rate": None, "clip_seconds": None, "words": None}

    def info(self, data_dir, options):
        metadata = records.read_metadata(data_dir)
        made_with = {"sample_rate": metadata.get("sample_rate"), "clip_seconds": metadata.get("clip_seconds"),
                     "words": (metadata.get("speech") or {}).get("words")}
        for key, wanted in (options or {}).items():
            if wanted is not None and made_with.get(key) != wanted:
                raise ValueError(f"data option {key}={wanted!r} does not match the array_record dataset {data_dir}, "
                                 f"made with {key}={made_with.get(key)!r}: drop the option, set it to the dataset's "
                                 f"value, or prepare the data again with `maskgen prepare` and {key}={wanted!r}")
        info = legacy_info(_array_record_fields(metadata),
                           {s: v["num_examples"] for s, v in metadata["splits"].items()})
        for key in ("class_names", "sample_rate", "clip_seconds", "voice_names"):  # audio datasets
            if key in metadata and "audio" in info["fields"]:
                info[key] = metadata[key]
        return info

    def open(self, split, data_dir, options):
        return ArrayRecordSource(data_dir, split)


_TFDS_AUDIO_OPTIONS = ("sample_rate", "clip_seconds", "resample", "mix_to_mono")


@register_source("tfds:")
class _Tfds(DataSource):
    usage = "tfds:<dataset>[/<config>][:<version>]"
    # seq_len: text datasets only; the others: audio datasets only (sample_rate 0: the dataset's own).
    options = {"seq_len": 128, "sample_rate": 0, "clip_seconds": 1.0, "resample": True, "mix_to_mono": False}

    def info(self, data_dir, options):
        tfds = _import_tfds()
        builder_dir = resolve_tfds_dir(self.name[len("tfds:"):], data_dir)
        builder = tfds.builder_from_directory(builder_dir)
        audio = {k: options[k] for k in _TFDS_AUDIO_OPTIONS}
        fields = _tfds_fields(builder, builder_dir, options["seq_len"], audio)
        info = legacy_info(fields, {s: v.num_examples for s, v in builder.info.splits.items()})
        if "audio" in fields:
            info["sample_rate"] = fields["audio"].sample_rate
            names = getattr(builder.info.features["label"], "names", None) if "label" in fields else None
            if names:
                info["class_names"] = list(names)
        return info

    def open(self, split, data_dir, options):
        return TfdsSource(self.name[len("tfds:"):], split, data_dir, seq_len=options["seq_len"],
                          audio={k: options[k] for k in _TFDS_AUDIO_OPTIONS})


def _tokens_dir(data_dir):
    if not data_dir:
        raise ValueError("data source 'tokens' needs data_dir: the --out directory of `maskgen tokenize`")
    return data_dir


@register_source("tokens")
class _Tokens(DataSource):
    def info(self, data_dir, options):
        from maskgen.data.tokens import metadata_fields, read_token_metadata

        metadata = read_token_metadata(_tokens_dir(data_dir))
        return legacy_info(metadata_fields(metadata), {s: v["num_examples"] for s, v in metadata["splits"].items()},
                           tokenizer=metadata.get("tokenizer", {}))

    def open(self, split, data_dir, options):
        from maskgen.data.tokens import TokenSource

        return TokenSource(_tokens_dir(data_dir), split)


class _WindowedText(DataSource):
    """Byte-level text cut into windows of seq_len ids (maskgen.data.text); splits train/validation."""

    options = {"seq_len": 128}

    def _open(self, split, data_dir, seq_len):
        raise NotImplementedError

    def info(self, data_dir, options):
        seq_len = text.check_seq_len(options["seq_len"])
        return legacy_info({"tokens": text.text_spec(seq_len)},
                           {s: len(self._open(s, data_dir, seq_len)) for s in text.SPLITS})

    def open(self, split, data_dir, options):
        return self._open(split, data_dir, options["seq_len"])


@register_source("pydoc_text")
class _PydocText(_WindowedText):
    def _open(self, split, data_dir, seq_len):
        return text.PydocTextSource(split, seq_len)


@register_source("text_files")
class _TextFiles(_WindowedText):
    def _open(self, split, data_dir, seq_len):
        return text.TextFilesSource(data_dir, split, seq_len)


@register_source("speech")
class _Speech(DataSource):
    """Spoken words synthesised locally with eSpeak NG (maskgen.data.speech); data_dir, if set,
    is the cache root instead of $MASKGEN_CACHE or ~/.cache/maskgen."""

    options = {"words": "digits", "sample_rate": 16000, "clip_seconds": 1.0, "renditions": 8, "concat": 1, "trim": False}

    def info(self, data_dir, options):
        from maskgen.data import speech

        return speech.info(speech.SpeechOptions(**options))

    def open(self, split, data_dir, options):
        from maskgen.data import speech

        return speech.SpeechSource(split, speech.SpeechOptions(**options), data_dir)


@register_source("audio_folder")
class _AudioFolder(DataSource):
    """A folder of labelled WAV/FLAC clips, read directly (maskgen.data.audio_files); data_dir is the folder."""

    options = {"sample_rate": 16000, "clip_seconds": 1.0, "resample": True, "mix_to_mono": False,
               "min_seconds": 0.1, "test_fraction": 0.1}

    @staticmethod
    def _split(options):
        from maskgen.data import audio_files

        options = dict(options)
        test_fraction = options.pop("test_fraction")
        return audio_files.AudioOptions(**options), test_fraction

    def info(self, data_dir, options):
        from maskgen.data import audio_files

        return audio_files.folder_info(data_dir, *self._split(options))

    def open(self, split, data_dir, options):
        from maskgen.data import audio_files

        audio_options, test_fraction = self._split(options)
        return audio_files.AudioFolderSource(data_dir, split, audio_options, test_fraction)


@register_source("moved_digits")
class _MovedDigits(DataSource):
    """scikit-learn's digits moved and rescaled on a 32x32 canvas, black or a photo crop
    (maskgen.data.moved_digits); `train_renditions`/`test_renditions` images per digit of each split."""

    options = {"train_renditions": moved_digits.DEFAULT_RENDITIONS["train"],
               "test_renditions": moved_digits.DEFAULT_RENDITIONS["test"],
               "background": "none", "digit_sides": moved_digits.DIGIT_SIDES}

    @staticmethod
    def _renditions(options):
        return {split: moved_digits.check_renditions(options[f"{split}_renditions"]) for split in moved_digits.SPLITS}

    def info(self, data_dir, options):
        moved_digits.check_style(options["background"], options["digit_sides"])
        return legacy_info(moved_digits.fields(), moved_digits.split_sizes(self._renditions(options)))

    def open(self, split, data_dir, options):
        moved_digits._check_split(split)
        background, sides = moved_digits.check_style(options["background"], options["digit_sides"])
        return moved_digits.MovedDigitsSource(split, self._renditions(options)[split], background, sides)


VALID_NAMES = tuple(source_names())  # the built-in names; source_names() also lists later registrations
