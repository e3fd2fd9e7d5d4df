"""TokenTransformer (MaskGIT backbone + causal KV-cached mode) and autoregressive decoding: token
arrays of rank 1-3, axial RoPE, unconditional models, K codebook streams, prompts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.models.layers import apply_rotary
from maskgen.models.token_transformer import TokenTransformer, rope_2d, rope_axial
from maskgen.sampling.autoregressive import autoregressive_decode

TINY = dict(vocab_size=16, token_shape=(4, 4), num_classes=3, width=32, depth=2, num_heads=2, mlp_ratio=2.0)
B, N, V = 3, 16, 16


pytestmark = pytest.mark.usefixtures("one_device_mesh")


def make(seed: int = 0, **overrides) -> TokenTransformer:
    return TokenTransformer(**{**TINY, **overrides}, rngs=nnx.Rngs(seed))


def perturbed(model: TokenTransformer, scale: float = 0.3, seed: int = 1) -> TokenTransformer:
    """Adds noise to every parameter: the zero-initialised adaLN weights stop hiding labels/context.

    The noise is numpy: no per-shape XLA compilations, which keeps this file fast.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda x: jax.device_put((np.asarray(x) + scale * rng.standard_normal(x.shape)).astype(np.float32),
                                 x.sharding),
        params)
    return nnx.merge(graphdef, params, rest)


# One jitted forward for the whole file, keyed on the (hashable) graphdef: models of the same
# configuration, perturbed or not, share one compilation. That keeps this file fast.
_forward = jax.jit(lambda graphdef, state, tokens, labels: nnx.merge(graphdef, state)(tokens, labels),
                   static_argnums=0)


def jit_forward(model):
    """A jitted (tokens, labels) -> logits function of the model."""
    graphdef, state = nnx.split(model)
    return lambda tokens, labels: _forward(graphdef, state, tokens, labels)


# The few configurations the tests share (every option appears in at least one).
BIDIR_ADALN = dict(conditioning="adaln", positions="learned", qk_norm=False, tie_head=True, causal=False)
BIDIR_PREFIX = dict(conditioning="prefix", positions="rope2d", qk_norm=True, tie_head=False, causal=False)
CAUSAL_ADALN = dict(conditioning="adaln", positions="rope2d", qk_norm=True, tie_head=False, causal=True)
CAUSAL_PREFIX = dict(conditioning="prefix", positions="learned", qk_norm=False, tie_head=True, causal=True)


def random_tokens(seed: int = 0, batch: int = B) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, N), 0, V)


LABELS = jnp.array([0, 2, 3])  # 3 is the null class


# ------------------------------------------------------------------------------------ structure

@pytest.mark.parametrize("config", [BIDIR_ADALN, BIDIR_PREFIX, CAUSAL_ADALN, CAUSAL_PREFIX])
def test_shapes_dtypes_and_attributes(config):
    conditioning, positions, qk_norm, tie_head, causal = (
        config[k] for k in ("conditioning", "positions", "qk_norm", "tie_head", "causal"))
    model = make(**config)
    assert (model.mask_token_id, model.null_class, model.num_tokens, model.vocab_size) == (16, 3, 16, 16)
    assert model.causal is causal
    tokens = random_tokens().at[:, ::3].set(model.mask_token_id)  # [MASK] is a valid input id
    logits = jit_forward(model)(tokens, LABELS)
    assert logits.shape == (B, N, V) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    params = nnx.state(model, nnx.Param)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # bf16 is compute-only
    assert ("q_norm" in params["blocks"][0]["attn"]) == qk_norm
    assert ("pos_embed" in params) == (positions == "learned")
    assert ("head" in params) != tie_head
    if positions == "learned":
        assert params["pos_embed"][...].shape == (N + int(conditioning == "prefix" and not causal), 32)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = perturbed(make(**CAUSAL_ADALN, dtype=jnp.bfloat16), scale=0.1)
    reference = perturbed(make(**CAUSAL_ADALN), scale=0.1)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tokens = random_tokens()
    logits = jit_forward(model)(tokens, LABELS)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, jit_forward(reference)(tokens, LABELS), atol=0.1)


