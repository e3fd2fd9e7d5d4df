"""MAGNeT's decoding options of `iterative_decode` (arXiv 2401.04577): top-p sampling against a numpy
nucleus, the mask-rate CFG scale, the temperature annealed to 0, rescoring (probability mixing), and
span re-masking (whole spans, the cos count schedule, span scores, known positions kept)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgen.sampling.categorical import gumbel_noise, nucleus_mask, sample_categorical
from maskgen.sampling.iterative import POLICIES, UnmaskPolicy, iterative_decode, span_policy

NULL = 0  # the null label of the guided tests


def key(seed):
    """RBG keys: XLA:CPU compiles threefry bit generation several times slower."""
    return jax.random.key(seed, impl="rbg")


def numpy_nucleus(probs, top_p):
    """The reference nucleus: most probable tokens first, until their total reaches top_p."""
    order = np.argsort(-probs, kind="stable")
    chosen, total = set(), 0.0
    for token in order:
        chosen.add(int(token))
        total += probs[token]
        if total >= top_p:
            break
    return chosen


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def recording(policy, log):
    """Wraps a policy's `choose` to record (step -> log_probs_of_sample, unknown) on the host."""
    def choose(rng, *, log_probs_of_sample, unknown, step, **kwargs):
        jax.debug.callback(lambda t, lp, u: log.__setitem__(int(t), (np.asarray(lp), np.asarray(u))),
                           step, log_probs_of_sample, unknown)
        return policy.choose(rng, log_probs_of_sample=log_probs_of_sample, unknown=unknown, step=step, **kwargs)
    return UnmaskPolicy(choose, uses_count=policy.uses_count)


# ----------------------------------------------------------------------------------------- top-p

def test_nucleus_matches_numpy_reference():
    logits = np.random.default_rng(0).normal(size=(64, 12)).astype(np.float32) * 2
    for top_p in (0.3, 0.6, 0.9):
        mask = np.asarray(nucleus_mask(jnp.asarray(logits), top_p))
        for row, row_mask in zip(logits, mask):
            probs = softmax(row.astype(np.float64))
            cumulative = np.cumsum(np.sort(probs)[::-1])
            if np.min(np.abs(cumulative - top_p)) < 1e-5:
                continue  # float32 vs float64 could disagree exactly at the boundary
            assert set(np.flatnonzero(row_mask).tolist()) == numpy_nucleus(probs, top_p)
    # Tied probabilities: the whole tie at the boundary is kept.
    tied = np.asarray(nucleus_mask(jnp.log(jnp.asarray([0.4, 0.2, 0.2, 0.2])), 0.5))
    assert tied.tolist() == [True, True, True, True]


def test_top_p_samples_the_renormalised_nucleus_and_defaults_are_unchanged():
    logits = jnp.asarray([2.0, 1.5, 1.0, 0.0, -1.0, -3.0], jnp.float32)
    draws = 20000
    batch = jnp.broadcast_to(logits, (draws, 6))
    samples = np.asarray(sample_categorical(key(1), batch, 0.8, top_p=0.7))
    probs = softmax(np.asarray(logits, np.float64) / 0.8)
    nucleus = sorted(numpy_nucleus(probs, 0.7))
    assert nucleus == [0, 1]  # (0.47, 0.25, ...) at temperature 0.8
    assert set(samples.tolist()) == set(nucleus)
    expected = probs[nucleus] / probs[nucleus].sum()
    freq = np.bincount(samples, minlength=6)[nucleus] / draws
    assert np.all(np.abs(freq - expected) < 5 * np.sqrt(expected * (1 - expected) / draws)), (freq, expected)
    # top_p = 1.0 is today's sampler, bit for bit: argmax(logits / T + Gumbel).
    rng = key(2)
    before = jnp.argmax(batch / 0.8 + gumbel_noise(rng, batch.shape), axis=-1)
    np.testing.assert_array_equal(sample_categorical(rng, batch, 0.8), before)
    np.testing.assert_array_equal(sample_categorical(rng, batch, 0.8, top_p=1.0), before)


def test_decode_with_top_p_only_emits_nucleus_tokens():
    table = np.random.default_rng(3).normal(size=(8, 10)).astype(np.float32)
    fn = lambda tokens, cond: jnp.broadcast_to(jnp.asarray(table), tokens.shape + (10,))  # noqa: E731
    out = iterative_decode(fn, tokens=jnp.zeros((256, 8), jnp.int32), known=jnp.zeros((256, 8), bool), rng=key(4),
                           num_steps=4, mask_token_id=10, policy="random", temperature=1.3, top_p=0.5)
    tokens = np.asarray(out.tokens)
    for position in range(8):
        allowed = numpy_nucleus(softmax(table[position].astype(np.float64) / 1.3), 0.5)
        assert set(tokens[:, position].tolist()) == allowed


