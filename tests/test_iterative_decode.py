"""Iterative decoding: hand-worked reveal orders, the schedule count, known tokens, CFG,
temperature, policies (MaskGIT confidence / random, MDLM ancestral, first-hitting), token arrays of
any rank, pytree conditions, the logits cache, jit and argument checks, all with tiny handmade
logits functions."""

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgen.sampling.categorical import gumbel_noise, sample_categorical
from maskgen.masking.schedules import mask_ratio
from maskgen.sampling.iterative import POLICIES, DecodeResult, UnmaskPolicy, iterative_decode
from test_schedules import exact_floor

MASK = 99  # deliberately not a valid token id: any leak into the output shows up.


def key(seed):
    """RBG keys: XLA:CPU compiles threefry bit generation several times slower, and compilation is
    most of these tests' time. The decoder only splits / folds keys; the default threefry key is
    covered by the jit test."""
    return jax.random.key(seed, impl="rbg")


def peaked_fn(strengths, targets, vocab):
    """Position i puts logit strengths[i] on targets[i] and 0 elsewhere, whatever the input:
    with argmax sampling its confidence log p = s_i - log(e^s_i + V - 1) increases with s_i."""
    logits = jnp.asarray(strengths, jnp.float32)[:, None] * jax.nn.one_hot(jnp.asarray(targets), vocab)

    def fn(tokens, labels):
        return jnp.broadcast_to(logits, tokens.shape + (vocab,))

    return fn


@functools.lru_cache(maxsize=None)
def _compiled(fn, static_items):
    return jax.jit(lambda arrays: iterative_decode(fn, **arrays, **dict(static_items)))


def decode(fn, known, *, labels=None, rng=0, **kwargs):
    """iterative_decode under jit; array arguments (`tokens` defaults to zeros) are traced, the rest
    static. One compilation per (logits_fn, static arguments), so calls that differ only in arrays
    share it: compilation is most of these tests' time."""
    known = jnp.asarray(known, bool)
    kwargs.setdefault("mask_token_id", MASK)
    arrays = dict(tokens=jnp.zeros(known.shape, jnp.int32), known=known,
                  rng=key(rng) if isinstance(rng, int) else rng,
                  cond=jnp.asarray(jnp.zeros(known.shape[0]) if labels is None else labels, jnp.int32))
    static = {}
    for name, value in kwargs.items():
        (arrays if isinstance(value, jax.Array) else static)[name] = value
    return _compiled(fn, tuple(sorted(static.items())))(arrays)


def expected_masked_counts(known, num_steps, schedule, start_step=0):
    """The reference's count per step and example, with the schedule in exact arithmetic: the count
    still masked after the step, max(1, min(now - 1, floor(n0 * gamma))) and 0 on the last step."""
    counts = []
    for row in np.asarray(known):
        n0 = now = int((~row).sum())
        per_step = []
        for t in range(start_step, num_steps):
            keep = exact_floor(schedule, n0, Fraction(t + 1, num_steps))
            keep = 0 if t == num_steps - 1 or now == 0 else max(1, min(now - 1, keep))
            per_step.append(keep)
            now = keep
        counts.append(per_step)
    return np.array(counts).T  # [S, B]


