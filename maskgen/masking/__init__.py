"""Mask generators: pure functions `(rng, shape, ratio) -> bool mask` with static shapes.

`True` marks a masked (hidden) position. Schedules (`mask_ratio`) map progress t in [0, 1] to
the masked fraction, for training draws and decoding steps alike. Generators: `random_mask`,
`block_mask` (SSAST's clusters), `span_mask` (MAGNeT's spans, with the rate -> span-count inversion),
`group_mask` (GMML's patch-aligned rectangles), `color_mask` over `noise_fields` (ColorMAE's
filtered-noise masks, `masking/colored_noise.py`) and `hard_patch_mask` with `hard_share` and
`relative_loss` (HPM's hard-patch mining, `masking/hard_patches.py`).
"""

from maskgen.masking.colored_noise import COLORS, color_mask, noise_fields
from maskgen.masking.generators import block_mask, group_mask, num_masked, random_mask, span_mask, visible_indices
from maskgen.masking.hard_patches import hard_patch_mask, hard_share, relative_loss
from maskgen.masking.schedules import mask_ratio, num_to_mask

__all__ = ["COLORS", "block_mask", "color_mask", "group_mask", "hard_patch_mask", "hard_share", "mask_ratio",
           "noise_fields", "num_masked", "num_to_mask", "random_mask", "relative_loss", "span_mask",
           "visible_indices"]
