"""Random patch masking with an exact masked count, as in MAE (He et al., arXiv 2111.06377).

MAE draws uniform noise per position and masks the positions whose noise ranks highest, so that
every example hides exactly the same number of patches and the encoder sees a static-shaped set
of visible patches.

`block_mask` masks a patch grid in clusters of c x c patches (SSAST's patch masking, Gong et al.,
arXiv 2110.09784) and `random_mask_count` uniformly (SSAST's frame masking), both with an exact
count per example rather than a ratio.

`span_mask` is MAGNeT's span masking (Ziv et al., arXiv 2401.04577, Sec. 3.1 and App. C): a mask
rate is turned into a number u of span starts through a host lookup table (`span_starts_table`),
the u starts are the first u positions of a random permutation, and each start masks
`span_length` frames (OR-ed, clipped at the end).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


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


# ------------------------------------------------------------------------------ MAGNeT span masks

def _check_span_args(num_frames, span_length) -> None:
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"span masking: num_frames must be an int >= 1, got {num_frames!r}")
    if not isinstance(span_length, int) or not 1 <= span_length <= num_frames:
        raise ValueError(f"span masking: span_length must be an int in [1, num_frames={num_frames}], "
                         f"got {span_length!r}")


@functools.lru_cache(maxsize=64)
def span_mask_rates(num_frames: int, span_length: int) -> np.ndarray:
    """float64 [num_frames + 1]: entry u is the expected masked share of `span_mask` with u starts.

    MAGNeT (arXiv 2401.04577, App. C): a frame with L = span_length possible starts in front of it
    stays unmasked with probability C(T - L, u) / C(T, u) = prod_{j<u} (T - L - j) / (T - j) (a
    product, so nothing overflows), hence rate(u) = 1 - C(T - L, u) / C(T, u). That holds for the
    frames L - 1 .. T - 1. Spans here run to the right from their start (as in audiocraft), so frame
    x < L - 1 has only x + 1 possible starts; its term (the same product with x + 1 in place of L)
    is added, which makes the entry the generator's exact expectation (MAGNeT's formula alone is
    up to 2 (L - 1) / T above it: < 0.4% at T = 500, L = 3; ~1% at T = 50).
    """
    _check_span_args(num_frames, span_length)
    total = num_frames
    windows = np.minimum(np.arange(total) + 1, span_length)  # possible starts in front of each frame
    unmasked_sum = np.zeros(total + 1)
    for width in range(1, span_length + 1):
        frames_with_width = int(np.sum(windows == width))
        if not frames_with_width:
            continue
        # keep[u] = C(T - w, u) / C(T, u) as a running product (0 once u > T - w).
        factors = np.maximum(total - width - np.arange(total), 0) / (total - np.arange(total))
        keep = np.concatenate([[1.0], np.cumprod(factors)])
        unmasked_sum += frames_with_width * keep
    return 1.0 - unmasked_sum / total


@functools.lru_cache(maxsize=64)
def span_starts_table(num_frames: int, span_length: int, resolution: int = 1000) -> np.ndarray:
    """int32 [resolution + 1]: entry i is the number of span starts u whose expected masked share
    (`span_mask_rates`, MAGNeT's rate(u) = 1 - C(T - L, u) / C(T, u) with the edge frames counted)
    is closest to the rate i / resolution (ties to the smaller u). A host table (MAGNeT's lookup
    table, App. C), so the traced generator only indexes it. Entry 0 is 0; `num_span_starts`
    raises every count to at least 1.
    """
    _check_span_args(num_frames, span_length)
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"span_starts_table: resolution must be an int >= 1, got {resolution!r}")
    rates = span_mask_rates(num_frames, span_length)  # increasing in u
    targets = np.arange(resolution + 1) / resolution
    above = np.clip(np.searchsorted(rates, targets), 1, num_frames)  # first u with rate >= target
    below = above - 1
    closer_below = (targets - rates[below]) <= (rates[above] - targets)
    table = np.where(closer_below, below, above).astype(np.int32)
    table.setflags(write=False)
    return table


def num_span_starts(rate: jax.Array, num_frames: int, span_length: int) -> jax.Array:
    """int32 [B]: the number of span starts for each mask rate in `rate` (float [B], clipped to
    [0, 1]), from `span_starts_table` at 1/1000 resolution, at least 1 (so a rate-0 row still
    masks one span: 1 to span_length frames, fewer only when the start falls in the last
    span_length - 1 frames; MAGNeT's training code clamps the same way)."""
    _check_span_args(num_frames, span_length)
    table = span_starts_table(num_frames, span_length)
    resolution = table.shape[0] - 1
    rate = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    index = jnp.round(rate * resolution).astype(jnp.int32)
    return jnp.maximum(jnp.asarray(table)[index], 1)


@functools.partial(jax.jit, static_argnames=("num_frames", "span_length"))
def span_mask(rng: jax.Array, rate: jax.Array, num_frames: int, span_length: int) -> jax.Array:
    """MAGNeT's span mask (arXiv 2401.04577, Sec. 3.1): bool [B, num_frames], True = masked.

    Row b draws u_b = `num_span_starts(rate[b])` starts as the first u_b positions of a random
    permutation (a per-row argsort of uniform noise), then masks each start and the
    span_length - 1 frames after it (spans OR-ed, so they may overlap and merge; clipped at the
    end). Every run of masked frames is therefore at least span_length long, except one that
    reaches the last frame. Over draws the masked share of a row averages `span_mask_rates()[u_b]`,
    the table's closest value to rate[b]. Pure, static-shaped and jittable; works under vmap.

    Args:
      rng: PRNG key.
      rate: float [B], the target mask rate of each row (MAGNeT trains at cos(pi/2 * t), t ~ U(0, 1)).
      num_frames: T, the length of the masked axis (static).
      span_length: L, the span length in frames (static; MAGNeT: 3 frames = 60 ms at 50 Hz).
    """
    rate = jnp.asarray(rate)
    if rate.ndim != 1:
        raise ValueError(f"span_mask: rate must be a 1-D array of per-row mask rates [B], got shape {rate.shape}")
    starts_per_row = num_span_starts(rate, num_frames, span_length)
    noise = jax.random.uniform(rng, (rate.shape[0], num_frames))
    ranks = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
    starts = ranks < starts_per_row[:, None]
    mask = starts
    for shift in range(1, span_length):
        # A start at s masks s + shift; what runs past the last frame is dropped.
        mask = mask | jnp.pad(starts[:, :-shift], ((0, 0), (shift, 0)))
    return mask


# ------------------------------------------------------------------------------ GMML group masks

@functools.partial(jax.jit, static_argnames=("batch", "grid", "min_ratio", "max_ratio", "max_block_share",
                                             "max_blocks"))
def group_mask(rng: jax.Array, batch: int, grid: tuple[int, int], min_ratio: float, max_ratio: float,
               max_block_share: float = 0.3, max_blocks: int | None = None) -> jax.Array:
    """GMML's group masks (Atito, Awais and Kittler, arXiv 2111.15340): bool [batch, rows * cols].

    Each row masks a count drawn uniformly from [round(min_ratio N), round(max_ratio N)] (GMML's
    `GMML_drop_rand_patches` draws a pixel share uniformly from [min(0.5, max_replace), max_replace];
    the paper corrupts 50-75%), made of patch-aligned rectangles of random height
    and width, each side uniform in [1, max(1, round(max_block_share * side))] patches (GMML:
    blocks up to 30% of the image side), dropped at random until the count is covered. The count
    varies per row: this is for objectives that encode every patch (the corrupted ones replaced).

    Static shapes as in `block_mask`: `max_blocks` candidate rectangles are drawn at once, each
    position is ranked by the first rectangle covering it (ties at random, which decides what part
    of the last rectangle is kept), and the row's `count` best-ranked positions are masked, so the
    count is exact (uncovered positions rank last).

    Where maskgen differs from GMML's code: the count is exact (the code adds rectangles until the
    target is reached, so it overshoots by part of a block), and rectangles may hang over any edge
    of the grid (clipped there), so every patch is equally likely to be masked; the code starts
    them inside the image and clips them at the bottom/right, so the top/left patches are corrupted
    less often. GMML's side lengths come from a pixel range rounded to the patch size, so the
    smallest and largest sides are a little less likely than the middle ones; here they are uniform.

    Args:
      rng: PRNG key.
      batch: number of rows.
      grid: (rows, columns) of the patch grid; positions are numbered in raster order.
      min_ratio, max_ratio: the range of the masked share, 0 <= min_ratio <= max_ratio <= 1.
      max_block_share: the longest rectangle side as a share of the grid side.
      max_blocks: how many candidate rectangles to draw per row (default: enough to cover the
        grid about 8 times over).
    Returns:
      bool [batch, rows * cols], True = masked.
    """
    rows, cols = grid
    positions = rows * cols
    if rows < 1 or cols < 1:
        raise ValueError(f"group_mask: grid must have positive sides, got {grid}")
    if not 0.0 <= min_ratio <= max_ratio <= 1.0:
        raise ValueError(f"group_mask: need 0 <= min_ratio <= max_ratio <= 1, got min_ratio={min_ratio}, "
                         f"max_ratio={max_ratio}")
    if not 0.0 < max_block_share <= 1.0:
        raise ValueError(f"group_mask: max_block_share must be in (0, 1], got {max_block_share}")
    low, high = int(round(min_ratio * positions)), int(round(max_ratio * positions))
    max_height = max(1, int(round(max_block_share * rows)))
    max_width = max(1, int(round(max_block_share * cols)))
    if max_blocks is None:
        mean_area = (1 + max_height) / 2 * (1 + max_width) / 2
        max_blocks = max(8, int(np.ceil(8 * positions / mean_area)))
    count_rng, height_rng, width_rng, row_rng, col_rng, tie_rng = jax.random.split(rng, 6)
    counts = jax.random.randint(count_rng, (batch, 1), low, high + 1)
    height = jax.random.randint(height_rng, (batch, max_blocks, 1), 1, max_height + 1)
    width = jax.random.randint(width_rng, (batch, max_blocks, 1), 1, max_width + 1)
    # Top-left corners from -(side - 1): a rectangle may start above/left of the grid and be clipped.
    top = jax.random.randint(row_rng, (batch, max_blocks, 1), 0, rows + height - 1) - (height - 1)
    left = jax.random.randint(col_rng, (batch, max_blocks, 1), 0, cols + width - 1) - (width - 1)
    r = jnp.repeat(jnp.arange(rows), cols)[None, None]  # [1, 1, N] row of each raster position
    c = jnp.tile(jnp.arange(cols), rows)[None, None]
    covered = (r >= top) & (r < top + height) & (c >= left) & (c < left + width)  # [B, K, N]
    first_block = jnp.where(covered.any(1), jnp.argmax(covered, axis=1), max_blocks)  # [B, N]
    key = first_block.astype(jnp.float32) + jax.random.uniform(tie_rng, (batch, positions))
    ranks = jnp.argsort(jnp.argsort(key, axis=-1), axis=-1)
    return ranks < counts
