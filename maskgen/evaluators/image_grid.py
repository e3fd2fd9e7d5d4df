"""PNG grids of model outputs: one row per named output of the recipe's `sample` method."""

from __future__ import annotations

import jax
import numpy as np

from maskgen.config import integer
from maskgen.evaluators.base import EvalContext, EvalResult, register


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 [0, 255]."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (the inverse of `to_uint8` on its 256 levels)."""
    return np.asarray(pixels, np.uint8).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def make_grid(rows: list[np.ndarray], upscale: int = 1, border: int = 1) -> np.ndarray:
    """Tiles rows of images ([B, H, W, C] uint8 each) into one uint8 [H', W', C] image."""
    rows = [np.repeat(np.repeat(r, upscale, axis=1), upscale, axis=2) for r in rows]
    b, h, w, c = rows[0].shape
    grid = np.full((len(rows) * (h + border) + border, b * (w + border) + border, c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = border + i * (h + border), border + j * (w + border)
            grid[y:y + h, x:x + w] = image
    return grid


@register("image_grid")
class ImageGrid:
    """Runs the recipe's `sample` on the first `num` examples of a split and tiles its outputs.

    `rows` picks and orders the outputs to show (default: all, sorted by name); for MAE they are
    original, masked input and reconstruction.
    """

    ARG_RULES = {"num": integer(min=1), "seed": integer(min=0), "upscale": integer(min=0, why="0: automatic")}

    def __init__(self, split: str = "test", num: int = 16, seed: int = 0, upscale: int = 0, rows: tuple = ()):
        self.split, self.num, self.seed, self.upscale, self.rows = split, num, seed, upscale, tuple(rows)

    def run(self, ctx: EvalContext) -> EvalResult:
        batch, _ = next(iter(ctx.batches(self.split, self.num)))
        outputs = ctx.to_host(ctx.apply("sample", ctx.params, batch, jax.random.key(self.seed)))
        names = self.rows or tuple(sorted(outputs))
        unknown = set(names) - set(outputs)
        if unknown:
            raise ValueError(f"image_grid: rows {sorted(unknown)} are not among the outputs {sorted(outputs)}")
        rows = [to_uint8(np.asarray(outputs[name])[: self.num]) for name in names]
        upscale = self.upscale or max(1, 64 // rows[0].shape[1])
        return EvalResult(images={"grid": make_grid(rows, upscale)})