# ------------------------------------------------------------------------ CFG and temperature

def test_mask_rate_cfg_scale_is_magnets_formula():
    # Guided logit of token 0 is 0.3 s (cond [0.3, 0, 0, 0], uncond 0), so the recorded log p of
    # the (argmax) sample gives back s = logit(p * 3 / (1 - p)) / 0.3 per position and step.
    vocab, n, num_steps = 4, 12, 4
    known = np.zeros((2, n), bool)
    known[1, :5] = True  # row 1 decodes 7 positions: its own mask share

    def fn(tokens, labels):
        conditional = (labels != NULL).astype(jnp.float32)[:, None, None]
        return conditional * jnp.broadcast_to(jnp.asarray([0.3, 0.0, 0.0, 0.0]), tokens.shape + (vocab,))

    log = {}
    out = iterative_decode(fn, tokens=jnp.zeros((2, n), jnp.int32), known=jnp.asarray(known), rng=key(5),
                           num_steps=num_steps, mask_token_id=vocab, cond=jnp.asarray([1, 1]),
                           uncond=jnp.asarray(NULL), cfg_scale=10.0, cfg_schedule="mask_rate",
                           cfg_min_scale=1.0, temperature=1e-6, policy=recording(POLICIES["random"], log))
    jax.effects_barrier()
    masks = np.concatenate([~known[None], np.asarray(out.masks)])  # unknown before each step
    for t, (log_p, unknown) in log.items():
        np.testing.assert_array_equal(unknown, masks[t])
        share = masks[t].sum(-1) / (~known).sum(-1)
        expected = share * 10.0 + (1 - share) * 1.0
        p = np.exp(log_p.astype(np.float64))
        scale = np.log(p * (vocab - 1) / (1 - p)) / 0.3
        for b in range(2):
            np.testing.assert_allclose(scale[b][masks[t][b]], expected[b], rtol=2e-3)
    # The scale falls from 10 (everything masked) as the rows fill in, at each row's own pace.
    assert set(log) == set(range(num_steps))
    shares = masks[:num_steps].sum(-1) / (~known).sum(-1)
    assert (shares[0] == 1).all() and (np.diff(shares, axis=0) <= 0).all() and shares[-1].max() < 0.5


def test_linear_to_zero_temperature_and_argmax_last_step():
    # Two positions, two steps, random order: step 0 reveals one at temperature 2 * (1 - 1/2) = 1,
    # step 1 the other at temperature 0, i.e. the argmax (token 2).
    logits = jnp.asarray([0.0, 0.5, 1.0])
    fn = lambda tokens, cond: jnp.broadcast_to(logits, tokens.shape + (3,))  # noqa: E731
    batch = 4000
    out = iterative_decode(fn, tokens=jnp.zeros((batch, 2), jnp.int32), known=jnp.zeros((batch, 2), bool),
                           rng=key(6), num_steps=2, mask_token_id=3, policy="random", temperature=2.0,
                           temperature_schedule="linear_to_zero")
    first = np.asarray(out.masks[0])  # True where the position waited for the last step
    tokens = np.asarray(out.tokens)
    assert (tokens[first] == 2).all()
    freq = np.bincount(tokens[~first], minlength=3) / batch
    expected = softmax(np.asarray([0.0, 0.5, 1.0]) / 1.0)
    assert np.all(np.abs(freq - expected) < 5 * np.sqrt(expected / batch)), (freq, expected)


# -------------------------------------------------------------------------------- rescoring

def peaked(strengths, vocab=5):
    """Position i puts strengths[i] on token 1: log p(1) grows with the strength."""
    logits = jnp.asarray(strengths, jnp.float32)[:, None] * jax.nn.one_hot(1, vocab)
    return lambda tokens, cond: jnp.broadcast_to(logits, tokens.shape + (vocab,))


