"""MaskGIT's iterative (parallel) decoder for masked token models, one function for every use.

Decoding follows the official MaskGIT `parallel_decode` (Chang et al., arXiv 2202.04200,
Sec. 3.2): at step t of T, with r = (t + 1) / T,

  1. predict every position and sample a token wherever the token is still unknown;
  2. score each sample by its confidence, log p(sampled) + choice_temperature * (1 - r) * Gumbel
     (positions already known score +inf, so they are never re-masked);
  3. keep floor(n0 * gamma(r)) of them masked, n0 = the unknown count before decoding, clamped so
     that each step reveals at least one token and one stays masked until the last step;
  4. re-mask the lowest-confidence samples and repeat; the last step fills everything.

Unconditional generation, inpainting / outpainting and class-conditional editing are the same
call: `known` marks the given tokens (all False for generation), and editing starts at a later
step (`start_step`, the official code uses 2) of the same schedule.

Classifier-free guidance follows MUSE (Chang et al., arXiv 2301.00704) and aMUSEd: logits are
uncond + s_t * (cond - uncond), so s = 0 is unconditional, s = 1 conditional and s > 1 guided;
both passes run as one 2B batch. Sampling (and the Gumbel choice noise) uses 64-bit-resolution
uniforms by default, after Zheng et al. (arXiv 2409.02908): float32 Gumbel noise is truncated
near 16, which silently lowers the temperature.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from maskgen.masking.schedules import mask_ratio
from maskgen.sampling.categorical import PRECISIONS, gumbel_noise, sample_categorical

POLICIES = ("confidence", "random")
CFG_SCHEDULES = ("constant", "linear", "cosine")
TEMPERATURE_SCHEDULES = ("constant", "linear")

# gamma(r) is evaluated in float32, so n0 * gamma(r) can land a few ulps below an exact integer
# (linear, n0 = 6, r = 1/3 gives 3.9999998) and floor would drop a token. A relative nudge well
# above float32 rounding (~1e-7 per op) but far below one token restores the exact count.
_FLOOR_NUDGE = 1e-5


class DecodeResult(NamedTuple):
    """What `iterative_decode` returns (a pytree, so it can leave `jax.jit`). S = num_steps - start_step.

    tokens: int32 [B, N], the final grid, every position filled.
    trajectory: int32 [S, B, N], per step the grid sampled at that step *before* re-masking (known
        tokens kept), as the official code records it; trajectory[-1] == tokens.
    masks: bool [S, B, N], per step True where the position is still unknown after re-masking.
    """

    tokens: jax.Array
    trajectory: jax.Array
    masks: jax.Array


def iterative_decode(
    logits_fn: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    tokens: jax.Array,
    known: jax.Array,
    labels: jax.Array,
    rng: jax.Array,
    num_steps: int,
    mask_token_id: int,
    null_label: int | None = None,
    schedule: str = "cosine",
    choice_temperature: float | jax.Array = 4.5,
    temperature: float | jax.Array = 1.0,
    temperature_schedule: str = "constant",
    policy: str = "confidence",
    cfg_scale: float | jax.Array = 1.0,
    cfg_schedule: str = "constant",
    start_step: int = 0,
    precision: str = "float64",
) -> DecodeResult:
    """Decodes the unknown positions of `tokens` in `num_steps - start_step` parallel steps.

    Args:
      logits_fn: pure function (tokens int32 [B', N], labels int32 [B']) -> logits [B', N, V];
        unknown positions are passed as `mask_token_id`.
      tokens: int32 [B, N] initial grid; values where `known` is False are ignored.
      known: bool [B, N], True where the token is given: it is never changed or re-masked.
      labels: int32 [B] class labels (the conditional pass).
      rng: PRNG key; step t uses `fold_in(rng, t)`, so a fixed key gives a fixed result.
      num_steps: T, the length of the full schedule (static).
      mask_token_id: the id fed to `logits_fn` at unknown positions.
      null_label: the unconditional label for classifier-free guidance; required whenever guidance
        is on (anything but a Python `cfg_scale == 1.0` with the constant schedule).
      schedule: mask schedule name for `mask_ratio` (cosine, linear, powN, log, exp, ...).
      choice_temperature: scale of the Gumbel noise on the confidence, annealed by (1 - r).
      temperature: sampling temperature.
      temperature_schedule: "constant", or "linear": temperature * (1 - t / T), which starts at
        `temperature` and ends at temperature / T (never 0, so the last step still samples).
      policy: "confidence" (MaskGIT) or "random" (reveal order independent of the model).
      cfg_scale: guidance scale s; logits = uncond + s_t * (cond - uncond).
      cfg_schedule: s_t = s ("constant"), s * r ("linear") or s * (1 - cos(pi r)) / 2 ("cosine").
      start_step: first step to run (editing starts later in the same T-step schedule).
      precision: "float64" (64-bit-resolution uniforms, default) or "float32" for the Gumbel noise.
    """
    # ---- static validation: fail at trace time with the valid choices named.
    if policy not in POLICIES:
        raise ValueError(f"unknown decoding policy {policy!r}; valid: {POLICIES}")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"unknown cfg_schedule {cfg_schedule!r}; valid: {CFG_SCHEDULES}")
    if temperature_schedule not in TEMPERATURE_SCHEDULES:
        raise ValueError(f"unknown temperature_schedule {temperature_schedule!r}; valid: {TEMPERATURE_SCHEDULES}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown sampling precision {precision!r}; valid: {PRECISIONS}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not isinstance(start_step, int) or not 0 <= start_step < num_steps:
        raise ValueError(f"start_step must be an int in [0, num_steps={num_steps}), got {start_step!r}")

    tokens = jnp.asarray(tokens, jnp.int32)
    known = jnp.asarray(known, bool)
    labels = jnp.asarray(labels, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, N], got shape {tokens.shape}")
    if known.shape != tokens.shape:
        raise ValueError(f"known has shape {known.shape}, tokens {tokens.shape}; they must agree")
    batch, num_tokens = tokens.shape
    if labels.shape != (batch,):
        raise ValueError(f"labels must be [B] = ({batch},), got shape {labels.shape}")

    # The extra unconditional pass is skipped only when it provably cannot matter (s_t == 1).
    guided = not (isinstance(cfg_scale, (int, float)) and float(cfg_scale) == 1.0 and cfg_schedule == "constant")
    if guided and null_label is None:
        raise ValueError("classifier-free guidance (cfg_scale != 1.0 or a non-constant cfg_schedule) needs null_label")

    # gamma((t + 1) / T) for the steps run; this also validates `schedule` (mask_ratio raises).
    steps = jnp.arange(start_step, num_steps, dtype=jnp.int32)
    ratios = mask_ratio(schedule, (steps + 1).astype(jnp.float32) / num_steps, num_tokens)

    # n0: unknown count before decoding, per example (editing measures it from `known` too).
    num_unknown_start = jnp.sum(~known, axis=-1).astype(jnp.float32)
    positions = jnp.arange(num_tokens, dtype=jnp.int32)

    def predict(cur_tokens, r):
        if not guided:
            logits = logits_fn(cur_tokens, labels)
            _check_logits(logits, batch, num_tokens)
            return logits.astype(jnp.float32)
        both = logits_fn(jnp.concatenate([cur_tokens, cur_tokens]),
                         jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
        _check_logits(both, 2 * batch, num_tokens)
        both = both.astype(jnp.float32)
        cond, uncond = both[:batch], both[batch:]
        if cfg_schedule == "constant":
            scale = cfg_scale
        elif cfg_schedule == "linear":
            scale = cfg_scale * r
        else:  # cosine: 0 at r = 0, s at r = 1, smooth at both ends.
            scale = cfg_scale * (1.0 - jnp.cos(math.pi * r)) / 2.0
        return uncond + jnp.asarray(scale, jnp.float32) * (cond - uncond)

    def step_fn(carry, xs):
        cur_tokens, unknown = carry  # cur_tokens holds the real token wherever unknown is False.
        t, ratio = xs
        r = (t + 1).astype(jnp.float32) / num_steps
        sample_rng, choice_rng = jax.random.split(jax.random.fold_in(rng, t))

        # 1. Predict from the grid with unknown positions shown as the mask token, and sample.
        logits = predict(jnp.where(unknown, mask_token_id, cur_tokens), r)
        if temperature_schedule == "linear":
            # (1 - t/T) rather than (1 - (t+1)/T): starts at the requested temperature and never
            # reaches 0, so the tokens left to the last step are still sampled, not argmaxed.
            temp = temperature * (1.0 - t.astype(jnp.float32) / num_steps)
        else:
            temp = temperature
        sampled = sample_categorical(sample_rng, logits, temp, precision)
        sampled = jnp.where(unknown, sampled, cur_tokens)

        # 2. Confidence of each new sample; everything already known is +inf (never re-masked).
        if policy == "confidence":
            log_probs = jax.nn.log_softmax(logits, axis=-1)
            confidence = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]
            noise = gumbel_noise(choice_rng, confidence.shape, precision)
            confidence = confidence + choice_temperature * (1.0 - r) * noise
        else:
            confidence = jax.random.uniform(choice_rng, sampled.shape, jnp.float32)
        confidence = jnp.where(unknown, confidence, jnp.inf)

        # 3. How many stay masked: floor(n0 * gamma(r)) clamped to [1, unknown_now - 1]; 0 on the
        # last step (fill everything) and when at most one is unknown (the clamp range is empty,
        # and for fully known examples nothing may change).
        unknown_now = jnp.sum(unknown, axis=-1)
        mask_len = jnp.floor(num_unknown_start * ratio * (1.0 + _FLOOR_NUDGE)).astype(jnp.int32)
        mask_len = jnp.maximum(1, jnp.minimum(unknown_now - 1, mask_len))
        mask_len = jnp.where((t == num_steps - 1) | (unknown_now <= 1), 0, mask_len)

        # 4. Re-mask exactly the mask_len lowest-confidence unknown positions. A lexicographic
        # sort (known last, then confidence, then later positions first) gives a strict order, so
        # ties can neither re-mask more than mask_len nor reach a known position; among equal
        # confidences the earlier (raster-order) position is the one revealed.
        order = jnp.lexsort((jnp.broadcast_to(-positions, sampled.shape), confidence, ~unknown), axis=-1)
        rank = jnp.argsort(order, axis=-1)  # inverse permutation: rank of each position.
        remask = (rank < mask_len[:, None]) & unknown

        # 5. Record the step's samples before re-masking, and the mask after it.
        return (sampled, remask), (sampled, remask)

    init = (jnp.where(known, tokens, mask_token_id), ~known)
    _, (trajectory, masks) = jax.lax.scan(step_fn, init, (steps, ratios))
    return DecodeResult(tokens=trajectory[-1], trajectory=trajectory, masks=masks)


def _check_logits(logits: jax.Array, batch: int, num_tokens: int) -> None:
    if logits.ndim != 3 or logits.shape[:2] != (batch, num_tokens):
        raise ValueError(f"logits_fn must return [B'={batch}, N={num_tokens}, V] logits, got shape {logits.shape}")
