"""Reconstruction quality of a tokenizer (an autoencoder with discrete codes) on a held-out split.

The recipe's `reconstruct(model, batch, rng)` returns {"reconstruction": float [B, H, W, C] in
[-1, 1], "codes": int [B, h, w], or [B, h, w, K] for K residual-quantisation levels (float latents
for a continuous bottleneck, info()["continuous"]: no codebook statistics then)}. Over the
split this evaluator reports:

- `mse` and `psnr`: on [-1, 1] images after clipping the reconstruction to [-1, 1]; PSNR is
  10 log10(2^2 / MSE_i) per image (data range 2), capped at `PSNR_CAP_DB` (a perfect
  reconstruction has infinite PSNR), then averaged over images. `mse` is the mean over all pixels.
- `codebook_usage`: the fraction of the `info["codebook_size"]` codes used at least once, and
  `perplexity`: exp(entropy) of the code histogram (natural log), the usual codebook-collapse
  monitors for VQ-VAE-style quantisers (van den Oord et al., arXiv 1711.00937). With residual
  levels (codes [B, h, w, K]) both are averaged over levels and also reported per level
  (`codebook_usage_level{k}`, `perplexity_level{k}`).
- `frechet_distance_digits`: the Fréchet distance (FID formula, Heusel et al., arXiv 1706.08500)
  between the features of the real images and of their reconstructions under maskgen's digit
  classifier (`digit_classifier.py`). It stands in for rFID on the digits data; it is not Inception
  rFID and means little on other images.
- image `grid`: the first `num_grid` originals (top row) above their reconstructions.
"""

from __future__ import annotations

import jax
import numpy as np

from maskgen.config import boolean, integer, or_none
from maskgen.evaluators.base import EvalContext, EvalResult, register
from maskgen.evaluators.image_grid import make_grid, to_uint8

PSNR_CAP_DB = 100.0
FEATURE_NETS = ("digit_classifier",)


def psnr(x, y, data_range: float = 2.0, max_db: float = PSNR_CAP_DB) -> np.ndarray:
    """Per-image PSNR in dB of image batches `x`, `y` [B, ...]: 10 log10(data_range^2 / MSE_i), at most `max_db`.

    Identical images (MSE 0, infinite PSNR) get `max_db`. Average the result over images for a
    dataset PSNR.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"psnr: need two batches [B, ...] of the same shape, got {x.shape} and {y.shape}")
    mse = np.mean(np.square(x - y).reshape(x.shape[0], -1), axis=1)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(data_range ** 2 / mse)
    return np.minimum(values, max_db)


def code_histogram(codes, codebook_size: int, per_level: bool = False) -> np.ndarray:
    """Counts [L, codebook_size] of integer `codes`; L = 1, or the last axis's size if `per_level`."""
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    codes = codes.reshape(-1, codes.shape[-1]) if per_level else codes.reshape(-1, 1)
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size}), got values in [{codes.min()}, {codes.max()}]")
    return np.stack([np.bincount(level, minlength=codebook_size) for level in codes.T.astype(np.int64)])


