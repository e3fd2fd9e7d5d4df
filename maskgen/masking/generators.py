"""Random patch masking with an exact masked count, as in MAE (He et al., arXiv 2111.06377).

MAE draws uniform noise per position and masks the positions whose noise ranks highest, so that
every example hides exactly the same number of patches and the encoder sees a static-shaped set
of visible patches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_masked(num_positions: int, ratio: float) -> int:
    """Number of masked positions for a ratio: round(ratio * N), kept within [0, N]."""
    return max(0, min(num_positions, int(round(ratio * num_positions))))


def random_mask(rng: jax.Array, shape: tuple[int, int], ratio: float) -> jax.Array:
    """Uniformly random mask over positions with exactly `num_masked(N, ratio)` True per row.

    Args:
      rng: PRNG key.
      shape: (batch, num_positions).
      ratio: fraction of positions to mask (a Python float; the count must be static).
    Returns:
      bool [batch, num_positions], True = masked.
    """
    batch, positions = shape
    noise = jax.random.uniform(rng, (batch, positions))
    # Rank of each position's noise; the num_masked highest ranks are masked.
    ranks = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
    return ranks >= positions - num_masked(positions, ratio)


def visible_indices(mask: jax.Array, num_visible: int) -> jax.Array:
    """Indices of the visible (False) positions of each row, in increasing position order.

    `mask` must have exactly `num_visible` False entries per row (as every generator here does).
    Returns int32 [batch, num_visible].
    """
    # A stable sort on the mask puts False (visible) positions first, in position order.
    order = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True)
    return order[:, :num_visible].astype(jnp.int32)
