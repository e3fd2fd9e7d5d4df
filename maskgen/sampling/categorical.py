"""Categorical sampling that keeps the Gumbel tail: 64-bit-resolution uniforms in float32 math.

Zheng et al. (arXiv 2409.02908) show that Gumbel-max sampling in float32 truncates the Gumbel
noise (uniforms have 2^-23 resolution, so the noise never exceeds about 16), which lowers the
effective temperature and starves rare tokens. Here the uniform comes from 64 random bits: the
noise is G = -log(-log(1 - v)) with v = 1 - u built from two uint32 words, so v (and thus the
top of the Gumbel tail, up to about 44) keeps full resolution near 0, without enabling x64.
The low word is shared along the vocabulary axis (see `gumbel_noise`), so the safe default costs
little more than float32 sampling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PRECISIONS = ("float64", "float32")


def gumbel_noise(rng: jax.Array, shape, precision: str = "float64") -> jax.Array:
    """Standard Gumbel noise (float32 values). precision="float32" is plain `jax.random.gumbel`."""
    if precision == "float32":
        return jax.random.gumbel(rng, shape, jnp.float32)
    if precision != "float64":
        raise ValueError(f"unknown sampling precision {precision!r}; valid: {PRECISIONS}")
    shape = tuple(shape)
    hi_key, lo_key = jax.random.split(rng)
    hi = jax.random.bits(hi_key, shape, jnp.uint32).astype(jnp.float32)
    # The low word only matters where the high word is 0 (probability 2^-32), so one low word is
    # drawn per row of the last (vocabulary) axis and shared along it: every draw keeps its exact
    # 64-bit-resolution marginal, and two draws of a row depend on each other only when both high
    # words are 0 (probability 2^-64 per pair). This costs ~1/V more random bits instead of 2x,
    # which kept the safe default within 10% of plain float32 sampling (benchmarks/sampling_precision.py).
    lo = jax.random.bits(lo_key, shape[:-1] + (1,), jnp.uint32).astype(jnp.float32) if shape else \
        jax.random.bits(lo_key, (), jnp.uint32).astype(jnp.float32)
    # v = 1 - u in (0, 1): 64-bit resolution near 0, where the large Gumbel values come from.
    v = hi * 2.0 ** -32 + (lo + 0.5) * 2.0 ** -64
    v = jnp.minimum(v, 1.0 - 2.0 ** -24)
    return -jnp.log(_neg_log1m(v))


def _neg_log1m(v: jax.Array) -> jax.Array:
    """-log(1 - v) for v in (0, 1), to ~2e-6 relative, without log1p.

    XLA:CPU's log1p costs about as much as the rest of the sampling step; below 2^-6 a 5-term
    series (error < v^5/6 relative) keeps the full resolution near 0 that the Gumbel tail needs,
    and above it 1 - v is exact to 2^-25, so a plain log loses < 2^-19 relative.
    """
    series = v * (1 + v * (1 / 2 + v * (1 / 3 + v * (1 / 4 + v / 5))))
    return jnp.where(v < 2.0 ** -6, series, -jnp.log(1 - v))


def nucleus_mask(logits: jax.Array, top_p: float | jax.Array) -> jax.Array:
    """bool [..., V]: the top-p nucleus of softmax(logits) over the last axis (Holtzman et al.,
    arXiv 1904.09751): the most probable tokens, in decreasing order, up to and including the
    first one that brings the cumulative probability to >= top_p. Every token tied in probability
    with the last one kept is kept too, so the set does not depend on how a sort orders ties.
    The most probable token is always in it."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    descending = -jnp.sort(-probs, axis=-1)
    # Probability of the tokens ranked strictly above each one (an exclusive cumulative sum).
    mass_above = jnp.cumsum(descending, axis=-1) - descending
    in_nucleus = mass_above < jnp.asarray(top_p, jnp.float32)
    in_nucleus = in_nucleus.at[..., 0].set(True)
    threshold = jnp.min(jnp.where(in_nucleus, descending, jnp.inf), axis=-1, keepdims=True)
    return probs >= threshold


def sample_categorical(rng: jax.Array, logits: jax.Array, temperature: float | jax.Array = 1.0,
                       precision: str = "float64", top_p: float | jax.Array = 1.0) -> jax.Array:
    """Samples ids from softmax(logits / temperature) over the last axis (Gumbel-max).

    top_p < 1 restricts the draw to the nucleus of the tempered distribution (`nucleus_mask`),
    renormalised (MAGNeT samples with top_p = 0.9, arXiv 2401.04577). A Python top_p of 1.0 (the
    default) skips the restriction entirely, so the samples are bit-identical to before.
    """
    if isinstance(top_p, (int, float)) and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    logits = logits.astype(jnp.float32) / jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-8)
    if not (isinstance(top_p, (int, float)) and top_p == 1.0):
        logits = jnp.where(nucleus_mask(logits, top_p), logits, -jnp.inf)
    return jnp.argmax(logits + gumbel_noise(rng, logits.shape, precision), axis=-1).astype(jnp.int32)
