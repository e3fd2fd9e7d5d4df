"""Reconstruction evaluator: PSNR and code statistics by hand, the digit classifier, an end-to-end fake run."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgen.data import make_source
from maskgen.data.pipeline import eval_batches
from maskgen.evaluators import build_evaluator
from maskgen.evaluators.base import EvalContext
from maskgen.perception.frechet import feature_statistics, frechet_distance
from maskgen.evaluators.reconstruction import PSNR_CAP_DB, code_histogram, code_histogram_stats, histogram_stats, psnr


# ---------------------------------------------------------------------------------------------
# Helpers, by hand.
# ---------------------------------------------------------------------------------------------
def test_psnr_by_hand():
    x = np.zeros((2, 2, 2, 1))
    y = x.copy()
    y[0] += 0.2  # MSE 0.04 -> 10 log10(4 / 0.04) = 20 dB.
    y[1, 0, 0, 0] = 2.0  # MSE 4 / 4 = 1 -> 10 log10(4) dB.
    np.testing.assert_allclose(psnr(x, y), [20.0, 10 * math.log10(4.0)], rtol=1e-12)
    np.testing.assert_allclose(psnr(x, y, data_range=1.0), [10 * math.log10(25.0), 0.0], atol=1e-12)
    # Identical images: infinite PSNR, reported as the cap.
    assert psnr(x, x).tolist() == [PSNR_CAP_DB, PSNR_CAP_DB]
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, y[:1])


def test_code_stats_by_hand():
    usage, perplexity = code_histogram_stats(np.array([0, 0, 1, 3]), 4)
    assert usage == 0.75
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert perplexity == pytest.approx(math.exp(entropy), rel=1e-12)
    # Uniform use of all codes: perplexity = codebook size.
    assert code_histogram_stats(np.arange(8).reshape(2, 2, 2), 8) == pytest.approx((1.0, 8.0))
    # Residual levels on the last axis: level 0 uses {0, 1}, level 1 only {2}.
    codes = np.array([[[0, 2], [1, 2]]])  # [B=1, n=2, K=2]
    np.testing.assert_array_equal(code_histogram(codes, 4, per_level=True), [[1, 1, 0, 0], [0, 0, 2, 0]])
    usage, perplexity = histogram_stats(code_histogram(codes, 4, per_level=True))
    np.testing.assert_allclose(usage, [0.5, 0.25])
    np.testing.assert_allclose(perplexity, [2.0, 1.0])
    assert code_histogram_stats(codes, 4, per_level=True) == pytest.approx((0.375, 1.5))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        code_histogram(np.array([0, 4]), 4)


# ---------------------------------------------------------------------------------------------
# The digit classifier (trained once per test session into a temporary cache).
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("maskgen_cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKGEN_CACHE", cache)
        yield cache


@pytest.fixture(scope="module")
def classifier(classifier_cache):
    from maskgen.perception.digit_classifier import get_digit_classifier

    return get_digit_classifier(None)


@pytest.fixture(scope="module")
def digits():
    from maskgen.perception.digit_classifier import load_digits_split

    return {split: load_digits_split(split) for split in ("train", "test")}


def test_classifier_accuracy_and_cache(classifier, classifier_cache, digits):
    from maskgen.perception.digit_classifier import (FEATURE_DIM, get_digit_classifier, load_digit_classifier,
                                                     load_digits_split)

    assert classifier.test_accuracy >= 0.97
    assert classifier.accuracy(*digits["test"]) == pytest.approx(classifier.test_accuracy)
    assert get_digit_classifier(None) is classifier  # In-process cache.
    with open(os.path.join(classifier_cache, "digit_classifier_v1.json")) as f:
        assert json.load(f)["test_accuracy"] == pytest.approx(classifier.test_accuracy)
    reloaded = load_digit_classifier(classifier_cache)  # From the msgpack file.
    images = digits["test"][0][:32]
    np.testing.assert_array_equal(np.asarray(reloaded.features(images)), np.asarray(classifier.features(images)))
    assert reloaded.test_accuracy == classifier.test_accuracy
    assert classifier.features(images).shape == (32, FEATURE_DIM)
    assert classifier.logits(images).shape == (32, 10)
    # Any size and RGB: the native 8x8 digits are classified as well, and gray RGB is the same image.
    small, labels = load_digits_split("test", image_size=8)
    assert classifier.accuracy(small, labels) >= 0.97
    rgb = np.repeat(images, 3, axis=-1)
    np.testing.assert_allclose(classifier.features(rgb), classifier.features(images), atol=1e-5)


def test_unreadable_or_stale_cache_is_ignored(tmp_path):
    from maskgen.perception.digit_classifier import FILE_STEM, load_digit_classifier, training_settings

    assert load_digit_classifier(str(tmp_path)) is None
    (tmp_path / f"{FILE_STEM}.json").write_text(json.dumps(training_settings()))
    (tmp_path / f"{FILE_STEM}.msgpack").write_bytes(b"garbage")
    assert load_digit_classifier(str(tmp_path)) is None
    (tmp_path / f"{FILE_STEM}.json").write_text(json.dumps({**training_settings(), "steps": 1}))
    assert load_digit_classifier(str(tmp_path)) is None


def test_classifier_frechet_separates_real_from_degraded(classifier, digits):
    train, test = digits["train"][0], digits["test"][0]
    rng = np.random.default_rng(0)
    noisy = np.clip(test + rng.normal(scale=0.5, size=test.shape), -1, 1).astype(np.float32)
    blurred = np.asarray(jax.image.resize(jax.image.resize(jnp.asarray(test), (len(test), 4, 4, 1), "bilinear"),
                                          test.shape, "bilinear"))

    def fd(a, b):
        return frechet_distance(*feature_statistics(np.asarray(classifier.features(a))),
                                *feature_statistics(np.asarray(classifier.features(b))))

    real = fd(train, test)
    assert fd(test, noisy) > 5 * real
    assert fd(test, blurred) > 5 * real


# ---------------------------------------------------------------------------------------------
# The evaluator end to end on a hand-built context.
# ---------------------------------------------------------------------------------------------
CODEBOOK_SIZE = 32


def _fake_codes(images, levels):
    """Codes [B, 4, 4] (or [B, 4, 4, 2]) in [0, 16) from 4x4 patch means, a fixed function of the image."""
    b = images.shape[0]
    means = images.reshape(b, 4, 4, 4, 4).mean(axis=(2, 4))
    codes = jnp.clip(jnp.floor((means + 1) * 8), 0, 15).astype(jnp.int32)
    return codes if levels == 1 else jnp.stack([codes, codes // 2], axis=-1)


def _fake_context(noise: float, levels: int = 1, batch_size: int = 100):
    source = make_source("digits", "test")

    def apply(method, params, batch, rng):
        assert method == "reconstruct"
        image = batch["image"]
        recon = image + params["noise"] * jax.random.normal(rng, image.shape)
        return {"reconstruction": recon, "codes": _fake_codes(image, levels)}

    def batches(split, limit=None):
        assert split == "test"
        for local, valid in eval_batches(source, global_batch_size=batch_size, image_size=16, limit=limit):
            yield jax.tree.map(jnp.asarray, local), valid

    return EvalContext(step=0, params={"noise": jnp.float32(noise)}, apply=apply, init_params=lambda seed: None,
                       batches=batches, to_host=jax.device_get, rng=jax.random.key(0),
                       info={"codebook_size": CODEBOOK_SIZE})


def _run(ctx, **args):
    return build_evaluator("recon", {"type": "reconstruction", "every": 0, **args}).run(ctx)


def test_evaluator_identity_and_noisy(classifier, digits):
    identity = _run(_fake_context(0.0))
    s = identity.scalars
    assert s["mse"] == 0.0 and s["psnr"] == PSNR_CAP_DB
    assert abs(s["frechet_distance_digits"]) < 1e-3
    # Code statistics over the whole split (359 images, padded batches of 100) equal the direct ones.
    test_images = digits["test"][0]
    usage, perplexity = code_histogram_stats(np.asarray(_fake_codes(jnp.asarray(test_images), 1)), CODEBOOK_SIZE)
    assert s["codebook_usage"] == pytest.approx(usage) and s["perplexity"] == pytest.approx(perplexity)
    assert 0 < usage <= 0.5
    grid = identity.images["grid"]
    assert grid.dtype == np.uint8 and grid.shape == (2 * (64 + 1) + 1, 16 * (64 + 1) + 1, 1)

    noisy = _run(_fake_context(0.3)).scalars
    assert 10 < noisy["psnr"] < 25 and noisy["mse"] > 0.01
    assert noisy["frechet_distance_digits"] > 100 * max(abs(s["frechet_distance_digits"]), 1e-3)
    assert noisy["codebook_usage"] == s["codebook_usage"]  # Codes come from the inputs only.


def test_evaluator_residual_levels_limits_and_options():
    result = _run(_fake_context(0.1, levels=2), max_examples=150, num_grid=4, frechet=False)
    s = result.scalars
    assert "frechet_distance_digits" not in s
    assert s["codebook_usage"] == pytest.approx((s["codebook_usage_level0"] + s["codebook_usage_level1"]) / 2)
    assert s["perplexity"] == pytest.approx((s["perplexity_level0"] + s["perplexity_level1"]) / 2)
    assert result.images["grid"].shape[1] == 4 * (64 + 1) + 1
    with pytest.raises(ValueError, match="valid: \\['digit_classifier'\\]"):
        _run(_fake_context(0.0), feature_net="inception")
    ctx = _fake_context(0.0)
    ctx.info = {}
    with pytest.raises(ValueError, match="codebook_size"):
        _run(ctx, frechet=False)
