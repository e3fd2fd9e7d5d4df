"""Mask generators: pure functions `(rng, shape, ratio) -> bool mask` with static shapes.

`True` marks a masked (hidden) position. Later generators (span, block, tube, ...) live beside
`random_mask` and share `num_masked` and `visible_indices`.
"""

from maskgen.masking.generators import num_masked, random_mask, visible_indices

__all__ = ["num_masked", "random_mask", "visible_indices"]
