"""Tokenizers: quantizers (VQ, residual VQ, FSQ, LFQ) behind one `Quantizer` interface, and the
continuous KL bottleneck (`DiagonalGaussian`, LDM arXiv 2112.10752) with the same call signature.

`make_quantizer(kind, dim, rngs=..., **kwargs)` builds one by name ("vq", "fsq", "lfq", "rvq", "kl").
Trainable codebooks are `nnx.Param`s with logical axes ("codebook", None); other state is
`CodebookState`, so `nnx.split(module, nnx.Param, CodebookState)` separates the two.
"""

from maskgen.tokenizers.gaussian import DiagonalGaussian
from maskgen.tokenizers.quantizers import (
    FSQ,
    LFQ,
    CodebookState,
    Quantizer,
    ResidualVQ,
    VectorQuantizer,
    make_quantizer,
)

__all__ = ["DiagonalGaussian", "FSQ", "LFQ", "CodebookState", "Quantizer", "ResidualVQ", "VectorQuantizer",
           "make_quantizer"]
