"""Handwritten digits on photographs: a harder, real and local image set (an MNIST-M for sklearn digits).

Ganin et al. ("Domain-Adversarial Training of Neural Networks", arXiv 1505.07818) made MNIST-M by
blending MNIST digits over random crops of natural photographs. This module does the same with
what ships inside scikit-learn, so nothing is downloaded:

* digits: `sklearn.datasets.load_digits()` (maskgen.data.digits: 1,797 real 8x8 scans, the same
  fixed train/test split of 1,438 / 359);
* photos: the two photographs scikit-learn ships (`china.jpg`, `flower.jpg`, 427 x 640 RGB),
  read with Pillow from scikit-learn's package directory.

Each example is a 32 x 32 RGB image: a random 32 x 32 region of one photo, resampled from a
random square crop of side 32-128 px (so textures vary in scale), with the digit drawn on it.
The digit is upscaled (bilinear) to a random side of 14-26 px, placed at a random position
fully inside the canvas, and blended by difference as MNIST-M does: where the stroke has
intensity a in [0, 1], the pixel becomes |photo - 255 a| (dark strokes on light photo,
light strokes on dark photo). Labels are the digit's class.

Every draw comes from a numpy Generator seeded by (split, example index): the data is the same
on every machine and in every process, and `renditions` examples are made per digit (each with
its own photo crop, size and place), so the train split holds 1,438 x renditions images.

Why it is harder than `digits`: the class is carried by a thin, moved and rescaled stroke over
a textured background, so raw pixels probe poorly and a random encoder's features are
dominated by the photo; an encoder must learn shape to separate the classes (docs/mae_family.md
has the measured gap).
"""

from __future__ import annotations

import functools
import operator
import os

import numpy as np

from maskgen.data import digits

IMAGE_SIZE = 32
CHANNELS = 3
NUM_CLASSES = digits.NUM_CLASSES
SPLITS = digits.SPLITS
PHOTOS = ("china.jpg", "flower.jpg")
DIGIT_SIDES = (14, 26)  # inclusive range of the digit's side in pixels
CROP_SIDES = (32, 128)  # inclusive range of the photo crop's side before it is resized to 32
DEFAULT_RENDITIONS = {"train": 4, "test": 2}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown photo_digits split {split!r}; valid splits are {list(SPLITS)}")


def check_renditions(renditions: int) -> int:
    if isinstance(renditions, bool) or not isinstance(renditions, int) or not 1 <= renditions <= 64:
        raise ValueError(f"photo_digits: renditions must be an int in [1, 64] (images made per digit), got {renditions!r}")
    return renditions


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's sample photographs as uint8 [H, W, 3] arrays (read-only)."""
    import sklearn.datasets
    from PIL import Image

    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    photos = []
    for name in PHOTOS:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"photo_digits needs scikit-learn's sample photo {path}; "
                                    "reinstall scikit-learn (it ships the photo in its wheel)")
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        array.setflags(write=False)
        photos.append(array)
    return tuple(photos)


def _resize(array: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of a uint8 [h, w] or [h, w, 3] array to side x side, float32 in [0, 255]."""
    from PIL import Image

    image = Image.fromarray(array)
    return np.asarray(image.resize((side, side), Image.BILINEAR), dtype=np.float32)


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One example: the 8x8 uint8 digit [8, 8, 1] on a random photo crop -> uint8 [32, 32, 3]."""
    photos = load_photos()
    photo = photos[rng.integers(len(photos))]
    crop = int(rng.integers(CROP_SIDES[0], CROP_SIDES[1] + 1))
    top = int(rng.integers(photo.shape[0] - crop + 1))
    left = int(rng.integers(photo.shape[1] - crop + 1))
    background = _resize(np.ascontiguousarray(photo[top:top + crop, left:left + crop]), IMAGE_SIZE)
    side = int(rng.integers(DIGIT_SIDES[0], DIGIT_SIDES[1] + 1))
    stroke = _resize(np.ascontiguousarray(digit[..., 0]), side) / 255.0  # intensity a in [0, 1]
    y = int(rng.integers(IMAGE_SIZE - side + 1))
    x = int(rng.integers(IMAGE_SIZE - side + 1))
    alpha = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    alpha[y:y + side, x:x + side, 0] = stroke
    blended = np.abs(background - 255.0 * alpha)  # MNIST-M's difference blend
    return np.clip(np.floor(blended + 0.5), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def load_split(split: str, renditions: int) -> tuple[np.ndarray, np.ndarray]:
    """All examples of a split: (uint8 [n * renditions, 32, 32, 3], int32 labels), read-only.

    Example k * renditions + r is rendition r of the split's k-th digit, drawn from the
    Generator seeded by (split number, k, r).
    """
    _check_split(split)
    check_renditions(renditions)
    images, labels = digits.load_all()
    indices = digits.split_indices(split)
    split_number = SPLITS.index(split)
    out = np.empty((len(indices) * renditions, IMAGE_SIZE, IMAGE_SIZE, CHANNELS), np.uint8)
    for k, j in enumerate(indices):
        for r in range(renditions):
            rng = np.random.default_rng((split_number, int(k), r))
            out[k * renditions + r] = render(images[j], rng)
    out_labels = np.repeat(labels[indices], renditions).astype(np.int32)
    out.setflags(write=False)
    out_labels.setflags(write=False)
    return out, out_labels


def fields() -> dict:
    """What an example holds (maskgen.data.specs)."""
    from maskgen.data.specs import ImageSpec, LabelSpec

    return {"image": ImageSpec((IMAGE_SIZE, IMAGE_SIZE, CHANNELS)), "label": LabelSpec(NUM_CLASSES)}


def split_sizes(renditions: dict[str, int]) -> dict[str, int]:
    return {s: len(digits.split_indices(s)) * renditions[s] for s in SPLITS}


class PhotoDigitsSource:
    """Random-access source over one split; items are {"image" uint8 [32, 32, 3], "label" int32}.

    Pickles as (split, renditions): each process renders the split once (about a second) on first use.
    """

    def __init__(self, split: str, renditions: int):
        _check_split(split)
        self.split, self.renditions = split, check_renditions(renditions)

    @property
    def fields(self) -> dict:
        return fields()

    def __len__(self) -> int:
        return len(digits.split_indices(self.split)) * self.renditions

    def __getitem__(self, index) -> dict:
        images, labels = load_split(self.split, self.renditions)
        i = operator.index(index)
        if not -len(images) <= i < len(images):
            raise IndexError(f"index {i} out of range for photo_digits {self.split!r} ({len(images)} examples)")
        return {"image": images[i].copy(), "label": np.int32(labels[i])}

    def __repr__(self) -> str:
        return f"PhotoDigitsSource(split={self.split!r}, renditions={self.renditions}, num_examples={len(self)})"
