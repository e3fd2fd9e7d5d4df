"""grain input pipelines: a shuffled, repeating training stream and deterministic eval batches.

The training stream is defined globally (one seeded shuffle of the whole dataset per epoch, cut
into global batches), and each process reads only its own rows of every global batch. So the data
order is the same for any number of processes, and a restored iterator state resumes it exactly.
"""

from __future__ import annotations

from typing import Iterator

import grain
import numpy as np
from PIL import Image

from maskgen.data.specs import ImageSpec, LabelSpec, TokenSpec, infer_fields, missing_scale_error


def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 127.5 - 1.0


def _resize(image: np.ndarray, size: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Crops `box` (left, top, right, bottom) if given and resizes to size x size (bilinear, antialiased)."""
    if box is None and image.shape[0] == size and image.shape[1] == size:
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    if box is not None:
        pil = pil.crop(box)  # Crop first: resize(box=...) lets the filter read pixels outside the box.
    pil = pil.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(pil).reshape(size, size, channels)


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image [H, W, C], got {image.dtype} {image.shape}")
    return image


def _centre_box(h: int, w: int) -> tuple[int, int, int, int] | None:
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return None if h == w else (left, top, left + side, top + side)


def centre_image(image, image_size: int) -> np.ndarray:
    """uint8 [H, W, C] -> its centre square resized to image_size, float32 [-1, 1]."""
    image = _check_image(image)
    return _to_float(_resize(image, image_size, _centre_box(*image.shape[:2])))


def random_crop_flip(image, image_size: int, rng: np.random.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                     flip: bool = True) -> np.ndarray:
    """MAE's augmentation: random resized crop (area in `scale`, aspect in `ratio`) and horizontal
    flip; float32 [-1, 1]. Draws from `rng` in a fixed order, so a seeded stream repeats exactly."""
    image = _check_image(image)
    h, w = image.shape[:2]
    box = None
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:  # Fall back to the centre square.
        side = min(h, w)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    image = _resize(image, image_size, box)
    if flip and rng.uniform() < 0.5:
        image = image[:, ::-1]
    return _to_float(np.ascontiguousarray(image))


class ToModelInput:
    """Example -> model input: centre square crop resized to `image_size`, float32 in [-1, 1].

    The image-and-label special case of Preprocess, kept for the callers that use it directly.
    """

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, example: dict) -> dict:
        return {"image": centre_image(example["image"], self.image_size),
                "label": np.asarray(example["label"], np.int32)}


class RandomResizedCropFlip(grain.transforms.RandomMap):
    """MAE's augmentation: random resized crop (area 0.2-1, aspect 3/4-4/3) and horizontal flip.

    grain derives `rng` from the pipeline seed and the element's position in the stream, so the
    augmentation is the same after a restore.
    """

    def __init__(self, image_size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True):
        self.image_size, self.scale, self.ratio, self.flip = image_size, scale, ratio, flip

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        image = random_crop_flip(example["image"], self.image_size, rng, self.scale, self.ratio, self.flip)
        return {"image": image, "label": np.asarray(example["label"], np.int32)}


class TokensToModelInput:
    """Token example -> model input: the int32 token grid and label, unchanged (no augmentation)."""

    def __call__(self, example: dict) -> dict:
        return {"tokens": np.asarray(example["tokens"], np.int32), "label": np.asarray(example["label"], np.int32)}


AUGMENTATIONS = ("none", "crop_flip")
# Keys of a config's data group that the pipeline reads; every other key is a source option.
PIPELINE_KEYS = ("name", "data_dir", "image_size", "augment", "train_split", "read_threads", "max_upscale")
_ARRAY_DTYPES = {"tokens": np.int32, "text": np.int32, "latents": np.float32, "audio": np.float32,
                 "label": np.int32}


class Preprocess:
    """Example -> model input, field by field as its spec says (maskgen.data.specs).

    image: centre square crop resized to image_size, float32 [-1, 1] (`random_map`: with augment
    "crop_flip", MAE's random resized crop + flip instead); tokens/text: int32, unchanged; latents:
    float32 times the spec's `scale` (so models see unit-variance latents; a spec without a scale
    is refused here, naming the fix); audio: float32, unchanged; label: int32. Only the spec's
    fields are kept, so a source may carry extras. Picklable (specs and ints only), for grain
    worker processes.
    """

    def __init__(self, fields: dict, image_size: int = 0, augment: str = "none"):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}; valid: {AUGMENTATIONS}")
        has_image = any(spec.kind == "image" for spec in fields.values())
        if augment != "none" and not has_image:
            raise ValueError(f"augmentation {augment!r} applies to images; data without an image field "
                             f"(fields {sorted(fields)}) takes augment='none'")
        if has_image and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
            raise ValueError(f"image_size={image_size!r}: images need an int >= 1 to be resized to")
        if not has_image and image_size:
            raise ValueError(f"image_size={image_size!r}: must be 0 for data without an image field "
                             f"(fields {sorted(fields)})")
        unknown = [f"{n} ({spec.kind})" for n, spec in fields.items() if spec.kind not in _ARRAY_DTYPES
                   and spec.kind != "image"]
        if unknown:
            raise ValueError(f"no preprocessing for fields {unknown}")
        for name, spec in fields.items():
            if spec.kind == "latents" and spec.scale is None:
                raise missing_scale_error(name)
        self.fields, self.image_size, self.augment = dict(fields), int(image_size), augment

    @property
    def is_random(self) -> bool:
        """True when training should use `random_map` (an augmentation), not `__call__`."""
        return self.augment != "none"

    def _apply(self, example: dict, image_fn) -> dict:
        out = {}
        for name, spec in self.fields.items():
            if name not in example:
                if spec.kind == "label":
                    raise KeyError(f"example has no {name!r} (fields {sorted(example)}); the spec says it is labelled")
                raise KeyError(f"example has no field {name!r} ({spec.kind}); it has {sorted(example)}")
            value = example[name]
            if spec.kind == "image":
                out[name] = image_fn(value)
            elif spec.kind == "latents":
                out[name] = np.asarray(value, np.float32) * np.float32(spec.scale)
            else:
                out[name] = np.asarray(value, _ARRAY_DTYPES[spec.kind])
        return out

    def __call__(self, example: dict) -> dict:
        """The deterministic mapping (eval, and training without augmentation)."""
        return self._apply(example, lambda image: centre_image(image, self.image_size))

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        if self.augment == "none":
            return self(example)
        return self._apply(example, lambda image: random_crop_flip(image, self.image_size, rng))

    def __repr__(self) -> str:
        return f"Preprocess(fields={sorted(self.fields)}, image_size={self.image_size}, augment={self.augment!r})"


def make_preprocess(fields: dict, *, image_size: int = 0, augment: str = "none") -> Preprocess:
    """The Preprocess for examples with these field specs (source_info(...)["fields"])."""
    return Preprocess(fields, image_size, augment)


def fields_of(source) -> dict:
    """A source's field specs: its `fields` attribute, or guessed from its first example."""
    fields = getattr(source, "fields", None)
    return dict(fields) if fields is not None else infer_fields(source[0])


def info_fields(data_info: dict) -> dict:
    """data_info["fields"], or the fields its legacy keys imply (a data_info written by hand)."""
    if "fields" in data_info:
        return dict(data_info["fields"])
    fields = {}
    if data_info.get("image_shape") is not None:
        fields["image"] = ImageSpec(tuple(data_info["image_shape"]))
    if data_info.get("token_shape") is not None:
        fields["tokens"] = TokenSpec(tuple(data_info["token_shape"]), data_info.get("codebook_size", 0),
                                     data_info.get("num_levels", 1))
    if data_info.get("num_classes", 0) > 0:
        fields["label"] = LabelSpec(data_info["num_classes"])
    return fields


def preprocess_from_config(data_config, data_info: dict) -> Preprocess:
    """The Preprocess config.data asks for (image_size, augment) on the data source_info describes."""
    return make_preprocess(info_fields(data_info), image_size=data_config.get("image_size", 0),
                           augment=data_config.get("augment", "none"))


def data_options(data_config) -> dict:
    """The source options in a config's data group: every key but the pipeline's own
    (PIPELINE_KEYS), e.g. {"seq_len": 128}. The source rejects names it does not take."""
    return {key: value for key, value in data_config.items() if key not in PIPELINE_KEYS}


def _legacy_preprocess(source, image_size, augment) -> Preprocess:
    """The Preprocess the old keyword form train_dataset(..., image_size=, augment=) meant."""
    fields = fields_of(source)
    has_image = any(spec.kind == "image" for spec in fields.values())
    return make_preprocess(fields, image_size=(image_size or 0) if has_image else 0, augment=augment or "none")


def _resolve_preprocess(source, preprocess, image_size, augment) -> Preprocess:
    if preprocess is None:
        if image_size is None and augment is None and not getattr(source, "fields", None):
            raise TypeError("give a Preprocess (make_preprocess / preprocess_from_config)")
        return _legacy_preprocess(source, image_size, augment)
    if image_size is not None or augment is not None:
        raise TypeError("image_size= and augment= are the old form; with a Preprocess, set them in it")
    return preprocess


class _Augment(grain.transforms.RandomMap):
    """grain's view of a Preprocess's random_map (grain seeds rng per element position)."""

    def __init__(self, preprocess: Preprocess):
        self.preprocess = preprocess

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        return self.preprocess.random_map(example, rng)


class EpochShuffle(grain.MapDataset):
    """A fresh seeded permutation of the parent every epoch, for use before `.repeat(None)`.

    Index i of the repeated stream is position i % n of epoch i // n. grain's own `shuffle` maps
    every index through a keyed bijection (`index_shuffle`), about 22 us per element on a 2-core
    Xeon: a quarter of the digits pipeline's cost (benchmarks/input_pipeline.py, B6). Here the
    epoch's permutation is one numpy call, cached, so an element costs a lookup. Deterministic in
    (seed, epoch), so the order does not depend on threads, processes or restarts.
    """

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = seed
        self._length = len(parent)
        self._epoch_order = (-1, None)  # (epoch, permutation): one tuple, swapped whole across threads

    def __len__(self) -> int:
        return self._length

    def _order(self, epoch: int) -> np.ndarray:
        cached_epoch, order = self._epoch_order
        if cached_epoch != epoch:
            order = np.random.default_rng([self._seed, epoch]).permutation(self._length)
            self._epoch_order = (epoch, order)
        return order

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(int(index), self._length)
        return self._parent[int(self._order(epoch)[position])]

    def __str__(self) -> str:
        return f"EpochShuffle(seed={self._seed})"


def train_dataset(source, preprocess: Preprocess | None = None, *, seed: int, global_batch_size: int,
                  process_index: int = 0, process_count: int = 1, read_threads: int = 1,
                  image_size: int | None = None, augment: str | None = None) -> grain.IterDataset:
    """Infinite stream of this process's rows of each global batch, reshuffled every epoch.

    preprocess: maps each example to model input (make_preprocess / preprocess_from_config); an
      augmenting one (augment="crop_flip") draws from grain's per-element rng, seeded by seed + 1.
    read_threads: grain threads that prepare batches ahead of the train step. One thread already
      overlaps the step (XLA releases the GIL); more only pay when the per-example work releases
      the GIL too (JPEG decoding of real datasets). For small in-memory images the work is Python
      under the GIL, and 2 threads made the digits pipeline 1.3x slower than 1 (B6 in docs/benchmarks.md).
    image_size, augment: the old form, instead of `preprocess` (the Preprocess for the source's fields).
    """
    preprocess = _resolve_preprocess(source, preprocess, image_size, augment)
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
    if read_threads < 1:
        raise ValueError(f"read_threads must be >= 1, got {read_threads}")
    if len(source) < global_batch_size:
        raise ValueError(f"dataset has {len(source)} examples, fewer than one batch of {global_batch_size}")
    local = global_batch_size // process_count
    stream = EpochShuffle(grain.MapDataset.source(source), seed).repeat(None)
    if preprocess.is_random:
        stream = stream.random_map(_Augment(preprocess), seed=seed + 1)
    else:
        stream = stream.map(preprocess)
    # Chunk c of size `local` belongs to global batch c // P and to process c % P.
    return stream.batch(local, drop_remainder=True)[process_index::process_count].to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(4, 2 * read_threads))
    )


def eval_batches(source, preprocess: Preprocess | None = None, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, limit: int | None = None,
                 image_size: int | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """Every example once, in order, as this process's rows of padded global batches, through
    `preprocess`'s deterministic mapping (no augmentation). image_size: the old form.

    Yields `(local_batch, valid)`: `valid` is bool over the *global* batch rows, False on padding.
    """
    transform = _resolve_preprocess(source, preprocess, image_size, None)
    total = len(source) if limit is None else min(limit, len(source))
    local = global_batch_size // process_count
    for start in range(0, total, global_batch_size):
        rows = np.arange(start + process_index * local, start + (process_index + 1) * local)
        examples = [transform(source[int(i) if i < total else 0]) for i in rows]
        valid = np.arange(start, start + global_batch_size) < total
        yield {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}, valid
