"""MAE model and recipe: patch layout, visible-only encoding, the loss target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskgen.evaluators.linear_probe import lars, paper_probe_accuracy
from maskgen.models.vit import patchify, sincos_2d, unpatchify
from maskgen.recipes.mae import MAERecipe, normalized_patches


pytestmark = pytest.mark.usefixtures("one_device_mesh")


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


def reference_sincos(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py get_2d_sincos_pos_embed, transcribed, for a grid_h x grid_w
    grid (the reference takes one grid_size; its reshape to [2, 1, h, w] is the same for any h, w)."""
    grid = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))  # w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_h, grid_w])

    def one_axis(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_axis(embed_dim // 2, grid[0]), one_axis(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid_h, grid_w, dim", [(4, 4, 32), (3, 5, 16), (14, 14, 64)])
def test_sincos_matches_mae_pos_embed(grid_h, grid_w, dim):
    np.testing.assert_allclose(sincos_2d(grid_h, grid_w, dim), reference_sincos(dim, grid_h, grid_w), atol=1e-6)


def test_sincos_first_half_encodes_the_column():
    emb = sincos_2d(3, 5, 16).reshape(3, 5, 16)
    # Along a row (x changes, y fixed) only the first half changes; down a column only the second.
    np.testing.assert_array_equal(emb[1, :, 8:], np.broadcast_to(emb[1, :1, 8:], (5, 8)))
    np.testing.assert_array_equal(emb[:, 2, :8], np.broadcast_to(emb[:1, 2, :8], (3, 8)))
    assert not np.allclose(emb[1, 0, :8], emb[1, 1, :8])
    np.testing.assert_array_equal(emb[0, 0], np.tile([0.0] * 4 + [1.0] * 4, 2))  # sin 0, cos 0 at the origin
    # The layout maskgen used before (kept for runs saved with it): the halves swapped.
    legacy = sincos_2d(3, 5, 16, "y_first")
    np.testing.assert_array_equal(legacy, np.concatenate([sincos_2d(3, 5, 16)[:, 8:], sincos_2d(3, 5, 16)[:, :8]], 1))
    with pytest.raises(ValueError, match="unknown sin-cos order"):
        sincos_2d(3, 5, 16, "z_first")


def test_old_run_configs_keep_their_sincos_order():
    from conftest import tiny_mae_config

    config = tiny_mae_config()
    assert MAERecipe.from_config(config, {"image_shape": (16, 16, 1)}).model_kwargs["sincos_order"] == "x_first"
    with config.unlocked():
        del config.model["sincos_order"]  # a config.json saved before the setting existed
    assert MAERecipe.from_config(config, {"image_shape": (16, 16, 1)}).model_kwargs["sincos_order"] == "y_first"


def test_normalized_patch_target():
    x = jax.random.normal(jax.random.key(0), (3, 5, 12)) * 4 + 2
    t = normalized_patches(x)
    np.testing.assert_allclose(t.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(t, -1, ddof=1), 1, atol=1e-3)  # torch.var's unbiased variance


def test_normalized_patch_target_hand_built():
    """Patch [0, 0, 0, 4]: mean 1, unbiased variance (1 + 1 + 1 + 9) / 3 = 4 (biased: 3)."""
    t = normalized_patches(jnp.array([[0.0, 0.0, 0.0, 4.0]]))
    np.testing.assert_allclose(t, [[-1 / 2, -1 / 2, -1 / 2, 3 / 2]], rtol=1e-6)  # / sqrt(4 + 1e-6)
    with pytest.raises(ValueError, match="at least 2 values"):
        normalized_patches(jnp.ones((2, 1)))


def test_features_pool_class_token_or_mean():
    recipe = _recipe()
    model = recipe.make_model(nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1), minval=-1, maxval=1)
    tokens = model.encoder(patchify(images, 2))
    np.testing.assert_allclose(recipe.features(model, {"image": images}, None, pool="cls"), tokens[:, 0], atol=1e-6)
    np.testing.assert_allclose(recipe.features(model, {"image": images}, None), tokens[:, 1:].mean(1), atol=1e-6)


def test_lars_matches_mae_util_lars():
    """Two steps of maskgen's LARS against util/lars.py transcribed (weight decay 0, changing lr)."""
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
    grads = [{"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))} for _ in range(2)]
    rates = [0.5, 0.2]
    tx = lars(lambda step: jnp.asarray(rates)[step])
    state, ours = tx.init(params), {k: jnp.asarray(v) for k, v in params.items()}
    ref, mu = {k: v.copy() for k, v in params.items()}, {k: np.zeros_like(v) for k, v in params.items()}
    for g, lr in zip(grads, rates):
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, ours)
        ours = {k: ours[k] + updates[k] for k in ours}
        for k in ref:
            dp = g[k]
            if ref[k].ndim > 1:  # trust ratio for matrices only
                dp = dp * (0.001 * np.linalg.norm(ref[k]) / np.linalg.norm(dp))
            mu[k] = 0.9 * mu[k] + dp
            ref[k] = ref[k] - lr * mu[k]
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-7)


def test_paper_probe_separates_scaled_features():
    """BatchNorm makes the probe blind to feature scale and offset; the test set uses the running stats."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 3
    labels = rng.integers(0, 3, 600)
    x = (centres[labels] + rng.normal(size=(600, 8))) * 1000.0 + 50.0
    # LARS moves the head by ~lr x 0.001 of its norm per step; a large rate leaves the random start in 800 steps.
    accuracy = paper_probe_accuracy(x[:400], labels[:400], x[400:], labels[400:], num_classes=3, epochs=200,
                                    batch_size=100, base_learning_rate=10.0, warmup_epochs=2)
    assert accuracy > 0.95
    # The paper's rate over so few steps leaves the head near its random initialisation (digits at 90 epochs).
    assert paper_probe_accuracy(x[:400], labels[:400], x[400:], labels[400:], num_classes=3, epochs=200,
                                batch_size=100, warmup_epochs=2) < 0.8


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
