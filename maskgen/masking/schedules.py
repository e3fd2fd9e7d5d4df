"""Mask schedules: t in [0, 1] -> fraction of tokens masked, shared by training and decoding.

MaskGIT (Chang et al., arXiv 2202.04200, Sec. 3.3) draws the training mask ratio as gamma(r) for
r ~ U(0, 1) and decodes step t of T with gamma((t + 1) / T). gamma is 1 at r = 0 (everything
masked) and decreasing. The family follows the paper and its official release: cosine (the
default), linear ("uniform" there), pow-N (square is pow2, cubic pow3), log and exp; the ratio is
clamped to [1e-6, 1].

Decoding counts are computed on the host, exactly: `keep_masked_table` gives floor(n * gamma(r))
for every step and every possible unknown count n, so a value just below an integer (239 *
cos(pi/4) = 168.9985 -> 168) and an exact integer (256 * cos(pi/3) = 128) both come out right,
where float32 on the device gets one of them wrong whichever way it rounds.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax.numpy as jnp
import numpy as np

SCHEDULES = ("cosine", "linear", "square", "cubic", "powN (e.g. pow1.5)", "log", "exp")


def mask_ratio(schedule: str, r, num_tokens: int | None = None):
    """gamma(r): the fraction of tokens masked at progress r in [0, 1] (array or float).

    `log` and `exp` need `num_tokens` (they are scaled so that one token stays masked at the end,
    as in the official MaskGIT code).
    """
    r = jnp.asarray(r, jnp.float32)
    if schedule == "cosine":
        ratio = jnp.cos(math.pi / 2.0 * r)
    elif schedule == "linear":
        ratio = 1.0 - r
    elif schedule in ("square", "cubic") or schedule.startswith("pow"):
        exponent = {"square": 2.0, "cubic": 3.0}.get(schedule)
        if exponent is None:
            try:
                exponent = float(schedule[3:])
            except ValueError:
                raise ValueError(f"bad pow schedule {schedule!r}; write e.g. 'pow2' or 'pow1.5'") from None
        ratio = 1.0 - r ** exponent
    elif schedule in ("log", "exp"):
        if not num_tokens or num_tokens < 2:
            raise ValueError(f"the {schedule!r} schedule needs num_tokens >= 2, got {num_tokens}")
        log_n = math.log2(num_tokens)
        if schedule == "log":
            ratio = -jnp.log2(jnp.maximum(r, 1e-12)) / log_n
        else:
            ratio = 1.0 - jnp.exp2(-log_n * (1.0 - r))
    else:
        raise ValueError(f"unknown mask schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return jnp.clip(ratio, 1e-6, 1.0)


def num_to_mask(schedule: str, r, num_tokens: int):
    """ceil(gamma(r) * N), at least 1: MaskGIT's training mask count for ratio draw r."""
    count = jnp.ceil(mask_ratio(schedule, r, num_tokens) * num_tokens).astype(jnp.int32)
    return jnp.clip(count, 1, num_tokens)


# ------------------------------------------------------------------------- exact decoding counts

_MIN_RATIO = Fraction(1, 10**6)  # mask_ratio's lower clamp


def _pow_exponent(schedule: str) -> Fraction | None:
    """The exponent of a polynomial schedule as an exact fraction (linear is 1), else None."""
    if schedule == "linear":
        return Fraction(1)
    if schedule in ("square", "cubic"):
        return Fraction({"square": 2, "cubic": 3}[schedule])
    if schedule.startswith("pow"):
        try:
            return Fraction(schedule[3:])
        except ValueError:
            raise ValueError(f"bad pow schedule {schedule!r}; write e.g. 'pow2' or 'pow1.5'") from None
    return None


