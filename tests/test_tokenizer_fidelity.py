"""Tokenizer paper-fidelity switches (issue 15): the VQ entropy loss against MaskGIT's formula, R1 at
full strength against finite differences, VQGAN's adaptive GAN weight against its definition,
MAGVIT's entropy annealing, the StyleGAN discriminator and the GroupNorm before LFQ.
(FSQ's bound and RVQ's per-example dropout are in test_quantizers.py; the MaskGIT ResBlock variant
in test_vqgan_weights.py.)"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO
from maskgen import config as config_lib
from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.models.conv import Discriminator, StyleGANDiscriminator, stylegan_channels
from maskgen.recipes.tokenizer import TokenizerRecipe, entropy_anneal_multiplier, r1_penalty
from maskgen.tokenizers import VectorQuantizer


@pytest.fixture(scope="module", autouse=True)
def mesh():
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES + (("codebook", None),)):
        yield


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ----------------------------------------------------------------------------- VQ entropy loss


def _maskgit_entropy_loss(affinity, temperature):
    """maskgit/libml/losses.py `entropy_loss` (loss_type "softmax"), transcribed in NumPy float64."""
    a = np.asarray(affinity, np.float64).reshape(-1, affinity.shape[-1]) / temperature
    probs = np.exp(a - a.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    shifted = a + 1e-5
    log_probs = shifted - shifted.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    avg_probs = probs.mean(0)
    avg_entropy = -np.sum(avg_probs * np.log(avg_probs + 1e-5))
    sample_entropy = -np.mean(np.sum(probs * log_probs, -1))
    return sample_entropy - avg_entropy


@pytest.mark.parametrize("temperature", [0.01, 0.5])
def test_vq_entropy_loss_is_maskgits(temperature):
    vq = VectorQuantizer(4, 8, rngs=nnx.Rngs(0), entropy_weight=0.1, entropy_temperature=temperature,
                         kmeans_init=False, restart_dead_codes=False)
    z = _normal(1, (6, 5, 4), 0.7)
    graphdef, state = nnx.split(vq)
    state = nnx.to_pure_dict(state)

    def loss(codebook, z):
        aux = nnx.merge(graphdef, {**state, "codebook": codebook})(z, train=False)[2]
        return aux["loss"], aux

    (total, aux), (g_codebook, g_z) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        state["codebook"], z)
    x, c = np.asarray(z, np.float64).reshape(-1, 4), np.asarray(state["codebook"], np.float64)
    distances = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None]
    expected = _maskgit_entropy_loss(-distances, temperature)
    np.testing.assert_allclose(float(aux["entropy"]), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(aux["entropy_loss"]), 0.1 * expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(total), 0.25 * float(aux["commitment"]) + float(aux["codebook"])
                               + 0.1 * expected, rtol=1e-4, atol=1e-6)
    # The entropy term's gradient reaches both z and the codebook (beyond commitment/codebook terms).
    if temperature == 0.5:  # at 0.01 the softmax is saturated and the entropy's gradient vanishes
        g_plain = jax.jit(jax.grad(lambda cb, z: loss(cb, z)[0] - 0.1 * loss(cb, z)[1]["entropy"],
                                   argnums=(0, 1)))(state["codebook"], z)
        assert not np.allclose(g_codebook, g_plain[0], atol=1e-6)
        assert not np.allclose(g_z, g_plain[1], atol=1e-6)


# ----------------------------------------------------------------------------- R1


def test_r1_is_full_strength_against_finite_differences():
    disc = Discriminator(in_channels=1, base_channels=4, num_downsamples=1, rngs=nnx.Rngs(0))
    x = _normal(0, (3, 6, 6, 1))
    graphdef, state = nnx.split(disc)

    # Central differences of sum_b D(x_b) per pixel (the examples are independent, so one pixel
    # position is perturbed in every example at once and each example's own sum is read).
    def per_example(xx):
        return nnx.merge(graphdef, state)(xx).reshape(xx.shape[0], -1).sum(-1)

    h = 1e-2
    eye = jnp.eye(36, dtype=jnp.float32).reshape(36, 1, 6, 6, 1)
    diffs = jax.jit(jax.vmap(lambda e: (per_example(x + h * e) - per_example(x - h * e)) / (2 * h)))(eye)
    expected = float(np.mean(np.sum(np.square(np.asarray(diffs, np.float64)), axis=0)))
    r1 = float(jax.jit(r1_penalty)(disc, x))
    np.testing.assert_allclose(r1, expected, rtol=2e-2)

    # The recipe adds r1_weight * R1 (not half of it).
    config = _tiny_config()
    recipe = TokenizerRecipe.from_config(config, {"image_shape": (16, 16, 1)})
    recipe.r1_weight = 10.0
    total, metrics = jax.jit(lambda d, x: recipe._gan_losses(d, x, x * 0.5, jnp.int32(100), 0.1))(disc, x)
    np.testing.assert_allclose(float(metrics["gan/r1"]), r1, rtol=1e-5)
    others = 0.1 * metrics["gan/generator"] + metrics["gan/discriminator"] + recipe.lecam_weight * metrics["gan/lecam"]
    np.testing.assert_allclose(float(total - others), 10.0 * r1, rtol=1e-4)


# ----------------------------------------------------------------------------- adaptive weight


def _tiny_config(*overrides):
    path = os.path.join(REPO, "experiments", "tokenizer_digits.py") + ":size=tiny,quantizer=fsq,gan=1"
    config = config_lib.load_config_file(path)
    config_lib.apply_overrides(config, ["evals.reconstruction.every=-1", *overrides])
    return config


@pytest.mark.slow  # ~10 s alone, compiles the whole tokenizer loss with a StyleGAN discriminator
def test_adaptive_gan_weight_is_vqgans_lambda():
    config = _tiny_config("loss.adaptive_gan_weight=True", "model.discriminator=stylegan",
                          "model.stylegan_max_channels=8")
    recipe = TokenizerRecipe.from_config(config, {"image_shape": (16, 16, 1)})
    assert TokenizerRecipe.validate(config, {"image_shape": (16, 16, 1)}) == []
    model = recipe.make_model(nnx.Rngs(0))
    assert isinstance(model.discriminator, StyleGANDiscriminator)
    x = jnp.tanh(_normal(3, (2, 16, 16, 1)))
    z_q = jax.jit(lambda x: model.encode(x, train=False)[0])(x)
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)

    def decoded_with(kernel):  # the whole decoder, with its last conv's kernel replaced
        p = jax.tree.map(lambda a: a, params)
        p["decoder"]["conv_out"]["kernel"] = kernel
        m = nnx.merge(graphdef, p)
        return m.decode(z_q), m

    @jax.jit
    def reference(kernel):
        g_rec = jax.grad(lambda k: jnp.abs(decoded_with(k)[0] - x).mean())(kernel)  # l1, weight 1
        g_gan = jax.grad(lambda k: (lambda y, m: -m.discriminator(y).mean())(*decoded_with(k)))(kernel)  # hinge
        return jnp.linalg.norm(g_rec), jnp.linalg.norm(g_gan)

    rec_norm, gan_norm = reference(params["decoder"]["conv_out"]["kernel"])
    expected = np.clip(float(rec_norm) / (float(gan_norm) + 1e-4), 0, 1e4)
    # Through the recipe's loss (which reports the weight it multiplies the adversarial term by).
    _, metrics = jax.jit(lambda m: recipe.loss(m, {"image": x}, jax.random.key(0), jnp.int32(100)))(model)
    np.testing.assert_allclose(float(metrics["gan/adaptive_weight"]), expected, rtol=1e-4)


# ----------------------------------------------------------------------------- entropy annealing


def test_entropy_annealing_follows_magvit():
    steps = [0, 250, 500, 1000, 5000]
    got = [float(entropy_anneal_multiplier(jnp.int32(s), 3.0, 1000)) for s in steps]
    np.testing.assert_allclose(got, [3.0, 2.25, 1.5, 0.0, 0.0], rtol=1e-6)
    assert float(entropy_anneal_multiplier(jnp.int32(0), 3.0, 0)) == 0.0


def test_lfq_group_norm_and_annealing_in_the_recipe():
    config = _tiny_config("model.quantizer=lfq", "model.lfq_group_norm=True", "loss.adversarial_weight=0.0",
                          "loss.entropy_anneal_factor=3.0", "loss.entropy_anneal_steps=100")
    recipe = TokenizerRecipe.from_config(config, {"image_shape": (16, 16, 1)})
    model = recipe.make_model(nnx.Rngs(0))
    x = jnp.tanh(_normal(4, (2, 16, 16, 1)))
    latents = np.asarray(model.latents(x))  # GroupNorm (8 bits -> 8 groups of 1): per example and channel
    np.testing.assert_allclose(latents.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(latents.var(axis=(1, 2)), 1.0, rtol=1e-3)
    loss = jax.jit(lambda m, step: recipe.loss(m, {"image": x}, jax.random.key(0), step))
    (early, m0), (late, m1) = loss(model, jnp.int32(0)), loss(model, jnp.int32(200))
    np.testing.assert_allclose(float(early - late), 3.0 * float(m0["quantizer/entropy_loss"]), rtol=1e-4, atol=1e-6)
    assert float(m1["quantizer/entropy_anneal_extra"]) == 0.0


# ----------------------------------------------------------------------------- StyleGAN discriminator


class _RefStyleGANBlock(nn.Module):
    """maskgit/nets/discriminator.py's ResBlock, transcribed (blur_resample=True)."""
    filters: int

    @nn.compact
    def __call__(self, x):
        def blur(v):
            taps = jnp.array([1.0, 3.0, 3.0, 1.0])
            k = jnp.outer(taps, taps) / 64.0
            k = jnp.tile(k[:, :, None, None], (1, 1, 1, v.shape[-1]))
            return jax.lax.conv_general_dilated(v, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                feature_group_count=v.shape[-1])

        residual = x
        x = jax.nn.leaky_relu(nn.Conv(x.shape[-1], (3, 3))(x), 0.2)
        x, residual = blur(x), blur(residual)
        residual = nn.Conv(self.filters, (1, 1), use_bias=False)(residual)
        x = jax.nn.leaky_relu(nn.Conv(self.filters, (3, 3))(x), 0.2)
        return (residual + x) / np.sqrt(2)