def histogram_stats(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per level of `counts` [L, V]: (fraction of the V codes used at least once, exp(entropy in nats))."""
    counts = np.asarray(counts, np.float64)
    usage = np.mean(counts > 0, axis=-1)
    p = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1.0)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return usage, np.exp(entropy)


def code_histogram_stats(codes, codebook_size: int, per_level: bool = False) -> tuple[float, float]:
    """(codebook usage, perplexity) of `codes`; with `per_level` (last axis = levels) both are means over levels."""
    usage, perplexity = histogram_stats(code_histogram(codes, codebook_size, per_level))
    return float(usage.mean()), float(perplexity.mean())


def _check_feature_net(feature_net: str) -> None:
    if feature_net not in FEATURE_NETS:
        raise ValueError(f"reconstruction: unknown feature_net {feature_net!r}; valid: {list(FEATURE_NETS)}")


def _frechet_scalar(real_features: list, recon_features: list) -> float:
    from maskgen.perception.frechet import feature_statistics, frechet_distance

    mu1, sigma1 = feature_statistics(np.concatenate(real_features))
    mu2, sigma2 = feature_statistics(np.concatenate(recon_features))
    return frechet_distance(mu1, sigma1, mu2, sigma2)


@register("reconstruction")
class Reconstruction:
    """MSE, PSNR, codebook usage/perplexity, digit Fréchet distance and a grid; see the module docstring."""

    ARG_RULES = {"num_grid": integer(min=0), "max_examples": or_none(integer(min=1)), "frechet": boolean(),
                 "seed": integer(min=0)}

    def __init__(self, split: str = "test", num_grid: int = 16, max_examples: int | None = None,
                 frechet: bool = True, feature_net: str = "digit_classifier", seed: int = 0):
        _check_feature_net(feature_net)
        self.split, self.num_grid, self.max_examples = split, num_grid, max_examples
        self.frechet, self.feature_net, self.seed = frechet, feature_net, seed

    def _feature_fn(self):
        if not self.frechet:
            return None
        from maskgen.perception.digit_classifier import get_digit_classifier

        classifier = get_digit_classifier(None)
        return lambda images: np.asarray(classifier.features(images))

    def run(self, ctx: EvalContext) -> EvalResult:
        if "codebook_size" not in ctx.info:
            raise ValueError(f"reconstruction: the recipe's info() has no 'codebook_size' (it has {sorted(ctx.info)})")
        codebook_size = int(ctx.info["codebook_size"])
        # A continuous bottleneck (the KL autoencoder) has float latents, not codes: no usage/perplexity.
        continuous = bool(ctx.info.get("continuous", False))
        features = self._feature_fn()
        mses, psnrs, counts, real_feats, recon_feats, grid_real, grid_recon = [], [], None, [], [], [], []
        for i, (batch, valid) in enumerate(ctx.batches(self.split, self.max_examples)):
            rng = jax.random.fold_in(jax.random.key(self.seed), i)
            out = ctx.to_host(ctx.apply("reconstruct", ctx.params, batch, rng))
            real = np.asarray(ctx.to_host(batch)["image"], np.float32)
            recon = np.clip(np.asarray(out["reconstruction"], np.float32), -1.0, 1.0)
            codes, valid = np.asarray(out["codes"]), np.asarray(valid, bool)
            if recon.shape != real.shape:
                raise ValueError(f"reconstruction: reconstruction shape {recon.shape} != image shape {real.shape}")
            if not continuous and (codes.ndim not in (3, 4) or codes.shape[0] != real.shape[0]):
                raise ValueError(f"reconstruction: codes must be [B, h, w] or [B, h, w, K], got {codes.shape}")
            if features is not None:  # On the whole (padded) batch, so the classifier compiles once.
                real_feats.append(features(real)[valid])
                recon_feats.append(features(recon)[valid])
            real, recon, codes = real[valid], recon[valid], codes[valid]
            mses.append(np.mean(np.square(real.astype(np.float64) - recon).reshape(len(real), -1), axis=1))
            psnrs.append(psnr(real, recon))
            if not continuous:
                batch_counts = code_histogram(codes, codebook_size, per_level=codes.ndim == 4)
                counts = batch_counts if counts is None else counts + batch_counts
            grid_real.append(real[: self.num_grid - sum(map(len, grid_real))])
            grid_recon.append(recon[: self.num_grid - sum(map(len, grid_recon))])
        if not mses or not sum(map(len, mses)):
            raise ValueError(f"reconstruction: split {self.split!r} yielded no examples")
        scalars = {"mse": float(np.mean(np.concatenate(mses))), "psnr": float(np.mean(np.concatenate(psnrs)))}
        usage, perplexity = histogram_stats(counts) if counts is not None else (np.zeros(0), np.zeros(0))
        if counts is not None:
            scalars.update(codebook_usage=float(usage.mean()), perplexity=float(perplexity.mean()))
        if len(usage) > 1:
            for k in range(len(usage)):
                scalars[f"codebook_usage_level{k}"] = float(usage[k])
                scalars[f"perplexity_level{k}"] = float(perplexity[k])
        if features is not None:
            scalars["frechet_distance_digits"] = _frechet_scalar(real_feats, recon_feats)
        images = {}
        if self.num_grid > 0:
            rows = [to_uint8(np.concatenate(grid_real)), to_uint8(np.concatenate(grid_recon))]
            images["grid"] = make_grid(rows, upscale=max(1, 64 // rows[0].shape[1]))
        return EvalResult(scalars=scalars, images=images)
