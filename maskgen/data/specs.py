"""Named-array specs: what each field of a data source's examples is (shape, dtype, meaning).

A source describes its examples as {field name: spec}, e.g. digits is
{"image": ImageSpec((8, 8, 1)), "label": LabelSpec(10)} and the byte-level text sources are
{"tokens": TextSpec(128, 257, "bytes")}. The input pipeline picks each field's preprocessing from
its spec (maskgen.data.pipeline.make_preprocess), and token datasets store their specs in
metadata.json (spec_to_json / spec_from_json), so nothing downstream needs to guess a modality
from a key name. Shapes are per example (no batch axis); None marks a size that varies.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np


def _shape(shape) -> tuple:
    return tuple(None if s is None else int(s) for s in shape)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """uint8 pixels [H, W, C]; H and W are None when images vary in size (e.g. ImageNet)."""

    shape: tuple
    kind: ClassVar[str] = "image"
    dtype: ClassVar[str] = "uint8"

    def __post_init__(self):
        object.__setattr__(self, "shape", _shape(self.shape))
        if len(self.shape) != 3 or self.shape[2] is None:
            raise ValueError(f"an image spec needs shape [H, W, C] with a known C, got {self.shape}")


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """int32 codebook indices: a grid [..., K] of K residual levels (K = 1: no level axis).

    `shape` is the stored array's shape, as `maskgen tokenize` records it in "token_shape":
    (h, w) for one level, (h, w, K) for K > 1 levels.
    """

    shape: tuple
    vocab_size: int
    num_levels: int = 1
    kind: ClassVar[str] = "tokens"
    dtype: ClassVar[str] = "int32"

    def __post_init__(self):
        object.__setattr__(self, "shape", _shape(self.shape))
        if self.num_levels < 1 or (self.num_levels > 1 and self.shape[-1:] != (self.num_levels,)):
            raise ValueError(f"a token spec with {self.num_levels} levels needs shape [..., {self.num_levels}], "
                             f"got {self.shape}")


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """int32 ids [L] of a text tokenizer (`tokenizer` names it, e.g. "bytes": maskgen.data.text)."""

    length: int
    vocab_size: int
    tokenizer: str
    eos_id: int | None = None
    kind: ClassVar[str] = "text"
    dtype: ClassVar[str] = "int32"

    @property
    def shape(self) -> tuple:
        return (self.length,)


@dataclasses.dataclass(frozen=True)
class LatentSpec:
    """Continuous latents, float32 [..., D], stored unscaled; the input pipeline multiplies them by
    `scale` (LDM's scale factor, arXiv 2112.10752: `maskgen tokenize` records 1 / std of the train
    split's latents, so models see about unit variance).

    `scale` None means the dataset recorded no factor (metadata.json without "scale"), which is not
    the same as 1.0: the pipeline refuses such data (`missing_scale_error`) rather than guess."""

    shape: tuple
    scale: float | None = None
    kind: ClassVar[str] = "latents"
    dtype: ClassVar[str] = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", _shape(self.shape))
        if self.scale is not None:
            scale = float(self.scale)
            if not np.isfinite(scale) or scale <= 0:
                raise ValueError(f"a latent spec's scale must be a finite number > 0, got {self.scale!r}")
            object.__setattr__(self, "scale", scale)


def missing_scale_error(name: str, where: str = "") -> ValueError:
    """The error for latents whose dataset recorded no scale factor."""
    return ValueError(
        f"latent field {name!r}{f' of {where}' if where else ''} has no scale factor in its metadata.json "
        "(LatentSpec.scale): re-run `maskgen tokenize` with the tokenizer run to rewrite the dataset, which "
        "records scale = 1 / std of the train split's latents")


@dataclasses.dataclass(frozen=True)
class AudioSpec:
    """Waveform samples, float32 [T, C] in [-1, 1] at `sample_rate` Hz (T None: clips vary)."""

    shape: tuple
    sample_rate: int
    kind: ClassVar[str] = "audio"
    dtype: ClassVar[str] = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", _shape(self.shape))
        if len(self.shape) != 2:
            raise ValueError(f"an audio spec needs shape [T, C], got {self.shape}")


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """A class index, int32 scalar in [0, num_classes)."""

    num_classes: int
    kind: ClassVar[str] = "label"
    dtype: ClassVar[str] = "int32"

    @property
    def shape(self) -> tuple:
        return ()


SPEC_TYPES = {cls.kind: cls for cls in (ImageSpec, TokenSpec, TextSpec, LatentSpec, AudioSpec, LabelSpec)}
Spec = ImageSpec | TokenSpec | TextSpec | LatentSpec | AudioSpec | LabelSpec


def spec_to_json(spec: Spec) -> dict[str, Any]:
    """{"kind": ..., <the dataclass fields>}; shapes become lists (None stays null)."""
    out: dict[str, Any] = {"kind": spec.kind}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def spec_from_json(data: dict[str, Any]) -> Spec:
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in SPEC_TYPES:
        raise ValueError(f"unknown field kind {kind!r} in {data}; known kinds are {sorted(SPEC_TYPES)}")
    cls = SPEC_TYPES[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    if set(data) - names:
        raise ValueError(f"a {kind} spec has no keys {sorted(set(data) - names)}; it has {sorted(names)}")
    return cls(**data)


def fields_to_json(fields: dict[str, Spec]) -> dict[str, dict]:
    return {name: spec_to_json(spec) for name, spec in fields.items()}


def fields_from_json(data: dict[str, dict]) -> dict[str, Spec]:
    return {name: spec_from_json(spec) for name, spec in data.items()}


def first_field(fields: dict[str, Spec], *kinds: str) -> tuple[str, Spec] | tuple[None, None]:
    """The first (name, spec) whose kind is one of `kinds`."""
    for name, spec in fields.items():
        if spec.kind in kinds:
            return name, spec
    return None, None


def infer_fields(example: dict) -> dict[str, Spec]:
    """Specs guessed from one example, for sources that do not declare theirs (plain lists of
    dicts in tests, old callers). Sizes that cannot be known from one example (vocabularies,
    number of classes) are 0."""
    fields: dict[str, Spec] = {}
    for name, value in example.items():
        value = np.asarray(value)
        if name == "label":
            fields[name] = LabelSpec(0)
        elif value.dtype == np.uint8 and value.ndim == 3:
            fields[name] = ImageSpec(value.shape)
        elif np.issubdtype(value.dtype, np.integer):
            fields[name] = TokenSpec(value.shape, 0)
        elif np.issubdtype(value.dtype, np.floating):
            # An in-memory example has no stored factor: its floats are taken as they are.
            fields[name] = LatentSpec(value.shape, scale=1.0)
        else:
            raise ValueError(f"cannot tell what field {name!r} ({value.dtype} {list(value.shape)}) is; "
                             "give the source a `fields` attribute of specs (maskgen.data.specs)")
    return fields


def legacy_info(fields: dict[str, Spec], splits: dict[str, int], tokenizer: dict | None = None) -> dict:
    """The `source_info` dict: "fields" and "splits", plus the keys older callers read
    ("image_shape", "num_classes"; for token/text data "token_shape", "codebook_size",
    "num_levels", "tokenizer")."""
    _, image = first_field(fields, "image")
    _, label = first_field(fields, "label")
    info: dict[str, Any] = {
        "image_shape": image.shape if image else None,
        "num_classes": label.num_classes if label else 0,
        "splits": dict(splits),
        "fields": dict(fields),
    }
    _, tokens = first_field(fields, "tokens", "text")
    if tokens is not None:
        info.update(token_shape=tokens.shape, codebook_size=tokens.vocab_size,
                    num_levels=getattr(tokens, "num_levels", 1),
                    tokenizer=dict(tokenizer) if tokenizer is not None else
                    {"name": tokens.tokenizer} if tokens.kind == "text" else {})
    elif tokenizer is not None and first_field(fields, "latents")[1] is not None:
        info["tokenizer"] = dict(tokenizer)  # the run that decodes the latents (maskgen.runs.LatentDecoder)
    return info