@pytest.mark.parametrize("case", ["linear_n5", "linear_n6_exact_boundary"])
def test_hand_worked_reveal_order(case):
    if case == "linear_n5":
        # N = 5, T = 3, linear gamma = 1 - r, argmax sampling, no choice noise. Confidence order
        # follows the strengths [2, 5, 1, 4, 3]: most confident 1, 3, 4, 0, 2 (least).
        # step 0: r = 1/3, keep floor(5 * 2/3) = floor(3.33) = 3 masked -> reveal 1 and 3.
        # step 1: r = 2/3, keep floor(5 * 1/3) = 1 (in [1, 3 - 1]) -> reveal 4 and 0, keep 2.
        # step 2: last step -> reveal 2.
        strengths, targets = [2.0, 5.0, 1.0, 4.0, 3.0], [0, 1, 2, 0, 1]
        expected_masks = [[1, 0, 1, 0, 1], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    else:
        # N = 6, T = 3, linear: n0 * gamma is exactly 4 and then 2, which float32 gamma puts a few
        # ulps below the integer (3.9999998); the decoder must still keep 4 and then 2 masked.
        # Strengths [6, 1, 5, 2, 4, 3]: step 0 reveals 0, 2; step 1 reveals 4, 5; step 2 the rest.
        strengths, targets = [6.0, 1.0, 5.0, 2.0, 4.0, 3.0], [2, 1, 0, 2, 1, 0]
        expected_masks = [[0, 1, 0, 1, 1, 1], [0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]]
    n = len(strengths)
    out = decode(peaked_fn(strengths, targets, 3), np.zeros((1, n)), num_steps=3, schedule="linear",
                 choice_temperature=0.0, temperature=1e-6)
    np.testing.assert_array_equal(np.asarray(out.masks[:, 0]).astype(int), expected_masks)
    np.testing.assert_array_equal(out.tokens[0], targets)
    # The trajectory is recorded before re-masking: every step's record is a full argmax grid.
    np.testing.assert_array_equal(out.trajectory[:, 0], np.broadcast_to(targets, (3, n)))
    assert out.tokens.dtype == jnp.int32 and out.trajectory.shape == (3, 1, n) and out.masks.dtype == bool


def test_counts_are_exact_where_float32_rounds_either_way():
    # N = 256, T = 12, cosine. Row 0 starts with all 256 unknown: after step 7 (r = 2/3) it keeps
    # 256 * cos(pi/3) = 128 masked exactly (float32 gives 127.99999). Row 1 has 17 given tokens,
    # n0 = 239: after step 5 (r = 1/2) it keeps floor(239 * cos(pi/4)) = floor(168.9985) = 168
    # (a relative 1e-5 nudge made it 169). The reference clamp never binds at these steps.
    known = np.zeros((2, 256), bool)
    known[1, :17] = True
    out = decode(lambda tokens, labels: jnp.zeros(tokens.shape + (3,)), known, num_steps=12, policy="random")
    counts = np.asarray(out.masks).sum(-1)
    assert counts[7, 0] == 128 and counts[5, 1] == 168
    np.testing.assert_array_equal(counts, expected_masked_counts(known, 12, "cosine"))


def test_lone_unknown_token_is_sampled_with_the_last_steps_settings():
    # One unknown position per row. Guided logits of token 1 are -4 + 8 s_t (uncond [0, -4], cond
    # [0, 4]) with the linear CFG schedule s_t = 3 (t + 1) / T: sampled at step 0 (s = 0.375) the
    # token would be 1 with p = sigmoid(-1) = 0.27; at the last step (s = 3) with p = sigmoid(20).
    # The reference keeps the lone token masked until the last step, so every row must take 1.
    batch, n, num_steps = 256, 4, 8
    known = np.ones((batch, n), bool)
    known[np.arange(batch), np.arange(batch) % n] = False

    def fn(tokens, labels):
        sign = jnp.where(labels == NULL, -1.0, 1.0)[:, None, None]
        return jnp.broadcast_to(jnp.stack([jnp.zeros(()), 4.0 * jnp.ones(())]) * jnp.array([0.0, 1.0]) * sign,
                                tokens.shape + (2,))

    out = decode(fn, known, labels=jnp.zeros(batch, jnp.int32), num_steps=num_steps, cfg_scale=3.0,
                 cfg_schedule="linear", uncond=NULL)
    masks = np.asarray(out.masks)
    np.testing.assert_array_equal(masks.sum(-1), np.tile([[1]] * (num_steps - 1) + [[0]], (1, batch)))
    assert (np.asarray(out.tokens)[~known] == 1).all()


def test_ties_reveal_in_raster_order():
    # Identical logits everywhere and no choice noise: all confidences tie. Exactly mask_len are
    # re-masked anyway (4 then 2 for N = 6, T = 3, linear), revealing the earliest positions first.
    out = decode(peaked_fn([1.0] * 6, [0] * 6, 3), np.zeros((1, 6)), num_steps=3, schedule="linear",
                 choice_temperature=0.0, temperature=1e-6)
    np.testing.assert_array_equal(np.asarray(out.masks[:, 0]).astype(int),
                                  [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]])


def test_fixed_rng_is_deterministic_and_rngs_differ():
    fn = peaked_fn(np.linspace(0.0, 1.0, 32), np.arange(32) % 5, 5)
    run = functools.partial(decode, fn, np.zeros((2, 32)), num_steps=6, choice_temperature=4.5)
    a, b, c = run(rng=3), run(rng=3), run(rng=4)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # With noisy choice, another key reveals the tokens in another order.
    assert not np.array_equal(a.masks, c.masks)


def random_known(rng, batch, n):
    known = np.random.default_rng(rng).random((batch, n)) < np.linspace(0.0, 1.0, batch)[:, None]
    known[0], known[-1] = False, True  # nothing given / everything given
    known[1] = False
    known[1, 1:] = True  # exactly one unknown position
    return known


@pytest.mark.parametrize("policy,schedule,num_steps,start_step", [
    ("confidence", "cosine", 8, 0), ("random", "cosine", 8, 2), ("confidence", "linear", 5, 0),
    ("random", "square", 4, 0), ("confidence", "linear", 1, 0)])
