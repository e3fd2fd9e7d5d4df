"""ColorMAE's filtered-noise masks (Hinojosa, Liu and Ghanem, arXiv 2407.13036).

ColorMAE masks patches by thresholding filtered white noise W instead of fresh uniform noise, so
the masks carry a spatial-frequency prior at no cost (no parameters, no data dependence):

- red    = G_s * W              (low-pass: large contiguous visible/masked regions)
- blue   = W - G_s * W          (high-pass: visible patches spread evenly)
- green  = G_s1 * W - G_s2 * W  (band-pass, a difference of two blurs; the paper's best)
- purple = W - green            (band-stop: low and high frequencies, no middle)

The fields are precomputed once (`noise_fields`, a cached host array) and each training example
takes a random grid-sized window of a random field, flips it, keeps the (N - count) highest values
visible and masks the rest (`color_mask`).

Where maskgen differs from the paper's code (github.com/carlosh93/ColorMAE):
- The released code loads downloaded pattern files and ships no generator, so the blur widths are
  maskgen's choice, in patch units: `NARROW_SIGMA` = 0.7 and `WIDE_SIGMA` = 1.4 patches. They split
  the patch grid's frequency range (0 to 0.5 cycles per patch) roughly in thirds: red keeps
  below ~0.13 cycles/patch, green peaks near 0.22 (a period of ~4.6 patches: a few visible clusters
  across a 14 x 14 grid), blue keeps above ~0.27.
- Filtering is done in the Fourier domain with the Gaussian's exact transfer function, so the
  fields wrap around (tile) and any window position, including one that crosses the field's edge,
  has the same statistics; each field is normalised to zero mean and unit variance (the paper's
  step), where the released code divides each window by its maximum (which, for ranking, changes
  nothing unless the maximum is negative).
- Every row draws its own field, window position and flips. The released code crops a whole stack
  of fields with one window position and one flip per batch chunk. For square grids a row is also
  transposed with probability 1/2, which with the two flips draws uniformly from the 8 symmetries
  of the square (the same distribution as a random 90-degree rotation plus flips); the released
  code only flips.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

COLORS = ("red", "blue", "green", "purple")

# Gaussian blur widths in patches (standard deviations of the spatial kernel); see the docstring.
NARROW_SIGMA = 0.7
WIDE_SIGMA = 1.4


def _gaussian_transfer(size: int, sigma: float) -> np.ndarray:
    """float64 [size, size]: the Fourier transfer function of a periodic Gaussian blur of std
    `sigma` (in grid cells): exp(-2 pi^2 sigma^2 |f|^2), f in cycles per cell."""
    freq = np.fft.fftfreq(size)
    radius2 = freq[:, None] ** 2 + freq[None, :] ** 2
    return np.exp(-2.0 * np.pi ** 2 * sigma ** 2 * radius2)


def color_transfer(color: str, size: int) -> np.ndarray:
    """float64 [size, size]: the frequency response of `color`'s filter on a size x size periodic
    grid (red: G_wide; blue: 1 - G_narrow; green: G_narrow - G_wide; purple: 1 - green)."""
    if color not in COLORS:
        raise ValueError(f"ColorMAE noise: unknown color {color!r}; expected one of {COLORS}")
    narrow = _gaussian_transfer(size, NARROW_SIGMA)
    wide = _gaussian_transfer(size, WIDE_SIGMA)
    return {"red": wide, "blue": 1.0 - narrow, "green": narrow - wide, "purple": 1.0 - (narrow - wide)}[color]


@functools.lru_cache(maxsize=32)
def noise_fields(color: str, *, count: int = 8, size: int = 64, seed: int = 0) -> np.ndarray:
    """ColorMAE's precomputed noise patterns: float32 [count, size, size], read-only (cached).

    White Gaussian noise W (numpy, `seed`) filtered by `color_transfer(color)` in the Fourier
    domain (wrap-around, so each field tiles), then each field normalised to zero mean and unit
    standard deviation. The same seed gives the same W for every colour, so e.g. red + blue and
    green + purple are both W before normalisation.
    """
    if color not in COLORS:
        raise ValueError(f"noise_fields: unknown color {color!r}; expected one of {COLORS}")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"noise_fields: count must be an int >= 1, got {count!r}")
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"noise_fields: size must be an int >= 2, got {size!r}")
    white = np.random.default_rng(seed).standard_normal((count, size, size))
    filtered = np.real(np.fft.ifft2(np.fft.fft2(white) * color_transfer(color, size)))
    filtered -= filtered.mean(axis=(1, 2), keepdims=True)
    filtered /= filtered.std(axis=(1, 2), keepdims=True)
    fields = filtered.astype(np.float32)
    fields.setflags(write=False)
    return fields


@functools.partial(jax.jit, static_argnames=("batch", "grid", "count"))
def color_mask(rng: jax.Array, fields: jax.Array, batch: int, grid: tuple[int, int], count: int) -> jax.Array:
    """ColorMAE mask: bool [batch, rows * cols] (raster order), exactly `count` True per row.

    Per row: a random field of `fields` ([F, S, S], e.g. `noise_fields(...)`), a random rows x cols
    window (any top-left corner; it wraps around the periodic field), random vertical and horizontal
    flips and, where rows == cols, a random transpose (with the flips: a uniformly random symmetry
    of the square, i.e. a random 90-degree rotation plus flips). The (N - count) highest values stay
    visible, the `count` lowest are masked (ties by position, so the count is exact).
    Jittable; batch, grid and count are static.
    """
    rows, cols = grid
    positions = rows * cols
    fields = jnp.asarray(fields)
    if fields.ndim != 3 or fields.shape[1] != fields.shape[2]:
        raise ValueError(f"color_mask: fields must be [count, size, size], got shape {fields.shape}")
    num_fields, size = fields.shape[0], fields.shape[1]
    if rows < 1 or cols < 1 or max(rows, cols) > size:
        raise ValueError(f"color_mask: the {rows}x{cols} patch grid must fit the {size}x{size} noise "
                         f"fields (make them with noise_fields(..., size>={max(rows, cols)}))")
    if not 0 <= count <= positions:
        raise ValueError(f"color_mask: count={count} must be in [0, {positions}] for a {rows}x{cols} grid")
    field_rng, top_rng, left_rng, flip_rng, transpose_rng = jax.random.split(rng, 5)
    which = jax.random.randint(field_rng, (batch,), 0, num_fields)
    top = jax.random.randint(top_rng, (batch, 1), 0, size)
    left = jax.random.randint(left_rng, (batch, 1), 0, size)
    flips = jax.random.bernoulli(flip_rng, 0.5, (batch, 2))
    row = jnp.repeat(jnp.arange(rows), cols)[None]  # [1, N] grid row of each raster position
    col = jnp.tile(jnp.arange(cols), rows)[None]
    if rows == cols:
        transpose = jax.random.bernoulli(transpose_rng, 0.5, (batch, 1))
        row, col = jnp.where(transpose, col, row), jnp.where(transpose, row, col)
    row = jnp.where(flips[:, :1], rows - 1 - row, row)  # [B, N]
    col = jnp.where(flips[:, 1:], cols - 1 - col, col)
    values = fields[which[:, None], (top + row) % size, (left + col) % size]  # [B, N]
    ranks = jnp.argsort(jnp.argsort(values, axis=-1, stable=True), axis=-1)
    return ranks < count
