"""MAGNeT span masking (arXiv 2401.04577): the rate table against brute force, the realised mask rate
against the target over many draws, span lengths, the rate-0 row, jit/vmap and argument checks."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgen.masking.generators import num_span_starts, span_mask, span_mask_rates, span_starts_table

SPAN = 3
RATES = (0.1, 0.3, 0.5, 0.7, 0.9)


def key(seed):
    """RBG keys: XLA:CPU compiles threefry bit generation several times slower."""
    return jax.random.key(seed, impl="rbg")


def runs(row):
    """(start, length) of every maximal run of True in a 1-D bool array."""
    padded = np.concatenate([[False], row, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])]


def brute_force_share(num_frames, span_length, u):
    """Mean masked share over every set of u starts (spans run right, clipped at the end)."""
    total = 0.0
    sets = list(itertools.combinations(range(num_frames), u))
    for starts in sets:
        mask = np.zeros(num_frames, bool)
        for s in starts:
            mask[s:s + span_length] = True
        total += mask.mean()
    return total / len(sets)


def test_rates_match_brute_force_and_magnet_formula():
    # Every subset of starts for T = 9, L = 3: the table is the generator's exact expectation.
    rates = span_mask_rates(9, SPAN)
    expected = [brute_force_share(9, SPAN, u) for u in range(10)]
    np.testing.assert_allclose(rates, expected, rtol=0, atol=1e-12)
    # Frames with a full window of L possible starts are masked with MAGNeT's rate(u) =
    # 1 - C(T - L, u) / C(T, u); the table adds the first L - 1 frames' (smaller) terms.
    num_frames = 500
    rates = span_mask_rates(num_frames, SPAN)
    for u in (1, 7, 100, 300):
        magnet = 1 - math.comb(num_frames - SPAN, u) / math.comb(num_frames, u)
        edge = sum(1 - math.comb(num_frames - w, u) / math.comb(num_frames, u) for w in (1, 2))
        assert rates[u] == pytest.approx(((num_frames - 2) * magnet + edge) / num_frames, rel=1e-12)
        assert 0 < magnet - rates[u] < 2 * (SPAN - 1) / num_frames
    # No overflow at T = 500 (C(500, 250) ~ 1e149 as integers): finite, increasing, 0 to 1.
    assert np.isfinite(rates).all() and rates[0] == 0 and rates[-1] == 1 and (np.diff(rates) > 0).all()


@pytest.mark.parametrize("num_frames", [50, 500])
def test_table_picks_the_closest_count(num_frames):
    table = span_starts_table(num_frames, SPAN)
    rates = span_mask_rates(num_frames, SPAN)
    assert table.shape == (1001,) and table.dtype == np.int32
    for i in range(0, 1001, 37):
        target = i / 1000
        best = min(range(num_frames + 1), key=lambda u: (abs(rates[u] - target), u))
        assert table[i] == best, (i, table[i], best)
    assert table[0] == 0 and table[-1] == num_frames and (np.diff(table) >= 0).all()
    assert span_starts_table(num_frames, SPAN, 100).shape == (101,)


ROWS = {50: 1500, 500: 500}  # draws per target rate
ZERO_ROWS = 1000


@pytest.fixture(scope="module")
def draws():
    """One jitted call per T: ZERO_ROWS rows at rate 0, then ROWS[T] rows at each of RATES."""
    out = {}
    for num_frames, rows in ROWS.items():
        target = jnp.concatenate([jnp.zeros(ZERO_ROWS), jnp.repeat(jnp.asarray(RATES, jnp.float32), rows)])
        out[num_frames] = np.asarray(span_mask(key(num_frames), target, num_frames, SPAN))
    return out


@pytest.mark.parametrize("num_frames", [50, 500])
def test_realised_rate_matches_the_target(draws, num_frames):
    """The issue's check: over many draws, the mean masked share is the target rate, to within the
    table's resolution: the rate grid (1/1000) plus half the gap between the table's neighbouring
    counts (one more start moves the rate by ~(1 - r) L / T: up to ~3% at T = 50, ~0.3% at 500)."""
    rows = ROWS[num_frames]
    rates = span_mask_rates(num_frames, SPAN)
    share = draws[num_frames][ZERO_ROWS:].reshape(len(RATES), rows, num_frames).mean(-1)  # per row
    starts = np.asarray(num_span_starts(jnp.asarray(RATES), num_frames, SPAN))
    for r, u, row_shares in zip(RATES, starts, share):
        realised = row_shares.mean()
        standard_error = row_shares.std() / math.sqrt(rows)
        # The draws average the table's value for the chosen count ...
        assert abs(realised - rates[u]) < 5 * standard_error + 1e-9, (r, realised, rates[u])
        # ... which is as close to the target as the count grid allows.
        gap = max(rates[min(u + 1, num_frames)] - rates[u], rates[u] - rates[max(u - 1, 0)])
        tolerance = 1e-3 + gap / 2
        assert abs(rates[u] - r) <= tolerance
        assert abs(realised - r) < tolerance + 5 * standard_error, (num_frames, r, realised)
    if num_frames == 500:  # the long sequence is within 0.5% of every target
        assert np.all(np.abs(share.mean(-1) - np.asarray(RATES)) < 5e-3), share.mean(-1)


@pytest.mark.parametrize("num_frames", [50, 500])
def test_spans_are_at_least_span_length_except_at_the_end(draws, num_frames):
    for row in draws[num_frames][::50]:
        for start, length in runs(row):
            if start + length < num_frames:
                assert length >= SPAN, (start, length, row.astype(int))


def test_rate_zero_masks_one_span(draws):
    # Rate 0 gives u = 1 start (at least one, as MAGNeT clamps): one span of L frames, shorter
    # only when its start lies in the last L - 1 frames.
    starts = []
    for row in draws[50][:ZERO_ROWS]:
        (start, length), = runs(row)
        assert length == min(SPAN, 50 - start)
        starts.append(start)
    # The single start is uniform over the 50 frames (~20 rows each).
    assert np.bincount(starts, minlength=50).min() > 5
    assert np.asarray(num_span_starts(jnp.asarray([0.0, -1.0, 2.0]), 50, SPAN)).tolist() == [1, 1, 50]


def test_pure_jittable_and_vmappable():
    rate = jnp.asarray([0.2, 0.5, 0.8], jnp.float32)
    a = span_mask(key(1), rate, 50, SPAN)
    np.testing.assert_array_equal(a, span_mask(key(1), rate, 50, SPAN))
    assert a.shape == (3, 50) and a.dtype == jnp.bool_
    assert not np.array_equal(a, span_mask(key(2), rate, 50, SPAN))
    keys = jax.random.split(key(4), 2)
    batched = jax.vmap(lambda k, r: span_mask(k, r, 50, SPAN))(keys, jnp.stack([rate, rate]))
    np.testing.assert_array_equal(batched[0], span_mask(keys[0], rate, 50, SPAN))
    traced = jax.jit(lambda r: num_span_starts(r, 50, SPAN))(rate)
    np.testing.assert_array_equal(traced, span_starts_table(50, SPAN)[[200, 500, 800]])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rate must be a 1-D"):
        span_mask(key(0), jnp.zeros((2, 2)), 50, SPAN)
    with pytest.raises(ValueError, match="span_length"):
        span_mask(key(0), jnp.zeros(2), 2, SPAN)
    with pytest.raises(ValueError, match="num_frames"):
        span_starts_table(0, 1)
    with pytest.raises(ValueError, match="resolution"):
        span_starts_table(50, SPAN, 0)
