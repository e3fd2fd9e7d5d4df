"""Mask schedules: endpoints, monotonicity, hand values, errors."""

import math

import numpy as np
import pytest

from maskgen.masking.schedules import mask_ratio, num_to_mask

R = np.linspace(0.0, 1.0, 101)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "square", "cubic", "pow1.5", "log", "exp"])
def test_starts_fully_masked_and_decreases(schedule):
    ratios = np.asarray(mask_ratio(schedule, R, num_tokens=256))
    # exp starts one token short of fully masked (1 - 1/N), as in the official code.
    assert ratios[0] == pytest.approx(1.0 - 1 / 256 if schedule == "exp" else 1.0)
    assert np.all(np.diff(ratios) <= 1e-7)
    assert ratios[-1] <= 1e-6 + 1e-9 or schedule in ("log", "exp")
    assert np.all((ratios >= 1e-6) & (ratios <= 1.0))


def test_hand_values():
    assert float(mask_ratio("cosine", 0.5)) == pytest.approx(math.cos(math.pi / 4), rel=1e-6)
    assert float(mask_ratio("linear", 0.25)) == pytest.approx(0.75)
    assert float(mask_ratio("square", 0.5)) == pytest.approx(0.75)
    assert float(mask_ratio("pow3", 0.5)) == pytest.approx(0.875)
    assert float(mask_ratio("log", 0.5, num_tokens=256)) == pytest.approx(1 / 8)  # -log2(.5)/log2(256)
    assert float(mask_ratio("exp", 0.5, num_tokens=256)) == pytest.approx(1 - 2 ** -4)
    # MaskGIT's training count: ceil(gamma * N), never 0.
    assert int(num_to_mask("cosine", 0.0, 64)) == 64
    assert int(num_to_mask("cosine", 1.0, 64)) == 1
    assert int(num_to_mask("linear", 0.5, 10)) == 5


def test_errors_name_the_schedule():
    with pytest.raises(ValueError, match="unknown mask schedule 'coz'"):
        mask_ratio("coz", 0.5)
    with pytest.raises(ValueError, match="needs num_tokens"):
        mask_ratio("log", 0.5)
    with pytest.raises(ValueError, match="bad pow schedule"):
        mask_ratio("powx", 0.5)
