"""Quantizers: straight-through gradients, code round trips, VQ losses/EMA/k-means/restarts, RVQ, LFQ entropy."""

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


def _normal(seed, shape, scale=1.0):
    """Test data from numpy (eager jax.random compiles a program per shape, which is slow on CPU)."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _clusters(seed, num_clusters, dim, n, spread=0.05, scale=3.0):
    """n points around `num_clusters` random centres (fixed by `seed`)."""
    rng = np.random.default_rng(seed)
    centres = scale * rng.standard_normal((num_clusters, dim))
    points = centres[rng.integers(0, num_clusters, n)] + spread * rng.standard_normal((n, dim))
    return jnp.asarray(points, jnp.float32), centres


def _set(variable, value):
    variable[...] = jnp.asarray(value, jnp.float32)


def _snapshot(module):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module)))


def _assert_same_state(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@nnx.jit(static_argnames="train")
def _call(module, z, train, rng=None):
    """module(z, train=train, rng=rng) compiled (eager dispatch is slow); state updates land in `module`."""
    return module(z, train=train, rng=rng)


def _with_codebook(module, codebook):
    """A copy of a VectorQuantizer whose codebook is `codebook` (traceable: fresh Variables)."""
    graphdef, state = nnx.split(module)
    state = nnx.to_pure_dict(state)
    state["codebook"] = codebook
    return nnx.merge(graphdef, state)


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
    z = _normal(1, (2, 3, 3, 6))
    w = _normal(2, z.shape)
    apply = _pure(quantizer)
    for train in (False, True):
        grad = jax.jit(jax.grad(lambda z: jnp.sum(apply(z, train=train, rng=jax.random.key(3))[0] * w)))(z)
        np.testing.assert_array_equal(grad, w)


def test_fsq_gradient_goes_straight_through_the_rounding_only():
    """FSQ's z_q = round_ste(bound(z)) / floor(L/2): the gradient is that of the tanh bound (paper)."""
    levels = (3, 4, 5, 8)
    fsq = FSQ(levels)
    z = _normal(1, (5, 4), 2)
    w = _normal(2, z.shape)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(fsq(z, train=True)[0] * w)))(z)
    L = np.array(levels, np.float64)
    half_l = (L - 1) * (1 - 1e-3) / 2
    shift = np.tan(np.where(L % 2 == 0, 0.5, 0.0) / half_l)
    expected = np.asarray(w) * (1 - np.tanh(np.asarray(z, np.float64) + shift) ** 2) * half_l / (L // 2)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- FSQ / LFQ codes


@pytest.mark.parametrize("levels", [(5, 3, 7), (8, 5, 4, 2)])
def test_fsq_codes_round_trip(levels):
    """Odd and even levels: decode_codes inverts the codes; every index maps back to itself."""
    fsq = FSQ(levels)
    decode = jax.jit(fsq.decode_codes)
    assert fsq.dim == len(levels) and fsq.codebook_size == int(np.prod(levels))
    z = _normal(0, (4, 7, len(levels))) * 3
    z_q, codes, aux = _call(fsq, z, False)
    assert codes.shape == (4, 7) and codes.dtype == jnp.int32 and float(aux["loss"]) == 0.0
    np.testing.assert_array_equal(decode(codes), z_q)

    every = jnp.arange(fsq.codebook_size, dtype=jnp.int32)
    vectors = np.asarray(decode(every))
    assert len({tuple(v) for v in vectors}) == fsq.codebook_size
    for i, level in enumerate(levels):  # L integers, centred (one more negative for even L), over L // 2
        half = level // 2
        np.testing.assert_allclose(sorted(set(vectors[:, i])), np.arange(-half, level - half) / half)
    # Quantise, for every index, a point that the bound sends onto its grid value, or 0.3 inside the
    # bound's range (-h - o, h - o) for the outermost values, which the (1 - eps) bound rounds onto
    # but never reaches.
    L = np.array(levels, np.float64)
    half_l = (L - 1) * (1 - 1e-3) / 2
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    target = np.clip(vectors * (L // 2), -half_l - offset + 0.3, half_l - offset - 0.3)
    z_inv = np.arctanh((target + offset) / half_l) - np.tan(offset / half_l)
    _, back, _ = _call(fsq, jnp.asarray(z_inv, jnp.float32), False)
    np.testing.assert_array_equal(back, every)
    # Saturated inputs reach the extreme codes (tanh bounding: never past the L levels).
    _, extremes, _ = _call(fsq, jnp.array([[-50.0] * len(levels), [50.0] * len(levels)]), False)
    np.testing.assert_array_equal(extremes, [0, fsq.codebook_size - 1])


def _fsq_appendix_codes(z, levels):
    """The FSQ paper's reference code (Mentzer et al., arXiv 2309.15505, appendix A.1), transcribed
    in NumPy float64: bound, round, codes = (z_hat * half_width + half_width) . basis."""
    levels = np.asarray(levels)
    eps = 1e-3
    half_l = (levels - 1) * (1 - eps) / 2
    offset = np.where(levels % 2 == 1, 0.0, 0.5)
    shift = np.tan(offset / half_l)
    bounded = np.tanh(z + shift) * half_l - offset
    half_width = levels // 2
    z_hat = np.round(bounded) / half_width
    basis = np.concatenate(([1], np.cumprod(levels[:-1])))
    return ((z_hat * half_width + half_width) @ basis).astype(np.int64), bounded


@pytest.mark.parametrize("levels", [(7, 5, 5, 5), (8, 6, 4, 2), (8, 5, 5, 5)])
def test_fsq_codes_match_the_paper_appendix(levels):
    """Odd, even and mixed levels, 20,000 N(0, 1) vectors: every code equals the appendix's (up to
    float32 ties: vectors within 1e-4 of a rounding boundary are skipped, a handful at most)."""
    z = np.random.default_rng(0).standard_normal((20_000, len(levels)))
    expected, bounded = _fsq_appendix_codes(z, levels)
    _, codes, _ = _call(FSQ(levels), jnp.asarray(z, jnp.float32), False)
    clear = np.all(np.abs(bounded - np.floor(bounded) - 0.5) > 1e-4, axis=-1)
    assert clear.mean() > 0.995
    np.testing.assert_array_equal(np.asarray(codes)[clear], expected[clear])
    # maskgen's bound before issue 15 ((1 + eps), atanh), kept for saved runs, differs on some vectors.
    _, old_codes, _ = _call(FSQ(levels, bound="maskgen_v1"), jnp.asarray(z, jnp.float32), False)
    assert 0.0 < np.mean(np.asarray(old_codes) != expected) < 0.1
    with pytest.raises(ValueError, match="FSQ bound"):
        FSQ(levels, bound="paper_v2")


def test_lfq_codes_round_trip():
    lfq = LFQ(5)
    decode = jax.jit(lfq.decode_codes)
    assert lfq.codebook_size == 32
    z = _normal(0, (3, 4, 5))
    z_q, codes, _ = _call(lfq, z, False)
    np.testing.assert_array_equal(z_q, jnp.where(z > 0, 1.0, -1.0))
    np.testing.assert_array_equal(decode(codes), z_q)
    np.testing.assert_array_equal(codes, jnp.sum((z > 0) * 2 ** jnp.arange(5), -1))  # dim i = bit i
    every = jnp.arange(32, dtype=jnp.int32)
    _, back, _ = _call(lfq, decode(every) * 0.3, False)
    np.testing.assert_array_equal(back, every)


def test_lfq_limits_dim():
    with pytest.raises(ValueError, match="2\\*\\*dim"):
        LFQ(17)


# ----------------------------------------------------------------------------- VQ


@pytest.mark.parametrize("l2", [False, True])
def test_vq_nearest_code_matches_brute_force(l2):
    vq = VectorQuantizer(5, 12, rngs=nnx.Rngs(0), l2_normalize=l2)
    z = _normal(1, (3, 10, 5))
    z_q, codes, _ = _call(vq, z, False)
    x = np.asarray(z, np.float64).reshape(-1, 5)
    c = np.asarray(vq.codebook[...], np.float64)
    if l2:
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        c = c / np.linalg.norm(c, axis=-1, keepdims=True)
    expected = np.argmin(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(np.asarray(codes).reshape(-1), expected)
    np.testing.assert_allclose(np.asarray(z_q).reshape(-1, 5), c[expected], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vq.decode_codes(codes), z_q, rtol=1e-6, atol=1e-7)  # (1 ulp: jit vs eager)
    if l2:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(z_q), axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("l2", [False, True])
def test_vq_losses_and_their_gradients_by_hand(l2):
    vq = VectorQuantizer(2, 3, rngs=nnx.Rngs(0), l2_normalize=l2, commitment_weight=0.25, codebook_weight=0.5)
    codebook = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    z = jnp.array([[0.8, 0.3], [0.1, 1.5], [-2.0, -0.5], [0.9, -0.2]])
    c = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True) if l2 else codebook
    x = np.asarray(z, np.float64)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True) if l2 else x
    assign = np.array([0, 1, 2, 0])
    mse = np.mean((x - c[assign]) ** 2)

    @jax.jit
    def aux_and_grads(z, codebook):
        def term(name):
            return lambda z, cb: _with_codebook(vq, cb)(z, train=False)[2][name]
        aux = _with_codebook(vq, codebook)(z, train=False)[2]
        grads = [jax.grad(term(name), (0, 1))(z, codebook) for name in ("commitment", "codebook")]
        return aux, *grads

    aux, (commit_dz, commit_dc), (cb_dz, cb_dc) = aux_and_grads(z, jnp.asarray(codebook, jnp.float32))
    np.testing.assert_allclose(aux["commitment"], mse, rtol=1e-5)
    np.testing.assert_allclose(aux["codebook"], mse, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], 0.25 * mse + 0.5 * mse, rtol=1e-5)
    # The commitment loss moves z only, the codebook loss moves the codes only.
    assert np.all(np.asarray(commit_dc) == 0) and np.all(np.asarray(cb_dz) == 0)
    if not l2:
        np.testing.assert_allclose(commit_dz, 2 * (x - c[assign]) / x.size, rtol=1e-5)
        expected = np.zeros_like(codebook)
        np.add.at(expected, assign, 2 * (c[assign] - x) / x.size)
        np.testing.assert_allclose(cb_dc, expected, rtol=1e-5, atol=1e-7)
    else:
        assert np.abs(np.asarray(commit_dz)).sum() > 0 and np.abs(np.asarray(cb_dc)).sum() > 0


def test_vq_ema_update_by_hand():
    vq = VectorQuantizer(2, 3, rngs=nnx.Rngs(0), use_ema=True, ema_decay=0.5, kmeans_init=False,
                         restart_dead_codes=False)
    codebook = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    _set(vq.codebook, codebook)
    _set(vq.embed_sum, codebook)  # consistent with cluster_size = 1
    z = np.array([[0.8, 0.4], [1.4, 0.0], [0.1, 1.5], [0.9, -0.2]])
    z_q, codes, aux = _call(vq, jnp.asarray(z, jnp.float32), True)
    np.testing.assert_array_equal(codes, [0, 0, 1, 0])
    np.testing.assert_array_equal(z_q, codebook[[0, 0, 1, 0]])  # this call used the old codebook
    assert float(aux["codebook"]) == 0.0
    counts = np.array([3.0, 1.0, 0.0])
    sums = np.array([z[[0, 1, 3]].sum(0), z[2], [0.0, 0.0]])
    cluster_size = 0.5 * 1.0 + 0.5 * counts
    embed_sum = 0.5 * codebook + 0.5 * sums
    n = cluster_size.sum()
    smoothed = (cluster_size + 1e-5) / (n + 3 * 1e-5) * n  # Laplace smoothing
    np.testing.assert_allclose(vq.cluster_size[...], cluster_size, rtol=1e-6)
    np.testing.assert_allclose(vq.embed_sum[...], embed_sum, rtol=1e-6)
    new = np.asarray(vq.codebook[...])
    np.testing.assert_allclose(new, embed_sum / smoothed[:, None], rtol=1e-5)
    means = sums[:2] / counts[:2, None]
    for k in range(2):  # used codes move toward the mean of their vectors
        assert np.linalg.norm(new[k] - means[k]) < 0.6 * np.linalg.norm(codebook[k] - means[k])
    np.testing.assert_allclose(new[2], codebook[2], rtol=1e-4)  # an unused code stays put
    # The EMA codebook gets no gradient, in either mode.
    for train in (False, True):
        grad = jax.jit(jax.grad(lambda cb: _with_codebook(vq, cb)(jnp.asarray(z), train=train)[2]["loss"]))(
            jnp.asarray(new))
        assert np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize("use_ema", [False, True])
def test_vq_kmeans_init_runs_on_the_first_train_call_only(use_ema):
    x, _ = _clusters(0, 6, 3, 256)
    vq = VectorQuantizer(3, 4, rngs=nnx.Rngs(0), use_ema=use_ema, kmeans_iters=10, restart_dead_codes=False)
    _set(vq.codebook, 100.0 + np.arange(12).reshape(4, 3))
    before = _snapshot(vq)
    _call(vq, x, False)  # eval: no init
    _assert_same_state(_snapshot(vq), before)
    assert int(vq.initialized[...]) == 0

    _, codes, aux = _call(vq, x, True, jax.random.key(1))
    assert int(vq.initialized[...]) == 1
    codebook, xs, codes = np.asarray(vq.codebook[...]), np.asarray(x), np.asarray(codes)
    # A k-means fixed point (10 Lloyd iterations): every code is the mean of the batch vectors
    # assigned to it (codes are chosen from the k-means codebook in this same call).
    assert float(aux["usage"]) == 1.0
    for k in range(4):
        np.testing.assert_allclose(codebook[k], xs[codes == k].mean(0), atol=1e-4)
    if use_ema:  # the EMA step right after k-means leaves the (consistent) statistics in place
        np.testing.assert_allclose(vq.cluster_size[...], np.bincount(codes, minlength=4), rtol=1e-5)
    # A second train call on other data does not re-initialise (it only takes an EMA step, if any).
    _call(vq, x + 7.0, True, jax.random.key(2))
    step = np.abs(np.asarray(vq.codebook[...]) - codebook).max()
    assert step == 0 if not use_ema else 0 < step < 1.0


def test_vq_kmeans_init_with_fewer_vectors_than_codes():
    vq = VectorQuantizer(2, 16, rngs=nnx.Rngs(0), restart_dead_codes=False)
    x = _normal(0, (5, 2))
    _call(vq, x, True, jax.random.key(1))
    rows = {tuple(np.round(r, 5)) for r in np.asarray(vq.codebook[...])}
    assert rows <= {tuple(np.round(r, 5)) for r in np.asarray(x)}  # codes sampled (with replacement) from z


@pytest.mark.parametrize("use_ema", [False, True])
def test_vq_dead_code_restart_restores_usage(use_ema):
    """All 16 codes start at one point, so code 0 takes every vector; restarts spread them over the data."""
    x_all, _ = _clusters(7, 16, 4, 512)

    def run(restart):
        vq = VectorQuantizer(4, 16, rngs=nnx.Rngs(0), use_ema=use_ema, ema_decay=0.8, kmeans_init=False,
                             restart_dead_codes=restart, dead_code_threshold=0.1)
        _set(vq.codebook, np.zeros((16, 4)))
        if use_ema:
            _set(vq.embed_sum, np.zeros((16, 4)))
        graphdef, state = nnx.split(vq)

        @jax.jit
        def step(state, key):
            module = nnx.merge(graphdef, state)
            _, _, aux = module(x_all[jax.random.permutation(key, 512)[:256]], train=True, rng=key)
            return nnx.split(module)[1], aux["dead_codes_restarted"]

        restarted = 0.0
        for i in range(40):
            state, n = step(state, jax.random.key(100 + i))
            restarted += float(n)
        return _call(nnx.merge(graphdef, state), x_all, False)[2], restarted

    aux, restarted = run(True)
    assert restarted >= 10 and float(aux["usage"]) >= 0.8, (restarted, aux)
    aux, restarted = run(False)
    assert restarted == 0 and float(aux["usage"]) <= 0.5, aux


def test_eval_changes_no_state():
    x, _ = _clusters(0, 8, 4, 64)
    for quantizer in (
        VectorQuantizer(4, 8, rngs=nnx.Rngs(0), use_ema=True, dead_code_threshold=0.5),
        ResidualVQ(4, 8, 2, rngs=nnx.Rngs(0), dead_code_threshold=0.5, quantizer_dropout=0.5),  # gradient VQs
    ):
        before = _snapshot(quantizer)
        _call(quantizer, x, False)  # not even the k-means init
        _assert_same_state(_snapshot(quantizer), before)
        _call(quantizer, x, True, jax.random.key(1))  # initialised, then
        before = _snapshot(quantizer)
        for scale in (2.0, 3.0):
            _call(quantizer, x * scale + 1, False)
        _assert_same_state(_snapshot(quantizer), before)
        _call(quantizer, x * 2 + 1, True, jax.random.key(2))  # while train=True does change it
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
    is_var = lambda v: isinstance(v, nnx.Variable)  # noqa: E731
    assert all(isinstance(v, CodebookState) for v in jax.tree.leaves(rest, is_leaf=is_var))
    x, _ = _clusters(0, 8, 4, 64)

    def f(params, rest, z, key):
        m = nnx.merge(graphdef, params, rest)
        out = m(z, train=True, rng=key)
        return out, nnx.split(m, nnx.Param, ...)[1:]

    f = jax.jit(f)
    (z_q, codes, aux), (params2, rest2) = f(params, rest, x, jax.random.key(1))
    assert int(rest2["initialized"][...]) == 1 and int(rest["initialized"][...]) == 0  # inputs untouched
    assert not np.allclose(params2["codebook"][...], params["codebook"][...])  # k-means + EMA, in the Param
    assert not np.allclose(rest2["usage"][...], rest["usage"][...])
    # The returned state is the module's: eval with it reproduces this batch's codes (k-means centroids
    # moved only by one EMA step) and the next step starts from it (no second k-means).
    _, codes_eval, _ = _call(nnx.merge(graphdef, params2, rest2), x, False)
    assert np.mean(np.asarray(codes_eval) == np.asarray(codes)) > 0.95
    (_, _, _), (params3, rest3) = f(params2, rest2, x + 5.0, jax.random.key(2))
    assert int(rest3["initialized"][...]) == 1  # a second k-means would move every code by ~5
    assert np.abs(np.asarray(params3["codebook"][...]) - np.asarray(params2["codebook"][...])).max() < 2.5


@pytest.mark.parametrize("how", ["pure_dict", "merge_copy"])
def test_state_updates_under_grad(how):
    """A loss that merges the module differentiates, and the updated state comes back as aux."""
    rvq = ResidualVQ(4, 8, 2, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(rvq, nnx.Param, CodebookState)
    codebook0 = np.asarray(rvq.quantizers[0].codebook[...])
    if how == "pure_dict":
        params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    x, _ = _clusters(0, 8, 4, 64)
    w = _normal(3, x.shape)

    def loss_fn(params, rest, z, key):
        m = nnx.merge(graphdef, params, rest, copy=how == "merge_copy")
        z_q, _, aux = m(z, train=True, rng=key)
        _, new_params, new_rest = nnx.split(m, nnx.Param, CodebookState)
        return jnp.sum(z_q * w) + aux["loss"], (nnx.to_pure_dict(new_params), nnx.to_pure_dict(new_rest))

    (grads_z, grads_p), (new_params, new_rest) = jax.jit(jax.grad(loss_fn, argnums=(2, 0), has_aux=True))(
        params, rest, x, jax.random.key(1))
    assert all(int(new_rest["quantizers"][k]["initialized"]) == 1 for k in (0, 1))
    assert not np.allclose(new_params["quantizers"][0]["codebook"], codebook0)  # k-means wrote the Param
    if how == "merge_copy":
        grads_p = nnx.to_pure_dict(grads_p)
    codebook_grad = np.asarray(grads_p["quantizers"][0]["codebook"])
    assert np.all(np.isfinite(codebook_grad)) and np.abs(codebook_grad).sum() > 0  # the codebook loss reaches it
    assert np.all(np.isfinite(np.asarray(grads_z)))


# ----------------------------------------------------------------------------- RVQ


def test_rvq_residuals_shrink_with_levels():
    rvq = ResidualVQ(4, 16, 4, rngs=nnx.Rngs(0), restart_dead_codes=False)
    x = _normal(0, (512, 4))
    _call(rvq, x, True, jax.random.key(1))  # k-means init of every level on its residual
    z_q, codes, aux = _call(rvq, x, False)
    assert codes.shape == (512, 4) and float(aux["num_levels_used"]) == 4
    np.testing.assert_allclose(rvq.decode_codes(codes), z_q, rtol=1e-6, atol=1e-6)
    errors = [float(jnp.mean(jnp.square(rvq.decode_codes(codes, num_levels=n) - x))) for n in range(1, 5)]
    assert all(b < 0.8 * a for a, b in zip(errors, errors[1:])), errors
    with pytest.raises(ValueError, match="num_levels"):
        rvq.decode_codes(codes, num_levels=5)


def test_rvq_quantizer_dropout_draws_levels_per_example():
    """DAC: floor(B p) examples (chosen at random) draw n uniformly from 1..K, the others use all K."""
    K, B, draws = 4, 64, 200
    for p in (0.5, 0.3, 1.0):
        rvq = ResidualVQ(4, 8, K, rngs=nnx.Rngs(0), quantizer_dropout=p)
        levels = np.asarray(jax.jit(jax.vmap(lambda key: rvq.levels_per_example(B, key)))(
            jax.random.split(jax.random.key(0), draws)))
        drawn = int(B * p)
        # At most floor(B p) examples per batch use fewer than K levels; values lie in 1..K.
        assert levels.min() >= 1 and levels.max() == K
        assert (np.sum(levels < K, axis=1) <= drawn).all()
        # Over all draws: P(n = k) = p'/K for k < K and (1 - p') + p'/K for K, with p' = floor(B p)/B.
        p_eff = drawn / B
        freq = np.array([np.mean(levels == k) for k in range(1, K + 1)])
        expected = np.array([p_eff / K] * (K - 1) + [1 - p_eff + p_eff / K])
        se = np.sqrt(expected * (1 - expected) / levels.size)
        np.testing.assert_array_less(np.abs(freq - expected), 5 * se + 1e-9)
        # Which examples are dropped changes from batch to batch (not always the first rows).
        per_position = np.mean(levels < K, axis=0)
        assert per_position.min() > 0.0 or p_eff < 0.5
        assert per_position.max() < 1.0


def test_rvq_quantizer_dropout_masks_each_example():
    K = 4
    rvq = ResidualVQ(4, 8, K, rngs=nnx.Rngs(0), quantizer_dropout=1.0, kmeans_init=False, restart_dead_codes=False)
    x = _normal(0, (32, 3, 4))  # 32 examples of 3 vectors
    _, codes_full, _ = _call(rvq, x, False)
    for i in range(4):
        rng = jax.random.key(i)
        levels = np.asarray(rvq.levels_per_example(32, jax.random.split(rng, K + 1)[0]))
        before = _snapshot(rvq)
        z_q, codes, aux = _call(rvq, x, True, rng)
        np.testing.assert_array_equal(codes, codes_full)  # codes of every level are still returned
        np.testing.assert_allclose(float(aux["num_levels_used"]), levels.mean(), rtol=1e-6)
        for b in range(32):  # each example's z_q uses its own number of levels
            np.testing.assert_allclose(z_q[b], rvq.decode_codes(codes[b], num_levels=int(levels[b])),
                                       rtol=1e-5, atol=1e-6)
        # Level k's commitment counts only the examples that use it (zeros elsewhere, mean over all).
        residual = np.asarray(x)
        for k, q in enumerate(rvq.quantizers):
            err = residual - np.asarray(q.decode_codes(codes[..., k]))
            uses = (levels > k)[:, None, None]
            np.testing.assert_allclose(float(aux[f"commitment_level{k}"]), np.mean(uses * err ** 2), rtol=1e-4)
            residual = err
            if not uses.any():  # a level no example uses keeps its state
                np.testing.assert_array_equal(q.usage[...], before["quantizers"][k]["usage"])
    assert float(_call(rvq, x, False)[2]["num_levels_used"]) == 4  # eval uses every level


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
    _, _, aux = _call(lfq, jnp.asarray(z, jnp.float32), True)
    np.testing.assert_allclose(aux["entropy_per_sample"], h_sample, rtol=1e-5)
    np.testing.assert_allclose(aux["entropy_batch"], h_batch, rtol=1e-5)
    np.testing.assert_allclose(aux["entropy"], h_sample - dw * h_batch, rtol=1e-5)
    np.testing.assert_allclose(aux["commitment"], commitment, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], cw * commitment + ew * (h_sample - dw * h_batch), rtol=1e-5)
    # The chunked batch entropy (several chunks + padding rows) equals the one-shot value.
    big = _normal(0, (1000, 12), 0.05)
    lfq12 = LFQ(12, temperature=0.1)
    chunked = jax.jit(lfq12.entropy_terms)(big)[1]
    probs = jax.nn.softmax(2 / 0.1 * big @ lfq12.decode_codes(jnp.arange(4096)).T, axis=-1).mean(0)
    np.testing.assert_allclose(chunked, -jnp.sum(probs * jnp.log(probs)), rtol=1e-4)


def _train(loss_fn, params, steps, lr):
    """Adam on `loss_fn(params, step) -> (loss, aux)`; returns the final params and per-step aux."""
    tx = optax.adam(lr)

    @jax.jit
    def step(params, opt_state, i):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, i)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, {**aux, "total": loss}

    opt_state, history = tx.init(params), []
    for i in range(steps):
        params, opt_state, aux = step(params, opt_state, i)
        history.append(jax.tree.map(float, aux))
    return params, history