def test_known_tokens_and_schedule_counts(policy, schedule, num_steps, start_step):
    batch, n, vocab = 7, 24, 6
    known = random_known(int(policy == "random"), batch, n)
    given = np.random.default_rng(5).integers(0, vocab, (batch, n)).astype(np.int32)
    rng = np.random.default_rng(6)
    logits = jnp.asarray(rng.normal(size=(n, vocab)) * 3, jnp.float32)

    def fn(tokens, labels):
        # Depends on the input grid too, so the decoder's feeding of mask ids matters.
        return logits[None] + 0.5 * (tokens == MASK)[..., None]

    out = decode(fn, known, tokens=jnp.asarray(given), rng=1, num_steps=num_steps, schedule=schedule, policy=policy,
                 start_step=start_step)
    traj, masks = np.asarray(out.trajectory), np.asarray(out.masks)
    assert traj.shape == (num_steps - start_step, batch, n)
    # Known tokens never change and are never masked, at any step.
    for step in range(len(traj)):
        np.testing.assert_array_equal(traj[step][known], given[known])
        assert not masks[step][known].any()
    np.testing.assert_array_equal(traj[:, -1], np.broadcast_to(given[-1], traj[:, -1].shape))  # all known: untouched
    # Every grid is filled with real tokens; the last mask is empty.
    assert ((traj >= 0) & (traj < vocab)).all() and not masks[-1].any()
    np.testing.assert_array_equal(out.tokens, traj[-1])
    # Counts follow floor(n0 * gamma(r)) with the clamps; at least one reveal per step while two or
    # more positions are unknown, and a lone unknown position waits for the last step.
    np.testing.assert_array_equal(masks.sum(-1), expected_masked_counts(known, num_steps, schedule, start_step))
    before = np.concatenate([~known[None], masks[:-1]])
    last = np.arange(len(masks))[:, None] == len(masks) - 1
    lone = (before.sum(-1) == 1) & ~last
    assert (masks.sum(-1)[~lone] < np.maximum(before.sum(-1), 1)[~lone]).all()
    assert (masks.sum(-1)[lone] == 1).all() and lone[:-1, 1].all()  # row 1: one unknown position
    # Revealed positions stay revealed with the same token; masks only shrink.
    assert not (masks & ~before).any()
    for step in range(1, len(traj)):
        settled = ~masks[step - 1]
        np.testing.assert_array_equal(traj[step][settled], traj[step - 1][settled])


def test_random_policy_ignores_the_model():
    n = 16
    # Label 0: confidence grows with the position; label 1: it falls. (Choosing the model by label
    # keeps one compilation per policy.)
    strengths = jnp.asarray(np.stack([np.arange(n), np.arange(n)[::-1]]), jnp.float32)
    table = strengths[:, :, None] * jax.nn.one_hot(jnp.zeros(n, int), 4)  # [2, N, V]
    fn = lambda tokens, labels: table[labels]
    run = functools.partial(decode, fn, np.zeros((1, n)), num_steps=4, choice_temperature=0.0, temperature=1e-6)
    up, down = jnp.array([0]), jnp.array([1])
    conf_up = run(labels=up)
    # Confidence policy: the first step reveals the most confident (last) positions.
    first = ~np.asarray(conf_up.masks[0, 0])
    assert first.any() and np.all(np.nonzero(first)[0] >= n - first.sum())
    # Random policy: the same key gives the same reveal order under opposite confidence orders,
    # that order does not follow the confidence, and another key gives another order.
    rnd_up = run(labels=up, policy="random")
    np.testing.assert_array_equal(rnd_up.masks, run(labels=down, policy="random").masks)
    assert not np.array_equal(rnd_up.masks, conf_up.masks)
    assert not np.array_equal(rnd_up.masks, run(labels=up, policy="random", rng=1).masks)


NULL = 3


def labelled_fn(seen_batches=None):
    """Logits that depend on the label (and position), so guidance changes the samples."""
    table = jnp.asarray(np.random.default_rng(0).normal(size=(4, 10, 5)) * 2, jnp.float32)  # [label, N, V]

    def fn(tokens, labels):
        if seen_batches is not None:
            seen_batches.append(tokens.shape[0])
        return table[labels]

    return fn


def test_cfg_endpoints_and_single_batched_call():
    labels = jnp.array([0, 1, 2])
    seen = []
    run = functools.partial(decode, labelled_fn(seen), np.zeros((3, 10)), num_steps=4, rng=7)
    plain_cond = run(labels=labels)
    plain_uncond = run(labels=jnp.full(3, NULL))
    assert seen == [3]  # cfg_scale == 1.0, constant: no unconditional pass at all (traced once)
    # s = 0: exactly the unconditional model; s = 1 (an array scale forces the guided path): the
    # conditional model. Both passes go through one logits_fn call on a 2B batch.
    guided = functools.partial(run, labels=labels, uncond=NULL)
    jax.tree.map(np.testing.assert_array_equal, guided(cfg_scale=jnp.float32(0.0)), plain_uncond)
    jax.tree.map(np.testing.assert_array_equal, guided(cfg_scale=jnp.float32(1.0)), plain_cond)
    assert seen == [3, 6]
    assert not np.array_equal(plain_cond.tokens, plain_uncond.tokens)
    with pytest.raises(ValueError, match="uncond"):
        run(labels=labels, cfg_scale=3.0)
    with pytest.raises(ValueError, match="uncond"):
        run(labels=labels, cfg_schedule="linear")


def before_each_step(known, masks):
    """[S, B, N]: True where the position is unknown when the step starts (so it is sampled)."""
    return np.concatenate([~np.asarray(known)[None], np.asarray(masks)[:-1]])


