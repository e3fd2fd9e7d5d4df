"""Iterative (parallel) decoding of masked token models, for any modality and any unmask policy.

One decoder serves MaskGIT and absorbing-state masked diffusion. Tokens are an array of any rank
after the batch axis ([B, L] text, [B, h, w] images, [B, T, K] codebook streams, [B, t, h, w]
video); `known` marks the given tokens (all False for generation). At step t of T the decoder

  1. predicts every position (unknown ones shown as `mask_token_id`) and samples a token wherever
     the token is still unknown;
  2. asks the unmask *policy* which unknown positions stay masked; the rest keep their sample;
  3. repeats; the last step reveals everything that is left.

Policies (`POLICIES`):
  "confidence": MaskGIT's `parallel_decode` (Chang et al., arXiv 2202.04200, Sec. 3.2): score each
    sample by log p(sampled) + choice_temperature * (1 - r) * Gumbel, r = (t + 1) / T, and keep
    the floor(n0 * gamma(r)) lowest masked (n0 = the unknown count before decoding), clamped to
    [1, unknown - 1] as the reference clamps it: each step reveals at least one token while two or
    more are unknown, and at least one stays masked until the last step, so a lone unknown token
    is sampled on the last step, with the last step's guidance scale and temperature. The count
    floor(n0 * gamma(r)) is exact (computed on the host; `keep_masked_table`).
  "random": the same counts, positions chosen uniformly at random (independent of the model).
  "ancestral": the ancestral sampler of absorbing-state masked diffusion (MDLM, Sahoo et al., arXiv
    2406.07524; MD4, Shi et al., arXiv 2406.04329). Going from r_prev = t / T to r, each unknown
    position is revealed independently with probability (gamma(r_prev) - gamma(r)) / gamma(r_prev),
    gamma = `mask_ratio(schedule, .)` ("linear" is MD4's alpha_t = 1 - t, "cosine" its cosine).
  "ancestral_joint": the same step as MDLM's reference code draws it: per unknown position one
    (V+1)-way categorical, "stay masked" with weight gamma(r) / gamma(r_prev) and token v with
    (1 - gamma(r) / gamma(r_prev)) * p(v), by Gumbel-max. In exact arithmetic this is "ancestral";
    with float32 Gumbel noise (tail cut near 16) the tiny per-step token weights lose their rare
    tokens, the entropy drop of Zheng et al. Sec. 5. precision="float32" reproduces it.
  "first_hitting": the first-hitting sampler (Zheng et al., arXiv 2409.02908): exactly one
    uniformly chosen unknown position per step, so N tokens take N steps. The model is
    time-agnostic, so the event times are not needed to sample; they are reported in `times`.

  "span_max" / "span_prod" / "span_min" (`span_policy`): MAGNeT's re-masking (Ziv et al., arXiv
    2401.04577): spans of `span_length` consecutive positions along the last token axis are
    scored from their tokens' probabilities and re-masked whole, cos(pi/2 * i/(n - 1)) of them.

MAGNeT's other decoding pieces are options of the same decoder: top-p sampling (`top_p`), the
temperature annealed linearly to 0 within a run (`temperature_schedule="linear_to_zero"`),
guidance annealed with the mask rate from `cfg_scale` to `cfg_min_scale`
(`cfg_schedule="mask_rate"`), and rescoring by an external model, whose probability is mixed into
the confidence (`score_fn`, `score_weight`). MAGNeT decodes one codebook level [B, T] per call.

Editing (inpainting, outpainting, class-conditional editing) starts at a later step of the same
schedule (`start_step`; the official MaskGIT code uses 2).

Conditioning is any pytree `cond` with a leading batch axis (None, class ids, a prompt
embedding, ...). Classifier-free guidance follows MUSE (Chang et al., arXiv 2301.00704): logits are
uncond + s_t * (cond - uncond), so s = 0 is unconditional, s = 1 conditional and s > 1 guided; both
passes run as one 2B batch (each leaf of `cond` and the null condition `uncond` concatenated).

`cache=True` skips the network when no token changed since its previous call and reuses those
logits: exact for a time-agnostic model, and most steps of a many-step ancestral sampler change
nothing (MDLM's ddpm_cache). `nfe` reports the evaluations made.

Sampling (and the Gumbel choice noise) uses 64-bit-resolution uniforms by default, after Zheng et
al. (arXiv 2409.02908): float32 Gumbel noise is truncated near 16, which silently lowers the
temperature.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from maskgen.masking.schedules import keep_masked_table, mask_ratio
from maskgen.sampling.categorical import PRECISIONS, gumbel_noise, sample_categorical

CFG_SCHEDULES = ("constant", "linear", "cosine", "mask_rate")
TEMPERATURE_SCHEDULES = ("constant", "linear", "linear_to_zero")
SPAN_AGGREGATES = ("max", "prod", "min")


class DecodeResult(NamedTuple):
    """What `iterative_decode` returns (a pytree, so it can leave `jax.jit`). S = num_steps - start_step.

    tokens: int32 [B, *shape], every position filled.
    trajectory: int32 [S, B, *shape], per step the tokens sampled at that step *before* re-masking
        (known tokens kept), as the official MaskGIT code records them; trajectory[-1] == tokens.
        [0, B, *shape] when decoding with record_trajectory=False.
    masks: bool [S, B, *shape], per step True where the position is still unknown after the step
        ([0, B, *shape] without record_trajectory).
    nfe: int32 scalar, the network evaluations made (a guided 2B batch counts once).
    times: float32 [S, B], the diffusion time (1 = all masked, 0 = all revealed) after each step:
        the sampled event times for "first_hitting" (alpha_t = 1 - t), else the grid 1 - (t + 1) / T.
    """

    tokens: jax.Array
    trajectory: jax.Array
    masks: jax.Array
    nfe: jax.Array
    times: jax.Array


# ------------------------------------------------------------------------------------ policies

class DrawFn(Protocol):
    def __call__(self, rng: jax.Array, *, logits: jax.Array, unknown: jax.Array, ratio_prev: jax.Array,
                 ratio: jax.Array, temperature: Any, precision: str) -> tuple[jax.Array, jax.Array]: ...


class ChooseFn(Protocol):
    def __call__(self, rng: jax.Array, *, log_probs_of_sample: jax.Array, unknown: jax.Array,
                 num_keep_masked: jax.Array, step: jax.Array, num_steps: int, ratio_prev: jax.Array,
                 ratio: jax.Array, choice_temperature: Any, precision: str, unknown_start: jax.Array,
                 token_shape: tuple[int, ...]) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class UnmaskPolicy:
    """Which unknown positions a decoding step reveals.

    choose(rng, *, log_probs_of_sample, unknown, num_keep_masked, step, num_steps, ratio_prev,
           ratio, choice_temperature, precision, unknown_start, token_shape) -> bool [B, N] (take
      the arguments you do not need as **kwargs), True where the position stays
      unknown after the step. Arguments: log_probs_of_sample float32 [B, N] (log p of this step's
      sample), unknown bool [B, N] (before the step), num_keep_masked int32 [B] (MaskGIT's
      floor(n0 * gamma(r)) clamped to [1, unknown - 1], at least 1 while anything is unknown; 0 on
      the last step), step int32 scalar t, num_steps T (static),
      ratio_prev / ratio float32 scalars gamma(t / T) / gamma((t + 1) / T), unknown_start bool
      [B, N] (unknown before decoding began), token_shape the static shape after the batch axis
      (N = prod(token_shape), row-major). With rescoring (`score_fn`) log_probs_of_sample is the
      log of the mixed probability. The decoder keeps only
      positions that were unknown and reveals everything on the last step, so a policy cannot
      touch known tokens or leave the output incomplete.
    event_time(rng, *, time, unknown, step, num_steps) -> float32 [B], the diffusion time after
      the step (for `DecodeResult.times`); None reports the grid 1 - (t + 1) / T.
    draw(rng, *, logits, unknown, ratio_prev, ratio, temperature, precision) -> (tokens int32
      [B, N], still bool [B, N]): for a policy whose token and reveal come from one draw (so they
      cannot be split into "sample, then choose"). When set, the decoder skips its own sample and
      `choose` (which may then be None) and keeps `tokens` where `still` is False. logits float32
      [B, N, V] (guided), temperature the step's; ratio is 0 on the last step, so the draw must
      reveal everything there. `tokens` where `still` is True go only into the trajectory and
      should be a sample of p(x0) too.
    uses_count: False when `choose` ignores num_keep_masked (it then gets a placeholder, not the count).
    """

    choose: ChooseFn | None
    event_time: Callable[..., jax.Array] | None = None
    draw: DrawFn | None = None
    # Whether `choose` reads num_keep_masked. The exact counts are a host table [S, N + 1], so a
    # policy that ignores them (ancestral, first hitting) spares a long sampler that constant.
    uses_count: bool = True

    def __post_init__(self):
        if self.choose is None and self.draw is None:
            raise ValueError("an UnmaskPolicy needs `choose` or `draw`")


def _keep_lowest(score: jax.Array, unknown: jax.Array, num_keep_masked: jax.Array) -> jax.Array:
    """Keeps exactly num_keep_masked[b] of the unknown positions of row b masked: the lowest scores.

    A lexicographic sort (known last, then score, then later positions first) gives a strict
    order, so ties can neither re-mask more than asked nor reach a known position; among equal
    scores the earlier (row-major) position is the one revealed.
    """
    score = jnp.where(unknown, score, jnp.inf)
    positions = jnp.broadcast_to(-jnp.arange(score.shape[-1], dtype=jnp.int32), score.shape)
    order = jnp.lexsort((positions, score, ~unknown), axis=-1)
    rank = jnp.argsort(order, axis=-1)  # inverse permutation: rank of each position.
    return (rank < num_keep_masked[:, None]) & unknown


def _confidence(rng, *, log_probs_of_sample, unknown, num_keep_masked, step, num_steps, choice_temperature,
                precision, **_):
    # The choice noise anneals with 1 - r, r = (t + 1) / T (the step's progress, not gamma(r)).
    r = (step + 1).astype(jnp.float32) / num_steps
    noise = gumbel_noise(rng, log_probs_of_sample.shape, precision)
    return _keep_lowest(log_probs_of_sample + choice_temperature * (1.0 - r) * noise, unknown, num_keep_masked)


def _random(rng, *, unknown, num_keep_masked, **_):
    return _keep_lowest(jax.random.uniform(rng, unknown.shape, jnp.float32), unknown, num_keep_masked)


def _ancestral(rng, *, unknown, ratio_prev, ratio, **_):
    # MDLM's reverse step q(z_s | z_t, x0) for a masked z_t: x0 with probability
    # (alpha_s - alpha_t) / (1 - alpha_t) = (gamma_t - gamma_s) / gamma_t, else still masked.
    reveal_prob = (ratio_prev - ratio) / jnp.maximum(ratio_prev, 1e-12)
    return unknown & (jax.random.uniform(rng, unknown.shape, jnp.float32) >= reveal_prob)


def _ancestral_joint(rng, *, logits, unknown, ratio_prev, ratio, temperature, precision):
    # MDLM's reference step (`_ddpm_caching_update`): q(z_s | z_t = mask, x0 ~ p) as one categorical
    # over [stay masked, token 0 .. V-1] with weights [gamma_s / gamma_t, (1 - gamma_s / gamma_t) p(v)],
    # sampled by Gumbel-max. It is done in log space, but the float32 failure is the same one: a
    # token's weight log(1 - q) + log p(v) sits far below the stay weight log q ~ 0 when T is large,
    # so only a Gumbel draw above ~16 - the gap could pick it, and float32 noise never exceeds ~16.
    # q in [0, 1]: log(0) = -inf on the last step (must reveal), log1p(-1) = -inf on a flat step.
    q = jnp.clip(ratio / jnp.maximum(ratio_prev, 1e-12), 0.0, 1.0)
    log_p = jax.nn.log_softmax(logits / jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-8), axis=-1)
    # One noise array over all V + 1 outcomes (index 0 = stay), as MDLM draws them.
    noise = gumbel_noise(rng, logits.shape[:-1] + (logits.shape[-1] + 1,), precision)
    token_scores = jnp.log1p(-q) + log_p + noise[..., 1:]
    stay_score = jnp.log(q) + noise[..., 0]
    # argmax over the V + 1 outcomes, split in two: the best token, and whether "stay" beats it
    # (ties go to "stay", the lower index). The best token alone is a sample of p(x0) (the shared
    # log(1 - q) does not change the argmax), so it is also what the trajectory records.
    tokens = jnp.argmax(token_scores, axis=-1).astype(jnp.int32)
    still = stay_score >= jnp.max(token_scores, axis=-1)
    return tokens, unknown & still


def _first_hitting(rng, *, unknown, **_):
    score = jnp.where(unknown, jax.random.uniform(rng, unknown.shape, jnp.float32), -1.0)
    chosen = jax.nn.one_hot(jnp.argmax(score, axis=-1), unknown.shape[-1], dtype=bool)
    return unknown & ~chosen  # a row with nothing unknown stays as it is


def _first_hitting_time(rng, *, time, unknown, **_):
    # With alpha_t = 1 - t, each of the n masked tokens at time t unmasks at an independent
    # U(0, t) time, so the next event (the latest of them) is at t * u^(1 / n).
    n = jnp.sum(unknown, axis=-1).astype(jnp.float32)
    u = jax.random.uniform(rng, n.shape, jnp.float32, minval=1e-12)
    return jnp.where(n > 0, time * u ** (1.0 / jnp.maximum(n, 1.0)), time)


def span_policy(span_length: int, aggregate: str = "max") -> UnmaskPolicy:
    """MAGNeT's span re-masking (Ziv et al., arXiv 2401.04577, Sec. 3.2) as an unmask policy.

    The positions are cut into spans of `span_length` consecutive positions along the LAST token
    axis (for a [B, T] codebook level: frames [0, L), [L, 2L), ...; the last span of a row is
    shorter when L does not divide T; with more axes each row of the last axis is cut alike). A
    span is unknown while any of its positions is; known positions are never re-masked.

    Span score (higher = re-masked first), from the sampled tokens' probabilities p over the
    span's unknown positions:
      "max":  1 - max p (MAGNeT's and audiocraft's "max": a span stays masked unless some token
              in it is confident);
      "prod": 1 - prod p (ranked as -sum log p, audiocraft's "prod");
      "min":  1 - min p = max over the span of (1 - p) (its least confident token decides).

    Count: after step t of n (step i = t + 1 of MAGNeT's loop) the highest-scoring
    floor(cos(pi/2 * (t + 1)/(n - 1)) * S0) of the unknown spans stay masked, at least 1 and at
    most the spans still unknown (so one lone unknown span waits for the last step), where S0 is
    the number of spans unknown before decoding; the last step reveals everything. The floor is
    exact (a host table, `keep_masked_table("cosine", n - 1, S0)`). Ties: the earlier span is
    revealed. The policy ignores choice_temperature (MAGNeT adds no choice noise).
    """
    if not isinstance(span_length, int) or isinstance(span_length, bool) or span_length < 1:
        raise ValueError(f"span_length must be an int >= 1, got {span_length!r}")
    if aggregate not in SPAN_AGGREGATES:
        raise ValueError(f"unknown span score aggregate {aggregate!r}; valid: {SPAN_AGGREGATES}")

    def choose(rng, *, log_probs_of_sample, unknown, step, num_steps, unknown_start, token_shape, **_):
        batch, num_tokens = unknown.shape
        row_length = token_shape[-1]
        spans_per_row = -(-row_length // span_length)
        padding = spans_per_row * span_length - row_length

        def to_spans(x, pad_value):  # [B, N] -> [B, P * spans_per_row, span_length]
            x = x.reshape(batch, num_tokens // row_length, row_length)
            x = jnp.pad(x, ((0, 0), (0, 0), (0, padding)), constant_values=pad_value)
            return x.reshape(batch, -1, span_length)

        span_unknown = to_spans(unknown, False)
        log_p = to_spans(log_probs_of_sample, 0.0)
        # Span confidence: the lower it is, the sooner the span is re-masked (score = 1 - confidence).
        if aggregate == "max":
            confidence = jnp.max(jnp.where(span_unknown, log_p, -jnp.inf), axis=-1)
        elif aggregate == "min":
            confidence = jnp.min(jnp.where(span_unknown, log_p, jnp.inf), axis=-1)
        else:  # prod
            confidence = jnp.sum(jnp.where(span_unknown, log_p, 0.0), axis=-1)
        any_unknown = jnp.any(span_unknown, axis=-1)
        spans_at_start = jnp.sum(jnp.any(to_spans(unknown_start, False), axis=-1), axis=-1)
        total_spans = any_unknown.shape[-1]
        if num_steps > 1:
            table = jnp.asarray(keep_masked_table("cosine", num_steps - 1, total_spans))
            scheduled = table[jnp.minimum(step, num_steps - 2), spans_at_start]
        else:
            scheduled = jnp.zeros_like(spans_at_start)
        unknown_spans = jnp.sum(any_unknown, axis=-1).astype(jnp.int32)
        keep = jnp.minimum(jnp.maximum(scheduled, 1), unknown_spans)
        span_still = _keep_lowest(confidence, any_unknown, keep)
        still = jnp.broadcast_to(span_still[..., None], span_unknown.shape)
        still = still.reshape(batch, num_tokens // row_length, spans_per_row * span_length)[..., :row_length]
        return still.reshape(batch, num_tokens) & unknown

    return UnmaskPolicy(choose, uses_count=False)


POLICIES: dict[str, UnmaskPolicy] = {
    "confidence": UnmaskPolicy(_confidence),
    "random": UnmaskPolicy(_random),
    "ancestral": UnmaskPolicy(_ancestral, uses_count=False),
    "ancestral_joint": UnmaskPolicy(None, draw=_ancestral_joint, uses_count=False),
    "first_hitting": UnmaskPolicy(_first_hitting, _first_hitting_time, uses_count=False),
}


# ------------------------------------------------------------------------------------- decoder

def iterative_decode(
    logits_fn: Callable[[jax.Array, Any], jax.Array],
    *,
    tokens: jax.Array,
    known: jax.Array,
    rng: jax.Array,
    num_steps: int,
    mask_token_id: int,
    cond: Any = None,
    uncond: Any = None,
    schedule: str = "cosine",
    choice_temperature: float | jax.Array = 4.5,
    temperature: float | jax.Array = 1.0,
    temperature_schedule: str = "constant",
    policy: str | UnmaskPolicy = "confidence",
    cfg_scale: float | jax.Array = 1.0,
    cfg_schedule: str = "constant",
    start_step: int = 0,
    precision: str = "float64",
    cache: bool = False,
    record_trajectory: bool = True,
    top_p: float | jax.Array = 1.0,
    cfg_min_scale: float | jax.Array = 1.0,
    score_fn: Callable[[jax.Array], jax.Array] | None = None,
    score_weight: float | jax.Array = 1.0,
    span_length: int = 3,
) -> DecodeResult:
    """Decodes the unknown positions of `tokens` in `num_steps - start_step` parallel steps.

    Args:
      logits_fn: pure function (tokens int32 [B', *shape], cond) -> logits [B', *shape, V];
        unknown positions are passed as `mask_token_id`.
      tokens: int32 [B, *shape] initial tokens (any rank >= 1 after the batch axis); values where
        `known` is False are ignored.
      known: bool [B, *shape], True where the token is given: it is never changed or re-masked.
      rng: PRNG key; step t uses `fold_in(rng, t)`, so a fixed key gives a fixed result.
      num_steps: T, the length of the full schedule (static).
      mask_token_id: the id fed to `logits_fn` at unknown positions.
      cond: the condition passed to `logits_fn`: None, or a pytree of arrays with leading axis B.
      uncond: the null condition for classifier-free guidance, a pytree of `cond`'s structure whose
        leaves broadcast to cond's; required whenever guidance is on (anything but a Python
        `cfg_scale == 1.0` with the constant schedule).
      schedule: mask schedule name for `mask_ratio` (cosine, linear, powN, log, exp, ...).
      choice_temperature: scale of the Gumbel noise on the confidence, annealed by (1 - r).
      temperature: sampling temperature.
      temperature_schedule: "constant"; "linear": temperature * (1 - t / T), which starts at
        `temperature` and ends at temperature / T (never 0, so the last step still samples); or
        "linear_to_zero" (MAGNeT's 3 -> 0 anneal, arXiv 2401.04577, as audiocraft computes it):
        temperature * (1 - (t + 1) / T), so it reaches 0 on the last step, which takes the argmax
        of the guided logits (sample-then-choose policies; a `draw` policy gets temperature 0,
        which it clamps to 1e-8).
      policy: a name in POLICIES ("confidence", "random", "ancestral", "ancestral_joint",
        "first_hitting"), "span_max" / "span_prod" / "span_min" (MAGNeT's span re-masking,
        `span_policy(span_length, aggregate)`), or an `UnmaskPolicy`.
      cfg_scale: guidance scale s; logits = uncond + s_t * (cond - uncond).
      cfg_schedule: s_t = s ("constant"), s * r ("linear"), s * (1 - cos(pi r)) / 2 ("cosine"), or
        "mask_rate" (MAGNeT): s_t = m * s + (1 - m) * cfg_min_scale per example, m = the share of
        the positions unknown before decoding that are still unknown before step t (1 on the
        first step of a generation, falling towards 0; MAGNeT: s = 10, cfg_min_scale = 1).
      start_step: first step to run (editing starts later in the same T-step schedule).
      precision: "float64" (64-bit-resolution uniforms, default) or "float32" for the Gumbel noise.
      cache: skip the network (and reuse its last logits) when no token of the whole batch changed
        since its last call, or when nothing is left unknown; exact for models that do not see the step.
      record_trajectory: False returns empty trajectory/masks (long samplers need not keep S copies).
      top_p: nucleus sampling (MAGNeT: 0.9): each step samples from the smallest set of most
        probable tokens of the tempered, guided distribution whose mass reaches top_p
        (`categorical.nucleus_mask`). 1.0 (default) = no restriction, bit-identical to before.
        Not available with a `draw` policy ("ancestral_joint").
      cfg_min_scale: the guidance scale reached when nothing is left masked, for
        cfg_schedule="mask_rate" only (an error with any other schedule unless 1.0).
      score_fn: rescoring (MAGNeT, Sec. 3.3): a pure function (sampled int32 [B, *shape]: this
        step's samples with the known tokens in place) -> float32 [B, *shape] log-probabilities
        of those tokens under another model (e.g. an autoregressive one). The confidence the
        policy sees becomes log(w * p_model + (1 - w) * exp(score_fn(sampled))), w = score_weight,
        p_model the decoded model's (guided, untempered) probability of the sample. It is called
        once per step and does not count in `nfe`. Not available with a `draw` policy.
      score_weight: w in [0, 1] (MAGNeT's paper: 0.7). A Python 1.0 skips score_fn entirely
        (identical to score_fn=None).
      span_length: the span length (positions along the last token axis) of the "span_*"
        policies (MAGNeT: 3 frames); ignored by the other policies.
    """
    # ---- static validation: fail at trace time with the valid choices named.
    span_names = tuple(f"span_{aggregate}" for aggregate in SPAN_AGGREGATES)
    if isinstance(policy, str):
        if policy in span_names:
            policy = span_policy(span_length, policy[len("span_"):])
        elif policy not in POLICIES:
            raise ValueError(f"unknown decoding policy {policy!r}; valid: {tuple(POLICIES) + span_names}")
        else:
            policy = POLICIES[policy]
    elif not isinstance(policy, UnmaskPolicy):
        raise ValueError(f"policy must be a name in {tuple(POLICIES) + span_names} or an UnmaskPolicy, "
                         f"got {policy!r}")
    if isinstance(top_p, (int, float)) and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    default_top_p = isinstance(top_p, (int, float)) and float(top_p) == 1.0
    if isinstance(cfg_min_scale, (int, float)) and float(cfg_min_scale) != 1.0 and cfg_schedule != "mask_rate":
        raise ValueError(f"cfg_min_scale={cfg_min_scale!r} only applies to cfg_schedule='mask_rate', "
                         f"got cfg_schedule={cfg_schedule!r}")
    if score_fn is not None and not callable(score_fn):
        raise ValueError(f"score_fn must be a function of the sampled tokens or None, got {score_fn!r}")
    if isinstance(score_weight, (int, float)) and not 0.0 <= score_weight <= 1.0:
        raise ValueError(f"score_weight must be in [0, 1], got {score_weight!r}")
    rescoring = score_fn is not None and not (isinstance(score_weight, (int, float)) and float(score_weight) == 1.0)
    if policy.draw is not None and not default_top_p:
        raise ValueError("top_p is not available with a policy that draws its own tokens (e.g. 'ancestral_joint')")
    if policy.draw is not None and score_fn is not None:
        raise ValueError("score_fn (rescoring) is not available with a policy that draws its own tokens "
                         "(e.g. 'ancestral_joint'): it never scores a sample")
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
    if tokens.ndim < 2:
        raise ValueError(f"tokens must be [B, *shape] with at least one axis after the batch, got shape {tokens.shape}")
    if known.shape != tokens.shape:
        raise ValueError(f"known has shape {known.shape}, tokens {tokens.shape}; they must agree")
    batch, shape = tokens.shape[0], tokens.shape[1:]
    num_tokens = math.prod(shape)
    _check_cond(cond, batch)

    # The extra unconditional pass is skipped only when it provably cannot matter (s_t == 1).
    guided = not (isinstance(cfg_scale, (int, float)) and float(cfg_scale) == 1.0 and cfg_schedule == "constant")
    if guided:
        if cond is None or uncond is None:
            raise ValueError("classifier-free guidance (cfg_scale != 1.0 or a non-constant cfg_schedule) needs a "
                             "condition `cond` and its null condition `uncond`")
        if jax.tree.structure(cond) != jax.tree.structure(uncond):
            raise ValueError(f"uncond must have cond's structure {jax.tree.structure(cond)}, got "
                             f"{jax.tree.structure(uncond)}")
        model_cond = jax.tree.map(
            lambda c, u: jnp.concatenate([c, jnp.broadcast_to(jnp.asarray(u, c.dtype), c.shape)]),
            cond, uncond)
    else:
        model_cond = cond
    model_batch = 2 * batch if guided else batch

    # gamma(t / T) and gamma((t + 1) / T) for the steps run; this also validates `schedule`.
    steps = jnp.arange(start_step, num_steps, dtype=jnp.int32)
    ratios_prev = mask_ratio(schedule, steps.astype(jnp.float32) / num_steps, num_tokens)
    ratios = mask_ratio(schedule, (steps + 1).astype(jnp.float32) / num_steps, num_tokens)

    # n0: unknown count before decoding, per example (editing measures it from `known` too), and
    # per step the exact floor(n0 * gamma(r)) for every possible n0 (a host table: float32 on the
    # device puts n0 * gamma a few ulps off, and no fixed nudge rounds both ways right).
    flat_known = known.reshape(batch, num_tokens)
    num_unknown_start = jnp.sum(~flat_known, axis=-1).astype(jnp.int32)
    if policy.uses_count and policy.draw is None:
        keep_tables = jnp.asarray(keep_masked_table(schedule, num_steps, num_tokens, start_step))
    else:  # nothing reads the count: one zero column (indexed with the clamp below)
        keep_tables = jnp.zeros((num_steps - start_step, 1), jnp.int32)

    def network(flat_in):
        """[B, N] model input -> raw float32 logits [B', N, V] (B' = 2B when guided)."""
        x = flat_in.reshape((batch,) + shape)
        if guided:
            x = jnp.concatenate([x, x])
        logits = logits_fn(x, model_cond)
        if logits.ndim != len(shape) + 2 or logits.shape[:-1] != (model_batch,) + shape:
            raise ValueError(f"logits_fn must return [B'={model_batch}, {', '.join(map(str, shape))}, V] logits, "
                             f"got shape {logits.shape}")
        return logits.astype(jnp.float32).reshape(model_batch, num_tokens, logits.shape[-1])

    def guide(raw, r, unknown):
        if not guided:
            return raw
        conditional, unconditional = raw[:batch], raw[batch:]
        if cfg_schedule == "constant":
            scale = cfg_scale
        elif cfg_schedule == "linear":
            scale = cfg_scale * r
        elif cfg_schedule == "cosine":  # 0 at r = 0, s at r = 1, smooth at both ends.
            scale = cfg_scale * (1.0 - jnp.cos(math.pi * r)) / 2.0
        else:  # mask_rate (MAGNeT): per example, from the share still unknown before this step.
            masked_share = (jnp.sum(unknown, axis=-1).astype(jnp.float32)
                            / jnp.maximum(num_unknown_start, 1).astype(jnp.float32))
            scale = (masked_share * jnp.asarray(cfg_scale, jnp.float32)
                     + (1.0 - masked_share) * jnp.asarray(cfg_min_scale, jnp.float32))[:, None, None]
        return unconditional + jnp.asarray(scale, jnp.float32) * (conditional - unconditional)

    def step_fn(carry, xs):
        # cur_tokens holds the real token wherever unknown is False.
        cur_tokens, unknown, time, nfe, last_in, last_raw = carry
        t, ratio_prev, ratio, keep_table = xs
        r = (t + 1).astype(jnp.float32) / num_steps
        sample_rng, choice_rng = jax.random.split(jax.random.fold_in(rng, t))

        # 1. Predict from the tokens with unknown positions shown as the mask token, and sample.
        model_in = jnp.where(unknown, mask_token_id, cur_tokens)
        if cache:
            # Skip when the input is what the network last saw, or when nothing is left to sample
            # (then the logits are not used at all).
            skip = jnp.all(model_in == last_in) | ~jnp.any(unknown)
            raw = jax.lax.cond(skip, lambda: last_raw, lambda: network(model_in))
            nfe = nfe + (~skip).astype(jnp.int32)
            last_in, last_raw = model_in, raw
        else:
            raw = network(model_in)
            nfe = nfe + 1
        logits = guide(raw, r, unknown)
        if temperature_schedule == "linear":
            # (1 - t/T) rather than (1 - (t+1)/T): starts at the requested temperature and never
            # reaches 0, so the tokens left to the last step are still sampled, not argmaxed.
            temp = temperature * (1.0 - t.astype(jnp.float32) / num_steps)
        elif temperature_schedule == "linear_to_zero":
            # MAGNeT/audiocraft: temperature * steps_left / T, 0 on the last step (argmax below).
            temp = temperature * (1.0 - (t + 1).astype(jnp.float32) / num_steps)
        else:
            temp = temperature
        last = t == num_steps - 1
        if policy.draw is not None:
            # The policy draws the token and the reveal together (from the step's sample key). The
            # last step passes ratio 0 (stay weight -inf) so its draw reveals a real token even where
            # a schedule's gamma(1) rounds above 0; the mask below would otherwise reveal a "stay".
            sampled, still = policy.draw(sample_rng, logits=logits, unknown=unknown, ratio_prev=ratio_prev,
                                         ratio=jnp.where(last, 0.0, ratio), temperature=temp,
                                         precision=precision)
            sampled = jnp.where(unknown, sampled, cur_tokens)
        else:
            if default_top_p:
                sampled = sample_categorical(sample_rng, logits, temp, precision)
            else:
                sampled = sample_categorical(sample_rng, logits, temp, precision, top_p=top_p)
            if temperature_schedule == "linear_to_zero":
                sampled = jnp.where(last, jnp.argmax(logits, axis=-1).astype(jnp.int32), sampled)
            sampled = jnp.where(unknown, sampled, cur_tokens)

            # 2. How many stay masked, by the reference's count: max(1, min(unknown_now - 1,
            # floor(n0 * gamma(r)))). A lone unknown token therefore stays masked until the last
            # step, which fills everything (0). A fully known example keeps 0: `still & unknown`
            # below leaves nothing to keep there, whatever the count says.
            unknown_now = jnp.sum(unknown, axis=-1)
            floor_count = keep_table[jnp.minimum(num_unknown_start, keep_table.shape[0] - 1)]
            keep = jnp.maximum(1, jnp.minimum(unknown_now - 1, floor_count))
            keep = jnp.where(last | (unknown_now == 0), 0, keep)

            # 3. The policy picks what stays masked, only among the unknown.
            log_probs = jax.nn.log_softmax(logits, axis=-1)  # unused (and dropped by XLA) unless the policy reads it
            log_probs_of_sample = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]
            if rescoring:
                # MAGNeT's rescoring mixes probabilities: w * p_model + (1 - w) * p_rescorer.
                rescored = score_fn(sampled.reshape((batch,) + shape))
                if jnp.shape(rescored) != (batch,) + shape:
                    raise ValueError(f"score_fn must return log-probs of shape {(batch,) + shape}, "
                                     f"got {jnp.shape(rescored)}")
                weight = jnp.asarray(score_weight, jnp.float32)
                mixed = (weight * jnp.exp(log_probs_of_sample)
                         + (1.0 - weight) * jnp.exp(jnp.asarray(rescored, jnp.float32).reshape(batch, num_tokens)))
                log_probs_of_sample = jnp.log(mixed)
            still = policy.choose(choice_rng, log_probs_of_sample=log_probs_of_sample, unknown=unknown,
                                  num_keep_masked=keep, step=t, num_steps=num_steps, ratio_prev=ratio_prev,
                                  ratio=ratio, choice_temperature=choice_temperature, precision=precision,
                                  unknown_start=~flat_known, token_shape=shape)
        # Only unknown positions can stay masked, and nothing after the last step.
        still = still & unknown & ~last
        if policy.event_time is None:
            time = jnp.full((batch,), 1.0 - r, jnp.float32)
        else:
            time = policy.event_time(jax.random.fold_in(choice_rng, 1), time=time, unknown=unknown, step=t,
                                     num_steps=num_steps)

        # 4. Record the step's samples before re-masking, and the mask after it.
        record = (sampled, still, time) if record_trajectory else (time,)
        return (sampled, still, time, nfe, last_in, last_raw), record

    flat_tokens = tokens.reshape(batch, num_tokens)
    init_tokens = jnp.where(flat_known, flat_tokens, mask_token_id)
    if cache:
        # No earlier call: an impossible input (-1) forces the first evaluation; the logits slot
        # gets the network's output shape and dtype, without running it.
        last_in = jnp.full((batch, num_tokens), -1, jnp.int32)
        last_raw = jnp.zeros(jax.eval_shape(network, init_tokens).shape, jnp.float32)
    else:
        last_in = last_raw = None
    init = (init_tokens, ~flat_known, jnp.ones((batch,), jnp.float32), jnp.zeros((), jnp.int32), last_in, last_raw)
    (final, _, _, nfe, _, _), record = jax.lax.scan(step_fn, init, (steps, ratios_prev, ratios, keep_tables))

    unflat = lambda x: x.reshape(x.shape[:-1] + shape)  # noqa: E731  [..., N] -> [..., *shape]
    if record_trajectory:
        trajectory, masks, times = unflat(record[0]), unflat(record[1]), record[2]
    else:
        (times,) = record
        trajectory = jnp.zeros((0, batch) + shape, jnp.int32)
        masks = jnp.zeros((0, batch) + shape, bool)
    return DecodeResult(tokens=unflat(final), trajectory=trajectory, masks=masks, nfe=nfe, times=times)


def _check_cond(cond: Any, batch: int) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(cond)[0]:
        leaf_shape = jnp.shape(leaf)
        if not leaf_shape or leaf_shape[0] != batch:
            where = jax.tree_util.keystr(path) or "cond"
            raise ValueError(f"every leaf of cond must have the batch size {batch} as its leading axis; "
                             f"{where} has shape {leaf_shape}")