def test_rescoring_mixes_probabilities_and_weight_one_changes_nothing():
    n = 6
    strengths = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # the model is surest on the right
    rescorer_log_p = jnp.log(jnp.asarray([0.9, 0.8, 0.6, 0.4, 0.2, 0.1]))  # the rescorer on the left
    calls = []

    def score_fn(sampled):
        calls.append(sampled.shape)
        return jnp.broadcast_to(rescorer_log_p, sampled.shape)

    log = {}
    policy = recording(POLICIES["confidence"], log)

    def run(**kwargs):
        return iterative_decode(peaked(strengths), tokens=jnp.zeros((1, n), jnp.int32),
                                known=jnp.zeros((1, n), bool), rng=key(7), num_steps=3, mask_token_id=5,
                                schedule="linear", choice_temperature=0.0, temperature=1e-6, policy=policy,
                                **kwargs)

    plain = run()
    np.testing.assert_array_equal(np.asarray(plain.masks[0, 0]), [1, 1, 1, 1, 0, 0])
    # Python weight 1.0: the rescorer is not even called, and everything is identical.
    same = run(score_fn=score_fn, score_weight=1.0)
    assert not calls
    for a, b in zip(plain, same):
        np.testing.assert_array_equal(a, b)
    mixed = jax.jit(lambda weight: run(score_fn=score_fn, score_weight=weight))  # one compilation
    # A traced weight of 1.0 goes through the mixing and reveals in the same order.
    np.testing.assert_array_equal(mixed(jnp.float32(1.0)).masks, plain.masks)
    # Weight 0: the rescorer alone decides, so the left is revealed first.
    np.testing.assert_array_equal(np.asarray(mixed(jnp.float32(0.0)).masks[0, 0]), [0, 0, 1, 1, 1, 1])
    # Weight 0.3: the policy sees log(0.3 p_model + 0.7 p_rescorer).
    log.clear()
    jax.block_until_ready(mixed(jnp.float32(0.3)))
    jax.effects_barrier()
    p_model = np.exp(np.asarray(strengths)) / (np.exp(np.asarray(strengths)) + 4)
    expected = np.log(0.3 * p_model + 0.7 * np.exp(np.asarray(rescorer_log_p, np.float64)))
    np.testing.assert_allclose(log[0][0][0], expected, rtol=1e-5)


# ------------------------------------------------------------------------------ span re-masking

def expected_span_counts(spans_at_start, num_steps):
    """MAGNeT's count of spans still masked after each step: max(1, floor(cos(pi/2 i/(n-1)) S0)),
    i = t + 1, never more than are unknown, 0 after the last step. cos of a rational multiple of
    pi is rational only at 0, 1/2 and 1, so a float64 product within 1e-9 of an integer is one."""
    counts, now = [], spans_at_start
    for t in range(num_steps):
        if t == num_steps - 1:
            now = 0
        else:
            value = math.cos(math.pi / 2 * (t + 1) / (num_steps - 1)) * spans_at_start
            floor = round(value) if abs(value - round(value)) < 1e-9 else math.floor(value)
            now = min(now, max(1, floor))
        counts.append(now)
    return counts


def test_span_count_schedule_by_hand():
    # Hand-worked: n = 4 steps, S0 = 10 spans: floor(10 cos(pi/6)) = 8, 10 cos(pi/3) = 5 exactly
    # (float32 would make it 4.9999995), max(1, 0) = 1, then 0.  n = 6, S0 = 4 (below): 3, 3, 2, 1, 1, 0.
    assert expected_span_counts(10, 4) == [8, 5, 1, 0]
    assert expected_span_counts(4, 6) == [3, 3, 2, 1, 1, 0]
    fn = lambda tokens, cond: jnp.zeros(tokens.shape + (3,))  # noqa: E731
    out = iterative_decode(fn, tokens=jnp.zeros((1, 30), jnp.int32), known=jnp.zeros((1, 30), bool), rng=key(8),
                           num_steps=4, mask_token_id=3, policy="span_max", span_length=3)
    masks = np.asarray(out.masks[:, 0]).reshape(4, 10, 3)
    assert (masks.all(-1) | ~masks.any(-1)).all()  # whole spans
    assert masks.all(-1).sum(-1).tolist() == [8, 5, 1, 0]


def test_span_scores_pick_the_span_to_remask():
    # Three spans of p(sample): X [.3 .3 .3], Y [.05 .99 .99], Z [.2 .2 .5]. Lowest max p: X;
    # lowest min p (max of 1 - p): Y; lowest product (.027, .049, .02): Z. After step 0 of 2 one
    # span stays masked: the one with the highest score. (The policy alone, without the decoder.)
    log_p = jnp.log(jnp.asarray([[.3, .3, .3, .05, .99, .99, .2, .2, .5]]))
    unknown = jnp.ones((1, 9), bool)
    for aggregate, remasked in (("max", 0), ("min", 1), ("prod", 2)):
        still = span_policy(3, aggregate).choose(
            key(0), log_probs_of_sample=log_p, unknown=unknown, num_keep_masked=jnp.zeros(1, jnp.int32),
            step=jnp.int32(0), num_steps=2, ratio_prev=1.0, ratio=0.0, choice_temperature=0.0, precision="float64",
            unknown_start=unknown, token_shape=(9,))
        still = np.asarray(still[0]).reshape(3, 3)
        assert still.all(-1).tolist() == [i == remasked for i in range(3)] and still.any(-1).sum() == 1, aggregate
    # A known position is never re-masked and does not count in its span's score: with frame 3
    # known, Y's min p is .99, so "min" now re-masks Z (min .2, below X's .3).
    partly_known = unknown.at[0, 3].set(False)
    still = span_policy(3, "min").choose(
        key(0), log_probs_of_sample=log_p, unknown=partly_known, num_keep_masked=jnp.zeros(1, jnp.int32),
        step=jnp.int32(0), num_steps=2, ratio_prev=1.0, ratio=0.0, choice_temperature=0.0, precision="float64",
        unknown_start=partly_known, token_shape=(9,))
    np.testing.assert_array_equal(np.asarray(still[0]).astype(int), [0, 0, 0, 0, 0, 0, 1, 1, 1])


