"""Categorical sampling: correct frequencies, temperature, and the float32 Gumbel-truncation failure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgen.sampling import gumbel_noise, sample_categorical


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_frequencies_match_probabilities(precision):
    logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    ids = np.asarray(sample_categorical(jax.random.key(0), jnp.broadcast_to(logits, (40000, 4)), 1.0, precision))
    freq = np.bincount(ids, minlength=4) / len(ids)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.01)  # ~4 binomial sigmas


def test_temperature_sharpens_and_flattens():
    logits = jnp.broadcast_to(jnp.log(jnp.array([0.7, 0.3])), (20000, 2))
    cold = np.asarray(sample_categorical(jax.random.key(1), logits, 0.25)).mean()
    hot = np.asarray(sample_categorical(jax.random.key(1), logits, 4.0)).mean()
    # p(1) at T: 0.3^(1/T) / (0.7^(1/T) + 0.3^(1/T))
    assert cold == pytest.approx(0.3 ** 4 / (0.7 ** 4 + 0.3 ** 4), abs=0.01)
    assert hot == pytest.approx(0.3 ** 0.25 / (0.7 ** 0.25 + 0.3 ** 0.25), abs=0.015)


def test_gumbel_tail_reaches_beyond_float32_resolution():
    g64 = np.asarray(gumbel_noise(jax.random.key(2), (1 << 22,)))
    g32 = np.asarray(gumbel_noise(jax.random.key(2), (1 << 22,), "float32"))
    assert np.isfinite(g64).all() and abs(g64.mean() - 0.5772) < 0.01  # Euler-Mascheroni mean
    # float32 uniforms have 2^-23 resolution below 1: the noise can never pass -log(2^-23) ~ 15.94.
    assert g32.max() <= 15.95
    with pytest.raises(ValueError, match="unknown sampling precision"):
        gumbel_noise(jax.random.key(0), (2,), "float16")


def test_rare_tokens_are_starved_in_float32_but_not_by_default():
    """65,536 rare tokens, each 17 nats below a dominant one: together they hold 0.27% of the mass.

    Drawing one of them needs Gumbel noise above ~17 for some rare token, past float32's ceiling
    (~15.9), so float32 sampling almost never returns one; the default precision does, at the
    true rate (Zheng et al., arXiv 2409.02908).
    """
    vocab, gap, draws = 1 << 16, 17.0, 4000
    logits = jnp.concatenate([jnp.zeros((1,)), jnp.full((vocab,), -gap)])
    p_rare = vocab * np.exp(-gap) / (1 + vocab * np.exp(-gap))

    def rare_count(precision):
        sample = lambda k: sample_categorical(k, logits, 1.0, precision)  # noqa: E731
        ids = jax.jit(lambda k: jax.lax.map(sample, jax.random.split(k, draws), batch_size=100))(jax.random.key(3))
        return int((np.asarray(ids) > 0).sum())

    expected, sigma = draws * p_rare, np.sqrt(draws * p_rare)  # ~10.8 +- 3.3
    default, plain = rare_count("float64"), rare_count("float32")
    assert abs(default - expected) < 4 * sigma, (default, expected)
    assert plain <= expected / 3, (plain, expected)


def test_safe_noise_transform_is_accurate_across_the_whole_range():
    """-log(1 - v) without log1p (the fast path of the default precision) vs float64 numpy."""
    from maskgen.sampling.categorical import _neg_log1m

    v = np.geomspace(2.0 ** -64, 1 - 2.0 ** -24, 200_001).astype(np.float32)
    exact = -np.log1p(-v.astype(np.float64))
    got = np.asarray(jax.jit(_neg_log1m)(v), np.float64)
    assert np.max(np.abs(got - exact) / exact) < 1e-5