class _RefStyleGAN(nn.Module):
    """maskgit/nets/discriminator.py's Discriminator, with its width table's 512 as `top`."""
    size: int
    top: int

    @nn.compact
    def __call__(self, x):
        width = lambda r: self.top if r <= 32 else 16384 // r  # noqa: E731
        x = jax.nn.leaky_relu(nn.Conv(width(self.size), (3, 3))(x), 0.2)
        for i in range(int(np.log2(self.size)), 2, -1):
            x = _RefStyleGANBlock(width(2 ** (i - 1)))(x)
        x = jax.nn.leaky_relu(nn.Conv(width(4), (3, 3))(x), 0.2).reshape(x.shape[0], -1)
        x = jax.nn.leaky_relu(nn.Dense(width(4))(x), 0.2)
        return nn.Dense(1)(x)


def test_stylegan_discriminator_is_maskgits():
    """Same function as a transcription of MaskGIT's, given the same weights (linen names mapped)."""
    assert [stylegan_channels(r, 1, 512) for r in (4, 32, 64, 128, 256)] == [512, 512, 256, 128, 64]
    x = _normal(5, (2, 8, 8, 3))
    ref = _RefStyleGAN(size=8, top=8)
    variables = jax.jit(ref.init)(jax.random.key(0), x)
    p = jax.tree.map(lambda a: np.asarray(a) + 0.1 * np.random.default_rng(a.size).standard_normal(a.shape),
                     dict(variables["params"]))
    # Built under one jit: eager initialisers compile one program per parameter shape (slow on CPU).
    disc = nnx.jit(lambda: StyleGANDiscriminator(in_channels=3, image_size=8, max_channels=8, rngs=nnx.Rngs(0)))()
    assert len(disc.blocks) == 1  # 8 -> 4
    state = nnx.to_pure_dict(nnx.state(disc, nnx.Param))
    conv = lambda d: {k: d[k] for k in ("kernel", "bias") if k in d}  # noqa: E731
    state["conv_in"] = conv(p["Conv_0"])
    for i in range(1):
        block = p[f"_RefStyleGANBlock_{i}"]
        state["blocks"][i] = {"conv1": conv(block["Conv_0"]), "shortcut": conv(block["Conv_1"]),
                              "conv2": conv(block["Conv_2"])}
    state["conv_out"], state["dense"], state["logit"] = conv(p["Conv_1"]), conv(p["Dense_0"]), conv(p["Dense_1"])
    nnx.update(disc, state)
    expected = jax.jit(ref.apply)({"params": p}, x)
    np.testing.assert_allclose(jax.jit(lambda d, x: d(x))(disc, x), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="power-of-two"):
        StyleGANDiscriminator(in_channels=3, image_size=24, rngs=nnx.Rngs(0))
    problems = TokenizerRecipe.validate(_tiny_config("model.discriminator=stylegan", "data.image_size=12"),
                                        {"image_shape": (8, 8, 1)})
    assert any("power-of-two" in p for p in problems), problems
