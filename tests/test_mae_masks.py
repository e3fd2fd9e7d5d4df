"""The MAE family's mask generators: ColorMAE's filtered-noise masks (exact count, spectral colour,
windows of the fields), GMML's group masks and HPM's hard-patch masks and relative loss."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgen.masking import (COLORS, color_mask, group_mask, hard_patch_mask, hard_share, noise_fields, random_mask,
                             relative_loss)
from maskgen.masking.colored_noise import color_transfer

# ------------------------------------------------------------------------------ ColorMAE


@pytest.mark.parametrize("grid,count", [((4, 4), 12), ((6, 10), 45), ((14, 14), 147)])
def test_color_mask_has_exact_count(grid, count):
    positions = grid[0] * grid[1]
    for color in ("green", "red"):
        mask = np.asarray(color_mask(jax.random.key(0), noise_fields(color, size=16), 64, grid, count))
        assert mask.shape == (64, positions) and mask.dtype == np.bool_
        np.testing.assert_array_equal(mask.sum(1), count)


def test_noise_fields_are_normalised_cached_and_coloured():
    fields = noise_fields("green", count=4, size=32, seed=3)
    assert fields.shape == (4, 32, 32) and fields.dtype == np.float32 and not fields.flags.writeable
    assert noise_fields("green", count=4, size=32, seed=3) is fields
    np.testing.assert_allclose(fields.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(fields.std(axis=(1, 2)), 1.0, atol=1e-4)
    assert not np.array_equal(fields, noise_fields("green", count=4, size=32, seed=4))
    # Each field's power spectrum follows the filter's |H|^2 (white noise times the filter),
    # compared radially (1/32-cycle rings) to average out the noise of single frequencies.
    freq = np.fft.fftfreq(32)
    ring = np.round(np.hypot(freq[:, None], freq[None, :]) * 32).astype(int)
    for color in COLORS:
        power = (np.abs(np.fft.fft2(noise_fields(color, count=16, size=32))) ** 2).mean(0)
        response = color_transfer(color, 32) ** 2
        radial_power, radial_response = (np.array([x[ring == k].mean() for k in range(1, 23)])
                                         for x in (power, response))
        assert np.corrcoef(radial_power, radial_response)[0, 1] > 0.97, color
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        noise_fields("pink")


def _windows_of(field, grid):
    """Every rows x cols window of a periodic field under every allowed symmetry (numpy reference)."""
    rows, cols = grid
    size = field.shape[0]
    tiled = np.tile(field, (2, 2))
    symmetries = [(t, v, h) for t in ((False, True) if rows == cols else (False,)) for v in (0, 1) for h in (0, 1)]
    for top, left in itertools.product(range(size), range(size)):
        window = tiled[top:top + rows, left:left + cols]
        for transpose, flip_v, flip_h in symmetries:
            # Output position (i, j) reads source (a, b): transpose first, then flips (as color_mask).
            a, b = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            if transpose:
                a, b = b, a
            a = rows - 1 - a if flip_v else a
            b = cols - 1 - b if flip_h else b
            yield window[a, b].ravel()


@pytest.mark.parametrize("grid", [(3, 3), (2, 4)])
def test_color_mask_masks_the_lowest_values_of_a_flipped_window(grid):
    # One 6x6 field: every row must be the `count` lowest values of some window (wrapping around)
    # under a flip/transpose; and over draws several different windows/symmetries appear.
    field = np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32)
    count = 4
    candidates = {tuple(np.argsort(np.argsort(w)) < count) for w in _windows_of(field, grid)}
    masks = np.asarray(color_mask(jax.random.key(1), field[None], 64, grid, count))
    rows_seen = {tuple(m) for m in masks}
    assert rows_seen <= candidates
    assert len(rows_seen) > 10


def test_color_masks_vary_between_rows_and_keys():
    # The spectral tests' shapes, so the compiled function is shared.
    fields = noise_fields("green")
    a = np.asarray(color_mask(jax.random.key(2), fields, 256, (16, 16), 192))
    assert len({tuple(m) for m in a}) == 256
    np.testing.assert_array_equal(a, color_mask(jax.random.key(2), fields, 256, (16, 16), 192))
    assert not np.array_equal(a, color_mask(jax.random.key(3), fields, 256, (16, 16), 192))


def test_color_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="must fit the 16x16 noise fields"):
        color_mask(jax.random.key(0), noise_fields("red", size=16), 2, (20, 20), 10)
    with pytest.raises(ValueError, match="count=17 must be in"):
        color_mask(jax.random.key(0), noise_fields("red", size=16), 2, (4, 4), 17)


SPECTRUM_GRID = 16
# Radial frequency bins of a 16x16 grid, in units of 1/16 cycle per patch.
_FREQ = np.fft.fftfreq(SPECTRUM_GRID)
_RADIUS = np.round(np.hypot(_FREQ[:, None], _FREQ[None, :]) * SPECTRUM_GRID).astype(int)
BANDS = {"low": (_RADIUS >= 1) & (_RADIUS <= 2), "mid": (_RADIUS >= 3) & (_RADIUS <= 4), "high": _RADIUS >= 8}


def _band_shares(masks):
    """Share of the (mean-removed) power of 0/1 mask images in each band, averaged over the masks."""
    images = masks.reshape(-1, SPECTRUM_GRID, SPECTRUM_GRID).astype(np.float64)
    images -= images.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(images)) ** 2).mean(0)
    return {band: power[where].sum() / power.sum() for band, where in BANDS.items()}


@pytest.fixture(scope="module")
def colour_vs_random():
    """Band shares of each colour's masks divided by those of random masks at the same 75% ratio."""
    positions = SPECTRUM_GRID ** 2
    count = 192
    random_shares = _band_shares(np.asarray(random_mask(jax.random.key(9), (256, positions), count / positions)))
    relative = {}
    for color in COLORS:
        masks = np.asarray(color_mask(jax.random.key(8), noise_fields(color), 256, (SPECTRUM_GRID,) * 2, count))
        shares = _band_shares(masks)
        relative[color] = {band: shares[band] / random_shares[band] for band in BANDS}
    return relative