def _mesh_axes(names):
    rules = dict(DEFAULT_SHARDING_RULES)
    axes = []
    for name in names:
        physical = rules[name] if name is not None else None
        axes += list(physical) if isinstance(physical, tuple) else ([physical] if physical else [])
    return axes


@pytest.mark.parametrize("overrides", [CAUSAL_ADALN, CAUSAL_PREFIX])
def test_every_parameter_has_logical_axis_names(overrides):
    model = make(**overrides)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # a plain tree: splits cleanly
    assert not jax.tree.leaves(rest)
    variables = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(variables) > 10
    for var in variables:
        names = var.get_metadata()["out_sharding"]
        assert len(names) == var[...].ndim, (names, var[...].shape)
        assert all(n is None or n in dict(DEFAULT_SHARDING_RULES) for n in names), names
        mesh_axes = _mesh_axes(names)
        assert len(mesh_axes) == len(set(mesh_axes)), names  # no mesh axis used twice
    specs = nnx.get_partition_spec(params)
    assert specs["token_embed"].get_value() == jax.sharding.PartitionSpec(None, "fsdp")
    meta = lambda v: v.get_metadata()["out_sharding"]  # noqa: E731
    assert meta(params["token_embed"]) == (None, "embed")
    assert meta(params["class_embed"]) == ("classes", "embed")
    if overrides["conditioning"] == "adaln":
        assert meta(params["blocks"][0]["modulation"]["kernel"]) == ("cond", None, "embed")
        assert params["blocks"][0]["modulation"]["kernel"][...].shape == (32, 6, 32)
        assert meta(params["head"]["kernel"]) == ("embed", "vocab")
    else:
        assert meta(params["head_bias"]) == ("vocab",)
    # Round trip through split/merge gives the same function.
    tokens = random_tokens()
    np.testing.assert_array_equal(jit_forward(nnx.merge(graphdef, params, rest))(tokens, LABELS),
                                  jit_forward(model)(tokens, LABELS))


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="adaln.*prefix"):
        make(conditioning="film")
    with pytest.raises(ValueError, match="learned.*rope2d"):
        make(positions="sincos")
    with pytest.raises(ValueError, match="divisible by 4"):
        make(positions="rope2d", width=24, num_heads=4)  # head_dim 6
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_2d(jnp.zeros(3), jnp.zeros(3), 6)
    with pytest.raises(ValueError, match="causal"):
        make().init_cache(2)
    with pytest.raises(ValueError, match="causal"):
        autoregressive_decode(make(), LABELS, jax.random.key(0))


# ---------------------------------------------------------------------------------- conditioning

def test_adaln_zero_ignores_labels_at_init_and_uses_them_after_training():
    model = make(**BIDIR_ADALN)
    tokens = random_tokens()
    forward = jit_forward(model)
    a, b = forward(tokens, jnp.array([0, 0, 1])), forward(tokens, jnp.array([0, 2, 3]))
    np.testing.assert_array_equal(a, b)  # zero-init modulation: every block is the identity
    forward = jit_forward(perturbed(model))
    a, b = forward(tokens, jnp.array([0, 0, 1])), forward(tokens, jnp.array([0, 2, 3]))
    assert np.abs(np.asarray(a - b)).max(axis=-1)[1:].min() > 1e-4  # every position of every changed row
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)  # row 0 kept its label; labels do not leak across the batch


def test_prefix_class_token_conditions_at_init():
    forward = jit_forward(make(**BIDIR_PREFIX))
    tokens = random_tokens()
    a, b = forward(tokens, jnp.array([0, 0, 1])), forward(tokens, jnp.array([0, 2, 3]))
    assert np.abs(np.asarray(a - b))[1:].max(axis=-1).min() > 1e-5
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


