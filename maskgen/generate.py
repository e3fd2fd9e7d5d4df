"""Using a trained generator (MaskGIT, arXiv 2202.04200; the AR baseline; masked discrete diffusion
on text, arXiv 2406.07524; continuous generators such as MAR, arXiv 2406.11838, and DiT, arXiv
2212.09748): `maskgen sample`, `maskgen edit` and `maskgen demo`.

A generator's outputs are decoded by its data's decoder (`maskgen.runs.make_decoder`): token
grids through the tokenizer run named in the token dataset's metadata, scaled latents (continuous
generators on a `maskgen tokenize`d KL dataset) through that KL tokenizer run, pixel arrays
(continuous generators on images) as they are, token ids through the text source's tokenizer.
Which inputs a generator takes comes from the task registry (`maskgen.tasks`): class labels,
nothing, a prefix, or an infill mask. Editing (inpainting, outpainting, class-conditional
editing, text span infilling) is the same `generate` call as
sampling, started from known tokens with the edited region unknown (MaskGIT Sec. 4.3).

Audio (issue 17): a generator on the tokens of an audio tokenizer run (SpecMaskGIT, arXiv
2406.17672: MaskGIT on mel-spectrogram VQ tokens, conditioned on the word) decodes through
`maskgen.runs.AudioDecoder` to waveforms; `maskgen sample` writes WAVs and a spectrogram grid, and
`maskgen edit --audio` regenerates a region of the token grid given by `--mask`: `time:START-END`
(seconds: time inpainting) or `band:low|high:FRACTION` (the lowest or highest FRACTION of the mel
bands: bandwidth extension when the high band is regenerated), joined with `+`.

This sits beside `train.py`, above `maskgen.runs`; recipes never import it.
"""

from __future__ import annotations

import logging
import os
import re

import jax
import numpy as np
from PIL import Image

from maskgen import outputs, tasks
from maskgen.evaluators.generation import class_grid, decode_settings, generate, grey_masked, trajectory_rows
from maskgen.evaluators.image_grid import make_grid, to_uint8
from maskgen.recipes import get_recipe, recipes_with
from maskgen.runs import RunHandle, load_run_config, make_decoder

log = logging.getLogger("maskgen")
HALVES = ("top", "bottom", "left", "right")


