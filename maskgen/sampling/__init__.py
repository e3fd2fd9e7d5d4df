"""Samplers for masked models. `categorical` holds the precision-safe Gumbel-max sampler that
the iterative decoder builds on."""

from maskgen.sampling.categorical import gumbel_noise, sample_categorical

__all__ = ["gumbel_noise", "sample_categorical"]
