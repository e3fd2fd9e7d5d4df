"""Raster-order autoregressive sampling from a causal `TokenTransformer`.

The AR baseline that MaskGIT (Chang et al., arXiv 2202.04200) compares its parallel decoding
against: one token per step, N steps for N tokens. Classifier-free guidance follows Ho & Salimans
(arXiv 2207.12598): logits = uncond + cfg_scale * (cond - uncond), with the unconditional pass
using the model's learned null label and batched together with the conditional one.

`use_cache=True` feeds one element per step through the KV cache (`decode_step`);
`use_cache=False` is the reference that re-runs the full causal forward every step. Both draw the
token at position i with `jax.random.fold_in(rng, i)`, so for a fixed rng they sample the same
tokens (up to float rounding of near-ties).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskgen.sampling.categorical import sample_categorical


def autoregressive_decode(model, labels: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
                          cfg_scale: float = 1.0, precision: str = "float64", use_cache: bool = True) -> jax.Array:
    """Samples int32 tokens [B, N] in raster order for class `labels` int [B].

    model: a TokenTransformer with causal=True (e.g. `nnx.merge(graphdef, params)`; works inside jit).
    cfg_scale: guidance scale; the Python float 1.0 skips the unconditional pass, 0.0 samples from
      the null label. A traced cfg_scale always runs both passes.
    """
    if not getattr(model, "causal", False):
        raise ValueError("autoregressive_decode needs a causal TokenTransformer (causal=True)")
    labels = jnp.asarray(labels, jnp.int32)
    batch, num_tokens = labels.shape[0], model.num_tokens
    guided = not (isinstance(cfg_scale, (int, float)) and cfg_scale == 1.0)
    if guided:  # conditional rows first, unconditional (null-label) rows second
        model_labels = jnp.concatenate([labels, jnp.full_like(labels, model.null_class)])
    else:
        model_labels = labels

    def sample(i, logits):
        """Guided logits [B, V] for position i -> sampled ids [B]."""
        if guided:
            cond, uncond = logits[:batch], logits[batch:]
            logits = uncond + cfg_scale * (cond - uncond)
        return sample_categorical(jax.random.fold_in(rng, i), logits, temperature, precision)

    def repeat(x):
        return jnp.concatenate([x, x]) if guided else x

    tokens = jnp.zeros((batch, num_tokens), jnp.int32)
    if use_cache:
        def step(i, carry):
            cache, prev, tokens = carry
            # At i = 0 the start element is fed and `prev` is ignored; afterwards it is token i-1.
            logits, cache = model.decode_step(cache, repeat(prev), i, model_labels)
            new = sample(i, logits)
            return cache, new, tokens.at[:, i].set(new)

        carry = (model.init_cache(model_labels.shape[0]), jnp.zeros((batch,), jnp.int32), tokens)
        return jax.lax.fori_loop(0, num_tokens, step, carry)[2]

    def full_step(i, tokens):
        # Positions >= i of `tokens` are still 0; causal masking keeps them out of logits[:, i].
        logits = jax.lax.dynamic_index_in_dim(model(repeat(tokens), model_labels), i, axis=1, keepdims=False)
        return tokens.at[:, i].set(sample(i, logits))

    return jax.lax.fori_loop(0, num_tokens, full_step, tokens)