def assert_ancestral_reveal_rates(known, masks, schedule, num_steps):
    """Each step reveals a still-masked position with probability (gamma_prev - gamma) / gamma_prev:
    the empirical fraction is within 4 binomial sigmas. Returns the masks before each step."""
    before = before_each_step(known, masks)
    for t in range(num_steps - 1):
        g_prev, g = (float(mask_ratio(schedule, x / num_steps)) for x in (t, t + 1))
        p = (g_prev - g) / g_prev
        trials = before[t].sum()
        revealed = (before[t] & ~masks[t]).sum()
        assert trials > 200
        assert abs(revealed / trials - p) < 4 * math.sqrt(p * (1 - p) / trials) + 1e-9, (t, revealed / trials, p)
    return before


@pytest.mark.parametrize("cfg_schedule", ["constant", "linear", "cosine"])
def test_cfg_schedule_sets_the_scale_per_step(cfg_schedule):
    # Two tokens; position i has uncond logits [0, -c_i] and cond [0, 1 - c_i], so the guided
    # logit of token 1 is s_t - c_i: with argmax sampling, a position sampled at step t holds
    # token 1 exactly when c_i < s_t. The random policy leaves a spread of c_i to read each step.
    n, scale, num_steps = 60, 2.0, 4
    c = (np.arange(n) + 0.5) * 0.05  # thresholds 0.025 .. 2.975, none within 0.01 of any s_t below

    def fn(tokens, labels):
        cond = (labels != NULL).astype(jnp.float32)[:, None]
        second = -jnp.asarray(c, jnp.float32)[None] + cond
        return jnp.stack([jnp.zeros_like(second), second], axis=-1)

    known = np.zeros((1, n), bool)
    out = decode(fn, known, labels=jnp.array([0]), num_steps=num_steps, policy="random", cfg_scale=scale,
                 cfg_schedule=cfg_schedule, uncond=NULL, temperature=1e-6)
    sampled = before_each_step(known, out.masks)
    for t in range(num_steps):
        r = (t + 1) / num_steps
        s_t = {"constant": scale, "linear": scale * r, "cosine": scale * (1 - math.cos(math.pi * r)) / 2}[cfg_schedule]
        where = sampled[t, 0]
        assert where.sum() >= 20  # 60, 55, 42, 22 positions are sampled at steps 0..3
        np.testing.assert_array_equal(out.trajectory[t, 0][where], (c < s_t)[where].astype(np.int32))


def test_near_zero_temperature_is_argmax():
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 12, 7)), jnp.float32)
    run = functools.partial(decode, lambda tokens, labels: logits, np.zeros((2, 12)), num_steps=3)
    np.testing.assert_array_equal(run(temperature=jnp.float32(1e-6)).tokens, jnp.argmax(logits, -1))
    assert not np.array_equal(run(temperature=jnp.float32(50.0)).tokens, jnp.argmax(logits, -1))


def test_linear_temperature_schedule_uses_temperature_times_one_minus_t_over_T():
    # Step t samples with temperature * (1 - t / T) on its key (fold_in(rng, t), first split):
    # wherever step t samples, its record equals the sampler called directly at that temperature.
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(1, 64, 9)), jnp.float32)
    rng, num_steps, temperature = 11, 4, 2.0
    known = np.zeros((1, 64), bool)
    out = decode(lambda tokens, labels: logits, known, rng=rng, num_steps=num_steps, temperature=temperature,
                 temperature_schedule="linear")
    sampled = before_each_step(known, out.masks)

    @jax.jit
    def direct(t):
        step_key = jax.random.split(jax.random.fold_in(key(rng), t))[0]
        return sample_categorical(step_key, logits, temperature * (1 - t / num_steps))

    for t in range(num_steps):
        np.testing.assert_array_equal(np.asarray(out.trajectory[t])[sampled[t]], np.asarray(direct(t))[sampled[t]])


def test_confidence_is_log_prob_plus_annealed_choice_noise():
    # Step t ranks by log p(sampled) + choice_temperature * (1 - (t+1)/T) * Gumbel, the noise from
    # the step's second key: every position revealed at step t must outrank every one kept masked.
    logits = jnp.asarray(np.random.default_rng(4).normal(size=(1, 32, 6)), jnp.float32)
    rng, num_steps, choice_temperature = 5, 4, 2.0
    known = np.zeros((1, 32), bool)
    out = decode(lambda tokens, labels: logits, known, rng=rng, num_steps=num_steps,
                 choice_temperature=choice_temperature)
    sampled, masks = before_each_step(known, out.masks), np.asarray(out.masks)
    log_probs = jax.nn.log_softmax(logits, -1)

    @jax.jit
    def confidence(t, tokens):
        choice_key = jax.random.split(jax.random.fold_in(key(rng), t))[1]
        noise = gumbel_noise(choice_key, tokens.shape)
        log_p = jnp.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
        return log_p + choice_temperature * (1 - (t + 1) / num_steps) * noise

    for t in range(num_steps - 1):  # the last step reveals everything
        conf = np.asarray(confidence(t, out.trajectory[t]))
        revealed, kept = sampled[t] & ~masks[t], masks[t]
        assert revealed.any() and kept.any()
        assert conf[revealed].min() >= conf[kept].max() - 1e-5


