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


class ToModelInput:
    """Example dict -> model input: image resized to `image_size`, float32 in [-1, 1]; label int32."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, example: dict) -> dict:
        image = np.asarray(example["image"])
        if image.ndim != 3:
            raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")
        if image.shape[0] != self.image_size or image.shape[1] != self.image_size:
            channels = image.shape[-1]
            pil = Image.fromarray(image[..., 0] if channels == 1 else image)
            pil = pil.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
            image = np.asarray(pil).reshape(self.image_size, self.image_size, channels)
        return {
            "image": image.astype(np.float32) / 127.5 - 1.0,
            "label": np.asarray(example["label"], np.int32),
        }


def train_dataset(source, *, seed: int, global_batch_size: int, image_size: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """Infinite stream of this process's rows of each global batch, reshuffled every epoch."""
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
    if len(source) < global_batch_size:
        raise ValueError(f"dataset has {len(source)} examples, fewer than one batch of {global_batch_size}")
    local = global_batch_size // process_count
    stream = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None).map(ToModelInput(image_size))
    # Chunk c of size `local` belongs to global batch c // P and to process c % P.
    return stream.batch(local, drop_remainder=True)[process_index::process_count].to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
    )


def eval_batches(source, *, global_batch_size: int, image_size: int, process_index: int = 0,
                 process_count: int = 1, limit: int | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """Every example once, in order, as this process's rows of padded global batches.

    Yields `(local_batch, valid)`: `valid` is bool over the *global* batch rows, False on padding.
    """
    total = len(source) if limit is None else min(limit, len(source))
    local = global_batch_size // process_count
    transform = ToModelInput(image_size)
    for start in range(0, total, global_batch_size):
        rows = np.arange(start + process_index * local, start + (process_index + 1) * local)
        examples = [transform(source[int(i) if i < total else 0]) for i in rows]
        valid = np.arange(start, start + global_batch_size) < total
        yield {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}, valid