def _ratio_float64(schedule: str, r: Fraction, num_tokens: int) -> float:
    """gamma(r) in float64 (unclamped), the same formulas as `mask_ratio`."""
    exponent = _pow_exponent(schedule)
    if exponent is not None:
        return 1.0 - float(r) ** float(exponent)
    if schedule == "cosine":
        return math.cos(math.pi / 2.0 * float(r))
    log_n = math.log2(num_tokens)
    if schedule == "log":
        return -math.log2(max(float(r), 1e-12)) / log_n
    return 1.0 - 2.0 ** (-log_n * (1.0 - float(r)))  # exp


def _ratio_equals(schedule: str, r: Fraction, value: Fraction, num_tokens: int) -> bool:
    """Whether the unclamped gamma(r) is exactly the rational `value` (r rational in (0, 1])."""
    exponent = _pow_exponent(schedule)
    if exponent is not None:  # 1 - r^(a/b) = v  <=>  r^a = (1 - v)^b
        a, b = exponent.numerator, exponent.denominator
        return 0 <= 1 - value and r ** a == (1 - value) ** b
    if schedule == "cosine":
        # cos of a rational multiple of pi in [0, pi/2] is rational only at 1, 1/2, 0 (Niven).
        return (r, value) in ((Fraction(0), Fraction(1)), (Fraction(2, 3), Fraction(1, 2)), (Fraction(1), Fraction(0)))
    if schedule == "log":  # -log2(r) / log2(N) = c/d  <=>  (1/r)^d = N^c
        return value >= 0 and (1 / r) ** value.denominator == Fraction(num_tokens) ** value.numerator
    # exp: 1 - N^-(1 - r) = v  <=>  N^(c) * (1 - v)^d = 1 with 1 - r = c/d
    gap = 1 - r
    return 0 < 1 - value and Fraction(num_tokens) ** gap.numerator * (1 - value) ** gap.denominator == 1


def _floor_times_ratio(schedule: str, r: Fraction, counts: np.ndarray, num_tokens: int) -> np.ndarray:
    """floor(n * gamma(r)) for the int array `counts`, with gamma clamped as `mask_ratio` clamps it.

    Evaluated in float64; a product that lands within 1e-9 below an integer m is m exactly when
    gamma(r) == m / n in exact arithmetic (float64 can put 4 = 6 * (1 - 1/3) a few ulps low).
    Everything else is at least ~1e-9 from an integer, far beyond float64's rounding.
    """
    ratio = _ratio_float64(schedule, r, num_tokens)
    if ratio >= 1.0:
        return counts.copy()
    if ratio <= float(_MIN_RATIO):
        return np.floor(counts * float(_MIN_RATIO)).astype(np.int64)
    product = counts.astype(np.float64) * ratio
    floor = np.floor(product).astype(np.int64)
    nearest = np.rint(product)
    close_below = (nearest > product) & (nearest - product < 1e-9 * np.maximum(1.0, product))
    for i in np.flatnonzero(close_below):
        n, m = int(counts[i]), int(nearest[i])
        if _ratio_equals(schedule, r, Fraction(m, n), num_tokens):
            floor[i] = m
    return floor


def keep_masked_table(schedule: str, num_steps: int, num_tokens: int, start_step: int = 0) -> np.ndarray:
    """int32 [num_steps - start_step, num_tokens + 1]: row s, column n is floor(n * gamma((t + 1) / T))
    for step t = start_step + s of T = num_steps, computed exactly on the host (see
    `_floor_times_ratio`). MaskGIT's decoder keeps that many of the n0 tokens unknown at the start
    masked after step t (before its clamps). A host constant, so shapes stay static under jit.
    """
    mask_ratio(schedule, 0.5, max(num_tokens, 2))  # validates the name (and num_tokens for log/exp)
    counts = np.arange(num_tokens + 1, dtype=np.int64)
    rows = [_floor_times_ratio(schedule, Fraction(t + 1, num_steps), counts, num_tokens)
            for t in range(start_step, num_steps)]
    return np.stack(rows).astype(np.int32)