def test_under_jit_with_mixed_known_counts_and_default_key():
    batch, n = 4, 20
    known = random_known(9, batch, n)
    fn = labelled_fn()
    table_fn = lambda tokens, labels: jnp.tile(fn(tokens, labels), (1, 2, 1))  # N = 20
    kw = dict(num_steps=5, mask_token_id=MASK, cfg_scale=2.5, cfg_schedule="cosine", uncond=NULL,
              temperature_schedule="linear")
    jitted = jax.jit(functools.partial(iterative_decode, table_fn, **kw))
    # The default (threefry) key; traced scalars for the scale and temperatures.
    args = dict(tokens=jnp.ones((batch, n), jnp.int32), known=jnp.asarray(known), cond=jnp.arange(batch) % 3,
                rng=jax.random.key(0), temperature=jnp.float32(1.5), choice_temperature=jnp.float32(3.0))
    out = jitted(**args)
    assert isinstance(out, DecodeResult) and out.trajectory.shape == (5, batch, n)
    np.testing.assert_array_equal(np.asarray(out.masks).sum(-1), expected_masked_counts(known, 5, "cosine"))
    assert (np.asarray(out.trajectory)[:, known] == 1).all() and (np.asarray(out.tokens) != MASK).all()
    jax.tree.map(np.testing.assert_array_equal, out, jitted(**args))


