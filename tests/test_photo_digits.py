"""photo_digits: sklearn's digits blended onto crops of sklearn's sample photos (maskgen.data.photo_digits)."""

import numpy as np
import pytest

from maskgen.data import digits, make_source, photo_digits, source_info


def test_splits_sizes_and_labels_follow_the_digits_split():
    info = source_info("photo_digits", None, {"train_renditions": 3, "test_renditions": 2})
    assert info["splits"] == {"train": 1438 * 3, "test": 359 * 2}
    assert info["image_shape"] == (32, 32, 3) and info["num_classes"] == 10
    test = make_source("photo_digits", "test", None, {"train_renditions": 3, "test_renditions": 2})
    _, labels = digits.load_all()
    expected = np.repeat(labels[digits.split_indices("test")], 2)
    assert [int(test[i]["label"]) for i in range(len(test))] == expected.tolist()


def test_rendering_is_deterministic_and_differs_between_renditions():
    images, _ = photo_digits.load_split("test", 2)
    again = photo_digits.render(digits.load_all()[0][digits.split_indices("test")[5]],
                                np.random.default_rng((1, 5, 1)))
    np.testing.assert_array_equal(again, images[5 * 2 + 1])
    assert not np.array_equal(images[10], images[11])  # two renditions of one digit: other crop/size/place
    assert images.dtype == np.uint8 and images.std() > 30  # photos, not blank canvases


def test_the_digit_is_drawn_by_difference_blending():
    """Where the stroke is full intensity the pixel is 255 - photo; off the digit it is the photo."""
    digit = np.zeros((8, 8, 1), np.uint8)  # a blank digit leaves the photo crop untouched
    blank = photo_digits.render(digit, np.random.default_rng(7))
    full = photo_digits.render(np.full((8, 8, 1), 255, np.uint8), np.random.default_rng(7))
    side_pixels = np.abs(full.astype(int) - (255 - blank.astype(int))) <= 1
    # A full-intensity square of 14-26 px: at least 14 x 14 pixels are exactly inverted.
    assert side_pixels.all(-1).sum() >= 14 * 14
    assert (full != blank).any(-1).sum() <= 26 * 26


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="renditions must be an int in"):
        source_info("photo_digits", None, {"train_renditions": 0})
    with pytest.raises(ValueError, match="unknown photo_digits split 'validation'"):
        make_source("photo_digits", "validation")