# ------------------------------------------------------------------------------- attention masks

@pytest.mark.parametrize("config", [BIDIR_ADALN, BIDIR_PREFIX])
def test_bidirectional_sees_later_tokens(config):
    forward = jit_forward(perturbed(make(**config)))
    tokens = random_tokens()
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % V)
    diff = np.abs(np.asarray(forward(tokens, LABELS) - forward(changed, LABELS))).max(axis=-1)
    assert (diff[:, :-1] > 1e-5).all()  # every earlier position saw the change


@pytest.mark.parametrize("config", [CAUSAL_ADALN, CAUSAL_PREFIX])
def test_causal_logits_only_depend_on_earlier_tokens(config):
    forward = jit_forward(perturbed(make(**config)))
    tokens = random_tokens()
    base = np.asarray(forward(tokens, LABELS))
    for j in (0, 6, N - 1):
        changed = tokens.at[:, j].set((tokens[:, j] + 1) % V)
        diff = np.abs(np.asarray(forward(changed, LABELS)) - base).max(axis=-1)
        np.testing.assert_allclose(diff[:, : j + 1], 0, atol=1e-6)  # position i predicts token i from < i
        assert (diff[:, j + 1:] > 1e-5).all()


# --------------------------------------------------------------------------------------- rope2d

def test_rope2d_scores_depend_only_on_relative_offsets():
    head_dim = 16
    q, k = jax.random.normal(jax.random.key(0), (2, 1, head_dim))

    def score(p, p2):
        rq = apply_rotary(q, *rope_2d(jnp.array([p[0]]), jnp.array([p[1]]), head_dim))
        rk = apply_rotary(k, *rope_2d(jnp.array([p2[0]]), jnp.array([p2[1]]), head_dim))
        return float(jnp.sum(rq * rk))

    for p, p2, d in [((0, 0), (1, 3), (2, 5)), ((3, 1), (0, 2), (-1, 4)), ((2, 2), (2, 2), (7, 0))]:
        shift = lambda x: (x[0] + d[0], x[1] + d[1])  # noqa: E731
        assert score(p, p2) == pytest.approx(score(shift(p), shift(p2)), abs=1e-4)
    # ... but rows and columns are told apart, and the offset matters.
    assert abs(score((0, 0), (1, 0)) - score((0, 0), (0, 1))) > 1e-3
    assert abs(score((0, 0), (1, 2)) - score((0, 0), (2, 1))) > 1e-3
    # Position (0, 0) (the prefix / start token) is the identity rotation; rotations keep norms.
    np.testing.assert_allclose(apply_rotary(q, *rope_2d(jnp.zeros(1), jnp.zeros(1), head_dim)), q, atol=1e-7)
    rotated = apply_rotary(q, *rope_2d(jnp.array([3.0]), jnp.array([2.0]), head_dim))
    np.testing.assert_allclose(jnp.linalg.norm(rotated), jnp.linalg.norm(q), rtol=1e-5)


# ----------------------------------------------------------------------------------------- head

def test_tied_head_scores_against_the_token_embeddings():
    model = make(**CAUSAL_PREFIX)  # tied
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jnp.full((B, N), model.mask_token_id)  # the input lookup only touches the [MASK] row
    weights = jax.random.normal(jax.random.key(0), (B, N, V))

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p, rest)(tokens, LABELS) * weights)

    grad = jax.jit(jax.grad(loss))(params)["token_embed"][...]
    assert (np.abs(np.asarray(grad[:V])).sum(axis=-1) > 1e-6).all()  # every vocabulary row, via the head
    assert np.abs(np.asarray(grad[V])).sum() > 0  # the [MASK] row, via the input lookup


# ---------------------------------------------------------------------------------- KV caching

