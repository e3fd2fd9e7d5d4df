"""scikit-learn's 8x8 handwritten digits as a fixed, stratified train/test split.

The data is `sklearn.datasets.load_digits()`: 1,797 real handwritten digits,
8x8 pixels with integer values 0..16, 10 classes. It ships inside scikit-learn,
so nothing is downloaded.

Pixels become uint8 with round-half-up(v * 255 / 16) (0 -> 0, 8 -> 128,
16 -> 255); images have shape [8, 8, 1] and labels are int32 0..9.

Split rule (depends on no random number generator, so it cannot drift across
numpy versions or machines). For each class c = 0..9:

1. take the indices i (positions in `load_digits()` order) whose label is c;
2. order them by the SHA-256 hex digest of the string f"digits:{i}";
3. the first round(n_c / 5) of that order (20% of the class, computed exactly
   in integer arithmetic as (n_c + 2) // 5) go to "test", the rest to "train".

Each split is then sorted by original index. This gives 1,438 train and 359
test examples, every class in both.
"""

from __future__ import annotations

import functools
import hashlib
import operator

import numpy as np

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
CLASS_NAMES = tuple(str(c) for c in range(NUM_CLASSES))
SPLITS = ("train", "test")


@functools.lru_cache(maxsize=1)
def load_all() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits in load_digits() order: (uint8 [N, 8, 8, 1], int32 [N]), read-only."""
    from sklearn.datasets import load_digits  # slow import, so only when needed

    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)
    images = np.floor(values * 255.0 / 16.0 + 0.5).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _hash_key(index: int) -> str:
    return hashlib.sha256(f"digits:{index}".encode()).hexdigest()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; valid splits are {list(SPLITS)}")


def fields() -> dict:
    """What an example holds (maskgen.data.specs)."""
    from maskgen.data.specs import ImageSpec, LabelSpec

    return {"image": ImageSpec(IMAGE_SHAPE), "label": LabelSpec(NUM_CLASSES)}


@functools.lru_cache(maxsize=len(SPLITS))
def split_indices(split: str) -> np.ndarray:
    """Indices into load_all() that make up `split`, in ascending order (read-only)."""
    _check_split(split)
    _, labels = load_all()
    chosen = []
    for c in range(NUM_CLASSES):
        members = sorted(np.flatnonzero(labels == c).tolist(), key=_hash_key)
        num_test = (len(members) + 2) // 5
        chosen.extend(members[:num_test] if split == "test" else members[num_test:])
    out = np.array(sorted(chosen), dtype=np.int64)
    out.setflags(write=False)
    return out


class DigitsSource:
    """Random-access source over one digits split; items are {"image", "label"} dicts."""

    def __init__(self, split: str):
        _check_split(split)
        self.split = split

    @property
    def fields(self) -> dict:
        return fields()

    def __len__(self) -> int:
        return len(split_indices(self.split))

    def __getitem__(self, index) -> dict:
        indices = split_indices(self.split)
        i = operator.index(index)
        if not -len(indices) <= i < len(indices):
            raise IndexError(f"index {i} out of range for digits {self.split!r} ({len(indices)} examples)")
        images, labels = load_all()
        j = indices[i]
        return {"image": images[j].copy(), "label": np.int32(labels[j])}

    def __repr__(self) -> str:
        return f"DigitsSource(split={self.split!r}, num_examples={len(self)})"