def test_red_masks_concentrate_power_at_low_frequencies(colour_vs_random):
    red = colour_vs_random["red"]  # measured: low ~6.8x random, high ~0.21x
    assert red["low"] > 4.0 and red["high"] < 0.4, red


def test_blue_masks_concentrate_power_at_high_frequencies(colour_vs_random):
    blue = colour_vs_random["blue"]  # measured: low ~0.55x, high ~1.28x
    assert blue["high"] > 1.15 and blue["low"] < 0.75, blue


def test_green_masks_peak_in_the_middle_band(colour_vs_random):
    green = colour_vs_random["green"]  # measured: low ~1.25x, mid ~1.83x, high ~0.5x
    assert green["mid"] > 1.5 and green["mid"] > 1.3 * green["low"] and green["mid"] > 2.5 * green["high"], green


def test_purple_masks_are_depleted_in_the_middle_band(colour_vs_random):
    purple = colour_vs_random["purple"]  # measured: low ~0.96x, mid ~0.76x, high ~1.2x
    assert purple["mid"] < 0.88 and purple["low"] > purple["mid"] + 0.1 and purple["high"] > purple["mid"] + 0.2, purple


# ------------------------------------------------------------------------------ GMML


def _masked_neighbours(masks, grid):
    """Mean number of masked 4-neighbours of a masked patch."""
    rows, cols = grid
    images = np.pad(masks.reshape(-1, rows, cols), ((0, 0), (1, 1), (1, 1))).astype(int)
    neighbours = images[:, :-2, 1:-1] + images[:, 2:, 1:-1] + images[:, 1:-1, :-2] + images[:, 1:-1, 2:]
    centre = images[:, 1:-1, 1:-1]
    return (neighbours * centre).sum() / centre.sum()