@pytest.mark.parametrize("name,atol", [("adaln", 1e-5), ("prefix", 1e-5), ("bert", 1e-4)])
def test_cached_decode_steps_match_the_full_causal_forward(name, atol):
    config = {"adaln": CAUSAL_ADALN, "prefix": CAUSAL_PREFIX, "bert": {**BERT, "causal": True}}[name]
    model = perturbed(make(**config))
    graphdef, params = nnx.split(model)
    tokens = random_tokens()

    @jax.jit
    def stepwise(params, tokens, labels):
        merged = nnx.merge(graphdef, params)

        def step(cache, i):
            prev = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(i - 1, 0), axis=1, keepdims=False)
            # At i = 0 token_in is ignored: feed garbage to check that.
            prev = jnp.where(i == 0, 12345, prev)
            logits, cache = merged.decode_step(cache, prev, i, labels)
            return cache, logits

        _, logits = jax.lax.scan(step, merged.init_cache(tokens.shape[0]), jnp.arange(N))
        return jnp.swapaxes(logits, 0, 1)

    cached = stepwise(params, tokens, LABELS)
    assert cached.shape == (B, N, V) and cached.dtype == jnp.float32
    np.testing.assert_allclose(cached, jit_forward(model)(tokens, LABELS), atol=atol)


def test_autoregressive_decode_cached_equals_uncached():
    model = perturbed(make(**CAUSAL_ADALN))
    graphdef, params = nnx.split(model)
    labels = jnp.array([0, 1, 2, 2])

    @jax.jit
    def decode(params, labels, rng, cfg):
        # cfg is traced here, so guidance always batches the conditional and null-label passes.
        merged = nnx.merge(graphdef, params)
        return (
            autoregressive_decode(merged, labels, rng, use_cache=True),
            autoregressive_decode(merged, labels, rng, use_cache=False),
            autoregressive_decode(merged, labels, rng, cfg_scale=cfg, use_cache=True),
            autoregressive_decode(merged, labels, rng, cfg_scale=cfg, use_cache=False),
            autoregressive_decode(merged, jnp.full_like(labels, merged.null_class), rng, use_cache=True),
        )

    rng = jax.random.key(7)
    plain, plain_ref, guided, guided_ref, null = decode(params, labels, rng, 3.0)
    assert plain.shape == (4, N) and plain.dtype == jnp.int32
    assert ((np.asarray(plain) >= 0) & (np.asarray(plain) < V)).all()
    np.testing.assert_array_equal(plain, plain_ref)
    np.testing.assert_array_equal(guided, guided_ref)
    assert (np.asarray(guided) != np.asarray(plain)).any()  # guidance changed the samples
    # cfg_scale 0: logits = uncond exactly, i.e. decoding the null class.
    _, _, zero, zero_ref, null = decode(params, labels, rng, 0.0)
    np.testing.assert_array_equal(zero, null)
    np.testing.assert_array_equal(zero_ref, null)


# ---------------------------------------------------------------------- the checkpoint layout

# The parameter trees (name: shape) of the default configurations as they were before token
# shapes of other ranks, unconditional models and codebook streams were added (written from that
# code, depth 1): old checkpoints must keep restoring.
_BLOCK = {
    "blocks/0/attn/out/bias": (32,), "blocks/0/attn/out/kernel": (2, 16, 32),
    "blocks/0/attn/qkv/bias": (3, 2, 16), "blocks/0/attn/qkv/kernel": (32, 3, 2, 16),
    "blocks/0/mlp/fc1/bias": (64,), "blocks/0/mlp/fc1/kernel": (32, 64),
    "blocks/0/mlp/fc2/bias": (32,), "blocks/0/mlp/fc2/kernel": (64, 32),
}
_ADALN = {"blocks/0/modulation/bias": (6, 32), "blocks/0/modulation/kernel": (32, 6, 32),
          "final_modulation/bias": (2, 32), "final_modulation/kernel": (32, 2, 32)}
_AFFINE = {"blocks/0/norm1/bias": (32,), "blocks/0/norm1/scale": (32,), "blocks/0/norm2/bias": (32,),
           "blocks/0/norm2/scale": (32,), "final_norm/bias": (32,), "final_norm/scale": (32,)}
