"""Random patch masking with an exact masked count, as in MAE (He et al., arXiv 2111.06377).

MAE draws uniform noise per position and masks the positions whose noise ranks highest, so that
every example hides exactly the same number of patches and the encoder sees a static-shaped set
of visible patches.

`block_mask` masks a patch grid in clusters of c x c patches (SSAST's patch masking, Gong et al.,
arXiv 2110.09784) and `random_mask_count` uniformly (SSAST's frame masking), both with an exact
count per example rather than a ratio.
"""

from __future__ import annotations

import functools

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


@functools.partial(jax.jit, static_argnames=("batch", "grid", "count", "block_sizes", "max_blocks"))
def block_mask(rng: jax.Array, batch: int, grid: tuple[int, int], count: int,
               block_sizes: tuple[int, ...] = (3, 4, 5), max_blocks: int | None = None) -> jax.Array:
    """Cluster (block) masking of a patch grid with exactly `count` masked positions per row.

    SSAST's patch masking (Gong et al., arXiv 2110.09784, Sec. 2.3: "we randomly mask patches in
    clusters"): each example draws one block side c from `block_sizes`, then drops c x c blocks at
    uniformly random places until at least `count` patches are covered, and keeps `count` of them.
    Blocks may hang over the grid's edges (they are clipped there), so every patch is equally likely
    to be covered. The last block usually overshoots: a random part of it is kept.

    Static shapes: `max_blocks` candidate blocks are drawn at once (default: enough to cover the
    grid several times over), and each position is ranked by the first block that covers it (ties,
    within a block, broken at random); the `count` best-ranked positions are masked. Positions no
    candidate covers rank last, so the count is exact even in the (vanishingly rare) case that
    the candidates fall short.

    Args:
      rng: PRNG key.
      batch: number of rows.
      grid: (rows, columns) of the patch grid; positions are numbered in raster order.
      count: how many positions each row masks (a Python int, 0 <= count <= rows * columns).
      block_sizes: the block sides one is drawn from per example (SSAST: 3, 4 or 5).
      max_blocks: how many candidate blocks to draw per example.
    Returns:
      bool [batch, rows * columns], True = masked.
    """
    rows, cols = grid
    positions = rows * cols
    if not 0 <= count <= positions:
        raise ValueError(f"block_mask: count={count} must be in [0, {positions}] for a {rows}x{cols} grid")
    if not block_sizes or min(block_sizes) < 1:
        raise ValueError(f"block_mask: block_sizes={block_sizes} must be positive sides")
    if max_blocks is None:
        # Random blocks of area a cover a fraction 1 - exp(-k a / N) after k of them; 8 N / a blocks
        # leave about e^-8 = 0.03% uncovered, whatever the count asked for.
        max_blocks = max(8, -(-8 * positions // min(block_sizes) ** 2))
    size_rng, row_rng, col_rng, tie_rng = jax.random.split(rng, 4)
    sides = jnp.asarray(block_sizes, jnp.int32)[jax.random.randint(size_rng, (batch,), 0, len(block_sizes))]
    # Top-left corners from -(c - 1): a block may start above/left of the grid and be clipped.
    top = jax.random.randint(row_rng, (batch, max_blocks), 0, rows + sides[:, None] - 1) - (sides[:, None] - 1)
    left = jax.random.randint(col_rng, (batch, max_blocks), 0, cols + sides[:, None] - 1) - (sides[:, None] - 1)
    r = jnp.arange(rows)[:, None].repeat(cols, 1).reshape(-1)  # [N] row of each raster position
    c = jnp.tile(jnp.arange(cols), rows)  # [N] column
    side = sides[:, None, None]
    covered = ((r[None, None] >= top[..., None]) & (r[None, None] < top[..., None] + side)
               & (c[None, None] >= left[..., None]) & (c[None, None] < left[..., None] + side))  # [B, K, N]
    first_block = jnp.where(covered.any(1), jnp.argmax(covered, axis=1), max_blocks)  # [B, N]
    # Rank by the first covering block, then by noise (which part of the last block stays).
    key = first_block.astype(jnp.float32) + jax.random.uniform(tie_rng, (batch, positions))
    ranks = jnp.argsort(jnp.argsort(key, axis=-1), axis=-1)
    return ranks < count


@functools.partial(jax.jit, static_argnames=("shape", "count"))
def random_mask_count(rng: jax.Array, shape: tuple[int, int], count: int) -> jax.Array:
    """Uniformly random mask with exactly `count` True per row (SSAST's frame masking, where the
    count, not a ratio, is the setting). bool [batch, num_positions]."""
    batch, positions = shape
    if not 0 <= count <= positions:
        raise ValueError(f"random_mask_count: count={count} must be in [0, {positions}]")
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch, positions)), axis=-1), axis=-1)
    return ranks < count


def masked_indices(mask: jax.Array, count: int) -> jax.Array:
    """Indices of the masked (True) positions of each row, in increasing position order.

    `mask` must have exactly `count` True entries per row. Returns int32 [batch, count].
    """
    order = jnp.argsort(jnp.logical_not(mask).astype(jnp.int32), axis=-1, stable=True)
    return order[:, :count].astype(jnp.int32)
