"""Quantizers: straight-through gradients, code round trips, VQ losses/EMA/k-means/restarts, RVQ, LFQ entropy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.tokenizers import FSQ, LFQ, CodebookState, ResidualVQ, VectorQuantizer, make_quantizer


@pytest.fixture(autouse=True)
def one_device_mesh():
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES + (("codebook", None),)):
        yield


def _clusters(key, num_clusters, dim, n, spread=0.05, scale=3.0):
    """n points around `num_clusters` random centres (a fixed set per key's first split)."""
    k_c, k_a, k_n = jax.random.split(key, 3)
    centres = scale * jax.random.normal(k_c, (num_clusters, dim))
    assign = jax.random.randint(k_a, (n,), 0, num_clusters)
    return centres[assign] + spread * jax.random.normal(k_n, (n, dim)), centres


def _set(variable, value):
    variable[...] = jnp.asarray(value, jnp.float32)


def _snapshot(module):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module)))


def _assert_same_state(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _pure(module):
    """`module` as a pure function of z (state from pure dicts), usable under jax.grad / jax.jit."""
    graphdef, state = nnx.split(module)
    state = nnx.to_pure_dict(state)

    def apply(z, *, train, rng=None):
        return nnx.merge(graphdef, state)(z, train=train, rng=rng)

    return apply


# ----------------------------------------------------------------------------- straight-through


@pytest.mark.parametrize("kind", ["vq", "vq_l2", "lfq", "rvq"])
def test_straight_through_gradient_is_identity(kind):
    quantizer = {
        "vq": lambda: VectorQuantizer(6, 8, rngs=nnx.Rngs(0)),
        "vq_l2": lambda: VectorQuantizer(6, 8, rngs=nnx.Rngs(0), l2_normalize=True),
        "lfq": lambda: LFQ(6, temperature=0.5),
        "rvq": lambda: ResidualVQ(6, 8, 3, rngs=nnx.Rngs(0)),
    }[kind]()
    z = jax.random.normal(jax.random.key(1), (2, 3, 3, 6))
    w = jax.random.normal(jax.random.key(2), z.shape)
    apply = _pure(quantizer)
    for train in (False, True):
        grad = jax.jit(jax.grad(lambda z: jnp.sum(apply(z, train=train, rng=jax.random.key(3))[0] * w)))(z)
        np.testing.assert_array_equal(grad, w)


def test_fsq_gradient_goes_straight_through_the_rounding_only():
    """FSQ's z_q = round_ste(bound(z)) / floor(L/2): the gradient is that of the tanh bound (paper)."""
    levels = (3, 4, 5, 8)
    fsq = FSQ(levels)
    z = jax.random.normal(jax.random.key(1), (5, 4)) * 2
    w = jax.random.normal(jax.random.key(2), z.shape)
    grad = jax.grad(lambda z: jnp.sum(fsq(z, train=True)[0] * w))(z)
    L = np.array(levels, np.float64)
    half_l = (L - 1) * (1 + 1e-3) / 2
    shift = np.arctanh(np.where(L % 2 == 0, 0.5, 0.0) / half_l)
    expected = np.asarray(w) * (1 - np.tanh(np.asarray(z, np.float64) + shift) ** 2) * half_l / (L // 2)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- FSQ / LFQ codes


@pytest.mark.parametrize("levels", [(5, 3), (4, 2, 6), (8, 5, 5, 5), (7, 4)])
def test_fsq_codes_round_trip(levels):
    fsq = FSQ(levels)
    assert fsq.dim == len(levels) and fsq.codebook_size == int(np.prod(levels))
    z = jax.random.normal(jax.random.key(0), (4, 7, len(levels))) * 3
    z_q, codes, aux = fsq(z, train=False)
    assert codes.shape == (4, 7) and codes.dtype == jnp.int32 and float(aux["loss"]) == 0.0
    np.testing.assert_array_equal(fsq.decode_codes(codes), z_q)

    every = jnp.arange(fsq.codebook_size, dtype=jnp.int32)
    vectors = np.asarray(fsq.decode_codes(every))
    assert len({tuple(v) for v in vectors}) == fsq.codebook_size
    for i, level in enumerate(levels):  # L integers, centred (one more negative for even L), over L // 2
        half = level // 2
        np.testing.assert_allclose(sorted(set(vectors[:, i])), np.arange(-half, level - half) / half)
    # Every index maps back to itself: quantise a point that the bound sends onto its grid value.
    L = np.array(levels, np.float64)
    half_l = (L - 1) * (1 + 1e-3) / 2
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    z_inv = np.arctanh((vectors * (L // 2) + offset) / half_l) - np.arctanh(offset / half_l)
    _, back, _ = fsq(jnp.asarray(z_inv, jnp.float32), train=False)
    np.testing.assert_array_equal(back, every)
    # Saturated inputs reach the extreme codes (tanh bounding, no overflow past L levels).
    _, low, _ = fsq(jnp.full((1, len(levels)), -50.0), train=False)
    _, high, _ = fsq(jnp.full((1, len(levels)), 50.0), train=False)
    assert int(low[0]) == 0 and int(high[0]) == fsq.codebook_size - 1


def test_lfq_codes_round_trip():
    lfq = LFQ(5)
    assert lfq.codebook_size == 32
    z = jax.random.normal(jax.random.key(0), (3, 4, 5))
    z_q, codes, _ = lfq(z, train=False)
    np.testing.assert_array_equal(z_q, jnp.where(z > 0, 1.0, -1.0))
    np.testing.assert_array_equal(lfq.decode_codes(codes), z_q)
    np.testing.assert_array_equal(codes, jnp.sum((z > 0) * 2 ** jnp.arange(5), -1))  # dim i = bit i
    every = jnp.arange(32, dtype=jnp.int32)
    _, back, _ = lfq(lfq.decode_codes(every) * 0.3, train=False)
    np.testing.assert_array_equal(back, every)


def test_lfq_limits_dim():
    with pytest.raises(ValueError, match="2\\*\\*dim"):
        LFQ(15)


# ----------------------------------------------------------------------------- VQ


@pytest.mark.parametrize("l2", [False, True])
def test_vq_nearest_code_matches_brute_force(l2):
    vq = VectorQuantizer(5, 12, rngs=nnx.Rngs(0), l2_normalize=l2)
    z = jax.random.normal(jax.random.key(1), (3, 10, 5))
    z_q, codes, _ = vq(z, train=False)
    x = np.asarray(z, np.float64).reshape(-1, 5)
    c = np.asarray(vq.codebook[...], np.float64)
    if l2:
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        c = c / np.linalg.norm(c, axis=-1, keepdims=True)
    expected = np.argmin(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(np.asarray(codes).reshape(-1), expected)
    np.testing.assert_allclose(np.asarray(z_q).reshape(-1, 5), c[expected], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(vq.decode_codes(codes), z_q)
    if l2:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(z_q), axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("l2", [False, True])
def test_vq_losses_and_their_gradients_by_hand(l2):
    vq = VectorQuantizer(2, 3, rngs=nnx.Rngs(0), l2_normalize=l2, commitment_weight=0.25, codebook_weight=0.5)
    codebook = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    _set(vq.codebook, codebook)
    z = jnp.array([[0.8, 0.3], [0.1, 1.5], [-2.0, -0.5], [0.9, -0.2]])
    c = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True) if l2 else codebook
    x = np.asarray(z, np.float64)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True) if l2 else x
    assign = np.array([0, 1, 2, 0])
    mse = np.mean((x - c[assign]) ** 2)

    def loss(z, codebook_value):
        vq.codebook[...] = codebook_value
        return vq(z, train=False)[2]

    aux = loss(z, jnp.asarray(codebook, jnp.float32))
    np.testing.assert_allclose(aux["commitment"], mse, rtol=1e-5)
    np.testing.assert_allclose(aux["codebook"], mse, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], 0.25 * mse + 0.5 * mse, rtol=1e-5)
    if not l2:  # commitment moves z only, the codebook loss moves the codes only
        g_z = jax.grad(lambda z: loss(z, jnp.asarray(codebook, jnp.float32))["commitment"])(z)
        np.testing.assert_allclose(g_z, 2 * (x - c[assign]) / x.size, rtol=1e-5)
        g_c = jax.grad(lambda cb: loss(z, cb)["codebook"])(jnp.asarray(codebook, jnp.float32))
        expected = np.zeros_like(codebook)
        np.add.at(expected, assign, 2 * (c[assign] - x) / x.size)
        np.testing.assert_allclose(g_c, expected, rtol=1e-5, atol=1e-7)
        assert np.all(np.asarray(jax.grad(lambda z: loss(z, jnp.asarray(codebook, jnp.float32))["codebook"])(z)) == 0)


def test_vq_ema_update_by_hand():
    vq = VectorQuantizer(2, 3, rngs=nnx.Rngs(0), use_ema=True, ema_decay=0.5, kmeans_init=False,
                         restart_dead_codes=False)
    codebook = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    _set(vq.codebook, codebook)
    _set(vq.embed_sum, codebook)  # consistent with cluster_size = 1
    z = np.array([[0.8, 0.4], [1.4, 0.0], [0.1, 1.5], [0.9, -0.2]])
    z_q, codes, aux = vq(jnp.asarray(z, jnp.float32), train=True)
    np.testing.assert_array_equal(codes, [0, 0, 1, 0])
    assert float(aux["codebook"]) == 0.0
    counts = np.array([3.0, 1.0, 0.0])
    sums = np.array([z[[0, 1, 3]].sum(0), z[2], [0.0, 0.0]])
    cluster_size = 0.5 * 1.0 + 0.5 * counts
    embed_sum = 0.5 * codebook + 0.5 * sums
    n = cluster_size.sum()
    smoothed = (cluster_size + 1e-5) / (n + 3 * 1e-5) * n
    np.testing.assert_allclose(vq.cluster_size[...], cluster_size, rtol=1e-6)
    np.testing.assert_allclose(vq.embed_sum[...], embed_sum, rtol=1e-6)
    new = np.asarray(vq.codebook[...])
    np.testing.assert_allclose(new, embed_sum / smoothed[:, None], rtol=1e-5)
    means = sums[:2] / counts[:2, None]
    for k in range(2):  # used codes move toward the mean of their vectors
        assert np.linalg.norm(new[k] - means[k]) < np.linalg.norm(codebook[k] - means[k])
    np.testing.assert_allclose(new[2], codebook[2], rtol=1e-3)  # an unused code barely moves
    # The EMA codebook gets no gradient.
    grad = jax.grad(lambda cb: (vq.codebook.__setitem__(Ellipsis, cb), vq(jnp.asarray(z), train=False)[2]["loss"])[1])(
        jnp.asarray(new))
    assert np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize("use_ema", [False, True])
def test_vq_kmeans_init_runs_on_the_first_train_call_only(use_ema):
    x, centres = _clusters(jax.random.key(0), 4, 3, 256)
    vq = VectorQuantizer(3, 4, rngs=nnx.Rngs(0), use_ema=use_ema, kmeans_iters=10, restart_dead_codes=False)
    _set(vq.codebook, 100.0 + np.arange(12).reshape(4, 3))
    before = _snapshot(vq)
    vq(x, train=False)  # eval: no init
    _assert_same_state(_snapshot(vq), before)
    assert int(vq.initialized[...]) == 0

    _, codes, aux = vq(x, train=True, rng=jax.random.key(1))
    assert int(vq.initialized[...]) == 1
    codebook = np.asarray(vq.codebook[...])
    # A k-means fixed point: every code is the mean of the batch vectors assigned to it ...
    for k in range(4):
        np.testing.assert_allclose(codebook[k], np.asarray(x)[np.asarray(codes) == k].mean(0), atol=1e-4)
    # ... which here are the four cluster centres.
    dist = np.linalg.norm(codebook[:, None] - np.asarray(centres)[None], axis=-1)
    assert sorted(dist.argmin(1)) == [0, 1, 2, 3] and dist.min(1).max() < 0.05
    assert float(aux["usage"]) == 1.0

    if not use_ema:  # a second train call on other data does not re-initialise
        vq(x + 7.0, train=True, rng=jax.random.key(2))
        np.testing.assert_array_equal(vq.codebook[...], codebook)


def test_vq_kmeans_init_with_fewer_vectors_than_codes():
    vq = VectorQuantizer(2, 16, rngs=nnx.Rngs(0), restart_dead_codes=False)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    vq(x, train=True, rng=jax.random.key(1))
    rows = {tuple(np.round(r, 5)) for r in np.asarray(vq.codebook[...])}
    assert rows <= {tuple(np.round(r, 5)) for r in np.asarray(x)}  # codes sampled (with replacement) from z


def test_vq_dead_code_restart_restores_usage():
    """All codes start at one point, so only code 0 is ever chosen; restarts spread them over the data."""
    def run(restart):
        vq = VectorQuantizer(4, 16, rngs=nnx.Rngs(0), use_ema=True, ema_decay=0.8, kmeans_init=False,
                             restart_dead_codes=restart, dead_code_threshold=0.1)
        _set(vq.codebook, np.zeros((16, 4)))
        _set(vq.embed_sum, np.zeros((16, 4)))
        graphdef, state = nnx.split(vq)

        @jax.jit
        def step(state, key):
            module = nnx.merge(graphdef, state)
            x, _ = _clusters(jax.random.key(7), 16, 4, 512)  # the same 16 clusters every step
            x = x[jax.random.permutation(key, 512)[:256]]
            _, _, aux = module(x, train=True, rng=key)
            return nnx.split(module)[1], aux["dead_codes_restarted"]

        restarted = 0.0
        for i in range(40):
            state, n = step(state, jax.random.key(100 + i))
            restarted += float(n)
        vq = nnx.merge(graphdef, state)
        x, _ = _clusters(jax.random.key(7), 16, 4, 512)
        return vq(x, train=False)[2], restarted

    aux, restarted = run(True)
    assert restarted >= 15 and float(aux["usage"]) >= 0.8, (restarted, aux)
    aux, restarted = run(False)
    assert restarted == 0 and float(aux["usage"]) == 1 / 16


def test_eval_changes_no_state():
    x, _ = _clusters(jax.random.key(0), 8, 4, 64)
    for quantizer in (
        VectorQuantizer(4, 8, rngs=nnx.Rngs(0), use_ema=True, dead_code_threshold=0.5),
        VectorQuantizer(4, 8, rngs=nnx.Rngs(0), dead_code_threshold=0.5),
        ResidualVQ(4, 8, 2, rngs=nnx.Rngs(0), use_ema=True, quantizer_dropout=0.5),
    ):
        quantizer(x, train=True, rng=jax.random.key(1))  # initialised, then
        before = _snapshot(quantizer)
        for _ in range(3):
            quantizer(x * 2 + 1, train=False)
        _assert_same_state(_snapshot(quantizer), before)
        quantizer(x * 2 + 1, train=True, rng=jax.random.key(2))  # while train=True does change it
        changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), _snapshot(quantizer), before)
        assert any(jax.tree.leaves(changed))


def test_vq_train_needs_rng():
    vq = VectorQuantizer(4, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rng"):
        vq(jnp.ones((2, 4)), train=True)


# ----------------------------------------------------------------------------- functional use


def test_functional_split_merge_jit_returns_updated_state():
    vq = VectorQuantizer(4, 8, rngs=nnx.Rngs(0), use_ema=True)
    graphdef, params, rest = nnx.split(vq, nnx.Param, ...)
    assert set(nnx.to_pure_dict(rest)) == {"usage", "initialized", "cluster_size", "embed_sum"}
    assert all(isinstance(v, CodebookState) for v in jax.tree.leaves(rest, is_leaf=lambda v: isinstance(v, nnx.Variable)))
    x, _ = _clusters(jax.random.key(0), 8, 4, 64)

    def f(params, rest, z, key):
        m = nnx.merge(graphdef, params, rest)
        out = m(z, train=True, rng=key)
        return out, nnx.split(m, nnx.Param, ...)[1:]

    (z_q, codes, aux), (params2, rest2) = jax.jit(f)(params, rest, x, jax.random.key(1))
    assert int(rest2["initialized"][...]) == 1 and int(rest["initialized"][...]) == 0
    assert not np.allclose(params2["codebook"][...], params["codebook"][...])
    np.testing.assert_allclose(params2["codebook"][...], nnx.merge(graphdef, params2, rest2).codebook[...])
    assert not np.allclose(rest2["usage"][...], rest["usage"][...])
    # A second step starts from the returned state: k-means does not run again.
    (_, _, _), (params3, rest3) = jax.jit(f)(params2, rest2, x + 5.0, jax.random.key(2))
    assert np.abs(np.asarray(params3["codebook"][...]) - np.asarray(params2["codebook"][...])).max() < 5.0 * 0.011


@pytest.mark.parametrize("how", ["pure_dict", "merge_copy"])
def test_state_updates_under_grad(how):
    """A loss that merges the module differentiates, and the updated state comes back as aux."""
    rvq = ResidualVQ(4, 8, 2, rngs=nnx.Rngs(0), quantizer_dropout=0.0)
    graphdef, params, rest = nnx.split(rvq, nnx.Param, CodebookState)
    if how == "pure_dict":
        params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    x, _ = _clusters(jax.random.key(0), 8, 4, 64)
    w = jax.random.normal(jax.random.key(3), x.shape)

    def loss_fn(params, rest, z, key):
        m = nnx.merge(graphdef, params, rest, copy=how == "merge_copy")
        z_q, _, aux = m(z, train=True, rng=key)
        _, new_params, new_rest = nnx.split(m, nnx.Param, CodebookState)
        return jnp.sum(z_q * w) + aux["loss"], (nnx.to_pure_dict(new_params), nnx.to_pure_dict(new_rest))

    (grads_z, grads_p), (new_params, new_rest) = jax.jit(jax.grad(loss_fn, argnums=(2, 0), has_aux=True))(
        params, rest, x, jax.random.key(1))
    assert all(int(new_rest["quantizers"][k]["initialized"]) == 1 for k in (0, 1))
    codebook_grad = np.asarray(nnx.to_pure_dict(grads_p)["quantizers"][0]["codebook"]) if how == "merge_copy" \
        else np.asarray(grads_p["quantizers"][0]["codebook"])
    assert np.all(np.isfinite(codebook_grad)) and np.abs(codebook_grad).sum() > 0  # codebook loss reaches it
    assert np.all(np.isfinite(np.asarray(grads_z)))


# ----------------------------------------------------------------------------- RVQ


def test_rvq_residuals_shrink_with_levels():
    rvq = ResidualVQ(4, 16, 4, rngs=nnx.Rngs(0), restart_dead_codes=False)
    x = jax.random.normal(jax.random.key(0), (512, 4))
    rvq(x, train=True, rng=jax.random.key(1))  # k-means init of every level on its residual
    z_q, codes, aux = rvq(x, train=False)
    assert codes.shape == (512, 4) and float(aux["num_levels_used"]) == 4
    np.testing.assert_allclose(rvq.decode_codes(codes), z_q, rtol=1e-6, atol=1e-6)
    errors = [float(jnp.mean(jnp.square(rvq.decode_codes(codes, num_levels=n) - x))) for n in range(1, 5)]
    assert all(b < 0.8 * a for a, b in zip(errors, errors[1:])), errors
    with pytest.raises(ValueError, match="num_levels"):
        rvq.decode_codes(codes, num_levels=5)


def test_rvq_quantizer_dropout():
    rvq = ResidualVQ(4, 8, 4, rngs=nnx.Rngs(0), quantizer_dropout=1.0, kmeans_init=False, restart_dead_codes=False)
    x = jax.random.normal(jax.random.key(0), (64, 4))
    _, codes_full, _ = rvq(x, train=False)
    seen = set()
    for i in range(12):
        usage_before = [np.asarray(q.usage[...]) for q in rvq.quantizers]
        z_q, codes, aux = rvq(x, train=True, rng=jax.random.key(i))
        n = int(aux["num_levels_used"])
        seen.add(n)
        np.testing.assert_array_equal(codes, codes_full)  # codes of every level are still returned
        np.testing.assert_allclose(z_q, rvq.decode_codes(codes, num_levels=n), rtol=1e-6, atol=1e-6)
        for k, q in enumerate(rvq.quantizers):  # dropped levels: no loss, no state change
            if k >= n:
                assert float(aux[f"commitment_level{k}"]) == 0.0
                np.testing.assert_array_equal(q.usage[...], usage_before[k])
            else:
                assert not np.array_equal(q.usage[...], usage_before[k])
    assert len(seen) >= 3 and min(seen) < 4, seen
    # Without dropout (or in eval) every level is used.
    assert float(rvq(x, train=False)[2]["num_levels_used"]) == 4


# ----------------------------------------------------------------------------- LFQ entropy


def test_lfq_entropy_terms_by_hand():
    T, ew, dw, cw = 0.5, 0.1, 0.7, 0.25
    lfq = LFQ(2, temperature=T, entropy_weight=ew, diversity_weight=dw, commitment_weight=cw)
    z = np.array([[0.3, -0.2], [0.05, 0.4], [-0.6, -0.1]])
    codes = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], np.float64)  # index i = bits of i, dim 0 = LSB
    np.testing.assert_array_equal(lfq.decode_codes(jnp.arange(4)), codes)
    logits = -((z[:, None, :] - codes[None]) ** 2).sum(-1) / T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h_sample = np.mean(-(p * np.log(p)).sum(1))
    mean_p = p.mean(0)
    h_batch = -(mean_p * np.log(mean_p)).sum()
    commitment = np.mean((z - np.where(z > 0, 1, -1)) ** 2)
    _, _, aux = lfq(jnp.asarray(z, jnp.float32), train=True)
    np.testing.assert_allclose(aux["entropy_per_sample"], h_sample, rtol=1e-5)
    np.testing.assert_allclose(aux["entropy_batch"], h_batch, rtol=1e-5)
    np.testing.assert_allclose(aux["entropy"], h_sample - dw * h_batch, rtol=1e-5)
    np.testing.assert_allclose(aux["commitment"], commitment, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], cw * commitment + ew * (h_sample - dw * h_batch), rtol=1e-5)
    # Chunked batch entropy (several chunks + padding) equals the one-shot value.
    big = jax.random.normal(jax.random.key(0), (1000, 12)) * 0.05
    lfq12 = LFQ(12, temperature=0.1)
    chunked = lfq12.entropy_terms(big)[1]
    probs = jax.nn.softmax(2 / 0.1 * big @ lfq12.decode_codes(jnp.arange(4096)).T, axis=-1).mean(0)
    np.testing.assert_allclose(chunked, -jnp.sum(probs * jnp.log(probs)), rtol=1e-4)


