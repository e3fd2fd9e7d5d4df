"""Fréchet distance between Gaussians fitted to feature sets: the FID formula (Heusel et al., arXiv 1706.08500).

    d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2))

computed as in the reference FID code (TTUR / pytorch-fid / ADM's evaluator, Dhariwal & Nichol,
arXiv 2105.05233): float64 statistics with the unbiased covariance (`np.cov(rowvar=False)`),
`scipy.linalg.sqrtm` of the product, `eps * I` added to both covariances when the square root of
the (singular) product comes out non-finite, and a negligible imaginary part dropped (a large one
is an error). Which network produces the features (Inception-v3 for FID proper, the digit
classifier for the digits stand-in) is the caller's choice; the number is only comparable between
runs that use the same features and the same reference set.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from scipy import linalg

REFERENCE_KEYS = ("mu", "sigma")


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of `features` [N, D], N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _check_statistics(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.atleast_1d(np.asarray(mu, np.float64)), np.atleast_2d(np.asarray(sigma, np.float64))
    if mu.ndim != 1:
        raise ValueError(f"{name}: mean must be a vector [D], got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: covariance must be [D, D] = {(mu.shape[0],) * 2} to match the mean, "
                         f"got {sigma.shape}")
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (squared, as FID reports it).

    Raises ValueError on mismatched shapes, or if sqrtm(sigma1 sigma2) has an imaginary part above
    1e-3 on its diagonal (the reference code's tolerance); smaller imaginary parts are dropped.
    """
    mu1, sigma1 = _check_statistics(mu1, sigma1, "first distribution")
    mu2, sigma2 = _check_statistics(mu2, sigma2, "second distribution")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: singular product of covariances; adding {eps} to their diagonals")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm has a large imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def load_reference_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) as float64 from an ADM-style reference batch `.npz` (keys `mu`, `sigma`; others ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference statistics file {path!r} not found")
    with np.load(path) as data:
        missing = [key for key in REFERENCE_KEYS if key not in data.files]
        if missing:
            raise ValueError(f"{path!r} has no {' or '.join(repr(k) for k in missing)} array; "
                             f"it holds {sorted(data.files)}")
        mu, sigma = data["mu"], data["sigma"]
    return _check_statistics(mu, sigma, path)
