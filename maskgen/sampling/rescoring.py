"""The autoregressive model's two roles in MAGNeT decoding: rescoring and the hybrid prefix.

MAGNeT (Ziv et al., "Masked Audio Generation using a Single Non-Autoregressive Transformer", arXiv
2401.04577, Sec. 3.3 "Model rescoring") re-masks, at each decoding step, the tokens the models are
least sure of, where the certainty mixes the masked model's probability of its sample with that of
an external autoregressive model scoring the whole candidate sequence:
p = w * p_masked + (1 - w) * p_AR, w = 0.7 in the paper. `iterative_decode` does the mixing
(`score_fn`, `score_weight`); this module gives the AR side: the teacher-forced log p of every
token of a candidate, from a causal `TokenTransformer` (maskgen's `autoregressive` recipe, with K
code streams for a codec's [T, K] frames).

The AR model factorises p(x) = prod_t p(x_t | x_<t, label) over frames, the K tokens of frame t
predicted together from the frames before it (MusicGen's "parallel" pattern, arXiv 2306.05284), so
the score of token (t, k) depends on the label and on every stream of frames < t, never on frame t
itself: a caller scoring one level of a partly decoded candidate should fill the other levels (the
AR model was never shown [MASK] ids).

Hybrid-MAGNeT (Sec. 3.4; not released either): the AR model writes the first frames (`ar_prefix`,
e.g. the first seconds), and the masked model decodes the rest in parallel with them as a known
prompt, never re-masked (`hybrid_decode`). The prefix is sampled exactly as `autoregressive_decode`
samples those frames (same guidance, same per-position keys), so it equals the first frames of a
full AR decode with the same key.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from maskgen.sampling.categorical import sample_categorical


def teacher_forced_log_probs(model, tokens: jax.Array, labels: jax.Array | None) -> jax.Array:
    """log p(tokens[b, i] | tokens[b, :i], labels[b]) of a causal TokenTransformer: float32 of
    `tokens`' shape ([B, N] or [B, N, K] with K streams, or [B, *token_shape(, K)]).

    One forward pass (teacher forcing); no label smoothing, no guidance."""
    tokens = jnp.asarray(tokens, jnp.int32)
    log_probs = jax.nn.log_softmax(model(tokens, labels).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


def ar_rescorer(model, labels: jax.Array | None) -> Callable[[jax.Array], jax.Array]:
    """The `score_fn` MAGNeT passes to `iterative_decode`: tokens int32 [B, T, K] -> float32 [B, T, K],
    each token's teacher-forced log-probability under the AR `model` for the class `labels` [B]
    (None for an unconditional AR model).

    `model` is a causal TokenTransformer (e.g. `nnx.merge(graphdef, params)` of an `autoregressive`
    run; pure, so it works inside `jax.jit`). Its positions and streams must match the tokens': the
    error names both when they do not.
    """
    if not getattr(model, "causal", False):
        raise ValueError("ar_rescorer needs a causal TokenTransformer (an `autoregressive` run); this model is "
                         "bidirectional")
    streams = (model.num_streams,) if model.num_streams > 1 else ()
    expected = (model.num_tokens,) + streams

    def score(tokens: jax.Array) -> jax.Array:
        if tuple(tokens.shape[1:]) not in (expected, tuple(model.token_shape) + streams):
            raise ValueError(f"the AR rescorer models tokens {expected} per example (positions, streams), "
                             f"the candidates are {tuple(tokens.shape[1:])}: train the AR run on the same codec "
                             "tokens (frames and levels) as the masked model")
        return teacher_forced_log_probs(model, tokens, labels)

    return score


def ar_prefix(model, labels: jax.Array | None, rng: jax.Array, *, num_positions: int, batch_size: int | None = None,
              temperature: float = 1.0, cfg_scale: float = 1.0, precision: str = "float64") -> jax.Array:
    """The first `num_positions` frames of an AR sample: int32 [B, P] ([B, P, K] with K streams).

    P cached decode steps of a causal TokenTransformer, sampled as `autoregressive_decode` samples
    positions 0..P-1 (CFG with the null label batched in, `fold_in(rng, i)` per position), so for
    the same `rng` the result equals that decode's first P frames, at P/N of its network calls.
    """
    if not getattr(model, "causal", False):
        raise ValueError("ar_prefix needs a causal TokenTransformer (an `autoregressive` run)")
    num_positions = int(num_positions)
    if not 1 <= num_positions <= model.num_tokens:
        raise ValueError(f"ar_prefix: num_positions must be in [1, {model.num_tokens}] (the AR model's positions), "
                         f"got {num_positions}")
    streams = (model.num_streams,) if model.num_streams > 1 else ()
    if labels is not None:
        labels = jnp.asarray(labels, jnp.int32)
        batch = labels.shape[0]
    elif batch_size is not None:
        batch = int(batch_size)
    else:
        raise ValueError("an unconditional ar_prefix (labels=None) needs batch_size=")
    guided = not (isinstance(cfg_scale, (int, float)) and cfg_scale == 1.0)
    if guided and labels is None:
        raise ValueError("classifier-free guidance (cfg_scale != 1.0) needs labels")
    model_labels = jnp.concatenate([labels, jnp.full_like(labels, model.null_class)]) if guided else labels

    def step(i, carry):
        cache, prev, tokens = carry
        logits, cache = model.decode_step(cache, jnp.concatenate([prev, prev]) if guided else prev, i, model_labels)
        if guided:
            logits = logits[batch:] + cfg_scale * (logits[:batch] - logits[batch:])
        new = sample_categorical(jax.random.fold_in(rng, i), logits, temperature, precision)
        return cache, new, tokens.at[:, i].set(new)

    carry = (model.init_cache(2 * batch if guided else batch), jnp.zeros((batch,) + streams, jnp.int32),
             jnp.zeros((batch, num_positions) + streams, jnp.int32))
    return jax.lax.fori_loop(0, num_positions, step, carry)[2]


def hybrid_decode(ar_model, masked_generate: Callable[[dict, jax.Array], dict[str, Any]], labels: jax.Array | None,
                  rng: jax.Array, *, token_shape: tuple[int, ...], prefix_frames: int, batch_size: int | None = None,
                  ar_settings: dict | None = None) -> dict[str, jax.Array]:
    """Hybrid-MAGNeT: `ar_model` writes frames [0, prefix_frames) of every stream, then
    `masked_generate(batch, rng)` (e.g. `functools.partial(magnet_recipe.generate, magnet_model, **settings)`)
    decodes the rest with them as known tokens (a prompt it never re-masks).

    token_shape: the masked model's per-example (T, K) (or (T,)). ar_settings: `ar_prefix` keyword
    arguments (temperature, cfg_scale, precision). Returns {"tokens" [B, *token_shape], "nfe": the
    masked model's evaluations, "ar_steps": prefix_frames (sequential AR calls, each one frame)}.
    """
    token_shape = tuple(int(s) for s in token_shape)
    if not 1 <= prefix_frames < token_shape[0]:
        raise ValueError(f"hybrid_decode: prefix_frames must be in [1, {token_shape[0] - 1}] (the masked model "
                         f"decodes the rest of the {token_shape[0]} frames), got {prefix_frames}")
    ar_streams = (ar_model.num_streams,) if ar_model.num_streams > 1 else ()
    if tuple(ar_model.token_shape) + ar_streams != token_shape:
        raise ValueError(f"hybrid_decode: the AR model writes frames {tuple(ar_model.token_shape) + ar_streams}, the "
                         f"masked model decodes {token_shape}; train both on the same codec tokens")
    ar_rng, masked_rng = jax.random.split(rng)
    prefix = ar_prefix(ar_model, labels, ar_rng, num_positions=prefix_frames, batch_size=batch_size,
                       **(ar_settings or {}))
    batch = prefix.shape[0]
    pad = [(0, 0), (0, token_shape[0] - prefix_frames)] + [(0, 0)] * (len(token_shape) - 1)
    tokens = jnp.pad(prefix, pad)
    known = jnp.broadcast_to((jnp.arange(token_shape[0]) < prefix_frames).reshape((1, -1) + (1,) * (len(token_shape) - 1)),
                             (batch,) + token_shape)
    masked_batch = {"tokens": tokens, "known": known}
    if labels is not None:
        masked_batch["label"] = labels
    out = masked_generate(masked_batch, masked_rng)
    return {"tokens": out["tokens"], "nfe": out.get("nfe", jnp.zeros((), jnp.int32)),
            "ar_steps": jnp.asarray(prefix_frames, jnp.int32)}


__all__ = ["ar_rescorer", "teacher_forced_log_probs", "ar_prefix", "hybrid_decode"]