_QK = {"blocks/0/attn/k_norm/bias": (16,), "blocks/0/attn/k_norm/scale": (16,),
       "blocks/0/attn/q_norm/bias": (16,), "blocks/0/attn/q_norm/scale": (16,)}
_EMBED = {"class_embed": (4, 32), "token_embed": (17, 32)}
LEGACY_TREES = [
    (dict(conditioning="adaln", positions="learned"),
     {**_BLOCK, **_ADALN, **_EMBED, "head_bias": (16,), "pos_embed": (16, 32)}),
    (dict(conditioning="prefix", positions="rope2d", tie_head=False, qk_norm=True),
     {**_BLOCK, **_AFFINE, **_QK, **_EMBED, "head/bias": (16,), "head/kernel": (32, 16)}),
    (dict(conditioning="adaln", positions="rope2d", causal=True),
     {**_BLOCK, **_ADALN, **_EMBED, "head_bias": (16,), "start_token": (32,)}),
    (dict(conditioning="prefix", positions="learned", causal=True),
     {**_BLOCK, **_AFFINE, **_EMBED, "head_bias": (16,), "pos_embed": (16, 32)}),
]


def param_tree(model) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
            for path, leaf in flat}


@pytest.mark.parametrize("config,expected", LEGACY_TREES)
def test_default_parameter_trees_are_unchanged(config, expected):
    assert param_tree(make(**{**config, "depth": 1})) == expected


# ------------------------------------------------------------------------- ranks and positions

@pytest.mark.parametrize("token_shape,positions", [((8,), "rope"), ((2, 4), "learned"), ((2, 2, 2), "rope")])
def test_token_shapes_of_rank_one_to_three(token_shape, positions):
    model = perturbed(make(token_shape=token_shape, positions=positions, width=24, num_heads=2,
                           conditioning="prefix"))  # head_dim 12: divisible by 2, 4 and 6
    assert model.num_tokens == 8 and model.token_shape == token_shape
    tokens = jax.random.randint(jax.random.key(0), (B, 8), 0, V + 1)
    forward = jit_forward(model)
    flat = forward(tokens, LABELS)
    assert flat.shape == (B, 8, V) and np.isfinite(np.asarray(flat)).all()
    grid = forward(tokens.reshape((B,) + token_shape), LABELS)  # [B, *token_shape] in, same layout out
    assert grid.shape == (B,) + token_shape + (V,)
    np.testing.assert_array_equal(grid.reshape(flat.shape), flat)
    with pytest.raises(ValueError, match="token_shape"):
        model(tokens[:, :7], LABELS)


def test_axial_rope_origin_is_identity_and_axes_are_told_apart():
    head_dim = 12  # 6 pairs: 2 per axis over 3 axes
    q, k = jax.random.normal(jax.random.key(0), (2, 1, head_dim))
    cos, sin = rope_axial(np.zeros((1, 3)), head_dim)
    np.testing.assert_array_equal(cos, 1.0)
    np.testing.assert_array_equal(sin, 0.0)
    np.testing.assert_allclose(apply_rotary(q, cos, sin), q, atol=1e-7)

    def score(p, p2):
        return float(jnp.sum(apply_rotary(q, *rope_axial(np.array([p]), head_dim))
                             * apply_rotary(k, *rope_axial(np.array([p2]), head_dim))))

    # Relative: a common shift of both positions changes nothing; each axis matters on its own.
    assert score((0, 1, 2), (3, 1, 0)) == pytest.approx(score((2, 3, 4), (5, 3, 2)), abs=1e-4)
    offsets = [score((0, 0, 0), d) for d in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]]
    assert min(abs(a - b) for a, b in [(offsets[0], offsets[1]), (offsets[1], offsets[2]),
                                       (offsets[0], offsets[2])]) > 1e-3
    # Rank 1 and 2 are the ordinary 1D RoPE and the rope2d tables.
    rows, cols = jnp.array([0.0, 1.0, 3.0]), jnp.array([2.0, 0.0, 1.0])
    for a, b in zip(rope_axial(jnp.stack([rows, cols], -1), 16), rope_2d(rows, cols, 16)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="divisible by 6"):
        rope_axial(np.zeros((1, 3)), 8)


