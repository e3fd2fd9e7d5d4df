"""DiGIT's image tokens (arXiv 2410.12490) in the feature tokenizer: k-means on an MAE run's patch
features at a chosen block, the per-code mean-patch decoder, validation, and (slow) the pipeline
MAE -> tokenizer -> `maskgen tokenize` -> MaskGIT -> `maskgen sample`."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import write_run_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, PATCH, WIDTH, DEPTH = 8, 2, 16, 2  # a 4x4 grid of 2x2 patches, one channel


def _mae_recipe():
    from maskgen.recipes.mae import MAERecipe

    return MAERecipe(image_size=SIZE, channels=1, patch_size=PATCH, width=WIDTH, depth=DEPTH, num_heads=2,
                     decoder_width=16, decoder_depth=1, decoder_heads=2, mlp_ratio=2.0, mask_ratio=0.75,
                     norm_pix_loss=True)


@pytest.fixture(scope="module")
def encoder():
    """A frozen MAE run at its random init (no checkpoint needed)."""
    from maskgen.recipes.frozen import FrozenRun

    recipe = _mae_recipe()
    with nnx.use_eager_sharding(False):  # a single-device copy, as load_frozen_run makes
        graphdef, params, rest = nnx.split(recipe.make_model(nnx.Rngs(0)), nnx.Param, ...)
    config = ml_collections.ConfigDict({"recipe": "mae", "model": {"depth": DEPTH},
                                        "data": {"image_size": SIZE}})
    return FrozenRun(workdir="/frozen/mae", config=config, data_info={}, recipe=recipe, info=recipe.info(), step=0,
                     graphdef=graphdef, params=nnx.to_pure_dict(params), model_state=nnx.to_pure_dict(rest))


def _tokenizer(encoder, **overrides):
    from maskgen.recipes.feature_tokenizer import FeatureTokenizerRecipe

    settings = dict(layer=1, codebook_size=6, stats_steps=2, ema_decay=0.5, kmeans_iters=5,
                    dead_code_threshold=0.0, clip_samples=None)
    return FeatureTokenizerRecipe(encoder=encoder, **{**settings, **overrides})


def _images(rng, batch):
    """Patches of three kinds (flat dark, flat bright, a stripe) with noise: codes that mean something."""
    kinds = rng.integers(0, 3, size=(batch, SIZE // PATCH, SIZE // PATCH))
    stripe = np.array([[1.0, -1.0], [1.0, -1.0]])
    patch_of = np.stack([np.full((2, 2), -0.8), np.full((2, 2), 0.7), stripe])
    images = patch_of[kinds].transpose(0, 1, 3, 2, 4).reshape(batch, SIZE, SIZE)
    return jnp.asarray(images[..., None] + 0.05 * rng.standard_normal((batch, SIZE, SIZE, 1)), jnp.float32)


def test_features_are_the_patch_tokens_of_the_chosen_block(encoder):
    from maskgen.models.vit import patchify

    images = _images(np.random.default_rng(0), 2)
    model, patches = encoder.module(), patchify(images, PATCH)
    final = _tokenizer(encoder, layer=-1).encoder_features(images)
    assert final.shape == (2, 4, 4, WIDTH) and final.dtype == jnp.float32
    np.testing.assert_allclose(final, model.encoder(patches)[:, 1:].reshape(2, 4, 4, WIDTH), atol=1e-6)
    # Block DEPTH's output, through the encoder's final LayerNorm, is the final output.
    last = _tokenizer(encoder, layer=DEPTH).encoder_features(images)
    np.testing.assert_allclose(model.encoder.transformer.norm(last), final, atol=1e-5)
    # Block 1's output: block 0 of the transformer applied to its input (class token first).
    first = _tokenizer(encoder, layer=1).encoder_features(images)
    embeddings = _tokenizer(encoder, layer=0).encoder_features(images).reshape(2, 16, WIDTH)
    cls = jnp.broadcast_to(model.encoder.cls_token[...], (2, 1, WIDTH))
    by_hand = model.encoder.transformer.blocks[0](jnp.concatenate([cls, embeddings], 1))[:, 1:]
    np.testing.assert_allclose(first.reshape(2, 16, WIDTH), by_hand, atol=1e-5)
    # The block reader itself, class token included, gives the same block output.
    from maskgen.recipes.feature_tokenizer import mae_block_output

    np.testing.assert_allclose(mae_block_output(model.encoder, patches, 1)[:, 1:], by_hand, atol=1e-5)
    with pytest.raises(ValueError, match=f"config.encoder.layer=3: the MAE run .* has {DEPTH} encoder blocks"):
        _tokenizer(encoder, layer=3)
    with pytest.raises(ValueError, match=r"takes images \[B, 8, 8, 1\], got \(2, 8, 8, 3\)"):
        _tokenizer(encoder).encoder_features(jnp.zeros((2, SIZE, SIZE, 3)))


def test_mean_patches_and_decode_on_a_fixed_batch(encoder):
    """Trained on one batch over and over, each code's mean patch becomes the mean of the patches
    assigned to it, decode pastes it, and reconstruct = decode(encode)."""
    from maskgen.models.vit import patchify

    tokenizer = _tokenizer(encoder)
    assert tokenizer.info()["token_shape"] == (4, 4) and tokenizer.info()["decoder"] == "mean_patch"
    images = _images(np.random.default_rng(1), 8)
    with nnx.use_eager_sharding(False):
        graphdef, params, rest = nnx.split(tokenizer.make_model(nnx.Rngs(0)), nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    @jax.jit
    def step(params, rest, index):
        model = nnx.merge(graphdef, params, rest)
        _, metrics = tokenizer.loss(model, {"image": images}, jax.random.fold_in(jax.random.key(0), index), index)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return metrics, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    history = []
    for index in range(20):
        metrics, params, rest = step(params, rest, jnp.int32(index))
        history.append(metrics)
        if index < 2:  # the table waits for k-means, as the codebook does
            assert not np.any(rest["patch_count"]) and not np.any(rest["patch_sum"])
    model = nnx.merge(graphdef, params, rest)
    codes = np.asarray(tokenizer.encode(model, {"image": images}, None))
    assert codes.shape == (8, 4, 4) and codes.dtype == np.int32
    flat_patches, flat_codes = np.asarray(patchify(images, PATCH)).reshape(-1, 4), codes.reshape(-1)
    table = np.asarray(model.mean_patches())
    for k in np.unique(flat_codes):
        np.testing.assert_allclose(table[k], flat_patches[flat_codes == k].mean(0), atol=1e-4)
    # A code never assigned decodes to 0 (mid-grey).
    for k in sorted(set(range(6)) - set(flat_codes.tolist())):
        np.testing.assert_array_equal(table[k], 0.0)
    decoded = np.asarray(tokenizer.decode(model, {"codes": codes}, None))
    assert decoded.shape == (8, SIZE, SIZE, 1)
    np.testing.assert_array_equal(np.asarray(patchify(decoded, PATCH)).reshape(-1, 4), table[flat_codes])
    out = tokenizer.reconstruct(model, {"image": images}, None)
    np.testing.assert_array_equal(out["codes"], codes)
    np.testing.assert_allclose(out["reconstruction"], np.clip(decoded, -1, 1), atol=1e-6)
    # The decoder's MSE is the within-code variance: far below the patches' own variance.
    mse = float(np.mean((table[flat_codes] - flat_patches) ** 2))
    np.testing.assert_allclose(float(history[-1]["patch_mse"]), mse, rtol=1e-4)
    assert mse < 0.2 * float(flat_patches.var())
    with pytest.raises(ValueError, match=r"decode expects codes \[B, 4, 4\]"):
        tokenizer.decode(model, {"codes": codes[:, :2]}, None)




def test_validation_names_the_problem(tmp_path):
    from maskgen.config import load_config_file
    from maskgen.recipes.feature_tokenizer import FeatureTokenizerRecipe, _encoder_problems
    from tests.test_config_validation import _data_info

    mae_run = write_run_config(tmp_path / "mae", "experiments/mae_digits.py:size=tiny")  # depth 1, 16x16
    assert _encoder_problems(mae_run, 1, None, 16) == []
    assert any("has 1 encoder blocks; use -1" in p for p in _encoder_problems(mae_run, 2, None, 16))
    assert any("trained on 16x16 images, but config.data.image_size=8" in p
               for p in _encoder_problems(mae_run, 1, None, 8))
    assert any("encodes images, but config.data has none" in p for p in _encoder_problems(mae_run, 1, 16000, None))
    config = load_config_file(os.path.join(REPO, f"experiments/digit_tokenizer_digits.py:size=tiny,encoder={mae_run}"))
    assert FeatureTokenizerRecipe.validate(config, _data_info(config)) == []
    config.unlock()
    config.encoder.layer = 5
    assert any("config.encoder.layer=5" in p for p in FeatureTokenizerRecipe.validate(config, _data_info(config)))


def test_missing_encoder_run_is_named(tmp_path):
    from maskgen.config import load_config_file
    from maskgen.recipes.feature_tokenizer import FeatureTokenizerRecipe
    from tests.test_config_validation import _data_info

    config = load_config_file(os.path.join(REPO, f"experiments/digit_tokenizer_digits.py:size=tiny,"
                                                 f"encoder={tmp_path}/nothing"))
    with pytest.raises(ValueError, match=f"config.encoder.workdir='{tmp_path}/nothing': is not a directory"):
        FeatureTokenizerRecipe.from_config(config, _data_info(config))


@pytest.mark.slow
def test_mae_tokens_maskgit_sample_end_to_end(tmp_path):
    """tiny MAE -> DiGIT tokenizer -> `maskgen tokenize` -> MaskGIT -> `maskgen sample` image grid."""
    from conftest import run_cli

    from maskgen.config import apply_overrides, load_config_file
    from maskgen.tokenize import tokenize_dataset
    from maskgen.train import train

    mae = load_config_file(os.path.join(REPO, "experiments/mae_digits.py:size=tiny,steps=2"))
    apply_overrides(mae, ["evals.probe.every=-1", "evals.reconstruction.every=-1"])
    train(mae, str(tmp_path / "mae"))
    digit = load_config_file(os.path.join(REPO, f"experiments/digit_tokenizer_digits.py:size=tiny,"
                                                f"encoder={tmp_path}/mae"))
    train(digit, str(tmp_path / "digit"))
    from maskgen.data import source_info
    from maskgen.recipes.feature_tokenizer import FeatureTokenizerRecipe

    small = load_config_file(os.path.join(REPO, f"experiments/digit_tokenizer_digits.py:size=tiny,"
                                                f"encoder={tmp_path}/mae"))
    apply_overrides(small, ["data.image_size=8"])
    with pytest.raises(ValueError, match=r"trained on 16x16 images with 1 channel\(s\), but the 'digits' data gives "
                                         r"8x8 with 1"):
        FeatureTokenizerRecipe.from_config(small, source_info("digits"))
    metrics = [json.loads(line) for line in open(tmp_path / "digit" / "metrics.jsonl")]
    assert metrics[-1]["gathering_statistics"] == 0.0 and np.isfinite(metrics[-1]["patch_mse"])
    metadata = tokenize_dataset(str(tmp_path / "digit"), "digits", str(tmp_path / "tokens"))
    assert metadata["token_shape"] == [8, 8] and metadata["tokenizer"]["quantizer"] == "kmeans"
    maskgit = load_config_file(os.path.join(REPO, f"experiments/maskgit_digit_tokens.py:size=tiny,steps=3,codebook=16,"
                                                  f"tokens={tmp_path}/tokens"))
    apply_overrides(maskgit, ["evals.generation.every=-1"])
    train(maskgit, str(tmp_path / "maskgit"))
    result = run_cli("sample", "--workdir", str(tmp_path / "maskgit"), "--num", "4", "--steps", "2",
                     "--out", str(tmp_path / "grid.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.ndim >= 2 and grid.shape[0] >= 16 and grid.std() > 0  # decoded images, not a blank
