"""Using a trained token generator (MaskGIT, arXiv 2202.04200, or the AR baseline): `maskgen sample`,
`maskgen edit` and `maskgen demo`.

A generator run's tokens come from a tokenizer run, named in the token dataset's metadata; this
module restores both, samples token grids with the recipe's `generate` and decodes them. Editing
(inpainting, outpainting, class-conditional editing) is the same `iterative_decode` call as
sampling, started from the tokens of an input image with the masked region unknown (MaskGIT Sec. 4.3).

Like `tokenize.py`, this sits beside `train.py`; recipes never import it.
"""

from __future__ import annotations

import logging
import os
import re

import jax
import numpy as np
from PIL import Image

from maskgen import train as train_lib
from maskgen.evaluators.generation import (class_grid, decode_images, decode_settings, generate, grey_masked,
                                           tokenizer_for, trajectory_rows)
from maskgen.evaluators.image_grid import make_grid, to_uint8
from maskgen.recipes import get_recipe, recipes_with

log = logging.getLogger("maskgen")
HALVES = ("top", "bottom", "left", "right")


class GeneratorHandle:
    """A restored generator run and its tokenizer: `sample(labels)` and `edit(image, mask, label)`."""

    def __init__(self, workdir: str, step: int | None = None, config=None):
        self.workdir = workdir
        self.config = config if config is not None else train_lib.load_run_config(workdir)
        self.recipe_cls = get_recipe(self.config.recipe)
        if "generate" not in self.recipe_cls.capabilities:
            raise ValueError(f"{workdir} is a {self.config.recipe!r} run; sampling classes and editing need a "
                             f"token generator ({', '.join(recipes_with('generate'))})")
        self.run = train_lib.setup(self.config)
        self.step, self.variables = train_lib.restore_variables(self.run, workdir, step)
        self.info = self.run.recipe.info()
        self.ctx = train_lib.make_eval_context(self.run, self.variables, self.step, workdir)
        self.tokenizer = tokenizer_for(self.info)
        self.num_classes = int(self.info["num_classes"])

    def settings(self, **overrides) -> dict:
        """The run's decoding settings (`config.sampling`) with the non-None `overrides` applied."""
        chosen = {k: v for k, v in overrides.items() if v is not None}
        used = self.recipe_cls.decode_options
        if used is None:
            return decode_settings(self.info, chosen)
        ignored = set(chosen) - set(used)
        if ignored:
            log.warning("a %r run ignores %s", self.config.recipe, sorted(ignored))
        return {k: v for k, v in decode_settings(self.info, chosen).items() if k in used}

    def check_labels(self, labels) -> np.ndarray:
        labels = np.asarray(labels, np.int32)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(f"class {int(bad[0])} is out of range: this run has classes 0..{self.num_classes - 1}")
        return labels

    def sample(self, labels, *, seed: int = 0, batch_size: int = 256, **overrides) -> dict:
        """{"images" [n, H, W, C] in [-1, 1], "tokens", and for the first batch "trajectory"/"masks"}."""
        out = generate(self.ctx, self.check_labels(labels), self.settings(**overrides), seed, batch_size)
        out["images"] = decode_images(self.tokenizer, out["tokens"])
        return out

    def token_mask(self, pixel_mask: np.ndarray) -> np.ndarray:
        """Pixel mask [H, W] (True = regenerate) -> token mask [h, w]: a token is regenerated if any
        pixel of its patch is."""
        h, w = self.info["token_shape"]
        height, width = pixel_mask.shape
        if height % h or width % w:
            raise ValueError(f"mask {pixel_mask.shape} does not tile into the {h}x{w} token grid")
        return pixel_mask.reshape(h, height // h, w, width // w).any(axis=(1, 3))

    def edit(self, image: np.ndarray, pixel_mask: np.ndarray, label: int, *, seed: int = 0,
             start_step: int = 0, **overrides) -> dict:
        """Regenerates the masked region of `image` ([H, W, C] in [-1, 1]) as class `label`.

        Returns {"edited", "reconstruction" (the tokenizer's round trip of the input), "token_mask"}.
        """
        if "infill" not in self.recipe_cls.capabilities:
            raise ValueError(f"editing needs a generator that can infill ({', '.join(recipes_with('infill'))}); "
                             f"a {self.config.recipe!r} run cannot")
        label = self.check_labels([label])
        token_mask = self.token_mask(np.asarray(pixel_mask, bool))
        if not token_mask.any():
            raise ValueError("the mask selects no pixels: white (or non-zero) pixels mark the region to regenerate")
        tokens = self.tokenizer.encode(image[None])
        rows = self.ctx.batch_multiple
        batch = {"label": np.repeat(label, rows), "tokens": np.repeat(tokens, rows, axis=0),
                 "known": np.repeat(~token_mask[None], rows, axis=0)}
        settings = {**self.settings(**overrides), "start_step": int(start_step)}
        out = self.ctx.to_host(self.ctx.apply("generate", self.variables, self.ctx.shard(batch),
                                              jax.random.key(seed), **settings))
        edited = decode_images(self.tokenizer, np.asarray(out["tokens"])[:1])[0]
        return {"edited": edited, "reconstruction": decode_images(self.tokenizer, tokens)[0],
                "token_mask": token_mask}


# --------------------------------------------------------------------------------------------
# Image files in and out.
# --------------------------------------------------------------------------------------------
def save_png(path: str, image_uint8: np.ndarray, zoom: int = 1) -> str:
    image = np.repeat(np.repeat(image_uint8, zoom, axis=0), zoom, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    return path


def _is_example(spec: str) -> bool:
    return spec.startswith(("test:", "train:"))


def _dataset_example(spec: str, tokenizer) -> tuple[np.ndarray, int]:
    """`test:INDEX` / `train:INDEX`: that example of the tokenizer's dataset (uint8 [H, W, C]) and its label."""
    from maskgen.data import make_source

    split, _, index = spec.partition(":")
    data = tokenizer.config.data
    source = make_source(data.name, split, data.data_dir or None)
    n = len(source)
    valid = f"the {split} split has {n} examples" + (f" (0..{n - 1})" if n else "")
    if not re.fullmatch(r"[+-]?\d+", index.strip()):
        raise ValueError(f"{spec} is not {split}:INDEX with a whole-number INDEX: {valid}")
    if not 0 <= int(index) < n:
        raise ValueError(f"{spec} is out of range: {valid}")
    example = source[int(index)]  # only this example: decoding the first INDEX + 1 would be slow for large INDEX
    return example["image"], int(example["label"])


def load_image(spec: str, tokenizer) -> tuple[np.ndarray, int | None]:
    """An image file (any size: centre-cropped and resized) or `test:INDEX` (an example of the
    tokenizer's dataset), as [H, W, C] in [-1, 1]; also returns the example's label if known.

    16-bit, 32-bit and float files are scaled to 8 bits (maskgen.data.prepare.to_8bit), not clipped.
    """
    from maskgen.data.pipeline import ToModelInput
    from maskgen.data.prepare import to_8bit

    data = tokenizer.config.data
    if _is_example(spec):
        array, label = _dataset_example(spec, tokenizer)
        return ToModelInput(data.image_size)({"image": array, "label": label})["image"], label
    channels = tokenizer.run.data_info["image_shape"][-1]
    try:
        with Image.open(spec) as pil:
            pil = to_8bit(pil).convert("L" if channels == 1 else "RGB")
            array = np.asarray(pil).reshape(pil.height, pil.width, channels)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        raise ValueError(f"cannot read image {spec!r}: {err}") from err
    return ToModelInput(data.image_size)({"image": array, "label": 0})["image"], None


def image_file_shape(spec: str) -> tuple[int, int] | None:
    """(height, width) of an image file as stored, or None for `test:INDEX` (no file)."""
    if _is_example(spec):
        return None
    with Image.open(spec) as pil:  # reads the header only
        return pil.height, pil.width


def load_mask(spec: str, size: int, *, image_shape: tuple[int, int] | None = None,
              resize: bool = False) -> np.ndarray:
    """A mask PNG (white/non-zero = regenerate) or one of top|bottom|left|right (that half of the
    image), as bool [size, size] over the model's input image.

    A PNG must be as large as the image: `image_shape` (height, width) of the image file, and the
    mask is then centre-cropped and resized (nearest neighbour) to size x size like the image; or
    size x size when there is no file (test:INDEX). Another size is refused, because stretching
    it would move the region off what it was drawn on; resize=True (`--resize-mask`) stretches it
    to the image's size anyway, with nearest neighbour.
    """
    if spec in HALVES:
        mask = np.zeros((size, size), bool)
        half = size // 2
        {"top": mask[:half], "bottom": mask[half:], "left": mask[:, :half], "right": mask[:, half:]}[spec][...] = True
        return mask
    from maskgen.data.prepare import to_8bit

    height, width = image_shape or (size, size)
    try:
        with Image.open(spec) as pil:
            pil = to_8bit(pil).convert("L")
    except FileNotFoundError:
        raise FileNotFoundError(f"mask {spec!r} not found (give a PNG, or one of {', '.join(HALVES)})") from None
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot read mask {spec!r}: {err}") from err
    if pil.size != (width, height):
        if not resize:
            raise ValueError(f"mask {spec!r} is {pil.width}x{pil.height} pixels but the image is {width}x{height}: "
                             "make the mask the image's size, or pass --resize-mask to resize it (nearest neighbour)")
        pil = pil.resize((width, height), Image.Resampling.NEAREST)
    if (height, width) != (size, size):  # the image's own centre square crop and resize
        side = min(height, width)
        left, top = (width - side) // 2, (height - side) // 2
        pil = pil.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(pil) > 127


def sample_to_png(handle: GeneratorHandle, out: str, *, num_per_class: int, classes=None, seed: int = 0,
                  trajectory_out: str | None = None, **overrides) -> dict:
    """Writes a grid (one row per class, `num_per_class` columns); returns the sample arrays."""
    classes = list(range(handle.num_classes)) if classes is None else list(classes)
    labels = np.repeat(np.asarray(classes, np.int32), num_per_class)
    result = handle.sample(labels, seed=seed, **overrides)
    if jax.process_index() == 0:
        save_png(out, class_grid(result["images"], labels, classes, num_per_class))
        if trajectory_out and "trajectory" in result:
            rows = trajectory_rows(handle.tokenizer, result["trajectory"], result["masks"], 1)
            save_png(trajectory_out, make_grid(rows, upscale=max(1, 64 // result["images"].shape[1])))
    return result


def edit_to_png(handle: GeneratorHandle, image_spec: str, mask_spec: str, label: int, out: str, *, seed: int = 0,
                start_step: int = 0, compare_out: str | None = None, zoom: int = 0, resize_mask: bool = False,
                **overrides) -> dict:
    image, _ = load_image(image_spec, handle.tokenizer)
    mask = load_mask(mask_spec, image.shape[0], image_shape=image_file_shape(image_spec), resize=resize_mask)
    result = handle.edit(image, mask, label, seed=seed, start_step=start_step, **overrides)
    zoom = zoom or max(1, 128 // image.shape[0])
    if jax.process_index() == 0:
        save_png(out, to_uint8(result["edited"]), zoom)
        if compare_out:
            strip = [image, grey_masked(image[None], result["token_mask"][None])[0], result["edited"]]
            save_png(compare_out, make_grid([to_uint8(np.stack(strip))], upscale=zoom))
    return result