def test_lfq_training_does_not_collapse():
    """A tiny encoder -> LFQ -> decoder on 16 clusters keeps using most of the 16 codes, with finite losses."""
    dim = 4
    x_all, _ = _clusters(jax.random.key(0), 16, 8, 2048, spread=0.1, scale=1.0)

    class AutoEncoder(nnx.Module):
        def __init__(self, rngs):
            self.enc = nnx.Linear(8, dim, rngs=rngs)
            self.dec = nnx.Linear(dim, 8, rngs=rngs)
            self.lfq = LFQ(dim, rngs=rngs)  # paper settings: entropy 0.1, commitment 0.25, T 0.01

        def __call__(self, x):
            z_q, codes, aux = self.lfq(self.enc(x), train=True)
            return jnp.mean(jnp.square(self.dec(z_q) - x)) + aux["loss"], aux

    model = AutoEncoder(nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        batch = x_all[jax.random.randint(key, (256,), 0, 2048)]
        (loss, aux), grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p)(batch), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    usage = []
    for i in range(300):
        params, opt_state, loss, aux = step(params, opt_state, jax.random.key(i))
        assert np.isfinite(float(loss))
        usage.append(float(aux["usage"]))
    assert min(usage[100:]) >= 0.75 and np.mean(usage[-50:]) >= 0.85, usage[::25]
    assert float(aux["perplexity"]) >= 10


# ----------------------------------------------------------------------------- factory


def test_make_quantizer():
    rngs = nnx.Rngs(0)
    assert isinstance(make_quantizer("vq", 4, rngs=rngs, codebook_size=8), VectorQuantizer)
    assert isinstance(make_quantizer("fsq", 4, rngs=rngs, levels=[8, 5, 5, 5]), FSQ)
    assert make_quantizer("lfq", 6, rngs=rngs).codebook_size == 64
    rvq = make_quantizer("rvq", 4, rngs=rngs, codebook_size=8, num_levels=3, use_ema=True)
    assert isinstance(rvq, ResidualVQ) and rvq.num_levels == 3 and rvq.quantizers[2].use_ema
    with pytest.raises(ValueError, match="valid kinds: fsq, lfq, rvq, vq"):
        make_quantizer("gumbel", 4, rngs=rngs)
    with pytest.raises(ValueError, match="levels"):
        make_quantizer("fsq", 3, rngs=rngs, levels=[8, 5, 5, 5])
    with pytest.raises(ValueError, match="levels"):
        make_quantizer("fsq", 4, rngs=rngs)
