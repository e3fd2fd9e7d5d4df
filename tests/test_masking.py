"""Mask generators: exact counts, uniform coverage, visible indices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgen.masking import num_masked, random_mask, visible_indices


@pytest.mark.parametrize("positions,ratio", [(64, 0.75), (16, 0.5), (10, 0.33), (196, 0.75), (7, 0.9)])
def test_random_mask_has_exact_masked_count(positions, ratio):
    mask = random_mask(jax.random.key(0), (32, positions), ratio)
    assert mask.shape == (32, positions) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(mask).sum(1), num_masked(positions, ratio))


def test_num_masked_rounds_and_clamps():
    assert num_masked(64, 0.75) == 48
    assert num_masked(10, 0.33) == 3
    assert num_masked(4, 1.5) == 4 and num_masked(4, -1.0) == 0


def test_random_mask_is_uniform_over_positions():
    # 4000 rows x 16 positions at ratio 0.25: each position is masked with p = 0.25.
    mask = np.asarray(random_mask(jax.random.key(1), (4000, 16), 0.25))
    freq = mask.mean(0)
    # Binomial std of a frequency over 4000 draws is sqrt(.25*.75/4000) ~ 0.0068; allow 5 sigma.
    assert np.all(np.abs(freq - 0.25) < 0.035), freq
    # Different keys give different masks; the same key gives the same mask.
    a = random_mask(jax.random.key(2), (4, 16), 0.5)
    assert np.array_equal(a, random_mask(jax.random.key(2), (4, 16), 0.5))
    assert not np.array_equal(a, random_mask(jax.random.key(3), (4, 16), 0.5))


def test_visible_indices_lists_unmasked_positions_in_order():
    mask = jnp.array([[True, False, True, False, False], [False, True, True, True, False]])
    np.testing.assert_array_equal(visible_indices(mask[:1], 3), [[1, 3, 4]])
    np.testing.assert_array_equal(visible_indices(mask[1:], 2), [[0, 4]])
