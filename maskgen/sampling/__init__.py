"""Samplers for masked and autoregressive token models.

- `categorical`: the precision-safe Gumbel-max sampler every decoder builds on;
- `iterative`: `iterative_decode` for masked models of any modality (generation, inpainting,
  outpainting, editing) with pluggable unmask policies (MaskGIT confidence, random, MDLM
  ancestral, first-hitting, MAGNeT's span re-masking) and MAGNeT's options (top-p, CFG annealed
  by mask rate, temperature annealed to 0, rescoring);
- `autoregressive`: the left-to-right, KV-cached baseline decoder (with an optional prompt);
- `rescoring`: an AR model's per-token log-probs as a rescorer, and Hybrid-MAGNeT (AR prefix,
  then parallel decoding).
"""

from maskgen.sampling.categorical import gumbel_noise, sample_categorical
from maskgen.sampling.iterative import POLICIES, DecodeResult, UnmaskPolicy, iterative_decode, span_policy
from maskgen.sampling.autoregressive import autoregressive_decode
from maskgen.sampling.rescoring import ar_rescorer, hybrid_decode

__all__ = ["gumbel_noise", "sample_categorical", "iterative_decode", "DecodeResult", "UnmaskPolicy", "POLICIES",
           "autoregressive_decode", "span_policy", "ar_rescorer", "hybrid_decode"]