def test_lfq_entropy_loss_undoes_a_collapse():
    """Learnable inputs that all start in one code: the entropy loss spreads them over all 16 codes."""
    z0 = 0.002 * (1 + 0.2 * _normal(0, (256, 4)))  # all positive: code 15

    def final_usage(entropy_weight):
        lfq = LFQ(4, entropy_weight=entropy_weight)  # temperature 0.01, commitment 0.25
        _, history = _train(lambda z, i: (lambda aux: (aux["loss"], aux))(lfq(z, train=True)[2]), z0, 150, 1e-2)
        assert history[0]["usage"] == 1 / 16 and all(np.isfinite(h["total"]) for h in history)
        return history[-1]

    end = final_usage(0.1)
    assert end["usage"] == 1.0 and end["perplexity"] > 14 and end["entropy_per_sample"] < 0.01, end
    assert final_usage(0.0)["usage"] == 1 / 16  # commitment alone keeps the collapse


def test_lfq_autoencoder_training_keeps_codes_in_use():
    """A tiny encoder -> LFQ -> decoder on 16 clusters (paper settings) keeps most of its 16 codes in use."""
    x_all, _ = _clusters(0, 16, 8, 2048, spread=0.1, scale=1.0)

    class AutoEncoder(nnx.Module):
        def __init__(self, entropy_weight, rngs):
            self.enc = nnx.Linear(8, 4, rngs=rngs)
            self.dec = nnx.Linear(4, 8, rngs=rngs)
            self.lfq = LFQ(4, entropy_weight=entropy_weight)

    graphdef, params = nnx.split(AutoEncoder(0.1, nnx.Rngs(0)))

    def loss_fn(params, i):
        model = nnx.merge(graphdef, params)
        x = x_all[jax.random.randint(jax.random.key(i), (256,), 0, 2048)]
        z_q, _, aux = model.lfq(model.enc(x), train=True)
        return jnp.mean(jnp.square(model.dec(z_q) - x)) + aux["loss"], aux

    history = _train(loss_fn, params, 300, 3e-3)[1]
    assert all(np.isfinite(h["total"]) for h in history)
    # With entropy_weight=0 this drifts down to 11-12 codes (usage 0.69-0.75, perplexity 8.7).
    assert min(h["usage"] for h in history[100:]) >= 0.85, [h["usage"] for h in history[::25]]
    assert history[-1]["perplexity"] > 12.0, history[-1]


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