class GeneratorHandle(RunHandle):
    """A restored generator run and its decoder: `sample(...)`, `edit(image, mask, label)` and
    `infill_text(prefix, suffix, span)`."""

    def __init__(self, workdir: str, step: int | None = None, config=None):
        config = config if config is not None else load_run_config(workdir)
        if "generate" not in get_recipe(config.recipe).capabilities:
            raise ValueError(f"{workdir} is a {config.recipe!r} run; sampling and editing need a generator "
                             f"({', '.join(recipes_with('generate'))})")
        super().__init__(workdir, step, None, config)
        self.tasks = set(self.recipe.supported_tasks())
        self.decoder = make_decoder(self.config, self.run.data_info)
        if self.decoder is None:
            raise ValueError(f"the {self.config.data.name!r} data of {workdir} has no decoder: its token dataset "
                             "names no tokenizer run, so samples cannot be shown")
        self.kind = self.decoder.kind  # "images", "texts" or "audio"
        self.num_classes = int(self.info.get("num_classes", 0)) if "class" in self.tasks else 0
        # The tokenizer run that decodes token/latent grids (None for pixel and text data). load_image
        # and the edit CLI read the image settings from the decoder (its data_config / channels).
        self.tokenizer = getattr(self.decoder, "tokenizer", None)

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

    def sample(self, labels=None, *, num: int | None = None, seed: int = 0, batch_size: int = 256,
               **overrides) -> dict:
        """Class-conditional samples for `labels`, or `num` unconditional ones. Returns {"tokens", the
        decoded "images" [n, H, W, C] in [-1, 1] or "texts" [str], and for the first batch the decoding
        "trajectory"/"masks" when the generator records them}."""
        if labels is not None and "class" not in self.tasks:
            raise ValueError(f"{self.workdir} is an unconditional generator (tasks: {sorted(self.tasks)}); "
                             "sample without classes")
        if labels is None:
            if "class" in self.tasks:
                raise ValueError(f"{self.workdir} is class-conditional: give the classes to sample")
            out = tasks.generate_unconditional(self.ctx, tuple(self.info["token_shape"]), num or 16,
                                               self.settings(**overrides), seed, batch_size)
        else:
            out = generate(self.ctx, self.check_labels(labels), self.settings(**overrides), seed, batch_size)
        out.update(self.decoder.decode(out["tokens"]))
        return out

    def token_mask(self, pixel_mask: np.ndarray) -> np.ndarray:
        """Pixel mask [H, W] (True = regenerate) -> token mask [h, w]: a token is regenerated if any
        pixel of its patch is."""
        h, w = self.info["token_shape"]
        height, width = pixel_mask.shape
        if height % h or width % w:
            raise ValueError(f"mask {pixel_mask.shape} does not tile into the {h}x{w} token grid")
        return pixel_mask.reshape(h, height // h, w, width // w).any(axis=(1, 3))

    def _require_infill(self) -> None:
        if "infill" not in self.tasks:
            raise ValueError(f"editing needs a generator that can infill ({', '.join(recipes_with('infill'))}); "
                             f"a {self.config.recipe!r} run cannot")

    def _fill(self, batch: dict, seed: int, start_step: int, overrides: dict) -> np.ndarray:
        rows = self.batch_multiple
        batch = {k: np.repeat(v, rows, axis=0) for k, v in batch.items()}
        settings = {**self.settings(**overrides)}
        if start_step:
            settings["start_step"] = int(start_step)
        out = self.apply("generate", batch, jax.random.key(seed), **settings)
        return np.asarray(out["tokens"])[:1]

    def edit(self, image: np.ndarray, pixel_mask: np.ndarray, label: int, *, seed: int = 0,
             start_step: int = 0, **overrides) -> dict:
        """Regenerates the masked region of `image` ([H, W, C] in [-1, 1]) as class `label`.

        The image becomes the generator's data through its decoder's `encode` (token ids, scaled
        latents, or the pixels themselves) and the pixel mask a mask over the generator's position
        grid (info()["token_shape"]). Returns {"edited", "reconstruction" (the decoder's round trip of
        the input), "token_mask"}.
        """
        self._require_infill()
        if self.kind != "images":
            raise ValueError(f"{self.workdir} generates {self.kind}; edit text with infill_text")
        token_mask = self.token_mask(np.asarray(pixel_mask, bool))
        if not token_mask.any():
            raise ValueError("the mask selects no pixels: white (or non-zero) pixels mark the region to regenerate")
        tokens = self.decoder.encode(image[None])
        batch = tasks.infill_batch(tokens, token_mask[None])
        if "class" in self.tasks:
            batch["label"] = self.check_labels([label])
        edited_tokens = self._fill(batch, seed, start_step, overrides)
        return {"edited": self.decoder.decode(edited_tokens)["images"][0],
                "reconstruction": self.decoder.decode(tokens)["images"][0], "token_mask": token_mask}

    def codec_streams(self) -> bool:
        """Whether the tokens are a codec's [frames, K] residual streams (waveform or mel codec), not
        a 2-D [bands, time] grid: the layout follows the tokenizer, not what it decodes to."""
        return self.decoder.tokenizer.info.get("quantizer") == "rvq" and len(self.info["token_shape"]) == 2

    def token_layout(self) -> str:
        """What `audio_token_mask` and the edit picture read the token grid as: "audio" ([frames, K])
        or "log_mel" ([bands, time])."""
        return "audio" if self.codec_streams() else self.decoder.decodes_to

    def audio_mask(self, spec: str) -> np.ndarray:
        """A `--mask` spec for audio (AUDIO_MASK_HELP) -> the token mask over info()["token_shape"]."""
        shape = tuple(self.info["token_shape"])
        if self.codec_streams():  # one token frame per 1 / frame_rate seconds
            return audio_token_mask(spec, shape, "audio", 1.0 / float(self.decoder.tokenizer.info["frame_rate"]))
        return audio_token_mask(spec, shape, self.decoder.decodes_to,
                                self.decoder.seconds_per_frame * self._frames_per_time_token())

    def _frames_per_time_token(self) -> int:
        """Mel frames (log-mel tokenizer) or codec frames per position of the token grid's time axis."""
        shape = tuple(self.info["token_shape"])
        if self.decoder.decodes_to == "log_mel":
            return int(self.decoder.tokenizer.info["mel_frames"]) // shape[1]
        return 1

    def edit_audio(self, audio: np.ndarray, token_mask: np.ndarray, label: int, *, seed: int = 0,
                   start_step: int = 0, **overrides) -> dict:
        """Regenerates the masked tokens of `audio` ([T, 1] in [-1, 1], T the tokenizer data's clip
        length) as class `label`; every other token is kept exactly. Returns {"edited",
        "reconstruction" (the tokenizer's round trip of the input) [T, 1], their "edited_log_mel" /
        "reconstruction_log_mel" [frames, n_mels], "tokens", "edited_tokens", "token_mask",
        "sample_rate"}."""
        self._require_infill()
        if self.kind != "audio":
            raise ValueError(f"{self.workdir} generates {self.kind}; --audio edits need an audio generator")
        token_mask = np.asarray(token_mask, bool)
        if not token_mask.any():
            raise ValueError("the mask selects no tokens")
        tokens = self.decoder.encode(np.asarray(audio, np.float32)[None])
        batch = tasks.infill_batch(tokens, token_mask[None])
        if "class" in self.tasks:
            batch["label"] = self.check_labels([label])
        edited_tokens = self._fill(batch, seed, start_step, overrides)
        decoded = self.decoder.decode(np.concatenate([edited_tokens, tokens]))
        return {"edited": decoded["audio"][0], "reconstruction": decoded["audio"][1],
                "edited_log_mel": decoded["log_mel"][0], "reconstruction_log_mel": decoded["log_mel"][1],
                "tokens": tokens[0], "edited_tokens": edited_tokens[0], "token_mask": token_mask,
                "sample_rate": decoded["sample_rate"]}

    def infill_text(self, prefix: str, suffix: str, span: int, *, seed: int = 0, **overrides) -> dict:
        """Writes `span` new tokens between `prefix` and `suffix`, which stay exactly as given.

        The sequence is laid out as prefix | span unknown tokens | suffix | free tokens (unknown,
        generated and dropped), so the model sees the suffix as the text that follows.
        Returns {"text" (the whole edited text), "fill" (the new part), "tokens"}.
        """
        from maskgen.data import text as text_lib

        self._require_infill()
        if self.kind != "texts":
            raise ValueError(f"{self.workdir} generates {self.kind}; text infilling needs a text run")
        length = int(np.prod(self.info["token_shape"]))
        head, tail = text_lib.encode(prefix), text_lib.encode(suffix)
        if span < 1:
            raise ValueError(f"the span to fill must be at least 1 token, got {span}")
        used = len(head) + span + len(tail)
        if used > length:
            raise ValueError(f"prefix ({len(head)} tokens) + span ({span}) + suffix ({len(tail)} tokens) = {used} "
                             f"tokens, longer than the model's {length} positions; shorten them")
        tokens = np.zeros((1, length), np.int32)
        known = np.zeros((1, length), bool)
        tokens[0, :len(head)], known[0, :len(head)] = head, True
        tokens[0, len(head) + span:used], known[0, len(head) + span:used] = tail, True
        filled = self._fill(tasks.infill_batch(tokens, ~known), seed, 0, overrides)[0]
        if not np.array_equal(filled[known[0]], tokens[0][known[0]]):
            raise RuntimeError("the generator changed given tokens; this is a bug in its infill")
        fill = filled[len(head):len(head) + span]
        return {"text": text_lib.decode(filled[:used]), "fill": text_lib.decode(fill), "tokens": filled[:used],
                "prefix": prefix, "suffix": suffix}


# --------------------------------------------------------------------------------------------
# Image files in and out.
# --------------------------------------------------------------------------------------------
def save_png(path: str, image_uint8: np.ndarray, zoom: int = 1) -> str:
    return outputs.write_png(path, image_uint8, zoom)


def _is_example(spec: str) -> bool:
    return spec.startswith(("test:", "train:"))


def _image_settings(images_from) -> tuple:
    """(data config group, channels) of the images a decoder decodes to: a decoder's `data_config` /
    `channels`, or a TokenizerHandle's own config and data (the older argument)."""
    if hasattr(images_from, "data_config"):
        return images_from.data_config, int(images_from.channels)
    return images_from.config.data, int(images_from.run.data_info["image_shape"][-1])


def _dataset_example(spec: str, images_from) -> tuple[np.ndarray, int]:
    """`test:INDEX` / `train:INDEX`: that example of the decoder's image dataset (uint8 [H, W, C]) and its label."""
    from maskgen.data import make_source

    split, _, index = spec.partition(":")
    data, _ = _image_settings(images_from)
    source = make_source(data.name, split, data.data_dir or None)
    n = len(source)
    valid = f"the {split} split has {n} examples" + (f" (0..{n - 1})" if n else "")
    if not re.fullmatch(r"[+-]?\d+", index.strip()):
        raise ValueError(f"{spec} is not {split}:INDEX with a whole-number INDEX: {valid}")
    if not 0 <= int(index) < n:
        raise ValueError(f"{spec} is out of range: {valid}")
    example = source[int(index)]  # only this example: decoding the first INDEX + 1 would be slow for large INDEX
    return example["image"], int(example["label"])


def load_image(spec: str, images_from) -> tuple[np.ndarray, int | None]:
    """An image file (any size: centre-cropped and resized) or `test:INDEX` (an example of the
    image dataset), as [H, W, C] in [-1, 1]; also returns the example's label if known.

    images_from: the generator's decoder (`GeneratorHandle.decoder`): the tokenizer run's data for
    token and latent data, the run's own data for pixel data; or a TokenizerHandle.
    16-bit, 32-bit and float files are scaled to 8 bits (maskgen.data.prepare.to_8bit), not clipped.
    """
    from maskgen.data.pipeline import ToModelInput
    from maskgen.data.prepare import to_8bit

    data, channels = _image_settings(images_from)
    if _is_example(spec):
        array, label = _dataset_example(spec, images_from)
        return ToModelInput(data.image_size)({"image": array, "label": label})["image"], label
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
            decode = lambda t: handle.decoder.decode(t)["images"]  # noqa: E731
            rows = trajectory_rows(decode, result["trajectory"], result["masks"], 1)
            save_png(trajectory_out, make_grid(rows, upscale=max(1, 64 // result["images"].shape[1])))
    return result


def sample_to_file(handle: GeneratorHandle, out: str, *, num: int, classes=None, seed: int = 0,
                   trajectory_out: str | None = None, **overrides) -> dict:
    """`maskgen sample` for any generator: a PNG grid for images (`num` per class), WAVs and a
    spectrogram grid in the folder `out` for audio (`num` per class), or for text `num` samples in
    one UTF-8 file (and the result, whose "texts" the CLI prints)."""
    if handle.kind == "audio":
        if trajectory_out:
            raise ValueError("--trajectory-out applies to image generators")
        return sample_to_wavs(handle, out, num_per_class=num, classes=classes, seed=seed, **overrides)
    if handle.kind == "images":
        return sample_to_png(handle, out, num_per_class=num, classes=classes, seed=seed,
                             trajectory_out=trajectory_out, **overrides)
    if classes is not None or trajectory_out:
        raise ValueError("--classes and --trajectory-out apply to class-conditional image generators")
    result = handle.sample(num=num, seed=seed, **overrides)
    if jax.process_index() == 0:
        outputs.write_text(out, outputs.join_samples(result["texts"]))
    return result


def infill_text_to_file(handle: GeneratorHandle, prefix: str, suffix: str, span: int, out: str, *, seed: int = 0,
                        **overrides) -> dict:
    """`maskgen edit` on a text run: fills `span` tokens between prefix and suffix; writes the text."""
    result = handle.infill_text(prefix, suffix, span, seed=seed, **overrides)
    if jax.process_index() == 0:
        outputs.write_text(out, result["text"])
    return result


def edit_to_png(handle: GeneratorHandle, image_spec: str, mask_spec: str, label: int, out: str, *, seed: int = 0,
                start_step: int = 0, compare_out: str | None = None, zoom: int = 0, resize_mask: bool = False,
                **overrides) -> dict:
    # The decoder knows which data the images come from (a bare handle with only a tokenizer still works).
    image, _ = load_image(image_spec, getattr(handle, "decoder", None) or handle.tokenizer)
    mask = load_mask(mask_spec, image.shape[0], image_shape=image_file_shape(image_spec), resize=resize_mask)
    result = handle.edit(image, mask, label, seed=seed, start_step=start_step, **overrides)
    zoom = zoom or max(1, 128 // image.shape[0])
    if jax.process_index() == 0:
        save_png(out, to_uint8(result["edited"]), zoom)
        if compare_out:
            strip = [image, grey_masked(image[None], result["token_mask"][None])[0], result["edited"]]
            save_png(compare_out, make_grid([to_uint8(np.stack(strip))], upscale=zoom))
    return result


# --------------------------------------------------------------------------------------------
# Audio in and out.
# --------------------------------------------------------------------------------------------
AUDIO_MASK_HELP = ("time:START-END (seconds: regenerate that stretch, time inpainting; time:START- continues from "
                   "START to the end), band:low:FRACTION or "
                   "band:high:FRACTION (regenerate the lowest/highest FRACTION of the mel bands: band:high:0.5 is "
                   "bandwidth extension); join several with +")


def audio_token_mask(spec: str, token_shape: tuple, decodes_to: str, seconds_per_time_token: float) -> np.ndarray:
    """A mask spec (AUDIO_MASK_HELP) -> bool token mask (True = regenerate) over `token_shape`.

    A mel tokenizer's grid is [mel bands, time] (row 0 the lowest band); a codec's is [time, K]
    (every level of a masked frame is regenerated, and it has no bands). A token is masked when
    any part of its time span lies in [START, END)."""
    if decodes_to == "log_mel":
        bands, times = token_shape[0], token_shape[1]
        time_axis = 1
    elif decodes_to == "audio":
        bands, times, time_axis = None, token_shape[0], 0
    else:
        raise ValueError(f"audio masks apply to audio tokenizers, not decodes_to={decodes_to!r}")
    mask = np.zeros(token_shape, bool)
    duration = times * seconds_per_time_token
    for part in spec.split("+"):
        kind, _, rest = part.strip().partition(":")
        if kind == "time":
            # time:START- (no END) continues the audio from START to the end of the clip.
            match = re.fullmatch(r"\s*([0-9.]+)\s*-\s*([0-9.]*)\s*", rest)
            try:
                start, end = (float(match.group(1)), float(match.group(2) or duration)) if match else (None, None)
            except ValueError:
                start = end = None
            if match is None or not 0 <= start < end:
                raise ValueError(f"--mask {part!r}: give time:START-END (or time:START- to the end) in seconds with "
                                 f"0 <= START < END "
                                 f"(the clip is {duration:g} s)")
            if start >= duration:
                raise ValueError(f"--mask {part!r}: starts at or after the end of the {duration:g} s clip")
            first = int(np.floor(start / seconds_per_time_token))
            last = min(times, int(np.ceil(end / seconds_per_time_token)))
            index = [slice(None)] * len(token_shape)
            index[time_axis] = slice(first, last)
            mask[tuple(index)] = True
        elif kind == "band":
            side, _, fraction = rest.partition(":")
            if bands is None:
                raise ValueError(f"--mask {part!r}: band masks need a mel tokenizer; this run's tokens are codec "
                                 "frames (use time:START-END)")
            try:
                fraction = float(fraction)
            except ValueError:
                fraction = -1.0
            if side not in ("low", "high") or not 0 < fraction <= 1:
                raise ValueError(f"--mask {part!r}: give band:low:FRACTION or band:high:FRACTION with 0 < FRACTION <= 1")
            rows = max(1, int(round(fraction * bands)))
            mask[:rows] = mask[:rows] | (side == "low")
            mask[bands - rows:] = mask[bands - rows:] | (side == "high")
        else:
            raise ValueError(f"--mask {part!r}: unknown audio mask; {AUDIO_MASK_HELP}")
    return mask


def load_audio(spec: str, decoder) -> tuple[np.ndarray, int | None]:
    """A WAV/FLAC file or `test:INDEX` / `train:INDEX` (an example of the tokenizer run's data), as
    float32 [T, 1] at the tokenizer data's sample rate and clip length T; also the example's label
    if known. A file goes through the audio sources' checks (maskgen.data.audio_files.load_clip):
    a corrupt file or a stereo one is refused, naming the file and the reason; another sample rate
    is resampled (the log says from which rate); a shorter or longer file is zero-padded or cut
    around its centre to T, as the speech source makes its clips."""
    from maskgen.data import data_options, make_source

    length = decoder.num_samples
    if _is_example(spec):
        split, _, index = spec.partition(":")
        data = decoder.tokenizer.config.data
        source = make_source(data.name, split, data.data_dir or None, data_options(data))
        n = len(source)
        valid = f"the {split} split has {n} examples" + (f" (0..{n - 1})" if n else "")
        if not re.fullmatch(r"[+-]?\d+", index.strip()) or not 0 <= int(index) < n:
            raise ValueError(f"{spec} is not {split}:INDEX with INDEX in range: {valid}")
        example = source[int(index)]
        return np.asarray(example["audio"], np.float32).reshape(-1, 1), int(example["label"])
    from maskgen.data.audio_files import AudioOptions, load_clip, read_info

    if not os.path.exists(spec):
        raise FileNotFoundError(f"audio file {spec!r} not found (give a WAV/FLAC file, or test:INDEX)")
    rate = read_info(spec)[0]  # refuses a corrupt or truncated file, naming it
    if rate != decoder.sample_rate:
        log.info("%s: resampling from %d Hz to the tokenizer's %d Hz", spec, rate, decoder.sample_rate)
    # Mono only (a stereo file is refused, naming its channel count); centred to the clip length.
    options = AudioOptions(sample_rate=decoder.sample_rate, clip_seconds=length / decoder.sample_rate,
                           resample=True, mix_to_mono=False)
    return load_clip(spec, options), None


def _spectrogram(log_mel: np.ndarray) -> np.ndarray:
    from maskgen.evaluators.audio import spectrogram_image

    return spectrogram_image(np.asarray(log_mel))


def _grey_tokens(image: np.ndarray, token_mask: np.ndarray, decodes_to: str) -> np.ndarray:
    """A spectrogram image [n_mels, frames, 3] (low bands at the bottom) with the masked tokens grey."""
    height, width = image.shape[:2]
    if decodes_to == "log_mel":
        grid = token_mask[::-1]  # row 0 of the token grid is the lowest band: the image's bottom
    else:
        grid = token_mask.any(axis=1)[None, :]  # codec: a time mask over frames
    rows = np.repeat(np.arange(grid.shape[0]), -(-height // grid.shape[0]))[:height]
    cols = np.repeat(np.arange(grid.shape[1]), -(-width // grid.shape[1]))[:width]
    pixel_mask = grid[rows][:, cols]
    return np.where(pixel_mask[..., None], np.uint8(128), image)


def sample_to_wavs(handle: GeneratorHandle, out_dir: str, *, num_per_class: int, classes=None, seed: int = 0,
                   **overrides) -> dict:
    """Writes `num_per_class` samples of each class as WAVs (`out_dir/<class name>_<i>.wav`) and a
    spectrogram grid (`out_dir/spectrograms.png`, one row per class); returns the sample arrays."""
    if "class" in handle.tasks:
        classes = list(range(handle.num_classes)) if classes is None else list(classes)
        labels = np.repeat(np.asarray(classes, np.int32), num_per_class)
        result = handle.sample(labels, seed=seed, **overrides)
    else:
        if classes is not None:
            raise ValueError(f"{handle.workdir} is an unconditional generator: sample without --classes")
        labels, classes = np.zeros(num_per_class, np.int32), [0]
        result = handle.sample(num=num_per_class, seed=seed, **overrides)
    names = handle.decoder.class_names
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        paths, rows = [], []
        for c in classes:
            picked = np.flatnonzero(labels == c)
            name = names[c] if "class" in handle.tasks and c < len(names) else (f"class{c}" if "class" in handle.tasks
                                                                                  else "sample")
            for i, row in enumerate(picked):
                paths.append(outputs.write_wav(os.path.join(out_dir, f"{name}_{i}.wav"), result["audio"][row],
                                               result["sample_rate"]))
            rows.append(np.stack([_spectrogram(result["log_mel"][row]) for row in picked]))
        save_png(os.path.join(out_dir, "spectrograms.png"), make_grid(rows, upscale=2))
        result["paths"] = paths
    result["labels"] = labels
    return result


def edit_to_wav(handle: GeneratorHandle, audio_spec: str, mask_spec: str, label: int | None, out: str, *,
                seed: int = 0, start_step: int = 0, compare_out: str | None = None, **overrides) -> dict:
    """`maskgen edit --audio`: regenerates the `mask_spec` region (AUDIO_MASK_HELP) of the audio as
    class `label` (default: the example's own label for test:INDEX); writes the WAV, and with
    `compare_out` a PNG of three spectrograms: the input's round trip, it with the regenerated
    tokens grey, and the result."""
    audio, example_label = load_audio(audio_spec, handle.decoder)
    if label is None:
        if handle.num_classes and example_label is None:
            raise ValueError(f"{handle.workdir} is class-conditional: give --class (one of 0..{handle.num_classes - 1})")
        label = example_label or 0
    result = handle.edit_audio(audio, handle.audio_mask(mask_spec), label, seed=seed, start_step=start_step,
                               **overrides)
    if jax.process_index() == 0:
        outputs.write_wav(out, result["edited"], result["sample_rate"])
        if compare_out:
            original = _spectrogram(result["reconstruction_log_mel"])
            strip = [original, _grey_tokens(original, result["token_mask"], handle.token_layout()),
                     _spectrogram(result["edited_log_mel"])]
            save_png(compare_out, make_grid([np.stack(strip)], upscale=2))
    return result


# ---------------------------------------------------------------- MaskGCT: zero-shot voice prompting

def load_prompt(spec: str, sample_rate: int, data_config=None) -> tuple[np.ndarray, str | None, str | None]:
    """A voice prompt for MaskGCT: (float32 [T] cut to its sound, what it says or None, its voice or None).

    `test:INDEX` / `train:INDEX`: the prompt part of that example of the run's speech data (concat=2:
    the prompt clip; single clips: the clip), with its word and voice. A WAV/FLAC file must be mono at
    `sample_rate`: another rate is an error naming both rates (a prompt is not resampled silently)."""
    from maskgen.data.speech import trim_silence

    if _is_example(spec):
        from maskgen.data import data_options, make_source, source_info
        from maskgen.data.speech import VOICES

        split, _, index = spec.partition(":")
        options = data_options(data_config)
        source = make_source(data_config.name, split, data_config.data_dir or None, options)
        names = list(source_info(data_config.name, data_config.data_dir or None, options).get("class_names") or [])
        n = len(source)
        if not re.fullmatch(r"[+-]?\d+", index.strip()) or not 0 <= int(index) < n:
            raise ValueError(f"{spec} is not {split}:INDEX with INDEX in range: the {split} split has {n} examples")
        example = source[int(index)]
        audio = np.asarray(example["audio"], np.float32).reshape(-1)
        label = int(example.get("prompt_label", example["label"]))
        end = int(example.get("prompt_samples") or example.get("num_samples") or audio.size)
        voice = example.get("voice")
        return (trim_silence(audio[:end], sample_rate), names[label] if label < len(names) else None,
                VOICES[int(voice)] if voice is not None else None)
    from maskgen.data.audio_files import AudioOptions, load_clip, read_info

    if not os.path.exists(spec):
        raise FileNotFoundError(f"prompt audio {spec!r} not found (give a mono WAV/FLAC file, or test:INDEX)")
    rate, _, frames = read_info(spec)
    if rate != sample_rate:
        raise ValueError(f"prompt audio {spec} is {rate} Hz, but the MaskGCT runs take {sample_rate} Hz audio; "
                         f"resample it to {sample_rate} Hz first (prompts are not resampled silently)")
    clip = load_clip(spec, AudioOptions(sample_rate=rate, clip_seconds=frames / rate, resample=False,
                                        mix_to_mono=False))[:, 0]
    trimmed = trim_silence(clip, sample_rate)
    if trimmed.size == 0:
        raise ValueError(f"prompt audio {spec} is silent")
    return trimmed, None, None


def maskgct_sample_to_wavs(s2a_workdir: str, t2s_workdir: str, text: str, prompt_spec: str, out_dir: str, *,
                           prompt_text: str | None = None, num: int = 1, seed: int = 0, duration: float | None = None,
                           t2s_settings: dict | None = None, s2a_settings: dict | None = None) -> dict:
    """`maskgen sample --workdir S2A --t2s-workdir T2S --text TEXT --prompt-audio FILE|test:N`: says TEXT in
    the prompt's voice (MaskGCT, arXiv 2409.00750; `maskgen.recipes.maskgct.maskgct_generate`) `num`
    times and writes out_dir/prompt.wav, <text>_<i>.wav (the generated part) and
    <text>_<i>_with_prompt.wav. `duration`: target seconds (default: the prompt's phone rate)."""
    from maskgen.recipes.maskgct import maskgct_generate, open_voice_runs

    if not text or not text.strip():
        raise ValueError("--text: give the text to say (words; it is phonemised with eSpeak NG)")
    s2a, t2s = open_voice_runs(s2a_workdir, t2s_workdir)
    rate = s2a.recipe.sample_rate
    prompt, said, voice = load_prompt(prompt_spec, rate, s2a.config.data)
    prompt_text = prompt_text or said
    if not prompt_text:
        raise ValueError(f"--prompt-text: say what {prompt_spec} says (MaskGCT puts the prompt's phonemes before the "
                         "text's, and its phone rate sets the duration)")
    frames = None if duration is None else max(1, int(round(duration * s2a.recipe.frame_rate)))
    result = maskgct_generate(t2s, s2a, [text] * num, np.repeat(prompt[None], num, axis=0), [prompt_text] * num,
                              seed=seed, target_frames_override=frames, t2s_settings=t2s_settings,
                              s2a_settings=s2a_settings)
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9]+", "_", text.strip()).strip("_") or "sample"
        paths = [outputs.write_wav(os.path.join(out_dir, "prompt.wav"), prompt, rate)]
        for i in range(num):
            paths.append(outputs.write_wav(os.path.join(out_dir, f"{name}_{i}.wav"),
                                           result["target_audio"][i, :result["target_samples"][i]], rate))
            end = result["prompt_samples"][i] + result["target_samples"][i]
            paths.append(outputs.write_wav(os.path.join(out_dir, f"{name}_{i}_with_prompt.wav"),
                                           result["audio"][i, :end], rate))
        result["paths"] = paths
    result.update(prompt_text=prompt_text, voice=voice)
    return result


def label_of_word(handle: GeneratorHandle, word: str) -> int:
    """`--text WORD` for a class-conditional audio run (MAGNeT, SpecMaskGIT): the word's class index."""
    names = [str(n).lower() for n in (handle.decoder.class_names or handle.info.get("words") or [])]
    if not names:
        raise ValueError(f"{handle.workdir} has no word list to map --text to a class; use --classes")
    if word.strip().lower() not in names:
        raise ValueError(f"--text {word!r} is not a word of {handle.workdir}: its words are {', '.join(names)}")
    return names.index(word.strip().lower())
