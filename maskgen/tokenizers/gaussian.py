"""A KL-regularised (diagonal Gaussian) bottleneck: the continuous counterpart of the quantizers.

LDM's KL autoencoder (Rombach et al., arXiv 2112.10752, `DiagonalGaussianDistribution` in
CompVis/latent-diffusion), the KL-VAEs that MAR (arXiv 2406.11838, KL-16) and MicroDiT
(arXiv 2407.15811) generate in. The encoder outputs 2D channels, a mean and a log-variance per
latent channel; the log-variance is clipped to [-30, 20] (as LDM, so exp() stays finite). In
training the latent is a sample z = mean + std * noise and the loss gains

    kl_weight * KL(N(mean, var) || N(0, 1)),  KL = 0.5 * sum over latent dims (mean^2 + var - 1 - logvar),

summed over every latent element of an example (h, w and channels) and averaged over the batch,
as LDM's `kl_loss = sum(kl) / batch`; LDM's kl_weight is 1e-6. In eval, and for `encode`, the
latent is the mean.

It has the `Quantizer` call signature, so the tokenizer swaps it in like any quantizer:
`z [..., 2D] -> (latent [..., D], mean [..., D] (the "codes", float32), aux)` and
`decode_codes(mean) = mean`. `input_dim` (2D) tells the encoder how many channels to output;
`continuous` marks it (its codes are floats, with no codebook).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # LDM's clamp of the log-variance


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of each example: summed over all axes but the first
    (the batch), float32 [B]."""
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    per_element = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return per_element.reshape(per_element.shape[0], -1).sum(-1)


class DiagonalGaussian(nnx.Module):
    """The KL bottleneck for `dim` latent channels (no parameters; see the module docstring)."""

    continuous = True
    codebook_size = 0
    num_levels = 1

    def __init__(self, dim: int, *, kl_weight: float = 1e-6, rngs: nnx.Rngs | None = None):
        if dim < 1:
            raise ValueError(f"DiagonalGaussian needs dim >= 1 latent channels, got {dim}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.dim, self.kl_weight = int(dim), float(kl_weight)
        self.input_dim = 2 * self.dim

    def moments(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The encoder's output [..., 2D] -> (mean, clipped log-variance), each float32 [..., D]."""
        if z.shape[-1] != self.input_dim:
            raise ValueError(f"the KL bottleneck with {self.dim} latent channels reads {self.input_dim} channels "
                             f"(mean and log-variance), got {z.shape[-1]}")
        mean, logvar = jnp.split(z.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def __call__(self, z: jax.Array, *, train: bool, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array, dict]:
        """z [B, ..., 2D] -> (latent, mean, aux): latent is a sample in train mode (needs `rng`), else the mean.
        aux: "loss" = kl_weight * the batch-mean KL, "kl" (unweighted), "mean_abs", "std" (diagnostics)."""
        mean, logvar = self.moments(z)
        std = jnp.exp(0.5 * logvar)
        if train:
            if rng is None:
                raise ValueError("the KL bottleneck samples its latent in train mode: pass rng=")
            latent = mean + std * jax.random.normal(rng, mean.shape, jnp.float32)
        else:
            latent = mean
        kl = kl_to_standard_normal(mean, logvar).mean()
        aux = {"loss": self.kl_weight * kl, "kl": kl, "mean_abs": jnp.abs(mean).mean(), "std": std.mean()}
        return latent, mean, aux

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """The stored latents (means) are what the decoder reads."""
        return codes.astype(jnp.float32)
