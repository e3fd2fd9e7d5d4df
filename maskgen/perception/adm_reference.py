"""ADM's reference batches: the FID reference most ImageNet generators report against.

ADM (Dhariwal & Nichol, arXiv 2105.05233) published, with its evaluator
(openai/guided-diffusion, `evaluations/evaluator.py` and `evaluations/README.md`), one reference
batch per dataset, e.g. `VIRTUAL_imagenet256_labeled.npz` for ImageNet 256x256. Its layout:

  arr_0          uint8 [N, H, W, 3]  reference images (10,000 for ImageNet), in [0, 255]
  mu, sigma      float [2048], [2048, 2048]  pool_3 statistics over the whole dataset
  mu_s, sigma_s  the same for the spatial features of sFID (not used by maskgen)

ADM's evaluator uses `mu`/`sigma` when the file has them and otherwise computes the statistics from
the Inception features of `arr_0` (`Evaluator.read_statistics`). The precomputed statistics come
from the TF Inception graph; maskgen's network is pytorch-fid's port, which resizes differently,
so `statistics="images"` recomputes them from `arr_0` with the user's weights (same network on
both sides, but only the file's N images instead of the whole dataset). Images are uint8 on both
sides in ADM's pipeline: generated samples are written to `.npz`/PNG as uint8 before features.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from maskgen.perception.frechet import REFERENCE_KEYS, _check_statistics, feature_statistics

STATISTICS = ("auto", "file", "images")
IMAGES_KEY = "arr_0"
SOURCE_URL = ("openai/guided-diffusion, evaluations/README.md (ImageNet 256x256 reference batch: "
              "VIRTUAL_imagenet256_labeled.npz)")


def _open(path: str):
    if not path:
        raise ValueError("no ADM reference batch given: pass the path of an .npz in ADM's layout "
                         f"(arr_0 uint8 images, mu/sigma), from {SOURCE_URL}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ADM reference batch {path!r} not found (it comes from {SOURCE_URL})")
    return np.load(path)


def read_reference_images(path: str) -> np.ndarray:
    """`arr_0` of an ADM reference batch, checked: uint8 [N >= 2, H, W, 3]."""
    with _open(path) as data:
        if IMAGES_KEY not in data.files:
            raise ValueError(f"ADM reference batch {path!r} has no {IMAGES_KEY!r} images; it holds {sorted(data.files)}")
        images = data[IMAGES_KEY]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 2:
        raise ValueError(f"ADM reference batch {path!r}: {IMAGES_KEY} must be uint8 images [N >= 2, H, W, 3] in "
                         f"[0, 255], got {images.dtype} of shape {images.shape}")
    return images


def has_statistics(path: str) -> bool:
    with _open(path) as data:
        return all(key in data.files for key in REFERENCE_KEYS)


def reference_statistics(path: str, features: Callable[[np.ndarray], np.ndarray],
                         statistics: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, source) of an ADM reference batch; source is "file" or "images".

    statistics: "file" uses the precomputed `mu`/`sigma` (an error if absent); "images" computes
    them from `features(arr_0)` (uint8 images in, float features [N, D] out); "auto" is ADM's
    rule: the file's statistics when present, else the images'.
    """
    if statistics not in STATISTICS:
        raise ValueError(f"unknown ADM reference statistics {statistics!r}; valid: {STATISTICS}")
    use_file = statistics == "file" or (statistics == "auto" and has_statistics(path))
    if use_file:
        with _open(path) as data:
            missing = [key for key in REFERENCE_KEYS if key not in data.files]
            if missing:
                raise ValueError(f"ADM reference batch {path!r} has no {' or '.join(map(repr, missing))} statistics "
                                 f"(it holds {sorted(data.files)}); use statistics='images' to compute them "
                                 f"from {IMAGES_KEY}")
            mu, sigma = _check_statistics(data["mu"], data["sigma"], path)
        return mu, sigma, "file"
    mu, sigma = feature_statistics(features(read_reference_images(path)))
    return mu, sigma, "images"


__all__ = ["STATISTICS", "SOURCE_URL", "read_reference_images", "has_statistics", "reference_statistics"]
