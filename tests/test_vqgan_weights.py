"""Importing the official MaskGIT VQGAN tokenizer (maskgen.weights.maskgit_vqgan).

The reference is a small linen transcription of google-research/maskgit's
maskgit/nets/vqgan_tokenizer.py forward pass (released config: GroupNorm, swish, average-pool
downsampling), written here independently of maskgen's modules: its `init` gives a random tree
with the official names and shapes, which goes through a Flax msgpack file, the converter and
maskgen's tokenizer; encoder latents, codes and decoded images must agree in float32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.weights import check_same_tree, maskgit_vqgan
from maskgen.weights.files import WeightFileError, read_flax_checkpoint, write_flax_checkpoint

FILTERS, MULTIPLIERS, RES_BLOCKS, EMBED, CODES, SIZE = 32, (1, 2), 1, 4, 16, 8


class ResBlock(nn.Module):  # linen names children by class: ResBlock_0, ...
    """The official block: convs without bias; a width change applies the 1x1 conv to the output."""
    filters: int

    @nn.compact
    def __call__(self, x):
        in_dim = x.shape[-1]
        residual = x
        x = nn.Conv(self.filters, (3, 3), use_bias=False)(nn.swish(nn.GroupNorm()(x)))
        x = nn.Conv(self.filters, (3, 3), use_bias=False)(nn.swish(nn.GroupNorm()(x)))
        if in_dim != self.filters:
            residual = nn.Conv(self.filters, (1, 1), use_bias=False)(x)
        return x + residual


def _avg_pool(x):
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class RefEncoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(FILTERS, (3, 3), use_bias=False)(x)
        for i, mult in enumerate(MULTIPLIERS):
            for _ in range(RES_BLOCKS):
                x = ResBlock(FILTERS * mult)(x)
            if i < len(MULTIPLIERS) - 1:
                x = _avg_pool(x)
        for _ in range(RES_BLOCKS):
            x = ResBlock(FILTERS * MULTIPLIERS[-1])(x)
        return nn.Conv(EMBED, (1, 1))(nn.swish(nn.GroupNorm()(x)))


class RefDecoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        filters = FILTERS * MULTIPLIERS[-1]
        x = nn.Conv(filters, (3, 3))(x)
        for _ in range(RES_BLOCKS):
            x = ResBlock(filters)(x)
        for i in reversed(range(len(MULTIPLIERS))):
            filters = FILTERS * MULTIPLIERS[i]
            for _ in range(RES_BLOCKS):
                x = ResBlock(filters)(x)
            if i > 0:
                n, h, w, c = x.shape
                x = jax.image.resize(x, (n, 2 * h, 2 * w, c), method="nearest")
                x = nn.Conv(filters, (3, 3))(x)
        return nn.Conv(3, (3, 3))(nn.swish(nn.GroupNorm()(x)))


class RefVQVAE(nn.Module):
    def setup(self):
        self.encoder = RefEncoder()
        self.decoder = RefDecoder()
        self.quantizer = RefQuantizer()

    def __call__(self, image):
        z = self.encoder(image)
        quantized, ids = self.quantizer(z)
        return z, ids, self.decoder(quantized)


class RefQuantizer(nn.Module):
    @nn.compact
    def __call__(self, x):
        codebook = self.param("codebook", nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
                              (CODES, x.shape[-1]))
        flat = x.reshape(-1, x.shape[-1])
        distances = (jnp.sum(flat ** 2, 1, keepdims=True) - 2 * flat @ codebook.T + jnp.sum(codebook ** 2, 1)[None])
        ids = jnp.argmin(distances, -1).reshape(x.shape[:-1])
        return codebook[ids], ids


def _randomise(tree, seed):
    """Random values everywhere (linen's init leaves GroupNorm at 1/0 and biases at 0)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: np.asarray(0.3 * rng.standard_normal(a.shape) + (a if a.ndim == 1 else 0),
                                             np.float32), tree)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    images01 = np.random.default_rng(1).uniform(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    variables = jax.jit(RefVQVAE().init)(jax.random.key(0), jnp.asarray(images01))
    variables = {"params": _randomise(jax.tree.map(np.asarray, dict(variables["params"])), 2)}
    path = str(tmp_path_factory.mktemp("vqgan") / "tokenizer_checkpoint")
    write_flax_checkpoint(path, variables)
    z, ids, recon = jax.jit(RefVQVAE().apply)(variables, jnp.asarray(images01))
    return dict(path=path, images01=images01, z=np.asarray(z), ids=np.asarray(ids), recon=np.asarray(recon))


@pytest.fixture(scope="module")
def mesh():
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES + (("codebook", None),)):
        yield


