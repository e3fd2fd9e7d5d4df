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

import jax
import numpy as np
from PIL import Image

from maskgen import train as train_lib
from maskgen.evaluators.generation import (class_grid, decode_images, decode_settings, generate, grey_masked,
                                           real_images, tokenizer_for, trajectory_rows)
from maskgen.evaluators.image_grid import make_grid, to_uint8

log = logging.getLogger("maskgen")
GENERATORS = ("maskgit", "autoregressive")
HALVES = ("top", "bottom", "left", "right")


class GeneratorHandle:
    """A restored generator run and its tokenizer: `sample(labels)` and `edit(image, mask, label)`."""

    def __init__(self, workdir: str, step: int | None = None, config=None):
        self.workdir = workdir
        self.config = config if config is not None else train_lib.load_run_config(workdir)
        if self.config.recipe not in GENERATORS:
            raise ValueError(f"{workdir} is a {self.config.recipe!r} run; sampling classes and editing need a "
                             f"token generator ({', '.join(GENERATORS)})")
        self.run = train_lib.setup(self.config)
        self.step, self.variables = train_lib.restore_variables(self.run, workdir, step)
        self.info = self.run.recipe.info()
        self.ctx = train_lib.make_eval_context(self.run, self.variables, self.step, workdir)
        self.tokenizer = tokenizer_for(self.info)
        self.num_classes = int(self.info["num_classes"])

    def settings(self, **overrides) -> dict:
        """The run's decoding settings (`config.sampling`) with the non-None `overrides` applied."""
        chosen = {k: v for k, v in overrides.items() if v is not None}
        if self.config.recipe == "autoregressive":
            ignored = set(chosen) - {"temperature", "cfg_scale", "precision"}
            if ignored:
                log.warning("the autoregressive baseline ignores %s", sorted(ignored))
            chosen = {k: v for k, v in chosen.items() if k not in ignored}
            return {k: v for k, v in decode_settings(self.info, chosen).items() if k != "num_steps"}
        return decode_settings(self.info, chosen)

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
        if self.config.recipe != "maskgit":
            raise ValueError("editing needs a masked (maskgit) generator; the autoregressive baseline cannot infill")
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


def load_image(spec: str, tokenizer) -> tuple[np.ndarray, int | None]:
    """An image file (any size: centre-cropped and resized) or `test:INDEX` (an example of the
    tokenizer's dataset), as [H, W, C] in [-1, 1]; also returns the example's label if known."""
    from maskgen.data.pipeline import ToModelInput

    data = tokenizer.config.data
    if spec.startswith(("test:", "train:")):
        split, _, index = spec.partition(":")
        images, labels = real_images(tokenizer, split, int(index) + 1)
        return images[int(index)], int(labels[int(index)])
    channels = tokenizer.run.data_info["image_shape"][-1]
    try:
        with Image.open(spec) as pil:
            pil = pil.convert("L" if channels == 1 else "RGB")
            array = np.asarray(pil).reshape(pil.height, pil.width, channels)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        raise ValueError(f"cannot read image {spec!r}: {err}") from err
    return ToModelInput(data.image_size)({"image": array, "label": 0})["image"], None


def load_mask(spec: str, size: int) -> np.ndarray:
    """A mask PNG (white/non-zero = regenerate; resized to `size` with nearest neighbour) or one of
    top|bottom|left|right (that half of the image), as bool [size, size]."""
    if spec in HALVES:
        mask = np.zeros((size, size), bool)
        half = size // 2
        {"top": mask[:half], "bottom": mask[half:], "left": mask[:, :half], "right": mask[:, half:]}[spec][...] = True
        return mask
    try:
        with Image.open(spec) as pil:
            pil = pil.convert("L").resize((size, size), Image.Resampling.NEAREST)
            return np.asarray(pil) > 127
    except FileNotFoundError:
        raise FileNotFoundError(f"mask {spec!r} not found (give a PNG, or one of {', '.join(HALVES)})") from None
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot read mask {spec!r}: {err}") from err


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
                start_step: int = 0, compare_out: str | None = None, zoom: int = 0, **overrides) -> dict:
    image, _ = load_image(image_spec, handle.tokenizer)
    mask = load_mask(mask_spec, image.shape[0])
    result = handle.edit(image, mask, label, seed=seed, start_step=start_step, **overrides)
    zoom = zoom or max(1, 128 // image.shape[0])
    if jax.process_index() == 0:
        save_png(out, to_uint8(result["edited"]), zoom)
        if compare_out:
            strip = [image, grey_masked(image[None], result["token_mask"][None])[0], result["edited"]]
            save_png(compare_out, make_grid([to_uint8(np.stack(strip))], upscale=zoom))
    return result
