"""The generation evaluator's FID conventions (ADM's evaluator, Dhariwal & Nichol, arXiv 2105.05233):
pixels are rounded to uint8 before any feature network sees them, and ImageNet's reference is ADM's
reference batch (an .npz in its layout), read or recomputed, never silently the validation split.

The generator, decoder and feature networks are stand-ins that record what they are given, so the
evaluator's own plumbing is what is tested (fast: no model is trained or compiled).
"""

import os

import numpy as np
import pytest

from maskgen.config import load_config_file
from maskgen.evaluators import generation as gen_lib
from maskgen.evaluators.base import EvalContext, build_evaluator
from maskgen.perception import adm_reference
from maskgen.perception.frechet import feature_statistics, frechet_distance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, SIZE = 10, 8


def _off_grid_images(seed: int, n: int) -> np.ndarray:
    """Float images in [-1, 1] whose values are (almost surely) between uint8 levels."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def _on_uint8_grid(images: np.ndarray) -> bool:
    if images.dtype == np.uint8:
        return True
    levels = (images.astype(np.float64) + 1.0) * 127.5
    return bool(np.allclose(levels, np.round(levels), atol=1e-3))


class FakeFeatures:
    """A feature network that records its inputs; features are fixed linear maps of the pixels."""

    def __init__(self, dim: int = 4):
        self.seen, self.dim = [], dim
        self.projection = np.random.default_rng(0).normal(size=(SIZE * SIZE * 3, dim))

    def __call__(self, pixels):
        pixels = np.asarray(pixels)
        self.seen.append(pixels)
        floats = gen_lib.as_floats(pixels).reshape(len(pixels), -1)
        return floats @ self.projection


class FakeClassifier:
    def __init__(self):
        self.net, self.accuracy_inputs = FakeFeatures(), []

    def features(self, images):
        return self.net(images)

    def accuracy(self, images, labels):
        self.accuracy_inputs.append(np.asarray(images))
        return 0.5


def _context(calls: list) -> EvalContext:
    def apply(method, params, batch, rng, **settings):
        calls.append(method)
        labels = np.asarray(batch["label"])
        return {"tokens": np.tile(labels[:, None, None], (1, 2, 2))}

    def decode(tokens):
        return {"images": _off_grid_images(int(tokens.sum()) % 1000, len(tokens))}

    def reference(split, limit=None):
        return {"image": _off_grid_images({"test": 1, "train": 2, "validation": 3}[split], 40)}

    return EvalContext(step=0, params=None, apply=apply, init_params=None, batches=None, to_host=lambda x: x,
                       rng=None, info={"num_classes": NUM_CLASSES, "sampling": {}}, shard=lambda b: b,
                       decode=decode, reference=reference)


@pytest.fixture
def fake_classifier(monkeypatch):
    from maskgen.perception import digit_classifier

    classifier = FakeClassifier()
    monkeypatch.setattr(digit_classifier, "get_digit_classifier", lambda cache_dir=None: classifier)
    return classifier


@pytest.fixture
def fake_inception(monkeypatch):
    from maskgen.perception import inception

    net = FakeFeatures(dim=6)

    class FakeInception:
        @classmethod
        def from_file(cls, path, **kwargs):
            return type("Net", (), {"features": staticmethod(net)})()

    monkeypatch.setattr(inception, "InceptionFeatures", FakeInception)
    return net


@pytest.mark.parametrize("uint8", [True, False])
def test_digit_features_and_classifier_see_uint8_pixels(fake_classifier, uint8):
    evaluator = gen_lib.Generation(num_per_class=3, batch_size=16, trajectory_samples=0, uint8=uint8)
    scalars = evaluator.run(_context([])).scalars
    seen = fake_classifier.net.seen + fake_classifier.accuracy_inputs
    assert len(seen) == 4  # samples, real split, floor split; accuracy on the samples
    assert all(_on_uint8_grid(x) for x in seen) == uint8
    # The Fréchet distance is that of the rounded pixels' features, by hand.
    net = FakeFeatures()
    sample_pixels = gen_lib.as_pixels(_context([]).decode(np.tile(
        np.tile(np.arange(NUM_CLASSES), 3)[:, None, None], (1, 2, 2)))["images"], uint8)
    real_pixels = gen_lib.as_pixels(_off_grid_images(1, 40), uint8)
    expected = frechet_distance(*feature_statistics(net(sample_pixels)), *feature_statistics(net(real_pixels)))
    assert scalars["frechet_distance_digits"] == pytest.approx(expected, rel=1e-9)


def test_uint8_rounding_is_to_the_nearest_level():
    images = np.array([-1.0, -0.999, 1 / 255 - 1.0 + 1e-4, 0.0, 0.999, 1.0, 1.7, -3.0], np.float32).reshape(1, 8, 1, 1)
    pixels = gen_lib.as_pixels(images, True)
    # (x + 1) * 127.5 = 0, 0.1275, 0.5100, 127.5, 254.87, 255, clipped, clipped.
    assert pixels.dtype == np.uint8 and pixels.ravel().tolist() == [0, 0, 1, 128, 255, 255, 255, 0]
    np.testing.assert_array_equal(gen_lib.as_floats(pixels).ravel(), pixels.ravel() / np.float32(127.5) - 1)


def _adm_batch(path, *, with_stats: bool, n: int = 30, mu=None, sigma=None):
    images = np.random.default_rng(5).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    arrays = {"arr_0": images}
    if with_stats:
        arrays.update(mu=mu, sigma=sigma, mu_s=np.zeros(3), sigma_s=np.eye(3))
    np.savez(path, **arrays)
    return images


def _inception_evaluator(**kwargs):
    return gen_lib.Generation(num_per_class=2, batch_size=20, classifier="", feature_net="inception",
                              inception_weights="fake.npz", trajectory_samples=0, **kwargs)


def test_adm_reference_statistics_from_the_file(tmp_path, fake_inception):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    mu, sigma = rng.normal(size=6), a @ a.T + np.eye(6)
    path = tmp_path / "VIRTUAL_ref.npz"
    _adm_batch(path, with_stats=True, mu=mu, sigma=sigma)
    calls = []
    scalars = _inception_evaluator(reference="adm", adm_reference=str(path)).run(_context(calls)).scalars
    assert list(scalars) == ["fid_inception_adm_ref"]
    assert len(fake_inception.seen) == 1 and fake_inception.seen[0].dtype == np.uint8  # samples only, as uint8
    expected = frechet_distance(*feature_statistics(fake_inception(fake_inception.seen[0])), mu, sigma)
    assert scalars["fid_inception_adm_ref"] == pytest.approx(expected, rel=1e-9)
    # Older configs' reference_stats is the same comparison.
    old = _inception_evaluator(reference_stats=str(path)).run(_context([])).scalars
    assert old == pytest.approx(scalars, rel=1e-12)


@pytest.mark.parametrize("with_stats,statistics", [(False, "auto"), (True, "images")])
def test_adm_reference_statistics_from_its_images(tmp_path, fake_inception, with_stats, statistics):
    path = tmp_path / "ref.npz"
    images = _adm_batch(path, with_stats=with_stats, mu=np.zeros(6), sigma=np.eye(6))
    scalars = _inception_evaluator(reference="adm", adm_reference=str(path),
                                   adm_statistics=statistics).run(_context([])).scalars
    samples, reference = fake_inception.seen[0], fake_inception.seen[1]
    np.testing.assert_array_equal(reference, images)  # arr_0 itself, uint8, through the user's network
    assert samples.dtype == np.uint8
    expected = frechet_distance(*feature_statistics(fake_inception(samples)),
                                *feature_statistics(fake_inception(images)))
    assert scalars == {"fid_inception_adm_images": pytest.approx(expected, rel=1e-9)}


def test_split_reference_rounds_the_real_images_too(fake_inception):
    scalars = _inception_evaluator(reference="split", real_split="validation").run(_context([])).scalars
    assert list(scalars) == ["fid_inception"]
    assert [x.dtype for x in fake_inception.seen] == [np.uint8, np.uint8]


def test_imagenet_config_needs_the_adm_reference_before_sampling(fake_inception):
    config = load_config_file(f"{REPO}/experiments/maskgit_imagenet256.py:size=tiny")
    spec = config.evals.fid.to_dict()
    assert spec["reference"] == "adm" and spec["adm_reference"] == "" and spec["uint8"] is True
    spec["inception_weights"] = "fake.npz"
    calls = []
    with pytest.raises(ValueError, match=r"adm_reference=.*VIRTUAL_imagenet256_labeled\.npz"):
        build_evaluator("fid", spec).run(_context(calls))
    assert calls == []  # nothing was sampled
    spec["adm_reference"] = "/nonexistent/VIRTUAL_imagenet256_labeled.npz"
    with pytest.raises(FileNotFoundError, match="adm_reference '/nonexistent/.*' not found"):
        build_evaluator("fid", spec).run(_context(calls))
    assert calls == []


@pytest.mark.parametrize("arrays,problem", [
    ({"mu": np.zeros(6), "sigma": np.eye(6)}, "no 'arr_0'"),
    ({"arr_0": np.zeros((4, SIZE, SIZE, 3), np.float32)}, "must be uint8 images"),
    ({"arr_0": np.zeros((4, SIZE, SIZE), np.uint8)}, "must be uint8 images"),
])
def test_bad_adm_batches_name_the_problem(tmp_path, fake_inception, arrays, problem):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=problem):
        _inception_evaluator(reference="adm", adm_reference=str(path), adm_statistics="images").run(_context([]))


def test_adm_batch_without_statistics_is_refused_when_they_are_asked_for(tmp_path, fake_inception):
    path = tmp_path / "images_only.npz"
    _adm_batch(path, with_stats=False)
    with pytest.raises(ValueError, match="no 'mu' or 'sigma' statistics.*statistics='images'"):
        adm_reference.reference_statistics(str(path), fake_inception, "file")


def test_bad_reference_settings_are_refused():
    with pytest.raises(ValueError, match="needs feature_net='inception'"):
        gen_lib.Generation(reference="adm", adm_reference="x.npz")
    with pytest.raises(ValueError, match="adm_statistics"):
        gen_lib.Generation(feature_net="inception", reference="adm", adm_statistics="tf")
    with pytest.raises(FileNotFoundError, match="guided-diffusion"):
        adm_reference.reference_statistics("/nonexistent/ref.npz", None, "file")


def test_frontier_benchmark_pareto_and_point_syntax():
    from benchmarks.maskgit_frontier import parse_point, pareto

    # (distance, consistency): lower distance and higher consistency are better.
    points = [(10.0, 0.99), (8.0, 0.97), (9.0, 0.96), (8.0, 0.97), (12.0, 0.995), (7.0, 0.90), (11.0, 0.98)]
    assert pareto(points) == [True, True, False, True, True, True, False]
    assert parse_point("ct=18,t=1.2,cfg=2:linear,ts=linear") == dict(
        choice_temperature=18.0, temperature=1.2, cfg_scale=2.0, cfg_schedule="linear", temperature_schedule="linear")
    assert parse_point("policy=random,cfg=0.5,steps=12") == dict(policy="random", cfg_scale=0.5,
                                                                 cfg_schedule="constant", num_steps=12)
    with pytest.raises(ValueError, match="bad point item 'choice=3'"):
        parse_point("choice=3")