GROUP_GRID = (12, 12)


@pytest.fixture(scope="module")
def group_masks():
    return np.asarray(group_mask(jax.random.key(0), 1000, GROUP_GRID, 0.2, 0.4))


def test_group_mask_counts_are_uniform_in_range_and_cover_every_patch(group_masks):
    counts = group_masks.sum(1)
    low, high = round(0.2 * 144), round(0.4 * 144)
    assert counts.min() == low and counts.max() == high  # the whole range is drawn, never beyond
    assert abs(counts.mean() - (low + high) / 2) < 1.5  # std of the mean ~ 8.4 / sqrt(1000) = 0.27
    # Blocks may hang over the edges, so corner and centre patches are masked equally often.
    frequency = group_masks.mean(0)
    assert np.abs(frequency - counts.mean() / 144).max() < 0.07, frequency.reshape(GROUP_GRID)


def test_group_mask_clusters_patches(group_masks):
    scattered = np.asarray(random_mask(jax.random.key(2), (1000, 144), 0.3))
    clustered, spread = _masked_neighbours(group_masks, GROUP_GRID), _masked_neighbours(scattered, GROUP_GRID)
    assert clustered > 1.8 * spread, (clustered, spread)


def test_group_mask_rejects_bad_ratios():
    with pytest.raises(ValueError, match="min_ratio <= max_ratio"):
        group_mask(jax.random.key(0), 2, (4, 4), 0.8, 0.5)


# ------------------------------------------------------------------------------ HPM

HPM_SCORES = np.random.default_rng(10).standard_normal((4000, 16)).astype(np.float32)
HPM_SCORE_ORDER = np.argsort(-HPM_SCORES, axis=1)  # column k: each row's k-th highest position


def _by_score_rank(mask):
    """mask [B, N] reordered so that column k is each row's k-th highest-scored position."""
    return np.take_along_axis(np.asarray(mask), HPM_SCORE_ORDER, axis=1)


def test_hard_patch_mask_with_full_share_is_the_top_scores():
    ranked = _by_score_rank(hard_patch_mask(jax.random.key(1), HPM_SCORES, 4, 1.0))
    assert ranked[:, :4].all() and not ranked[:, 4:].any()


def test_hard_patch_mask_with_zero_share_ignores_scores():
    mask = np.asarray(hard_patch_mask(jax.random.key(2), HPM_SCORES, 4, 0.0))
    np.testing.assert_array_equal(mask.sum(1), 4)
    # Binomial std of a frequency over 4000 rows: sqrt(.25 * .75 / 4000) ~ 0.0068; allow 5 sigma,
    # both per position and per score rank (the scores make no difference).
    assert np.abs(mask.mean(0) - 0.25).max() < 0.035, mask.mean(0)
    assert np.abs(_by_score_rank(mask).mean(0) - 0.25).max() < 0.035


def test_hard_patch_mask_half_share_masks_the_top_half_and_random_rest():
    mask = hard_patch_mask(jax.random.key(3), HPM_SCORES, 4, 0.5)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), 4)
    ranked = _by_score_rank(mask)
    assert ranked[:, :2].all()  # round(0.5 * 4) = 2 hardest always masked
    # The other 2 masked positions are uniform over the 14 others: 1/7 each.
    assert np.abs(ranked[:, 2:].mean(0) - 2 / 14).max() < 0.03, ranked.mean(0)