@pytest.mark.parametrize("kwargs,match", [
    (dict(policy="greedy"), "policy.*confidence.*ancestral.*ancestral_joint.*first_hitting"),
    (dict(cfg_schedule="exp"), "cfg_schedule.*linear"),
    (dict(temperature_schedule="cosine"), "temperature_schedule.*linear"),
    (dict(start_step=4), "start_step"),
    (dict(start_step=-1), "start_step"),
    (dict(num_steps=0), "num_steps"),
    (dict(precision="float16"), "precision"),
    (dict(schedule="sigmoid"), "mask schedule"),
])
def test_bad_static_arguments(kwargs, match):
    kwargs = {"num_steps": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        decode(labelled_fn(), np.zeros((1, 10)), **kwargs)


def test_bad_shapes():
    fn = labelled_fn()
    base = dict(tokens=jnp.zeros((2, 10), jnp.int32), known=jnp.zeros((2, 10), bool), cond=jnp.zeros(2, jnp.int32),
                rng=jax.random.key(0), num_steps=2, mask_token_id=MASK)
    with pytest.raises(ValueError, match="known"):
        iterative_decode(fn, **{**base, "known": jnp.zeros((2, 9), bool)})
    with pytest.raises(ValueError, match="cond"):
        iterative_decode(fn, **{**base, "cond": jnp.zeros(3, jnp.int32)})
    with pytest.raises(ValueError, match="tokens"):
        iterative_decode(fn, **{**base, "tokens": jnp.zeros(10, jnp.int32), "known": jnp.zeros(10, bool)})
    with pytest.raises(ValueError, match="logits_fn"):
        iterative_decode(fn, **{**base, "tokens": jnp.zeros((2, 12), jnp.int32), "known": jnp.zeros((2, 12), bool)})


# ------------------------------------------------------------------------ any rank, any condition

def shape_checked_fn(shape, vocab=5, seen=None):
    """Logits [B', *shape, V] that depend on the position and on the input (mask or not); fails at
    trace time unless the decoder hands over tokens in their original shape."""
    table = jnp.asarray(np.random.default_rng(1).normal(size=shape + (vocab,)) * 2, jnp.float32)

    def fn(tokens, cond):
        assert tokens.shape[1:] == shape, (tokens.shape, shape)
        if seen is not None:
            seen.append(cond)
        return table[None] + 0.5 * (tokens == MASK)[..., None]

    return fn


@pytest.mark.parametrize("shape,policy", [((12,), "confidence"), ((3, 4), "ancestral"),
                                          ((2, 3, 2), "first_hitting"), ((6, 2), "random")])
def test_any_rank_keeps_known_tokens_and_shapes(shape, policy):
    # (6, 2) stands for [T, K]: K codebook streams per position are just one more axis.
    batch, vocab = 3, 5
    known = np.random.default_rng(2).random((batch,) + shape) < 0.4
    given = np.random.default_rng(3).integers(0, vocab, (batch,) + shape).astype(np.int32)
    num_steps = 12 if policy == "first_hitting" else 4  # first hitting needs one step per token
    out = jax.jit(lambda tokens, known, rng: iterative_decode(
        shape_checked_fn(shape, vocab), tokens=tokens, known=known, rng=rng, num_steps=num_steps,
        mask_token_id=MASK, policy=policy))(jnp.asarray(given), jnp.asarray(known), key(0))
    assert out.tokens.shape == (batch,) + shape and out.tokens.dtype == jnp.int32
    assert out.trajectory.shape == out.masks.shape == (num_steps, batch) + shape
    assert out.times.shape == (num_steps, batch) and int(out.nfe) == num_steps
    np.testing.assert_array_equal(np.asarray(out.tokens)[known], given[known])
    for step in range(num_steps):
        np.testing.assert_array_equal(np.asarray(out.trajectory[step])[known], given[known])
        assert not np.asarray(out.masks[step])[known].any()
    assert ((np.asarray(out.tokens) >= 0) & (np.asarray(out.tokens) < vocab)).all() and not out.masks[-1].any()


def test_unconditional_cond_none_reaches_the_model_as_none():
    seen = []
    out = iterative_decode(shape_checked_fn((6,), seen=seen), tokens=jnp.zeros((2, 6), jnp.int32),
                           known=jnp.zeros((2, 6), bool), rng=key(0), num_steps=3, mask_token_id=MASK)
    assert seen and all(c is None for c in seen)
    assert out.tokens.shape == (2, 6) and not np.asarray(out.masks[-1]).any()
    # Guidance without a condition, or without its null condition, has nothing to contrast.
    base = dict(tokens=jnp.zeros((2, 6), jnp.int32), known=jnp.zeros((2, 6), bool), rng=key(0), num_steps=3,
                mask_token_id=MASK, cfg_scale=2.0)
    fn = shape_checked_fn((6,))
    with pytest.raises(ValueError, match="uncond"):
        iterative_decode(fn, **base)
    with pytest.raises(ValueError, match="uncond"):
        iterative_decode(fn, **base, cond=jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="structure"):
        iterative_decode(fn, **base, cond={"a": jnp.zeros(2)}, uncond={"b": jnp.zeros(2)})


def test_pytree_condition_with_guidance_runs_one_batched_pass():
    # cond = {"label": [B], "embedding": [B, 3]}; the model adds embedding . w to token 1's logit
    # and a per-label table. uncond is the null pytree (label 3, zero embedding).
    n, vocab = 10, 4
    table = jnp.asarray(np.random.default_rng(0).normal(size=(4, n, vocab)) * 2, jnp.float32)
    w = jnp.array([1.0, -2.0, 0.5])
    calls = []

    def fn(tokens, cond):
        calls.append(jax.tree.map(jnp.shape, cond))
        bonus = (cond["embedding"] @ w)[:, None, None] * jax.nn.one_hot(1, vocab)
        return table[cond["label"]] + bonus

    cond = {"label": jnp.array([0, 1, 2]), "embedding": jnp.asarray(np.random.default_rng(1).normal(size=(3, 3)),
                                                                     jnp.float32)}
    null = {"label": jnp.full(3, 3), "embedding": jnp.zeros((3, 3))}
    run = jax.jit(lambda cond, uncond, scale: iterative_decode(
        fn, tokens=jnp.zeros((3, n), jnp.int32), known=jnp.zeros((3, n), bool), rng=key(4), num_steps=4,
        mask_token_id=MASK, cond=cond, uncond=uncond, cfg_scale=scale))
    plain = jax.jit(lambda cond: iterative_decode(
        fn, tokens=jnp.zeros((3, n), jnp.int32), known=jnp.zeros((3, n), bool), rng=key(4), num_steps=4,
        mask_token_id=MASK, cond=cond))
    guided_zero, guided_one = run(cond, null, jnp.float32(0.0)), run(cond, null, jnp.float32(1.0))
    # Every leaf went through as one 2B batch.
    assert {"label": (6,), "embedding": (6, 3)} in calls
    # s = 0 is the null condition's model, s = 1 the conditional one.
    np.testing.assert_array_equal(guided_zero.tokens, plain(null).tokens)
    np.testing.assert_array_equal(guided_one.tokens, plain(cond).tokens)
    assert not np.array_equal(guided_zero.tokens, guided_one.tokens)
    assert not np.array_equal(run(cond, null, jnp.float32(3.0)).tokens, guided_one.tokens)


# ------------------------------------------------------------------------------------ policies

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ancestral_reveals_each_unknown_position_with_the_mdlm_probability(schedule):
    # 64 x 64 positions; at step t each still-unknown position is revealed with probability
    # (gamma(t/T) - gamma((t+1)/T)) / gamma(t/T), independently: the empirical fraction must be
    # within 4 binomial sigmas of it, and the last step reveals everything.
    batch, n, num_steps = 64, 64, 6
    logits = jnp.log(jnp.array([0.6, 0.3, 0.1]))
    fn = lambda tokens, cond: jnp.broadcast_to(logits, tokens.shape + (3,))  # noqa: E731
    known = np.zeros((batch, n), bool)
    out = decode(fn, known, num_steps=num_steps, schedule=schedule, policy="ancestral")
    masks = np.asarray(out.masks)
    before = assert_ancestral_reveal_rates(known, masks, schedule, num_steps)
    assert not masks[-1].any() and before[-1].any()  # the last step had work left and finished it
    # The revealed tokens are samples of p(x0): frequencies of the final tokens follow the logits.
    np.testing.assert_allclose(np.bincount(np.asarray(out.tokens).ravel(), minlength=3) / (batch * n),
                               [0.6, 0.3, 0.1], atol=0.03)


def test_first_hitting_reveals_exactly_one_uniform_position_per_step():
    batch, n = 512, 8
    fn = lambda tokens, cond: jnp.zeros(tokens.shape + (3,))  # noqa: E731
    known = np.zeros((batch, n), bool)
    known[0, :3] = True  # fewer unknowns: done after 5 steps, the later ones change nothing
    out = decode(fn, known, num_steps=n + 2, policy="first_hitting")
    masks = np.asarray(out.masks)
    counts = np.concatenate([(~known).sum(-1)[None], masks.sum(-1)])  # [S + 1, B] unknown counts
    steps = np.diff(-counts, axis=0)  # reveals per step
    np.testing.assert_array_equal(steps[:n, 1:], 1)  # N steps fill N tokens, one each
    np.testing.assert_array_equal(steps[:, 0], [1] * 5 + [0] * 5)
    assert not masks[n - 1, 1:].any()
    # Uniform choice: the first revealed position is spread evenly over the 8 positions.
    first = np.argmax(~masks[0, 1:], axis=-1)
    assert np.bincount(first, minlength=n).min() > 511 / n * 0.6
    # Event times: decreasing from 1, the first after n masked tokens is t * u^(1/n), mean n / (n + 1).
    times = np.asarray(out.times)
    assert (np.diff(np.concatenate([np.ones((1, batch)), times]), axis=0) <= 0).all() and (times > 0).all()
    assert abs(times[0, 1:].mean() - n / (n + 1)) < 0.02
    np.testing.assert_array_equal(times[5:, 0], times[4, 0])  # nothing left: time stands still


def test_a_custom_policy_plugs_in():
    # Reveal the leftmost unknown position each step: raster order, through the documented interface.
    def leftmost(rng, *, unknown, **_):
        first = jnp.argmax(unknown, axis=-1)
        return unknown & (jnp.arange(unknown.shape[-1]) != first[:, None])

    out = decode(peaked_fn([1.0] * 4, [2, 0, 1, 2], 3), np.zeros((1, 4)), num_steps=4,
                 policy=UnmaskPolicy(leftmost))
    np.testing.assert_array_equal(np.asarray(out.masks[:, 0]).astype(int),
                                  [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert set(POLICIES) == {"confidence", "random", "ancestral", "ancestral_joint", "first_hitting"}


@pytest.mark.parametrize("policy", ["ancestral", "ancestral_joint"])
def test_cache_skips_unchanged_steps_without_changing_the_samples(policy):
    # 200 steps for 8 tokens: most steps reveal nothing, so the next step's input is unchanged.
    # ancestral_joint draws its tokens inside the policy, from the same (possibly cached) logits.
    batch, n, num_steps = 2, 8, 200
    table = jnp.asarray(np.random.default_rng(0).normal(size=(n, 5)) * 2, jnp.float32)

    def fn(tokens, cond):  # depends on the revealed tokens, so a stale cache would show
        return table[None] + 0.3 * jnp.sum(tokens != MASK, axis=-1)[:, None, None] * jax.nn.one_hot(tokens % 5, 5)

    known = np.zeros((batch, n), bool)
    run = functools.partial(decode, fn, known, rng=2, num_steps=num_steps, policy=policy, schedule="linear")
    plain, cached = run(), run(cache=True)
    jax.tree.map(np.testing.assert_array_equal, cached._replace(nfe=0), plain._replace(nfe=0))
    assert int(plain.nfe) == num_steps
    # One evaluation first, then one after every step that revealed something in any row, as long
    # as anything is left unknown.
    before = before_each_step(known, cached.masks)
    revealed = (before & ~np.asarray(cached.masks)).any(axis=(1, 2))
    evaluated = np.concatenate([[True], revealed[:-1]]) & before.any(axis=(1, 2))
    assert int(cached.nfe) == evaluated.sum() < num_steps // 4
    # Without the trajectory: the same tokens, empty records.
    light = run(cache=True, record_trajectory=False)
    np.testing.assert_array_equal(light.tokens, plain.tokens)
    assert light.trajectory.shape == light.masks.shape == (0, batch, n) and int(light.nfe) == int(cached.nfe)


# ------------------------------------------------------------------ ancestral_joint (MDLM's draw)

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ancestral_joint_reveals_with_the_mdlm_probability_and_samples_p_x0(schedule):
    # The same process as "ancestral", drawn as one (V+1)-way categorical per position: per step,
    # the fraction of unknown positions revealed is (gamma_prev - gamma) / gamma_prev (within 4
    # binomial sigmas), the last step reveals everything, and every revealed token is a p(x0) draw.
    batch, n, num_steps = 64, 64, 6
    probs = np.array([0.6, 0.3, 0.1])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    fn = lambda tokens, cond: jnp.broadcast_to(logits, tokens.shape + (3,))  # noqa: E731
    known = np.zeros((batch, n), bool)
    out = decode(fn, known, num_steps=num_steps, schedule=schedule, policy="ancestral_joint")
    masks, trajectory = np.asarray(out.masks), np.asarray(out.trajectory)
    before = assert_ancestral_reveal_rates(known, masks, schedule, num_steps)
    assert not masks[-1].any() and before[-1].any()
    tokens = np.asarray(out.tokens)
    np.testing.assert_allclose(np.bincount(tokens.ravel(), minlength=3) / tokens.size, probs, atol=0.03)
    # The trajectory keeps each revealed token from its step on, and records a token everywhere.
    assert (trajectory >= 0).all() and (trajectory < 3).all()
    np.testing.assert_array_equal(trajectory[-1], tokens)


def test_ancestral_joint_is_one_gumbel_max_over_stay_and_the_tokens():
    # Bit-for-bit: the policy's draw is argmax over [log q_stay, log(1 - q_stay) + log_softmax(l / T)]
    # plus gumbel_noise of shape [..., V + 1] from the same key (index 0 = stay masked).
    draw = POLICIES["ancestral_joint"].draw
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 50, 7)) * 3, jnp.float32)
    unknown = jnp.asarray(np.random.default_rng(1).random((4, 50)) < 0.8)
    for precision in ("float32", "float64"):
        rng = key(5)
        tokens, still = draw(rng, logits=logits, unknown=unknown, ratio_prev=jnp.float32(0.8),
                             ratio=jnp.float32(0.5), temperature=0.7, precision=precision)
        q = 0.5 / 0.8
        weights = jnp.concatenate([jnp.full((4, 50, 1), math.log(q)),
                                   math.log(1 - q) + jax.nn.log_softmax(logits / 0.7, axis=-1)], axis=-1)
        choice = np.asarray(jnp.argmax(weights + gumbel_noise(rng, (4, 50, 8), precision), axis=-1))
        np.testing.assert_array_equal(np.asarray(still), np.asarray(unknown) & (choice == 0))
        revealed = choice > 0
        np.testing.assert_array_equal(np.asarray(tokens)[revealed], choice[revealed] - 1)
    # ratio 0 (the last step): stay has weight 0, so everything is revealed.
    _, still = draw(key(6), logits=logits, unknown=unknown, ratio_prev=jnp.float32(0.1), ratio=jnp.float32(0.0),
                    temperature=1.0, precision="float32")
    assert not np.asarray(still).any()


