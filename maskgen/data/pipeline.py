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


class ToModelInput:
    """Example -> model input: centre square crop resized to `image_size`, float32 in [-1, 1]."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, example: dict) -> dict:
        image = _check_image(example["image"])
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        box = None if h == w else (left, top, left + side, top + side)
        return {"image": _to_float(_resize(image, self.image_size, box)),
                "label": np.asarray(example["label"], np.int32)}


class RandomResizedCropFlip(grain.transforms.RandomMap):
    """MAE's augmentation: random resized crop (area 0.2-1, aspect 3/4-4/3) and horizontal flip.

    grain derives `rng` from the pipeline seed and the element's position in the stream, so the
    augmentation is the same after a restore.
    """

    def __init__(self, image_size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True):
        self.image_size, self.scale, self.ratio, self.flip = image_size, scale, ratio, flip

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        image = _check_image(example["image"])
        h, w = image.shape[:2]
        box = None
        for _ in range(10):
            area = h * w * rng.uniform(*self.scale)
            aspect = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1])))
            cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                box = (left, top, left + cw, top + ch)
                break
        if box is None:  # Fall back to the centre square.
            side = min(h, w)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        image = _resize(image, self.image_size, box)
        if self.flip and rng.uniform() < 0.5:
            image = image[:, ::-1]
        return {"image": _to_float(np.ascontiguousarray(image)), "label": np.asarray(example["label"], np.int32)}


class TokensToModelInput:
    """Token example -> model input: the int32 token grid and label, unchanged (no augmentation)."""

    def __call__(self, example: dict) -> dict:
        return {"tokens": np.asarray(example["tokens"], np.int32), "label": np.asarray(example["label"], np.int32)}


def _model_input(source, image_size: int):
    return TokensToModelInput() if getattr(source, "kind", "image") == "tokens" else ToModelInput(image_size)


AUGMENTATIONS = ("none", "crop_flip")


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


def train_dataset(source, *, seed: int, global_batch_size: int, image_size: int, augment: str = "none",
                  process_index: int = 0, process_count: int = 1, read_threads: int = 1) -> grain.IterDataset:
    """Infinite stream of this process's rows of each global batch, reshuffled every epoch.

    augment: "none" (centre crop + resize) or "crop_flip" (MAE's random resized crop + flip).
    read_threads: grain threads that prepare batches ahead of the train step. One thread already
      overlaps the step (XLA releases the GIL); more only pay when the per-example work releases
      the GIL too (JPEG decoding of real datasets). For small in-memory images the work is Python
      under the GIL, and 2 threads made the digits pipeline 1.3x slower than 1 (B6 in docs/benchmarks.md).
    Token sources (`maskgen tokenize` output) yield their grids unchanged and take no augmentation.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; valid: {AUGMENTATIONS}")
    if augment != "none" and getattr(source, "kind", "image") == "tokens":
        raise ValueError(f"augmentation {augment!r} applies to images; token datasets take augment='none'")
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
    if read_threads < 1:
        raise ValueError(f"read_threads must be >= 1, got {read_threads}")
    if len(source) < global_batch_size:
        raise ValueError(f"dataset has {len(source)} examples, fewer than one batch of {global_batch_size}")
    local = global_batch_size // process_count
    stream = EpochShuffle(grain.MapDataset.source(source), seed).repeat(None)
    if augment == "crop_flip":
        stream = stream.random_map(RandomResizedCropFlip(image_size), seed=seed + 1)
    else:
        stream = stream.map(_model_input(source, image_size))
    # Chunk c of size `local` belongs to global batch c // P and to process c % P.
    return stream.batch(local, drop_remainder=True)[process_index::process_count].to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(4, 2 * read_threads))
    )


def eval_batches(source, *, global_batch_size: int, image_size: int, process_index: int = 0,
                 process_count: int = 1, limit: int | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """Every example once, in order, as this process's rows of padded global batches.

    Yields `(local_batch, valid)`: `valid` is bool over the *global* batch rows, False on padding.
    """
    total = len(source) if limit is None else min(limit, len(source))
    local = global_batch_size // process_count
    transform = _model_input(source, image_size)
    for start in range(0, total, global_batch_size):
        rows = np.arange(start + process_index * local, start + (process_index + 1) * local)
        examples = [transform(source[int(i) if i < total else 0]) for i in rows]
        valid = np.arange(start, start + global_batch_size) < total
        yield {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}, valid