@pytest.mark.parametrize("config", [BIDIR_PREFIX, CAUSAL_ADALN])
def test_rope2d_is_an_alias_of_rope_on_2d_grids(config):
    tokens = random_tokens()
    alias = jit_forward(perturbed(make(**{**config, "positions": "rope2d"})))(tokens, LABELS)
    np.testing.assert_array_equal(jit_forward(perturbed(make(**{**config, "positions": "rope"})))(tokens, LABELS),
                                  alias)
    with pytest.raises(ValueError, match="rope2d.*2D"):
        make(positions="rope2d", token_shape=(16,))


# ------------------------------------------------------------------------------ unconditional

def test_unconditional_model_has_no_classes_and_takes_no_labels():
    model = make(conditioning="none", num_classes=0, token_shape=(16,), positions="rope")
    params = nnx.state(model, nnx.Param)
    assert "class_embed" not in params and "modulation" not in params["blocks"][0]
    assert model.null_class is None
    logits = jit_forward(model)(random_tokens(), None)
    assert logits.shape == (B, N, V) and np.isfinite(np.asarray(logits)).all()
    with pytest.raises(ValueError, match="unconditional"):
        model(random_tokens(), LABELS)
    with pytest.raises(ValueError, match="labels"):
        make(**BIDIR_ADALN)(random_tokens(), None)
    with pytest.raises(ValueError, match="num_classes"):
        make(conditioning="adaln", num_classes=0)


# ----------------------------------------------------------------------------- codebook streams

@pytest.mark.parametrize("tie_head", [True, False])
def test_parallel_codebook_streams(tie_head):
    k = 3
    model = perturbed(make(**{**BIDIR_ADALN, "tie_head": tie_head}, num_streams=k))
    params = nnx.state(model, nnx.Param)
    assert params["token_embed"][...].shape == (k, V + 1, 32)  # one table per stream, each with [MASK]
    if tie_head:
        assert params["head_bias"][...].shape == (k, V)
    else:
        assert params["head"]["kernel"][...].shape == (32, k, V)
    tokens = jax.random.randint(jax.random.key(0), (B, N, k), 0, V + 1)
    forward = jit_forward(model)
    logits = forward(tokens, LABELS)
    assert logits.shape == (B, N, k, V)
    np.testing.assert_array_equal(forward(tokens.reshape(B, 4, 4, k), LABELS), logits.reshape(B, 4, 4, k, V))
    # Each stream's token reaches the prediction (the embeddings are summed per position) and the
    # streams are told apart (the same id in another stream is another embedding).
    for stream in range(k):
        changed = tokens.at[:, 0, stream].set((tokens[:, 0, stream] + 1) % V)
        assert np.abs(np.asarray(forward(changed, LABELS) - logits)).max() > 1e-4
    swapped = tokens.at[:, :, [0, 1]].set(tokens[:, :, [1, 0]])
    assert np.abs(np.asarray(forward(swapped, LABELS) - logits)).max() > 1e-4
    with pytest.raises(ValueError, match="num_streams"):
        model(tokens[..., :2], LABELS)


# ------------------------------------------------------------------------- causal text models

TEXT_CAUSAL = [dict(conditioning="none", num_classes=0, token_shape=(12,), positions="rope", causal=True),
               dict(conditioning="none", num_classes=0, token_shape=(12,), positions="learned", causal=True,
                    num_streams=2, tie_head=False)]