def test_magnet_decoding_keeps_known_tokens_and_remasks_whole_spans():
    """All MAGNeT options at once on T = 20 (spans of 3; the last has 2 frames): generation (row 0,
    S0 = 7), prompt continuation (row 1: 4 known frames, the span 3-5 is partly known, S0 = 6) and
    infilling (row 2: frames 6-14 known, S0 = 4)."""
    batch, length, vocab, num_steps = 3, 20, 8, 6
    known = np.zeros((batch, length), bool)
    known[1, :4] = True
    known[2, 6:15] = True
    given = np.where(known, 7, 0).astype(np.int32)
    table = jnp.asarray(np.random.default_rng(10).normal(size=(length, vocab)), jnp.float32)

    def fn(tokens, labels):
        # Depends on the input (so the steps differ) and on the label (so guidance matters).
        context = jnp.mean((tokens == 7).astype(jnp.float32), axis=-1, keepdims=True)[..., None]
        return table + context + 0.5 * labels[:, None, None].astype(jnp.float32)

    score_fn = lambda sampled: jnp.full(sampled.shape, math.log(0.5))  # noqa: E731
    decode = jax.jit(lambda rng: iterative_decode(
        fn, tokens=jnp.asarray(given), known=jnp.asarray(known), rng=rng, num_steps=num_steps,
        mask_token_id=vocab, cond=jnp.asarray([1, 2, 3]), uncond=jnp.asarray(NULL), policy="span_max",
        span_length=3, cfg_scale=10.0, cfg_schedule="mask_rate", cfg_min_scale=1.0, temperature=3.0,
        temperature_schedule="linear_to_zero", top_p=0.9, score_fn=score_fn, score_weight=0.7))
    for seed in (11, 12):
        out = decode(key(seed))
        tokens, masks = np.asarray(out.tokens), np.asarray(out.masks)
        np.testing.assert_array_equal(tokens[known], 7)  # prompts and context stay
        assert not masks[:, known].any() and not masks[-1].any()
        assert ((tokens >= 0) & (tokens < vocab)).all()
        # Once revealed, never masked again; revealed tokens are final.
        assert (masks[1:] <= masks[:-1]).all()
        for t in range(num_steps - 1):
            np.testing.assert_array_equal(np.asarray(out.trajectory[t])[~masks[t]], tokens[~masks[t]])
        span_id = np.arange(length) // 3
        for b, spans_at_start in zip(range(batch), (7, 6, 4)):
            per_step = []
            for t in range(num_steps):
                masked_spans = set(span_id[masks[t, b]])
                for s in masked_spans:  # whole spans: every unknown position of the span
                    assert masks[t, b][(span_id == s) & ~known[b]].all()
                per_step.append(len(masked_spans))
            assert per_step == expected_span_counts(spans_at_start, num_steps), (b, per_step)


def test_bad_magnet_options_are_named():
    fn = lambda tokens, cond: jnp.zeros(tokens.shape + (3,))  # noqa: E731
    args = dict(tokens=jnp.zeros((1, 6), jnp.int32), known=jnp.zeros((1, 6), bool), rng=key(0), num_steps=2,
                mask_token_id=3)
    with pytest.raises(ValueError, match="span_max"):
        iterative_decode(fn, **args, policy="span_mean")
    with pytest.raises(ValueError, match="top_p"):
        iterative_decode(fn, **args, top_p=0.0)
    with pytest.raises(ValueError, match="top_p"):
        iterative_decode(fn, **args, top_p=0.9, policy="ancestral_joint")
    with pytest.raises(ValueError, match="cfg_min_scale"):
        iterative_decode(fn, **args, cfg_min_scale=2.0)
    with pytest.raises(ValueError, match="score_weight"):
        iterative_decode(fn, **args, score_fn=lambda s: s, score_weight=1.5)
    with pytest.raises(ValueError, match="score_fn must return"):
        iterative_decode(fn, **args, score_fn=lambda s: jnp.zeros((1,)), score_weight=0.5)
    with pytest.raises(ValueError, match="temperature_schedule"):
        iterative_decode(fn, **args, temperature_schedule="cosine")
    with pytest.raises(ValueError, match="span_length"):
        span_policy(0)
    with pytest.raises(ValueError, match="aggregate"):
        span_policy(3, "mean")
    with pytest.raises(ValueError, match="top_p"):
        sample_categorical(key(0), jnp.zeros((2, 3)), top_p=1.5)
