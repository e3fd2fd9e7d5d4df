"""Fréchet distance (FID formula): hand-worked values, invariants, and a direct eigen-decomposition check."""

import math

import numpy as np
import pytest

from maskgen.perception.frechet import feature_statistics, frechet_distance, load_reference_statistics


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _psd_sqrt(m):
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet_by_eigh(mu1, s1, mu2, s2):
    """Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix: eigenvalues only."""
    r = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(r @ s2 @ r)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(eig, 0, None))))


def test_diagonal_covariances_by_hand():
    # S1 = diag(4, 9), S2 = diag(1, 16): sqrt(S1 S2) = diag(2, 12), trace 14.
    # ||(1, 2) - (4, -2)||^2 = 9 + 16 = 25;  Tr S1 + Tr S2 = 13 + 17 = 30.
    expected = 25 + 30 - 2 * 14
    got = frechet_distance(np.array([1.0, 2.0]), np.diag([4.0, 9.0]), np.array([4.0, -2.0]), np.diag([1.0, 16.0]))
    assert got == pytest.approx(expected, abs=1e-9)
    assert expected == 27


def test_commuting_non_diagonal_covariances_by_hand():
    # Both are functions of A = [[2, 1], [1, 2]] (eigenvalues 3 and 1): S1 = A, S2 = A^2.
    # S1 S2 = A^3 has eigenvalues 27 and 1, so Tr sqrt(S1 S2) = sqrt(27) + 1.
    # Tr S1 = 4, Tr S2 = Tr A^2 = 9 + 1 = 10, equal means.
    a = np.array([[2.0, 1.0], [1.0, 2.0]])
    expected = 4 + 10 - 2 * (math.sqrt(27) + 1)
    mu = np.array([0.5, -1.0])
    assert frechet_distance(mu, a, mu, a @ a) == pytest.approx(expected, abs=1e-9)


def test_identical_distributions_give_zero_and_distance_is_symmetric():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 8)), rng.normal(size=(300, 8)) * 1.5 + 0.3
    mx, sx = feature_statistics(x)
    my, sy = feature_statistics(y)
    assert frechet_distance(mx, sx, mx, sx) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mx, sx, my, sy) == pytest.approx(frechet_distance(my, sy, mx, sx), rel=1e-9)
    assert frechet_distance(mx, sx, my, sy) > 0.5


def test_translation_adds_squared_norm():
    rng = np.random.default_rng(1)
    mu1, mu2, s1, s2 = rng.normal(size=5), rng.normal(size=5), _random_spd(rng, 5), _random_spd(rng, 5)
    d = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    base = frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1 + d, s1, mu2, s2) - base == pytest.approx(
        float(d @ d) + 2 * float(d @ (mu1 - mu2)), rel=1e-9)
    # Translating both leaves it unchanged; translating one of two equal-mean ones adds exactly ||d||^2.
    assert frechet_distance(mu1 + d, s1, mu2 + d, s2) == pytest.approx(base, rel=1e-9)
    shifted = frechet_distance(mu1 + d, s1, mu1, s2) - frechet_distance(mu1, s1, mu1, s2)
    assert shifted == pytest.approx(float(d @ d), rel=1e-9)


@pytest.mark.parametrize("d", [1, 3, 16, 64])
def test_agrees_with_eigendecomposition(d):
    rng = np.random.default_rng(d)
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _random_spd(rng, d), _random_spd(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_frechet_by_eigh(mu1, s1, mu2, s2), rel=1e-8, abs=1e-8)


def test_feature_statistics_match_numpy_unbiased():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]], np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [3.0, 2.0])
    # Deviations (-2, 0), (0, -2), (2, 2): sums of products / (N - 1 = 2).
    np.testing.assert_allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(x[:1])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        feature_statistics(x[0])


def test_rank_deficient_covariances_stay_finite():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(10, 32))  # N < D: singular covariances.
    value = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert np.isfinite(value)


def test_shape_errors():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"covariance must be \[D, D\]"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="mean must be a vector"):
        frechet_distance(np.zeros((2, 2)), np.eye(2), np.zeros(2), np.eye(2))


def test_load_reference_statistics(tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = rng.normal(size=4).astype(np.float32), _random_spd(rng, 4)
    path = str(tmp_path / "ref.npz")
    np.savez(path, mu=mu, sigma=sigma, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    got_mu, got_sigma = load_reference_statistics(path)
    assert got_mu.dtype == np.float64
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)

    bad = str(tmp_path / "bad.npz")
    np.savez(bad, mu=mu, arr_0=np.zeros(1))
    with pytest.raises(ValueError, match="'sigma'"):
        load_reference_statistics(bad)
    with pytest.raises(FileNotFoundError):
        load_reference_statistics(str(tmp_path / "missing.npz"))