@pytest.mark.parametrize("config", TEXT_CAUSAL)
def test_unconditional_1d_decode_steps_match_the_full_forward(config):
    model = perturbed(make(**config))
    graphdef, params = nnx.split(model)
    streams = (config.get("num_streams", 1),) if config.get("num_streams", 1) > 1 else ()
    tokens = jax.random.randint(jax.random.key(3), (B, 12) + streams, 0, V)

    @jax.jit
    def stepwise(params, tokens):
        merged = nnx.merge(graphdef, params)

        def step(cache, i):
            prev = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(i - 1, 0), axis=1, keepdims=False)
            logits, cache = merged.decode_step(cache, prev, i)  # labels None
            return cache, logits

        _, logits = jax.lax.scan(step, merged.init_cache(tokens.shape[0]), jnp.arange(12))
        return jnp.moveaxis(logits, 0, 1)

    full = jit_forward(model)(tokens, None)
    assert full.shape == (B, 12) + streams + (V,)
    np.testing.assert_allclose(stepwise(params, tokens), full, atol=1e-5)
    # Causal: position 0 (the learned start token alone) does not see any token.
    changed = tokens.at[:, 0].set((tokens[:, 0] + 1) % V)
    np.testing.assert_array_equal(jit_forward(model)(changed, None)[:, 0], full[:, 0])


