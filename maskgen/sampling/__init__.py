"""Samplers for masked and autoregressive token models.

- `categorical`: the precision-safe Gumbel-max sampler every decoder builds on;
- `iterative`: `iterative_decode` for masked models of any modality (generation, inpainting,
  outpainting, editing) with pluggable unmask policies (MaskGIT confidence, random, MDLM
  ancestral, first-hitting);
- `autoregressive`: the left-to-right, KV-cached baseline decoder (with an optional prompt).
"""

from maskgen.sampling.categorical import gumbel_noise, sample_categorical
from maskgen.sampling.iterative import POLICIES, DecodeResult, UnmaskPolicy, iterative_decode
from maskgen.sampling.autoregressive import autoregressive_decode

__all__ = ["gumbel_noise", "sample_categorical", "iterative_decode", "DecodeResult", "UnmaskPolicy", "POLICIES",
           "autoregressive_decode"]
