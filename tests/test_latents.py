"""Continuous latents (issue 16): the KL bottleneck (LDM, arXiv 2112.10752) in the tokenizer,
`maskgen tokenize` latents with their scale factor, the pipeline that applies it, the latent and
pixel decoders, and infill batches of float data."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO
from maskgen import tasks

TOKENIZER_DIGITS = os.path.join(REPO, "experiments", "tokenizer_digits.py")


# ------------------------------------------------------------------------------- the KL bottleneck
def _kl_closed_form(mean, logvar):
    """KL(N(m, s1^2) || N(0, 1)) per element from the general two-Gaussian formula
    log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2 with m2 = 0, s2 = 1, in float64."""
    mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    s1 = np.exp(0.5 * logvar)
    return np.log(1.0 / s1) + (s1 ** 2 + mean ** 2) / 2.0 - 0.5


def test_kl_loss_matches_the_closed_form_and_eval_uses_the_mean():
    from maskgen.tokenizers import DiagonalGaussian, make_quantizer

    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    logvar = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    z = jnp.concatenate([mean, logvar], axis=-1)
    bottleneck = make_quantizer("kl", 4, rngs=None, kl_weight=0.25)
    assert isinstance(bottleneck, DiagonalGaussian) and bottleneck.input_dim == 8
    latent, codes, aux = bottleneck(z, train=False)
    per_example = _kl_closed_form(mean, logvar).reshape(3, -1).sum(-1)  # sum over latent dims
    np.testing.assert_allclose(float(aux["kl"]), per_example.mean(), rtol=1e-5)  # mean over the batch
    np.testing.assert_allclose(float(aux["loss"]), 0.25 * per_example.mean(), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(latent), mean)  # eval: the mean, exactly
    np.testing.assert_array_equal(np.asarray(codes), mean)
    np.testing.assert_array_equal(np.asarray(bottleneck.decode_codes(codes)), mean)
    # train: mean + std * noise, with the noise of `rng`
    key = jax.random.key(3)
    sample, codes, _ = bottleneck(z, train=True, rng=key)
    noise = np.asarray(jax.random.normal(key, mean.shape))
    np.testing.assert_allclose(np.asarray(sample), mean + np.exp(0.5 * logvar) * noise, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(codes), mean)
    # the log-variance is clipped to [-30, 20] (LDM), so KL stays finite
    huge = jnp.concatenate([jnp.zeros((1, 1, 1, 4)), jnp.full((1, 1, 1, 4), 500.0)], axis=-1)
    _, _, aux = bottleneck(huge, train=False)
    np.testing.assert_allclose(float(aux["kl"]), _kl_closed_form(np.zeros(4), np.full(4, 20.0)).sum(), rtol=1e-5)
    # KL is zero exactly at the prior
    _, _, aux = bottleneck(jnp.zeros((2, 1, 1, 8)), train=False)
    assert float(aux["kl"]) == 0.0
    with pytest.raises(ValueError, match="reads 8 channels"):
        bottleneck(jnp.zeros((1, 4)), train=False)
    with pytest.raises(ValueError, match="pass rng="):
        bottleneck(z, train=True)


def test_kl_tokenizer_config_is_checked():
    from maskgen import config as config_lib
    from maskgen.recipes.tokenizer import TokenizerRecipe

    config = config_lib.load_config_file(f"{TOKENIZER_DIGITS}:size=tiny,quantizer=kl")
    config.loss.kl_weight = -1.0
    problems = TokenizerRecipe.validate(config, {"image_shape": (8, 8, 1), "num_classes": 10})
    assert any("loss.kl_weight" in p for p in problems), problems


# ------------------------------------------------------------------------------- a trained kl run
@pytest.fixture(scope="module")
def kl_run(tmp_path_factory):
    """A tiny kl tokenizer (8x8x4 latents on 16x16 digits) and its `maskgen tokenize` output."""
    from maskgen import config as config_lib
    from maskgen import train as train_lib
    from maskgen.tokenize import tokenize_dataset

    root = tmp_path_factory.mktemp("latents")
    config = config_lib.load_config_file(f"{TOKENIZER_DIGITS}:size=tiny,quantizer=kl,steps=30")
    config_lib.apply_overrides(config, ["evals.reconstruction.every=-1", "log_every=1"])
    workdir = str(root / "tokenizer")
    train_lib.train(config, workdir)
    out = str(root / "latents")
    metadata = tokenize_dataset(workdir, "digits", out)
    return {"workdir": workdir, "out": out, "metadata": metadata, "root": root}


@pytest.fixture(scope="module")
def latent_decoder(kl_run):
    from maskgen import runs
    from maskgen.data import source_info

    info = source_info("tokens", kl_run["out"])
    config = ml_collections.ConfigDict(dict(data=dict(name="tokens", data_dir=kl_run["out"]), batch_size=16))
    return runs.make_decoder(config, info)


def test_kl_tokenizer_trains_and_encodes_floats(kl_run, latent_decoder):
    with open(os.path.join(kl_run["workdir"], "metrics.jsonl")) as f:
        losses = [row["loss"] for row in map(json.loads, f) if "loss" in row]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    tokenizer = latent_decoder.tokenizer
    assert tokenizer.info["quantizer"] == "kl" and tokenizer.info["continuous"]
    assert tokenizer.info["latent_channels"] == 4 and tuple(tokenizer.info["token_shape"]) == (8, 8)
    images = latent_decoder.reference("test", 4)["image"]
    latents = tokenizer.encode(images)
    assert latents.shape == (4, 8, 8, 4) and latents.dtype == np.float32
    assert len(np.unique(latents)) > 100  # continuous, not a few codes
    decoded = tokenizer.decode(latents)
    assert decoded.shape == images.shape and decoded.dtype == np.float32
    with pytest.raises(ValueError, match=r"decode expects latents \[B, 8, 8, 4\]"):
        tokenizer.decode(latents[..., :2])


def test_tokenize_writes_unscaled_latents_and_the_scale_factor(kl_run):
    from maskgen.data import make_preprocess, make_source, source_info
    from maskgen.data.specs import LatentSpec

    meta = kl_run["metadata"]
    assert set(meta["fields"]) == {"latents", "label"} and "codebook_size" not in meta
    assert meta["tokenizer"]["workdir"] == os.path.abspath(kl_run["workdir"])
    assert meta["tokenizer"]["quantizer"] == "kl" and meta["tokenizer"]["scale_split"] == "train"
    info = source_info("tokens", kl_run["out"])
    spec = info["fields"]["latents"]
    assert isinstance(spec, LatentSpec) and spec.shape == (8, 8, 4)
    train = make_source("tokens", "train", kl_run["out"])
    stored = np.stack([train[i]["latents"] for i in range(len(train))])
    assert stored.dtype == np.float32 and len(stored) == info["splits"]["train"] == 1438
    np.testing.assert_allclose(spec.scale, 1.0 / stored.astype(np.float64).std(), rtol=1e-6)
    np.testing.assert_allclose((stored * spec.scale).std(), 1.0, rtol=1e-4)  # unit variance after scaling
    # the stored latents are the encoder's means (unscaled)
    test = make_source("tokens", "test", kl_run["out"])
    assert info["tokenizer"]["workdir"] == meta["tokenizer"]["workdir"]  # the run that decodes them
    # the pipeline multiplies by the scale
    example = test[3]
    out = make_preprocess(info["fields"])(example)
    np.testing.assert_allclose(out["latents"], example["latents"] * np.float32(spec.scale), rtol=1e-6)
    assert out["latents"].dtype == np.float32 and out["label"] == example["label"]


def test_latent_dataset_without_scale_is_a_clear_error(kl_run, tmp_path):
    from maskgen import runs
    from maskgen.data import make_preprocess, make_source, source_info
    from maskgen.data.specs import LatentSpec, spec_from_json

    broken = str(tmp_path / "no_scale")
    shutil.copytree(kl_run["out"], broken)
    path = os.path.join(broken, "metadata.json")
    with open(path) as f:
        meta = json.load(f)
    del meta["fields"]["latents"]["scale"]  # as a dataset written without the factor
    with open(path, "w") as f:
        json.dump(meta, f)
    info = source_info("tokens", broken)  # the dataset still reads ...
    assert info["fields"]["latents"].scale is None
    assert make_source("tokens", "train", broken)[0]["latents"].shape == (8, 8, 4)
    with pytest.raises(ValueError, match=r"no scale factor.*re-run `maskgen tokenize`"):  # ... but is not used
        make_preprocess(info["fields"])
    config = ml_collections.ConfigDict(dict(data=dict(name="tokens", data_dir=broken), batch_size=16))
    with pytest.raises(ValueError, match=r"no scale factor.*re-run `maskgen tokenize`"):
        runs.make_decoder(config, info)
    # "missing" and 1.0 differ when read from JSON
    assert spec_from_json({"kind": "latents", "shape": [2, 2, 4]}).scale is None
    assert spec_from_json({"kind": "latents", "shape": [2, 2, 4], "scale": 1.0}).scale == 1.0
    with pytest.raises(ValueError, match="finite number > 0"):
        LatentSpec((2, 2, 4), scale=0.0)


def test_latent_decoder_round_trips_through_the_tokenizer(kl_run, latent_decoder):
    from maskgen import runs

    assert isinstance(latent_decoder, runs.LatentDecoder) and latent_decoder.kind == "images"
    reference = latent_decoder.reference("test", 8)
    assert reference["image"].shape == (8, 16, 16, 1) and reference["label"].shape == (8,)
    scaled = latent_decoder.encode(reference["image"])
    unscaled = latent_decoder.tokenizer.encode(reference["image"])
    np.testing.assert_allclose(scaled, unscaled * np.float32(latent_decoder.scale), rtol=1e-6)
    # the generator's view (scaled, as the pipeline gives it) decodes to the tokenizer's reconstruction
    from maskgen.data import make_preprocess, make_source, source_info

    info = source_info("tokens", kl_run["out"])
    preprocess = make_preprocess(info["fields"])
    source = make_source("tokens", "test", kl_run["out"])
    pipeline_latents = np.stack([preprocess(source[i])["latents"] for i in range(8)])
    np.testing.assert_allclose(pipeline_latents, scaled, rtol=1e-4, atol=1e-5)
    recon = latent_decoder.tokenizer.apply("reconstruct", {"image": reference["image"]})["reconstruction"]
    decoded = latent_decoder.decode(scaled)["images"]
    np.testing.assert_allclose(decoded, np.clip(recon, -1, 1), atol=1e-5)
    assert decoded.min() >= -1 and decoded.max() <= 1
    assert latent_decoder.data_config.name == "digits" and latent_decoder.channels == 1


def test_image_decoder_for_pixel_data():
    from maskgen import config as config_lib
    from maskgen import runs
    from maskgen.data import source_info
    from maskgen.data.digits import DigitsSource
    from maskgen.data.pipeline import ToModelInput
    from maskgen.generate import load_image

    config = config_lib.load_config_file(f"{TOKENIZER_DIGITS}:size=tiny")
    decoder = runs.make_decoder(config, source_info("digits"))
    assert isinstance(decoder, runs.ImageDecoder) and decoder.kind == "images" and decoder.channels == 1
    x = np.linspace(-2, 2, 2 * 16 * 16).reshape(2, 16, 16, 1).astype(np.float32)
    np.testing.assert_array_equal(decoder.decode(x)["images"], np.clip(x, -1, 1))
    np.testing.assert_array_equal(decoder.encode(x), x)
    with pytest.raises(ValueError, match=r"encode expects images \[B, H, W, 1\]"):
        decoder.encode(np.zeros((2, 16, 16, 3)))
    reference = decoder.reference("test", 5)
    expected = [ToModelInput(16)(DigitsSource("test")[i]) for i in range(5)]
    np.testing.assert_array_equal(reference["image"], np.stack([e["image"] for e in expected]))
    np.testing.assert_array_equal(reference["label"], [e["label"] for e in expected])
    image, label = load_image("test:2", decoder)  # `maskgen edit --image test:INDEX` on a pixel generator
    np.testing.assert_array_equal(image, expected[2]["image"])
    assert label == int(expected[2]["label"])


# ------------------------------------------------------------------------------- infill of float data
def test_infill_batch_keeps_float_data_with_a_position_mask():
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
    unknown = np.zeros((2, 8, 8), bool)
    unknown[:, 4:] = True  # the bottom half of an 8x8 patch grid
    batch = tasks.infill_batch(images, unknown)
    assert batch["tokens"].dtype == np.float32 and batch["tokens"] is not None
    np.testing.assert_array_equal(batch["tokens"], images)
    assert batch["known"].shape == (2, 8, 8) and (batch["known"] == ~unknown).all()
    latents = images.reshape(2, 8, 8, 4).astype(np.float64)  # a latent grid [h, w, D]: float64 kept too
    batch = tasks.infill_batch(latents, unknown)
    assert batch["tokens"].dtype == np.float64 and batch["known"].shape == (2, 8, 8)
    with pytest.raises(ValueError, match=r"same shape, or \(float data\).*position grid"):
        tasks.infill_batch(images, np.zeros((2, 5, 5), bool))  # 5 does not divide 16
    with pytest.raises(ValueError, match="same shape"):
        tasks.infill_batch(images, np.zeros((3, 8, 8), bool))  # batch sizes differ
    # token ids are unchanged: int32, mask of their own shape
    batch = tasks.infill_batch(np.arange(8, dtype=np.int64).reshape(2, 4), np.ones((2, 4), bool))
    assert batch["tokens"].dtype == np.int32 and not batch["known"].any()
    with pytest.raises(ValueError, match="same shape"):
        tasks.infill_batch(np.zeros((2, 4, 4), np.int32), np.zeros((2, 2, 2), bool))


# ------------------------------------------------------------------------------- a continuous generator, end to end
class _ClassMeans:
    """A test-only continuous generator: one learned data array per class (the class mean), trained
    by MSE on pixels or scaled latents. `generate` returns {"tokens": float [B, *data_shape]} with the
    known positions copied from the batch, as DiT/MAR do; enough to drive the decoders, the
    generation evaluator, `sample` and `edit` without the real recipes."""

    NAME = "_test_class_means"

    @staticmethod
    def build():
        from flax import nnx

        from maskgen.models.layers import logical_param
        from maskgen.recipes.base import Recipe

        class Means(nnx.Module):
            def __init__(self, num_classes, data_shape, rngs):
                self.means = logical_param(rngs, jax.nn.initializers.zeros, (num_classes, *data_shape),
                                           (None,) * (1 + len(data_shape)))

        class ClassMeans(Recipe):
            capabilities = frozenset({"generate"})

            def __init__(self, field, data_shape, num_classes):
                self.field, self.data_shape, self.num_classes = field, tuple(data_shape), num_classes

            def supported_tasks(self):
                return frozenset({"class", "infill"})

            @classmethod
            def from_config(cls, config, data_info):
                fields = data_info["fields"]
                if "latents" in fields:
                    return cls("latents", fields["latents"].shape, data_info["num_classes"])
                size = config.data.image_size
                return cls("image", (size, size, data_info["image_shape"][-1]), data_info["num_classes"])

            def info(self):
                return {"token_shape": self.data_shape[:2], "data_shape": self.data_shape,
                        "num_classes": self.num_classes, "sampling": {}}

            def make_model(self, rngs):
                return Means(self.num_classes, self.data_shape, rngs)

            def loss(self, model, batch, rng, step):
                loss = jnp.mean(jnp.square(model.means[...][batch["label"]] - batch[self.field]))
                return loss, {}

            def generate(self, model, batch, rng, **settings):
                out = model.means[...][batch["label"]]
                if "known" in batch:  # a position mask over the data's leading axes
                    known = batch["known"].reshape(batch["known"].shape + (1,) * (out.ndim - batch["known"].ndim))
                    out = jnp.where(known, batch["tokens"], out)
                return {"tokens": out}

        return ClassMeans


@pytest.fixture(scope="module", params=[pytest.param("latents", marks=pytest.mark.slow), "pixels"])
def continuous_run(request, kl_run, tmp_path_factory):
    from maskgen import config as config_lib
    from maskgen import train as train_lib
    from maskgen.recipes.base import _REGISTRY, register

    register(_ClassMeans.NAME)(_ClassMeans.build())
    config = config_lib.base_config()
    config.recipe = _ClassMeans.NAME
    config.total_steps, config.batch_size, config.log_every, config.checkpoint_every = 30, 32, 10, 30
    config.eval_params = "params"
    config.optimizer.update(lr=0.05, warmup_steps=0, weight_decay=0.0)
    if request.param == "latents":
        config.data = dict(name="tokens", data_dir=kl_run["out"], image_size=0, augment="none",
                           train_split="train", read_threads=1)
    else:
        config.data = dict(name="digits", data_dir="", image_size=16, augment="none", train_split="train",
                           read_threads=1, max_upscale=2.0)
    config.model = dict()
    workdir = str(tmp_path_factory.mktemp("continuous") / request.param)
    try:
        train_lib.train(config, workdir)
        yield request.param, workdir
    finally:
        _REGISTRY.pop(_ClassMeans.NAME, None)


def test_continuous_generator_samples_edits_and_evaluates(continuous_run, tmp_path):
    from maskgen import runs
    from maskgen.evaluators.generation import Generation
    from maskgen.generate import GeneratorHandle, edit_to_png, load_image

    kind, workdir = continuous_run
    handle = GeneratorHandle(workdir)
    assert isinstance(handle.decoder, runs.LatentDecoder if kind == "latents" else runs.ImageDecoder)
    data_shape = (8, 8, 4) if kind == "latents" else (16, 16, 1)
    # sample: float data -> images through the decoder
    out = handle.sample([0, 1, 7])
    assert out["tokens"].shape == (3, *data_shape) and out["tokens"].dtype == np.float32
    assert out["images"].shape == (3, 16, 16, 1) and -1 <= out["images"].min() and out["images"].max() <= 1
    np.testing.assert_allclose(out["images"], handle.decoder.decode(out["tokens"])["images"])
    # edit: the image becomes the generator's data through the decoder; known positions come back bit-exact
    image, label = load_image("test:0", handle.decoder)
    data = handle.decoder.encode(image[None])
    assert data.shape == (1, *data_shape)
    mask = np.zeros((16, 16), bool)
    mask[8:] = True  # the bottom half
    token_mask = handle.token_mask(mask)
    assert token_mask.shape == data_shape[:2] and token_mask[-1].all() and not token_mask[0].any()
    filled = handle._fill({**tasks.infill_batch(data, token_mask[None]), "label": np.array([label], np.int32)},
                          0, 0, {})
    np.testing.assert_array_equal(filled[0][~token_mask], data[0][~token_mask])
    means = handle.sample([label])["tokens"][0]
    np.testing.assert_array_equal(filled[0][token_mask], means[token_mask])
    result = edit_to_png(handle, "test:0", "bottom", label, str(tmp_path / "edit.png"),
                         compare_out=str(tmp_path / "compare.png"))
    assert os.path.isfile(tmp_path / "edit.png") and result["edited"].shape == (16, 16, 1)
    # the generation evaluator reads only ctx.decode / ctx.reference
    scores = Generation(num_per_class=3, max_real=60, floor_split="", trajectory_samples=0).run(handle.ctx)
    assert 0.0 <= scores.scalars["class_consistency"] <= 1.0
    assert np.isfinite(scores.scalars["frechet_distance_digits"]) and "samples" in scores.images
