"""Handwritten digits moved and rescaled on a 32 x 32 canvas, optionally over photographs.

A harder, real and local image set made from what ships inside scikit-learn (nothing is
downloaded): the digits of `sklearn.datasets.load_digits()` (maskgen.data.digits: 1,797 real
8x8 scans, the same fixed train/test split of 1,438 / 359), upscaled (bilinear) to a random side
in `digit_sides` (default 18-28 px) and placed at a random position fully inside a 32 x 32 RGB
canvas: the augmentation is baked into `renditions` images per digit.

`background`:
* "none" (default): a black canvas; the stroke is white (255 a for stroke intensity a).
* "photo": an MNIST-M (Ganin et al., arXiv 1505.07818): the canvas is a random region of one of
  the two photographs scikit-learn ships (`china.jpg`, `flower.jpg`, 427 x 640 RGB, read with
  Pillow), resampled from a random square crop of side 32-128 px, and the digit is blended by
  difference as MNIST-M does: the pixel becomes |photo - 255 a|.

Every draw comes from a numpy Generator seeded by (split, digit, rendition): the data is the same
on every machine and in every process.

Why it exists: on the 8x8 digits (upscaled to 16), plain MAE's probe is no better than raw pixels
(the classes are linearly separable in pixel space). Moving and rescaling the digit breaks that
(raw pixels probe at ~0.38), while an encoder that learns strokes still separates the classes.
With photo backgrounds the task is too hard for CPU-sized models: MAE probes 0.23 against a
random encoder's 0.19 (docs/mae_family.md has both measurements).
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
BACKGROUNDS = ("none", "photo")
DIGIT_SIDES = (18, 28)  # default inclusive range of the digit's side in pixels
CROP_SIDES = (32, 128)  # inclusive range of the photo crop's side before it is resized to 32
DEFAULT_RENDITIONS = {"train": 4, "test": 2}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown moved_digits split {split!r}; valid splits are {list(SPLITS)}")


def check_renditions(renditions: int) -> int:
    if isinstance(renditions, bool) or not isinstance(renditions, int) or not 1 <= renditions <= 64:
        raise ValueError(f"moved_digits: renditions must be an int in [1, 64] (images made per digit), got {renditions!r}")
    return renditions


def check_style(background: str, digit_sides) -> tuple[str, tuple[int, int]]:
    """The validated (background, (min side, max side))."""
    if background not in BACKGROUNDS:
        raise ValueError(f"moved_digits: background must be one of {BACKGROUNDS}, got {background!r}")
    try:
        low, high = (int(v) for v in digit_sides)
    except (TypeError, ValueError):
        raise ValueError(f"moved_digits: digit_sides must be two ints (min, max side in pixels), got {digit_sides!r}") from None
    if not 8 <= low <= high <= IMAGE_SIZE:
        raise ValueError(f"moved_digits: digit_sides={tuple(digit_sides)} must satisfy 8 <= min <= max <= {IMAGE_SIZE}")
    return background, (low, high)


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
            raise FileNotFoundError(f"moved_digits (background='photo') needs scikit-learn's sample photo {path}; "
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


def render(digit: np.ndarray, rng: np.random.Generator, background: str = "none",
           digit_sides: tuple[int, int] = DIGIT_SIDES) -> np.ndarray:
    """One example: the 8x8 uint8 digit [8, 8, 1], moved and rescaled on the canvas -> uint8 [32, 32, 3]."""
    if background == "photo":
        photos = load_photos()
        photo = photos[rng.integers(len(photos))]
        crop = int(rng.integers(CROP_SIDES[0], CROP_SIDES[1] + 1))
        top = int(rng.integers(photo.shape[0] - crop + 1))
        left = int(rng.integers(photo.shape[1] - crop + 1))
        canvas = _resize(np.ascontiguousarray(photo[top:top + crop, left:left + crop]), IMAGE_SIZE)
    else:
        canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE, CHANNELS), np.float32)
    side = int(rng.integers(digit_sides[0], digit_sides[1] + 1))
    stroke = _resize(np.ascontiguousarray(digit[..., 0]), side) / 255.0  # intensity a in [0, 1]
    y = int(rng.integers(IMAGE_SIZE - side + 1))
    x = int(rng.integers(IMAGE_SIZE - side + 1))
    alpha = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    alpha[y:y + side, x:x + side, 0] = stroke
    blended = np.abs(canvas - 255.0 * alpha)  # MNIST-M's difference blend (white on black without a photo)
    return np.clip(np.floor(blended + 0.5), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def load_split(split: str, renditions: int, background: str = "none",
               digit_sides: tuple[int, int] = DIGIT_SIDES) -> tuple[np.ndarray, np.ndarray]:
    """All examples of a split: (uint8 [n * renditions, 32, 32, 3], int32 labels), read-only.

    Example k * renditions + r is rendition r of the split's k-th digit, drawn from the
    Generator seeded by (split number, k, r).
    """
    _check_split(split)
    check_renditions(renditions)
    background, digit_sides = check_style(background, digit_sides)
    images, labels = digits.load_all()
    indices = digits.split_indices(split)
    split_number = SPLITS.index(split)
    out = np.empty((len(indices) * renditions, IMAGE_SIZE, IMAGE_SIZE, CHANNELS), np.uint8)
    for k, j in enumerate(indices):
        for r in range(renditions):
            rng = np.random.default_rng((split_number, int(k), r))
            out[k * renditions + r] = render(images[j], rng, background, digit_sides)
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


class MovedDigitsSource:
    """Random-access source over one split; items are {"image" uint8 [32, 32, 3], "label" int32}.

    Pickles as its settings: each process renders the split once (about a second) on first use.
    """

    def __init__(self, split: str, renditions: int, background: str = "none", digit_sides=DIGIT_SIDES):
        _check_split(split)
        self.split, self.renditions = split, check_renditions(renditions)
        self.background, self.digit_sides = check_style(background, digit_sides)

    @property
    def fields(self) -> dict:
        return fields()

    def __len__(self) -> int:
        return len(digits.split_indices(self.split)) * self.renditions

    def __getitem__(self, index) -> dict:
        images, labels = load_split(self.split, self.renditions, self.background, self.digit_sides)
        i = operator.index(index)
        if not -len(images) <= i < len(images):
            raise IndexError(f"index {i} out of range for moved_digits {self.split!r} ({len(images)} examples)")
        return {"image": images[i].copy(), "label": np.int32(labels[i])}

    def __repr__(self) -> str:
        return (f"MovedDigitsSource(split={self.split!r}, renditions={self.renditions}, background={self.background!r}, "
                f"digit_sides={self.digit_sides}, num_examples={len(self)})")