def _maskgen_model(tree):
    from maskgen.recipes.tokenizer import TokenizerRecipe

    config = maskgit_vqgan.make_config(tree, image_size=SIZE)
    info = maskgit_vqgan.data_info(tree, config)
    assert TokenizerRecipe.validate(config, info) == []
    recipe = TokenizerRecipe.from_config(config, info)
    model = recipe.make_model(nnx.Rngs(0))
    converted = maskgit_vqgan.convert(tree, config)
    check_same_tree(converted, nnx.to_pure_dict(nnx.state(model, nnx.Param)), "converted")  # every param, no more
    nnx.update(model, converted)
    return config, recipe, model


def test_converted_vqgan_computes_the_official_function(official, mesh):
    tree = read_flax_checkpoint(official["path"])
    assert maskgit_vqgan.shapes(tree) == dict(channels=3, filters=FILTERS, channel_multipliers=MULTIPLIERS,
                                              num_res_blocks=RES_BLOCKS, embed_dim=EMBED, codebook_size=CODES)
    config, recipe, model = _maskgen_model(tree)
    assert config.model.conv_variant == "maskgit" and not config.model.vq.kmeans_init
    images = jnp.asarray(official["images01"] * 2 - 1)  # maskgen's data are in [-1, 1]
    latents, codes, decoded = _forward(recipe, model, images)
    np.testing.assert_allclose(latents, official["z"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(codes, official["ids"])
    np.testing.assert_allclose(decoded, official["recon"] * 2 - 1, rtol=1e-4, atol=2e-4)


def _forward(recipe, model, images):
    @jax.jit
    def run(x):
        codes = recipe.encode(model, {"image": x}, None)
        return model.latents(x), codes, recipe.decode(model, {"codes": codes}, None)

    return run(images)


def _without(tree, path):
    tree = jax.tree.map(lambda a: a, tree)  # a copy
    node = tree["params"]
    *parents, leaf = path.split("/")
    for part in parents:
        node = node[part]
    del node[leaf]
    return tree


def test_missing_or_misshaped_keys_are_named(official, mesh):
    tree = read_flax_checkpoint(official["path"])
    config = maskgit_vqgan.make_config(tree, image_size=SIZE)
    with pytest.raises(WeightFileError, match="encoder/ResBlock_1/Conv_2"):
        maskgit_vqgan.convert(_without(tree, "encoder/ResBlock_1/Conv_2"), config)
    with pytest.raises(WeightFileError, match="decoder/GroupNorm_0"):
        maskgit_vqgan.convert(_without(tree, "decoder/GroupNorm_0"), config)
    with pytest.raises(WeightFileError, match="quantizer"):
        maskgit_vqgan.make_config(_without(tree, "quantizer"))
    bad = jax.tree.map(lambda a: a, tree)
    bad["params"]["decoder"]["Conv_1"]["kernel"] = np.zeros((3, 3, 32, 31), np.float32)
    with pytest.raises(WeightFileError, match=r"decoder/Conv_1/kernel has shape \(3, 3, 32, 31\)"):
        maskgit_vqgan.convert(bad, config)
    extra = jax.tree.map(lambda a: a, tree)
    extra["params"]["encoder"]["ResBlock_0"]["Conv_2"] = np.zeros((1, 1, 32, 32), np.float32)
    with pytest.raises(WeightFileError, match="encoder/ResBlock_0 has unexpected entries"):
        maskgit_vqgan.convert(extra, config)
