"""FID InceptionV3: weight loading and its errors, features on random weights, FID helpers, and (when
torch and pytorch-fid are installed) equivalence with pytorch-fid's network on the same random weights.

No real weights exist here, so every test uses `random_state_dict`, written in torch names and
layouts exactly as a converted pytorch-fid file would be.
"""

import sys

import jax
import numpy as np
import pytest

from maskgen.perception import inception
from maskgen.perception.frechet import feature_statistics, frechet_distance
from maskgen.perception.inception import (FEATURE_DIM, InceptionFeatures, expected_state_dict_shapes,
                                          fid_from_features, fid_metric_name, params_from_state_dict,
                                          random_state_dict)


def _images(seed: int, n: int = 2, size: int = 32, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, channels)).astype(np.float32)


@pytest.fixture(scope="module")
def weights_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "fid_inception_random.npz"
    np.savez(path, **random_state_dict(0, include_fc=True))  # fc present, as in the real file: ignored.
    return path


@pytest.fixture(scope="module")
def model(weights_npz):
    # One model for the module: each new input shape costs a ~4 s compilation on CPU.
    return InceptionFeatures.from_file(weights_npz, batch_size=2)


def test_expected_shapes_follow_the_torch_layout():
    shapes = expected_state_dict_shapes()
    assert len(shapes) == 94 * 5  # 94 BasicConv2d: conv.weight and four BatchNorm tensors each.
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)  # OIHW.
    assert shapes["Conv2d_1a_3x3.bn.running_var"] == (32,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_7b.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert not any(name.startswith("fc.") for name in shapes)


def test_features_from_npz(model):
    images = _images(1)
    features = model.features(images)
    assert features.shape == (2, FEATURE_DIM) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert (features >= 0).all() and features.max() > 0  # Averages of ReLU outputs, not all zero.
    assert not np.allclose(features[0], features[1])
    np.testing.assert_array_equal(model.features(images), features)  # Deterministic.
    # uint8 [0, 255] inputs are mapped to [-1, 1] (same compiled shape).
    as_uint8 = np.round((images + 1) * 127.5).astype(np.uint8)
    np.testing.assert_allclose(model.features(as_uint8), model.features(as_uint8 / np.float32(127.5) - 1),
                               rtol=1e-6, atol=1e-6)


def test_chunks_pad_the_last_batch(model):
    images = _images(2, n=3)
    features = model.features(images)  # Chunks of 2: the second is padded to 2, the same compiled shape.
    assert features.shape == (3, FEATURE_DIM)
    np.testing.assert_allclose(features[:2], model.features(images[:2]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features[2:], model.features(images[[2, 0]])[:1], rtol=1e-5, atol=1e-5)
    assert model.features(images[:0]).shape == (0, FEATURE_DIM)


def test_grey_images_are_repeated_to_rgb(model):
    grey = _images(3, channels=1)
    np.testing.assert_allclose(model.features(grey), model.features(np.repeat(grey, 3, axis=-1)),
                               rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_rejected(model):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.features(_images(4) * 127.5 + 127.5)  # [0, 255] floats.
    with pytest.raises(ValueError, match="1 or 3"):
        model.features(_images(4, channels=4))


@pytest.fixture(scope="module")
def state_dict():
    return random_state_dict(1)


@pytest.mark.parametrize("problem", ["missing", "misshaped", "unexpected"])
def test_bad_state_dict_names_the_key(state_dict, problem):
    state = dict(state_dict)
    key = "Mixed_6c.branch7x7dbl_3.conv.weight"
    if problem == "missing":
        del state[key]
        expected = rf"missing keys: {key} \(160, 160, 1, 7\)"
    elif problem == "misshaped":
        state[key] = state[key].transpose(0, 1, 3, 2)  # HW swapped: (160, 160, 7, 1).
        expected = rf"{key} is \(160, 160, 7, 1\), expected \(160, 160, 1, 7\)"
    else:
        key = "AuxLogits.conv0.conv.weight"
        state[key] = np.zeros((128, 768, 1, 1), np.float32)
        expected = key
    with pytest.raises(ValueError, match=expected):
        params_from_state_dict(state)


def test_bad_weights_file_names_the_key(tmp_path, state_dict):
    # From a file too, with the file named: a small (truncated) state_dict keeps the test fast.
    path = tmp_path / "weights.npz"
    np.savez(path, **{k: v for k, v in list(state_dict.items())[:20] if k != "Conv2d_1a_3x3.conv.weight"})
    with pytest.raises(ValueError, match=r"weights\.npz.*missing keys: .*Conv2d_1a_3x3\.conv\.weight \(32, 3, 3, 3\)"):
        InceptionFeatures.from_file(path)


def test_pth_without_torch_says_how_to_convert(tmp_path, monkeypatch):
    path = tmp_path / "pt_inception.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError.
    with pytest.raises(ImportError, match="maskgen.perception.inception convert"):
        InceptionFeatures.from_file(path)
    assert inception.main(["convert", str(path), str(tmp_path / "out.npz")]) == 1


def test_convert_cli_keeps_names_and_layouts(tmp_path, weights_npz, capsys):
    out = tmp_path / "converted.npz"
    assert inception.main(["convert", str(weights_npz), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with np.load(weights_npz) as a, np.load(out) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_fid_against_features_and_adm_reference(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 8))
    other = rng.normal(0.3, 1.2, size=(150, 8))
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-6)
    direct = frechet_distance(*feature_statistics(features), *feature_statistics(other))
    assert fid_from_features(features, other) == pytest.approx(direct, rel=1e-12)
    assert direct > 0.1

    reference = tmp_path / "VIRTUAL_ref_batch.npz"  # ADM's layout: mu and sigma, other arrays ignored.
    mu, sigma = feature_statistics(other)
    np.savez(reference, mu=mu, sigma=sigma, arr_0=np.zeros((1, 4, 4, 3), np.uint8))
    assert fid_from_features(features, str(reference)) == pytest.approx(direct, rel=1e-12)
    assert fid_from_features(features, reference) == pytest.approx(direct, rel=1e-12)

    assert fid_metric_name(other) == "fid_inception"
    assert fid_metric_name(str(reference)) == fid_metric_name(reference) == "fid_inception_adm_ref"


def test_matches_pytorch_fid_on_random_weights(tmp_path, monkeypatch):
    """Optional: pytorch-fid's own InceptionV3 (resize, 2x-1, blocks 0-3) with our random weights.

    pytorch-fid downloads its weights inside `fid_inception_v3`; the download function is replaced
    by one returning the random state_dict, which `load_state_dict` checks strictly, so names and
    shapes must agree exactly with pytorch-fid's module tree.
    """
    torch = pytest.importorskip("torch")
    pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
    state = random_state_dict(7, include_fc=True)
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url",
                        lambda *a, **k: {name: torch.from_numpy(v) for name, v in state.items()})
    reference = pytorch_fid_inception.InceptionV3([3]).eval()

    # Upsampled non-square, exactly 299 (no resize), and downsampled (no antialiasing) inputs.
    rng = np.random.default_rng(3)
    shapes = [(2, 37, 45), (1, 299, 299), (1, 340, 320)]
    inputs = [rng.uniform(-1, 1, (n, h, w, 3)).astype(np.float32) for n, h, w in shapes]
    with torch.no_grad():
        expected = [reference(torch.from_numpy((x + 1) / 2).permute(0, 3, 1, 2))[0][:, :, 0, 0].numpy()
                    for x in inputs]

    # Load through a .pth of the torch network's own state_dict (as pytorch-fid's file: with fc,
    # and here with the num_batches_tracked counters newer torch adds), and through its conversion.
    pth, npz = tmp_path / "pt_inception_random.pth", tmp_path / "converted.npz"
    torch.save(pytorch_fid_inception.fid_inception_v3().state_dict(), pth)
    assert inception.main(["convert", str(pth), str(npz)]) == 0
    ours = InceptionFeatures.from_file(pth)
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(InceptionFeatures.from_file(npz).params)):
        np.testing.assert_array_equal(a, b)
    for x, want in zip(inputs, expected):
        got = ours.features(x)
        scale, diff = np.abs(want).max(), np.abs(got - want)
        large = np.abs(want) > 1e-2 * scale
        print(f"input {x.shape}: max |feature| {scale:.3g}, max abs diff {diff.max():.3g}, max relative diff "
              f"{(diff[large] / np.abs(want[large])).max():.3g} (features > 1% of max)")
        # Observed on x86 CPU: max abs diff ~1e-5 for features up to ~20 (float32 rounding in 94 layers).
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
