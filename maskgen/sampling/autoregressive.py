"""Left-to-right autoregressive sampling from a causal `TokenTransformer`, optionally continuing a prompt.

The AR baseline that MaskGIT (Chang et al., arXiv 2202.04200) compares its parallel decoding
against: one position per step, N steps for N positions (raster order for image grids, reading
order for text; all K codebook streams of a position at once). Classifier-free guidance follows
Ho & Salimans (arXiv 2207.12598): logits = uncond + cfg_scale * (cond - uncond), with the
unconditional pass using the model's learned null label and batched together with the
conditional one. An unconditional model (labels None) has nothing to guide.

A prompt is teacher-forced: positions i < prompt_length hold the prompt's tokens (the model's
samples there are discarded), so later positions are sampled conditioned on it.

`use_cache=True` feeds one element per step through the KV cache (`decode_step`);
`use_cache=False` is the reference that re-runs the full causal forward every step. Both draw the
token at position i with `jax.random.fold_in(rng, i)`, so for a fixed rng they sample the same
tokens (up to float rounding of near-ties).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskgen.sampling.categorical import sample_categorical


def autoregressive_decode(model, labels: jax.Array | None, rng: jax.Array, *, batch_size: int | None = None,
                          prompt: jax.Array | None = None, prompt_length: jax.Array | None = None,
                          temperature: float = 1.0, cfg_scale: float = 1.0, precision: str = "float64",
                          use_cache: bool = True) -> jax.Array:
    """Samples int32 tokens [B, N] ([B, N, K] with K streams) left to right.

    model: a TokenTransformer with causal=True (e.g. `nnx.merge(graphdef, params)`; works inside jit).
    labels: int [B] classes, or None for an unconditional model (then give `batch_size` or `prompt`).
    prompt: int [B, P(, K)], P <= N: tokens forced at the first positions of each row.
    prompt_length: int [B], how many leading prompt positions of each row are forced (default P);
      lets rows of one batch continue prompts of different lengths.
    cfg_scale: guidance scale; the Python float 1.0 skips the unconditional pass, 0.0 samples from
      the null label. A traced cfg_scale always runs both passes.
    """
    if not getattr(model, "causal", False):
        raise ValueError("autoregressive_decode needs a causal TokenTransformer (causal=True)")
    num_tokens, streams = model.num_tokens, (() if model.num_streams == 1 else (model.num_streams,))
    if labels is not None:
        labels = jnp.asarray(labels, jnp.int32)
        batch = labels.shape[0]
    elif prompt is not None:
        batch = prompt.shape[0]
    elif batch_size is not None:
        batch = int(batch_size)
    else:
        raise ValueError("an unconditional decode (labels=None) needs batch_size= or a prompt")
    if batch_size is not None and batch_size != batch:
        raise ValueError(f"batch_size={batch_size} disagrees with the labels/prompt batch {batch}")

    if prompt is None:
        forced_len = jnp.zeros((batch,), jnp.int32)
        forced = jnp.zeros((batch, num_tokens) + streams, jnp.int32)
    else:
        prompt = jnp.asarray(prompt, jnp.int32)
        if prompt.ndim != 2 + len(streams) or prompt.shape[0] != batch or prompt.shape[2:] != streams \
                or not 0 < prompt.shape[1] <= num_tokens:
            raise ValueError(f"prompt must be [B={batch}, P{', ' + str(streams[0]) if streams else ''}] with "
                             f"0 < P <= {num_tokens}, got shape {prompt.shape}")
        pad = [(0, 0), (0, num_tokens - prompt.shape[1])] + [(0, 0)] * len(streams)
        forced = jnp.pad(prompt, pad)
        forced_len = (jnp.full((batch,), prompt.shape[1], jnp.int32) if prompt_length is None
                      else jnp.minimum(jnp.asarray(prompt_length, jnp.int32), prompt.shape[1]))

    guided = not (isinstance(cfg_scale, (int, float)) and cfg_scale == 1.0)
    if guided and labels is None:
        raise ValueError("classifier-free guidance (cfg_scale != 1.0) needs labels; an unconditional model has "
                         "no condition to guide")
    if guided:  # conditional rows first, unconditional (null-label) rows second
        model_labels = jnp.concatenate([labels, jnp.full_like(labels, model.null_class)])
    else:
        model_labels = labels
    model_batch = 2 * batch if guided else batch

    def sample(i, logits):
        """Guided logits [B(, K), V] for position i -> ids [B(, K)], the prompt's where it is forced."""
        if guided:
            cond, uncond = logits[:batch], logits[batch:]
            logits = uncond + cfg_scale * (cond - uncond)
        new = sample_categorical(jax.random.fold_in(rng, i), logits, temperature, precision)
        keep = (i < forced_len).reshape((batch,) + (1,) * len(streams))
        return jnp.where(keep, jax.lax.dynamic_index_in_dim(forced, i, axis=1, keepdims=False), new)

    def repeat(x):
        return jnp.concatenate([x, x]) if guided else x

    tokens = jnp.zeros((batch, num_tokens) + streams, jnp.int32)
    if use_cache:
        def step(i, carry):
            cache, prev, tokens = carry
            # At i = 0 the start element is fed and `prev` is ignored; afterwards it is token i-1.
            logits, cache = model.decode_step(cache, repeat(prev), i, model_labels)
            new = sample(i, logits)
            return cache, new, tokens.at[:, i].set(new)

        carry = (model.init_cache(model_batch), jnp.zeros((batch,) + streams, jnp.int32), tokens)
        return jax.lax.fori_loop(0, num_tokens, step, carry)[2]

    def full_step(i, tokens):
        # Positions >= i of `tokens` are still 0; causal masking keeps them out of logits[:, i].
        logits = jax.lax.dynamic_index_in_dim(model(repeat(tokens), model_labels), i, axis=1, keepdims=False)
        return tokens.at[:, i].set(sample(i, logits))

    return jax.lax.fori_loop(0, num_tokens, full_step, tokens)
