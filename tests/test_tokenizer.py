"""The tokenizer recipe: conv shapes, GAN gradients routed to the right network, training per
quantizer, and `maskgen tokenize` round trips."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, run_cli
from maskgen import config as config_lib
from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.models.conv import Decoder, Encoder

TOKENIZER_DIGITS = os.path.join(REPO, "experiments", "tokenizer_digits.py")


def tiny_tokenizer_config(quantizer="vq", *overrides, steps=20, gan=0):
    config = config_lib.load_config_file(f"{TOKENIZER_DIGITS}:size=tiny,quantizer={quantizer},steps={steps},gan={gan}")
    config_lib.apply_overrides(config, ["evals.reconstruction.every=-1", *overrides])
    return config


@pytest.fixture
def mesh_context():
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


@pytest.mark.parametrize("spatial_dims,shape,tokens", [(2, (2, 16, 16, 3), (2, 4, 4, 6)), (1, (2, 32, 5), (2, 8, 6))])
def test_encoder_decoder_shapes(mesh_context, spatial_dims, shape, tokens):
    kw = dict(base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1, embed_dim=6,
              spatial_dims=spatial_dims, rngs=nnx.Rngs(0))
    encoder = Encoder(in_channels=shape[-1], **kw)
    decoder = Decoder(out_channels=shape[-1], **kw)
    z = encoder(jnp.ones(shape))
    assert z.shape == tokens
    assert decoder(z).shape == shape


def _recipe_and_model(config):
    from maskgen.recipes.tokenizer import TokenizerRecipe

    recipe = TokenizerRecipe.from_config(config, {"image_shape": (8, 8, 1)})
    return recipe, recipe.make_model(nnx.Rngs(0))


def test_gan_gradients_reach_each_network_only_through_its_own_loss(mesh_context):
    config = tiny_tokenizer_config("fsq", "loss.gan_start_step=5", "loss.r1_weight=1.0", gan=1)
    recipe, model = _recipe_and_model(config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)  # as the loop holds them
    images = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1), minval=-1, maxval=1)

    def grads_at(step, weight=None):
        if weight is not None:
            recipe.adversarial_weight = weight

        def f(p):
            return recipe.loss(nnx.merge(graphdef, p, rest), {"image": images}, jax.random.key(1), jnp.int32(step))[0]

        return jax.jit(jax.grad(f))(params)

    before, after = grads_at(2), grads_at(9)
    norm = lambda tree: float(optax_norm(tree))  # noqa: E731
    assert norm(before["discriminator"]) == 0.0  # the GAN is off before gan_start_step
    assert norm(after["discriminator"]) > 0.0
    # The generator's gradient changes with the adversarial weight; the discriminator's does not.
    heavy = grads_at(9, weight=10.0)
    np.testing.assert_allclose(jax.tree.leaves(heavy["discriminator"])[0], jax.tree.leaves(after["discriminator"])[0],
                               rtol=1e-5, atol=1e-7)
    assert not np.allclose(jax.tree.leaves(heavy["decoder"])[0], jax.tree.leaves(after["decoder"])[0])


def optax_norm(tree):
    import optax

    return optax.tree.norm(tree)


# vq and rvq in the default suite; fsq and lfq (unit-tested in test_quantizers.py) under -m slow.
@pytest.mark.parametrize("quantizer", ["vq", pytest.param("fsq", marks=pytest.mark.slow),
                                       pytest.param("lfq", marks=pytest.mark.slow), "rvq"])
def test_each_quantizer_trains_in_the_loop(quantizer, tmp_path):
    from maskgen import train as train_lib

    workdir = str(tmp_path / "run")
    train_lib.train(tiny_tokenizer_config(quantizer, "log_every=5", steps=40), workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    rec = [r["reconstruction"] for r in rows if "reconstruction" in r]
    assert rec[-1] < 0.8 * rec[0], rec
    assert "quantizer/usage" in rows[-1] and "quantizer/perplexity" in rows[-1]


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    from maskgen import train as train_lib

    workdir = str(tmp_path_factory.mktemp("tok") / "run")
    train_lib.train(tiny_tokenizer_config("rvq", steps=10), workdir)
    return workdir


def test_tokenize_writes_tokens_that_decode_to_the_reconstructions(tokenizer_run, tmp_path):
    from maskgen.data import make_source
    from maskgen.data.pipeline import ToModelInput
    from maskgen.data.tokens import TokenSource
    from maskgen.tokenize import TokenizerHandle

    out = str(tmp_path / "tokens")
    result = run_cli("tokenize", "--tokenizer-workdir", tokenizer_run, "--data", "digits", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["token_shape"] == [8, 8, 2] and meta["codebook_size"] == 256 and meta["num_levels"] == 2
    assert meta["splits"]["train"]["num_examples"] == 1438 and meta["splits"]["test"]["num_examples"] == 359

    tokens = TokenSource(out, "test")
    digits = make_source("digits", "test")
    handle = TokenizerHandle(tokenizer_run)
    rows = [tokens[i] for i in range(5)]
    images = np.stack([ToModelInput(16)(digits[i])["image"] for i in range(5)])
    assert [int(r["label"]) for r in rows] == [int(digits[i]["label"]) for i in range(5)]
    codes = np.stack([r["tokens"] for r in rows])
    np.testing.assert_array_equal(handle.encode(images), codes)
    # Decoding the stored tokens gives the tokenizer's reconstructions, bit for bit.
    ctx_out = handle.apply("reconstruct", {"image": images})
    np.testing.assert_array_equal(handle.decode(codes), ctx_out["reconstruction"])


def test_token_metadata_mismatch_is_a_clear_error(tokenizer_run, tmp_path):
    from maskgen.data.tokens import TokenMetadataError, check_token_metadata, read_token_metadata
    from maskgen.tokenize import tokenize_dataset

    out = str(tmp_path / "tokens")
    tokenize_dataset(tokenizer_run, "digits", out, splits=["test"])
    meta = read_token_metadata(out)
    check_token_metadata(meta, codebook_size=256, token_shape=(8, 8, 2))
    with pytest.raises(TokenMetadataError, match=r"codebook size: config says 1024, the tokens have 256"):
        check_token_metadata(meta, codebook_size=1024, token_shape=(8, 8, 2))
    with pytest.raises(TokenMetadataError, match=r"token grid: config says \(16, 16\), the tokens are \(8, 8, 2\)"):
        check_token_metadata(meta, codebook_size=256, token_shape=(16, 16))


@pytest.mark.slow  # 22 s: trains an MAE, then a tokenizer on its features (default-suite time budget)
def test_perceptual_loss_with_an_mae_encoder_trained_in_maskgen(tmp_path):
    """An MAE run from the spine serves as the perceptual network of a tokenizer."""
    from conftest import tiny_mae_config
    from maskgen import train as train_lib
    from maskgen.recipes.tokenizer import perceptual_distance, perceptual_network

    mae_dir = str(tmp_path / "mae")
    train_lib.train(tiny_mae_config(steps=5), mae_dir)
    features = perceptual_network(f"mae:{mae_dir}")
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1, maxval=1)
    assert features(x).shape == (2, 1 + 64, 32)
    assert float(perceptual_distance(features, x, x)) == 0.0
    assert float(perceptual_distance(features, x, -x)) > 0.0
    with pytest.raises(ValueError, match=r"takes images \(16, 16, 1\)"):
        features(jnp.zeros((2, 8, 8, 1)))

    workdir = str(tmp_path / "tok")
    config = tiny_tokenizer_config("fsq", "loss.perceptual_weight=0.1", f"loss.perceptual_network=mae:{mae_dir}",
                                   "log_every=5", steps=10)
    train_lib.train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    assert all(np.isfinite(r["perceptual"]) and r["perceptual"] > 0 for r in rows)
