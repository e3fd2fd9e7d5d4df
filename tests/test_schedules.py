"""Mask schedules: endpoints, monotonicity, hand values, errors."""

import decimal
import math
from fractions import Fraction

import numpy as np
import pytest

from maskgen.masking.schedules import keep_masked_table, mask_ratio, num_to_mask

R = np.linspace(0.0, 1.0, 101)


def exact_floor(schedule, n, r):
    """floor(n * gamma(r)) for rational r: exact fractions for the polynomial schedules; for the
    cosine the exact rational value at r = 2/3 (cos(pi/3) = 1/2), else 30-digit decimals (the
    cosine of another rational multiple of pi is irrational, so never an integer multiple)."""
    r = Fraction(r)
    if schedule != "cosine":
        return math.floor(n * (1 - r ** {"linear": 1, "square": 2, "cubic": 3}[schedule]))
    if r == Fraction(2, 3):
        return n // 2
    return int((n * decimal_cos(r)).to_integral_value(rounding=decimal.ROUND_FLOOR))


PI_50 = decimal.Decimal("3.14159265358979323846264338327950288419716939937510")


def decimal_cos(r):
    """cos(pi / 2 * r) by its Taylor series in 50-digit decimals."""
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        x = PI_50 / 2 * decimal.Decimal(r.numerator) / decimal.Decimal(r.denominator)
        term, total, k = decimal.Decimal(1), decimal.Decimal(1), 0
        while abs(term) > decimal.Decimal(10) ** -45:
            k += 2
            term = -term * x * x / (k * (k - 1))
            total += term
        return total


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


@pytest.mark.parametrize("schedule", ["linear", "square", "cubic", "cosine"])
def test_keep_masked_table_is_the_exact_floor(schedule):
    # Every n0 in [0, 300] (and n0 = 1024), every step of T = 1 .. 24: floor(n0 * gamma((t+1)/T))
    # against exact fractions (polynomials) or 50-digit decimals and cos(pi/3) = 1/2 (cosine).
    counts = list(range(301))
    for num_steps in range(1, 25):
        table = keep_masked_table(schedule, num_steps, 1024)
        assert table.shape == (num_steps, 1025) and table.dtype == np.int32
        for t in range(num_steps):
            r = Fraction(t + 1, num_steps)
            expected = [exact_floor(schedule, n, r) for n in counts + [1024]]
            np.testing.assert_array_equal(table[t, counts + [1024]], expected, err_msg=f"T={num_steps} t={t}")


def test_keep_masked_table_hand_values():
    # The two cases: 239 cos(pi/4) = 168.9985 -> 168; 256 cos(pi/3) = 128 exactly.
    assert keep_masked_table("cosine", 4, 256)[1, 239] == 168
    assert keep_masked_table("cosine", 3, 256)[1, 256] == 128
    assert keep_masked_table("linear", 3, 6)[0, 6] == 4  # 6 (1 - 1/3), a few ulps low in float64 too
    # log / exp at exact points: -log2(1/2) / log2(256) = 1/8; 1 - 256^(-1/2) = 15/16.
    assert keep_masked_table("log", 2, 256)[0, 256] == 32
    assert keep_masked_table("exp", 2, 256)[0, 256] == 240
    assert keep_masked_table("pow1.5", 4, 64)[0, 64] == 56  # 64 (1 - (1/4)^1.5) = 56 exactly
    # start_step drops the leading rows; the last row is the 1e-6 clamp, floor = 0.
    np.testing.assert_array_equal(keep_masked_table("cosine", 8, 50, start_step=3), keep_masked_table("cosine", 8, 50)[3:])
    assert not keep_masked_table("cosine", 8, 50)[-1].any()
    with pytest.raises(ValueError, match="unknown mask schedule"):
        keep_masked_table("coz", 4, 16)
