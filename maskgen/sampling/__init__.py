"""Samplers for masked and autoregressive token models.

- `categorical`: the precision-safe Gumbel-max sampler every decoder builds on;
- `iterative`: MaskGIT's `iterative_decode` (generation, inpainting, outpainting and editing);
- `autoregressive`: the raster-order, KV-cached baseline decoder.
"""

from maskgen.sampling.categorical import gumbel_noise, sample_categorical
from maskgen.sampling.iterative import DecodeResult, iterative_decode
from maskgen.sampling.autoregressive import autoregressive_decode

__all__ = ["gumbel_noise", "sample_categorical", "iterative_decode", "DecodeResult", "autoregressive_decode"]
