"""Mask generators: pure functions `(rng, shape, ratio) -> bool mask` with static shapes.

`True` marks a masked (hidden) position. Schedules (`mask_ratio`) map progress t in [0, 1] to
the masked fraction, for training draws and decoding steps alike. Generators: `random_mask`,
`block_mask` (SSAST's clusters), `span_mask` (MAGNeT's spans, with the rate -> span-count inversion).
"""

from maskgen.masking.generators import block_mask, num_masked, random_mask, span_mask, visible_indices
from maskgen.masking.schedules import mask_ratio, num_to_mask

__all__ = ["block_mask", "mask_ratio", "num_masked", "num_to_mask", "random_mask", "span_mask", "visible_indices"]