def test_autoregressive_decode_unconditional_with_a_prompt():
    model = perturbed(make(**TEXT_CAUSAL[0]))
    graphdef, params = nnx.split(model)
    prompt = jnp.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]])
    lengths = jnp.array([5, 2, 0])  # rows continue prompts of different lengths

    @jax.jit
    def decode(params, rng):
        merged = nnx.merge(graphdef, params)
        return (autoregressive_decode(merged, None, rng, prompt=prompt, prompt_length=lengths, use_cache=True),
                autoregressive_decode(merged, None, rng, prompt=prompt, prompt_length=lengths, use_cache=False),
                autoregressive_decode(merged, None, rng, batch_size=3))

    cached, uncached, free = decode(params, jax.random.key(0))
    assert cached.shape == (3, 12) and cached.dtype == jnp.int32
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached[0, :5], prompt[0])
    np.testing.assert_array_equal(cached[1, :2], prompt[1, :2])
    # Same key: the unprompted row 2 is the free sample; the prompted rows continue differently.
    np.testing.assert_array_equal(cached[2], free[2])
    assert (np.asarray(cached[0, 5:]) != np.asarray(free[0, 5:])).any()
    merged = nnx.merge(graphdef, params)
    with pytest.raises(ValueError, match="guidance"):
        autoregressive_decode(merged, None, jax.random.key(0), batch_size=3, cfg_scale=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        autoregressive_decode(merged, None, jax.random.key(0))


# ---------------------------------------------------------------- the official (BERT) variant

BERT = dict(conditioning="prefix", positions="learned", qk_norm=False, tie_head=True, architecture="bert",
            dropout=0.1)


def test_bert_variant_tree_init_and_invalid_combinations():
    # The official layout: an embedding norm, post-norms in the blocks, no final norm, an MLM head.
    model = make(**BERT, depth=1)
    tree = param_tree(model)
    assert {"embed_norm/scale", "mlm_dense/kernel", "mlm_dense/bias", "mlm_norm/scale", "head_bias",
            "blocks/0/norm1/scale", "blocks/0/norm2/bias"} <= set(tree)
    assert not any(k.startswith("final_norm") for k in tree) and tree["mlm_dense/kernel"] == (32, 32)
    # Truncated-normal(0.02) as the reference draws it: within 2 sigma, std 0.02 * 0.8796.
    kernels = np.concatenate([np.ravel(model.blocks[0].mlp.fc1.kernel[...]), np.ravel(model.blocks[0].attn.qkv.kernel[...]),
                              np.ravel(model.token_embed[...]), np.ravel(model.mlm_dense.kernel[...])])
    assert np.abs(kernels).max() <= 0.04 + 1e-7 and abs(kernels.std() / 0.02 - 0.8796) < 0.03
    assert model.blocks[0].norm1.eps == model.embed_norm.eps == model.mlm_norm.eps == 1e-12
    with pytest.raises(ValueError, match="bert.*prefix.*adaLN"):
        make(architecture="bert", conditioning="adaln")
    with pytest.raises(ValueError, match="unknown architecture 'post_ln'.*pre_ln.*bert"):
        make(architecture="post_ln")
    with pytest.raises(ValueError, match="dropout"):
        make(**{**BERT, "dropout": 1.0})


def test_dropout_only_with_a_key_and_the_block_is_post_ln():
    model = perturbed(make(**BERT))
    graphdef, state = nnx.split(model)
    graphdef_no_dropout = nnx.split(make(**{**BERT, "dropout": 0.0}))[0]
    tokens = random_tokens()
    x = jax.random.normal(jax.random.key(2), (2, 5, 32)) * 3 + 1

    @jax.jit
    def run(state, key):
        merged, no_dropout = nnx.merge(graphdef, state), nnx.merge(graphdef_no_dropout, state)
        block = nnx.merge(graphdef, jax.tree.map(lambda a: a, state)).blocks[0]
        block.norm1.scale[...], block.norm2.scale[...] = jnp.ones(32), jnp.ones(32)
        block.norm1.bias[...], block.norm2.bias[...] = jnp.zeros(32), jnp.zeros(32)
        return (merged(tokens, LABELS), merged(tokens, LABELS, dropout_rng=key), no_dropout(tokens, LABELS),
                no_dropout(tokens, LABELS, dropout_rng=key), block(x, None)[0])

    # RBG keys: XLA:CPU compiles threefry bit generation several times slower.
    plain, dropped, no_dropout, no_dropout_keyed, block_out = run(state, jax.random.key(0, impl="rbg"))
    again, dropped_other, *_ = run(state, jax.random.key(1, impl="rbg"))
    np.testing.assert_array_equal(plain, again)  # no key: deterministic
    assert not np.allclose(plain, dropped, atol=1e-3) and not np.allclose(dropped, dropped_other, atol=1e-3)
    # The same parameters with dropout=0 compute the same function; a key changes nothing there.
    np.testing.assert_allclose(no_dropout, plain, atol=1e-5)
    np.testing.assert_array_equal(no_dropout_keyed, no_dropout)
    # Post-LN: a block's output is LayerNorm-ed, so with unit scale and zero bias each position's
    # hidden state has mean 0 and variance 1 (a pre-LN residual stream does not).
    np.testing.assert_allclose(block_out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(block_out.var(-1), 1.0, atol=1e-4)


def test_attention_dropout_drops_normalised_probabilities():
    from maskgen.models.layers import Attention, dropout

    attn = Attention(16, 2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(attn)
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    key, rate = jax.random.key(3, impl="rbg"), 0.25  # RBG: much faster to compile on CPU than threefry

    @jax.jit
    def run(state):
        attn = nnx.merge(graphdef, state)
        q, k, v = attn.project(x)
        probs = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q * attn.scale, k), axis=-1)
        keep = jax.random.bernoulli(key, 1 - rate, probs.shape)
        want = attn.out(jnp.transpose(jnp.einsum("bhqk,bhkd->bhqd", probs * keep / (1 - rate), v), (0, 2, 1, 3)))
        return (attn(x, dropout_rate=rate, dropout_rng=key), want, attn(x, dropout_rate=rate), attn(x),
                dropout(jnp.ones(20_000), rate, key))

    got, want, unkeyed, plain, ones = run(state)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(unkeyed, plain)  # no key, no dropout
    # Inverted dropout keeps the mean: about `rate` of a large array is zeroed, the rest scaled.
    assert abs(float((ones == 0).mean()) - rate) < 0.015  # 5 binomial sigmas
    np.testing.assert_allclose(np.unique(ones), [0.0, 1 / (1 - rate)], rtol=1e-6)


