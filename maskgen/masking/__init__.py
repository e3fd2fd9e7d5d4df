"""Mask generators: pure functions `(rng, shape, ratio) -> bool mask` with static shapes.

`True` marks a masked (hidden) position. Schedules (`mask_ratio`) map progress t in [0, 1] to
the masked fraction, for training draws and decoding steps alike. Later generators (span, block, tube, ...) live beside
`random_mask` and share `num_masked` and `visible_indices`.
"""

from maskgen.masking.generators import num_masked, random_mask, visible_indices
from maskgen.masking.schedules import mask_ratio, num_to_mask

__all__ = ["mask_ratio", "num_masked", "num_to_mask", "random_mask", "visible_indices"]