@pytest.mark.slow  # ~1.5 min on 2 CPU cores: 5e8 Gumbel draws, the least that shows the effect (below)
def test_ancestral_joint_in_float32_starves_rare_tokens_and_lowers_entropy():
    """Zheng et al.'s mechanism (arXiv 2409.02908 Sec. 5) on MDLM's joint draw, V = 257.

    One step with unmask probability q = 1/1024: "stay" has weight ~1, the head token q * p0 and
    each of 256 rare tokens q * p_rare, 17 nats below "stay". Drawing a rare token needs Gumbel
    noise ~17 above the stay noise, past float32's ceiling (~15.94), so float32 almost never
    reveals one; float64 (64-bit uniforms) does, at the exact rate 256 q p_rare. The revealed
    tokens' entropy therefore drops in float32.

    Why this p(x0) and not a smooth spread of log-probs: float32 noise differs from exact Gumbel
    noise only on its top grid cell, probability 2^-23, so per token and draw it can lose at most
    ~1.2e-7 reveal probability. Seeing ~10 lost reveals takes ~10^8 token draws whatever p is;
    putting all the rare mass right past the ceiling is the cheapest design that still shows it.
    """
    vocab, gap, q = 257, 17.0, 1.0 / 1024
    # log q + log p_rare - log(1 - q) = -gap: each rare token sits `gap` nats below "stay".
    log_p_rare = -gap + math.log1p(-q) - math.log(q)
    log_p = np.concatenate([[0.0], np.full(vocab - 1, log_p_rare)])
    log_p -= np.log(np.exp(log_p).sum())
    p = np.exp(log_p)
    rows, n, chunks = 64, 1024, 16  # 2^20 positions, 2.7e8 Gumbel draws per precision
    logits = jnp.broadcast_to(jnp.asarray(log_p, jnp.float32), (rows, n, vocab))
    unknown = jnp.ones((rows, n), bool)
    draw = POLICIES["ancestral_joint"].draw

    def counts(precision):
        def one(k):
            tokens, still = draw(k, logits=logits, unknown=unknown, ratio_prev=jnp.float32(1.0),
                                 ratio=jnp.float32(1.0 - q), temperature=1.0, precision=precision)
            return jnp.zeros(vocab, jnp.int32).at[tokens].add((~still).astype(jnp.int32))  # revealed tokens
        keys = jax.random.split(key(7), chunks)
        return np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(keys)).sum(0)

    def entropy(c):
        f = c[c > 0] / c.sum()
        return float(-(f * np.log(f)).sum())

    c64, c32 = counts("float64"), counts("float32")
    positions = rows * n * chunks
    # float64: reveals and rare reveals at the exact rates q and q * (1 - p0) (4 sigma, Poisson).
    for got, rate in ((c64.sum(), q), (c64[1:].sum(), q * (1 - p[0]))):
        expected = positions * rate
        assert abs(got - expected) < 4 * math.sqrt(expected), (got, expected)
    # float32: the head token is revealed as often, the rare ones at most a third as often.
    assert abs(c32[0] - c64[0]) < 4 * math.sqrt(c64[0]) and c32[1:].sum() <= positions * q * (1 - p[0]) / 3
    assert entropy(c32) < 0.5 * entropy(c64), (entropy(c32), entropy(c64))