def test_hard_patch_mask_takes_a_traced_share():
    scores = HPM_SCORES[:8]
    masked = jax.jit(lambda share: hard_patch_mask(jax.random.key(5), scores, 5, share))
    for share in (0.0, 0.5, 1.0):
        traced = np.asarray(masked(jnp.float32(share)))
        np.testing.assert_array_equal(traced.sum(1), 5)
        np.testing.assert_array_equal(traced, hard_patch_mask(jax.random.key(5), scores, 5, share))
    # round(0.5 * 5) = 2 (half to even, as Python's round): the top 2 are masked, not necessarily the 3rd.
    top = np.take_along_axis(np.asarray(masked(jnp.float32(0.5))), HPM_SCORE_ORDER[:8], axis=1)
    assert top[:, :2].all()


def test_hard_share_rises_linearly_to_its_maximum():
    np.testing.assert_allclose([float(hard_share(s, 100)) for s in (0, 50, 100, 150, -5)], [0.0, 0.25, 0.5, 0.5, 0.0])
    assert float(jax.jit(lambda s: hard_share(s, 200, 0.8))(jnp.int32(50))) == pytest.approx(0.2)
    assert hard_share(3, 10).dtype == jnp.float32


def test_relative_loss_matches_a_hand_computed_example():
    predicted = jnp.array([[0.0, 1.0, -1.0]])
    true = jnp.array([[1.0, 3.0, 2.0]])
    mask = jnp.ones((1, 3), bool)
    # Pairs (harder, easier): (1, 0) margin 1, (2, 0) margin -1, (1, 2) margin 2; loss log(1 + e^-margin).
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1)) + math.log1p(math.exp(-2))) / 3
    assert float(relative_loss(predicted, true, mask)) == pytest.approx(expected, rel=1e-6)
    # Only patches 0 and 1 masked: the single pair (1, 0).
    only_two = jnp.array([[True, True, False]])
    assert float(relative_loss(predicted, true, only_two)) == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)
    assert float(relative_loss(predicted, true, jnp.zeros((1, 3), bool))) == 0.0


RANK_TRUE = np.random.default_rng(0).uniform(size=(4, 12)).astype(np.float32)
RANK_MASK = np.random.default_rng(1).uniform(size=(4, 12)) < 0.6


def test_relative_loss_prefers_the_true_ranking_and_ignores_unmasked_patches():
    agree = relative_loss(3 * RANK_TRUE, RANK_TRUE, RANK_MASK)
    reverse = relative_loss(-3 * RANK_TRUE, RANK_TRUE, RANK_MASK)
    assert float(agree) < float(reverse)
    # Changing the prediction or the true loss of unmasked patches changes nothing.
    noise = jax.random.normal(jax.random.key(2), (4, 12))
    shuffled = relative_loss(jnp.where(RANK_MASK, 3 * RANK_TRUE, noise), jnp.where(RANK_MASK, RANK_TRUE, -noise),
                             RANK_MASK)
    assert float(shuffled) == pytest.approx(float(agree), rel=1e-6)


def test_relative_loss_gradient_reaches_only_the_prediction():
    predicted = jax.random.normal(jax.random.key(4), (4, 12))
    grad_true = jax.grad(lambda t: relative_loss(predicted, t, RANK_MASK))(RANK_TRUE)
    np.testing.assert_array_equal(grad_true, 0.0)
    grad_pred = np.asarray(jax.grad(lambda p: relative_loss(p, RANK_TRUE, RANK_MASK))(predicted))
    mask = np.asarray(RANK_MASK)
    assert np.all(grad_pred[~mask] == 0.0) and np.any(grad_pred[mask] != 0.0)
    # A central finite difference on the masked prediction with the largest gradient (a wide step:
    # the loss is smooth and float32 differences of a small one are mostly rounding).
    row, col = np.unravel_index(np.argmax(np.abs(grad_pred)), grad_pred.shape)
    step = jnp.zeros_like(predicted).at[row, col].set(0.02)
    numeric = (relative_loss(predicted + step, RANK_TRUE, RANK_MASK)
               - relative_loss(predicted - step, RANK_TRUE, RANK_MASK)) / 0.04
    assert float(grad_pred[row, col]) == pytest.approx(float(numeric), rel=2e-2)
