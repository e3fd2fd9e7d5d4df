"""MAE model and recipe: patch layout, visible-only encoding, the loss target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.models.vit import patchify, sincos_2d, unpatchify
from maskgen.recipes.mae import MAERecipe, normalized_patches


@pytest.fixture(autouse=True)
def one_device_mesh():
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


def _recipe(**overrides):
    kwargs = dict(image_size=8, channels=1, patch_size=2, width=32, depth=1, num_heads=2, decoder_width=16,
                  decoder_depth=1, decoder_heads=2, mlp_ratio=2.0, mask_ratio=0.75, norm_pix_loss=True)
    return MAERecipe(**{**kwargs, **overrides})


def test_patchify_roundtrip_and_layout():
    images = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    patches = patchify(images, 2)
    assert patches.shape == (2, 6, 12)
    np.testing.assert_array_equal(patches[0, 1].reshape(2, 2, 3), images[0, 0:2, 2:4])  # raster order
    np.testing.assert_array_equal(unpatchify(patches, 2, 4, 6), images)


def test_sincos_embeddings_are_distinct_per_position():
    emb = sincos_2d(4, 4, 32)
    assert emb.shape == (16, 32)
    assert len({tuple(np.round(row, 5)) for row in emb}) == 16


def test_normalized_patch_target():
    x = jax.random.normal(jax.random.key(0), (3, 5, 12)) * 4 + 2
    t = normalized_patches(x)
    np.testing.assert_allclose(t.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(t.std(-1), 1, atol=1e-3)


def test_encoder_sees_only_visible_patches():
    """Predictions do not change when the pixels of masked patches change."""
    recipe = _recipe()
    model = recipe.make_model(nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1), minval=-1, maxval=1)
    patches = patchify(images, 2)
    mask, order = recipe._mask_order(jax.random.key(2), 2)
    assert recipe.num_visible == 4 and int(mask.sum()) == 2 * 12
    noise = jax.random.normal(jax.random.key(3), patches.shape)
    tampered = jnp.where(mask[..., None], patches + noise, patches)
    out_a = model(patches, order, recipe.num_visible)
    out_b = model(tampered, order, recipe.num_visible)
    np.testing.assert_allclose(out_a, out_b, atol=1e-6)
    # ... but they do change when a visible patch changes.
    visible_tampered = jnp.where(mask[..., None], patches, patches + noise)
    assert not np.allclose(out_a, model(visible_tampered, order, recipe.num_visible), atol=1e-3)


def test_loss_is_on_masked_patches_only():
    recipe = _recipe(norm_pix_loss=False)
    model = recipe.make_model(nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=-1, maxval=1)
    loss, metrics = recipe.loss(model, {"image": images}, jax.random.key(5))
    patches = patchify(images, 2)
    mask, order = recipe._mask_order(jax.random.key(5), 4)
    pred = model(patches, order, recipe.num_visible)
    per_patch = ((pred - patches) ** 2).mean(-1)
    np.testing.assert_allclose(loss, per_patch[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["mse_visible"], per_patch[~mask].mean(), rtol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_bf16_compute_keeps_float32_params(dtype):
    recipe = _recipe(compute_dtype=dtype)
    model = recipe.make_model(nnx.Rngs(0))
    _, state = nnx.split(model)
    assert {x.dtype for x in jax.tree.leaves(nnx.to_pure_dict(state))} == {jnp.dtype("float32")}
    images = jnp.zeros((2, 8, 8, 1))
    loss, _ = recipe.loss(model, {"image": images + 0.5}, jax.random.key(0))
    assert loss.dtype == jnp.float32 and jnp.isfinite(loss)
