"""moved_digits: sklearn's digits moved and rescaled on a 32x32 canvas, black or a photo crop."""

import numpy as np
import pytest

from maskgen.data import digits, make_source, moved_digits, source_info

OPTIONS = {"train_renditions": 3, "test_renditions": 2}


def test_splits_sizes_and_labels_follow_the_digits_split():
    info = source_info("moved_digits", None, OPTIONS)
    assert info["splits"] == {"train": 1438 * 3, "test": 359 * 2}
    assert info["image_shape"] == (32, 32, 3) and info["num_classes"] == 10
    test = make_source("moved_digits", "test", None, OPTIONS)
    _, labels = digits.load_all()
    expected = np.repeat(labels[digits.split_indices("test")], 2)
    assert [int(test[i]["label"]) for i in range(len(test))] == expected.tolist()


def test_rendering_is_deterministic_and_renditions_move_and_rescale_the_digit():
    images, _ = moved_digits.load_split("test", 2)
    digit = digits.load_all()[0][digits.split_indices("test")[5]]
    again = moved_digits.render(digit, np.random.default_rng((1, 5, 1)))
    np.testing.assert_array_equal(again, images[5 * 2 + 1])
    # Black canvas, white strokes; the digit's bounding box differs between the two renditions.
    boxes = []
    for image in images[10:12]:
        rows, cols = np.nonzero(image[..., 0] > 0)
        boxes.append((rows.min(), rows.max(), cols.min(), cols.max()))
        assert (image == image[..., :1]).all()  # grey
    assert boxes[0] != boxes[1]
    assert all(18 - 2 <= b[1] - b[0] + 1 <= 28 or 18 - 2 <= b[3] - b[2] + 1 <= 28 for b in boxes)


def test_photo_background_is_an_mnist_m_difference_blend():
    """Where the stroke is full intensity the pixel is 255 - photo; off the digit it is the photo."""
    blank = moved_digits.render(np.zeros((8, 8, 1), np.uint8), np.random.default_rng(7), "photo", (14, 26))
    full = moved_digits.render(np.full((8, 8, 1), 255, np.uint8), np.random.default_rng(7), "photo", (14, 26))
    assert blank.std() > 10  # a photo crop, not a blank canvas
    inverted = np.abs(full.astype(int) - (255 - blank.astype(int))) <= 1
    # A full-intensity square of 14-26 px: at least 14 x 14 pixels are exactly inverted.
    assert inverted.all(-1).sum() >= 14 * 14
    assert (full != blank).any(-1).sum() <= 26 * 26


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="renditions must be an int in"):
        source_info("moved_digits", None, {"train_renditions": 0})
    with pytest.raises(ValueError, match="background must be one of"):
        source_info("moved_digits", None, {"background": "sky"})
    with pytest.raises(ValueError, match="digit_sides=.* must satisfy"):
        source_info("moved_digits", None, {"digit_sides": (4, 40)})
    with pytest.raises(ValueError, match="unknown moved_digits split 'validation'"):
        make_source("moved_digits", "validation")
