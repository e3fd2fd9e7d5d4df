"""Writes datasets (sklearn digits, folders of images, synthesised speech, folders of audio clips) as
maskgen ArrayRecord directories.

Output: per split, shards f"{split}.array_record-{i:05d}-of-{n:05d}" and, written last
and atomically, metadata.json. Any metadata.json already in out_dir is deleted first,
so a failed run never leaves one behind that claims success.

Image folder layout (class names sorted; label = index in that order):

* in_dir/<class>/**/<image>: one class per subfolder; a stable hash of each file's
  path relative to in_dir sends about test_fraction of the files to "test": the file
  goes to test when int.from_bytes(sha256(relpath).digest()[:8], "big") < test_fraction * 2**64
  (relpath in POSIX form, e.g. "cat/001.png").
* in_dir/train/<class>/... plus in_dir/test/<class>/... (or val/ when there is no test/):
  those folders are the "train" and "test" splits; test_fraction is ignored. Classes come
  from train/, and a test class missing from train/ is an error.
* Images directly in in_dir (or directly in train/ and test/) with no class folders form
  one class named after in_dir's folder name (num_classes 1).

Images are files ending in .png/.jpg/.jpeg/.bmp/.gif/.webp (any case); hidden files and
folders are ignored. Each is fully decoded with PIL, EXIF-rotated, converted to RGB (16-bit,
32-bit and float images scaled to 8 bits first, see to_8bit), center-cropped to a square and
resized to resolution x resolution with Lanczos (antialiased). Images smaller than the resolution
or more elongated than MAX_ASPECT are kept and listed under "warnings"; min_size skips small ones.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import logging
import os

import numpy as np

from maskgen.data import digits, records

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_ASPECT = 4  # a longer side over 4x the shorter one gets a warning: the square crop drops most of it


class BadImageError(ValueError):
    """An image file that PIL cannot fully decode; `path` and `reason` are attributes."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(
            f"cannot read image {path}: {reason}. Fix or delete the file, or pass --skip-bad "
            "(skip_bad=True) to skip unreadable images and list them in metadata.json."
        )


def to_8bit(img):
    """A PIL image whose pixels fit 0..255, so PIL's convert("L"/"RGB") does not clip them.

    PIL converts 16-bit ("I;16*"), 32-bit ("I") and float ("F") images to 8 bits by clipping,
    which turns most 16-bit pictures white. Here they are scaled instead, to a greyscale "L" image:
    16-bit values by 1/257 (65535 -> 255); "I" images whose values fit 0..65535 the same way (PIL
    opens some 16-bit files as "I"), other "I" images from 0..2**31-1 (negatives become 0); floats
    from 0..1 (values outside are clipped, NaN becomes 0). Other modes are returned unchanged.
    """
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img).astype(np.float64)
        fits_16_bits = values.min(initial=0) >= 0 and values.max(initial=0) <= 65535
        values = values * (255.0 / (65535.0 if fits_16_bits else 2.0**31 - 1))
    elif img.mode == "F":
        values = np.nan_to_num(np.asarray(img, np.float64), nan=0.0) * 255.0
    else:
        return img
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def _open_rgb(path: str):
    """Decodes one file fully to an EXIF-rotated RGB PIL image; raises BadImageError if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()  # decode everything now, so truncated files fail here
            return to_8bit(ImageOps.exif_transpose(img)).convert("RGB")
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, EOFError, ...
        raise BadImageError(path, f"{type(e).__name__}: {e}") from e


def _square(img, resolution: int, path: str) -> np.ndarray:
    """Centre square crop of an RGB PIL image, resized (Lanczos) to uint8 [resolution, resolution, 3]."""
    from PIL import Image

    try:
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != resolution:
            img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
        return np.asarray(img, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise BadImageError(path, f"{type(e).__name__}: {e}") from e


def load_image(path: str, resolution: int) -> np.ndarray:
    """Decodes one file to uint8 [resolution, resolution, 3]; raises BadImageError if unreadable."""
    return _square(_open_rgb(path), resolution, path)


def size_warning(width: int, height: int, resolution: int) -> str | None:
    """Why an image of width x height makes a poor `resolution` example (None if it does not).

    Smaller than the resolution: it is upscaled, so the example is blurry. An aspect ratio above
    MAX_ASPECT: the centre square crop keeps under 1/MAX_ASPECT of it.
    """
    problems = []
    short, long = min(width, height), max(width, height)
    if short < resolution:
        problems.append(f"smaller than --resolution {resolution}: upscaled {resolution / short:.1f}x")
    if long > MAX_ASPECT * short:
        problems.append(f"aspect ratio {long / short:.1f} > {MAX_ASPECT}: the centre crop keeps {short / long:.0%} of it")
    return f"{width}x{height}, " + "; ".join(problems) if problems else None


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_below(root: str) -> list[str]:
    """Image paths under root (recursive, hidden entries skipped), sorted, relative to root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        found += [os.path.normpath(os.path.join(rel, f)) for f in filenames if _is_image(f)]
    return sorted(found)


def _scan_classes(root: str, single_class_name: str) -> dict[str, list[str]]:
    """{class_name: [absolute image paths]} for one folder of class subfolders (or loose images)."""
    classes = {}
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d)
        if not d.startswith(".") and os.path.isdir(path):
            files = _images_below(path)
            if files:
                classes[d] = [os.path.join(path, f) for f in files]
    loose = sorted(f for f in os.listdir(root) if _is_image(f) and os.path.isfile(os.path.join(root, f)))
    if classes and loose:
        raise ValueError(
            f"{root} mixes class folders {list(classes)[:5]} with loose images {loose[:3]}; "
            "put every image inside a class folder"
        )
    if loose:
        return {single_class_name: [os.path.join(root, f) for f in loose]}
    return classes


def _is_test_path(relpath: str, test_fraction: float) -> bool:
    key = int.from_bytes(hashlib.sha256(relpath.encode("utf-8")).digest()[:8], "big")
    return key < test_fraction * 2**64


def find_images(in_dir: str, test_fraction: float) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Returns (class_names, {"train"|"test": [(absolute path, label), ...]}) for an image folder."""
    if not os.path.isdir(in_dir):
        raise FileNotFoundError(f"image folder {in_dir!r} does not exist")
    in_dir = os.path.abspath(in_dir)
    single = os.path.basename(in_dir.rstrip(os.sep)) or "0"
    test_dir = next((d for d in ("test", "val") if os.path.isdir(os.path.join(in_dir, d))), None)
    if os.path.isdir(os.path.join(in_dir, "train")) and test_dir:
        train = _scan_classes(os.path.join(in_dir, "train"), single)
        test = _scan_classes(os.path.join(in_dir, test_dir), single)
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise ValueError(f"classes {unknown} are in {in_dir}/{test_dir} but not in {in_dir}/train")
        class_names = sorted(train)
        per_split = {"train": train, "test": test}
    else:
        classes = _scan_classes(in_dir, single)
        class_names = sorted(classes)
        per_split = {"train": {}, "test": {}}
        for name, paths in classes.items():
            for p in paths:
                rel = os.path.relpath(p, in_dir).replace(os.sep, "/")
                split = "test" if _is_test_path(rel, test_fraction) else "train"
                per_split[split].setdefault(name, []).append(p)
    if not class_names:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {in_dir}")
    label = {name: i for i, name in enumerate(class_names)}
    items = {
        split: [(p, label[name]) for name in sorted(classes) for p in classes[name]]
        for split, classes in per_split.items()
    }
    return class_names, items


def _decoded(items, resolution, skip_bad, min_size, skipped, warnings, num_workers):
    """Yields examples for items in order, decoding on threads. Unreadable files raise or go to
    `skipped`; files with a shorter side below min_size go to `skipped`; small or very elongated
    ones are kept and listed in `warnings` (see size_warning)."""

    def load(path):  # -> (image, error, note): error is a BadImageError, or a reason to skip
        try:
            img = _open_rgb(path)
        except BadImageError as e:
            return None, e, None
        width, height = img.size
        if min(width, height) < min_size:
            return None, f"{width}x{height}, shorter side below --min-size {min_size}", None
        return _square(img, resolution, path), None, size_warning(width, height, resolution)

    chunk = 32 * num_workers
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        for start in range(0, len(items), chunk):
            batch = items[start:start + chunk]
            for (path, label), (image, error, note) in zip(batch, pool.map(load, [p for p, _ in batch])):
                if isinstance(error, BadImageError):
                    if not skip_bad:
                        raise error
                    error = error.reason
                if error is not None:
                    skipped.append({"path": path, "error": error})
                    continue
                if note is not None:
                    warnings.append({"path": path, "warning": note})
                yield {"image": image, "label": np.int32(label)}


def _start(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    stale = os.path.join(out_dir, records.METADATA_FILE)
    if os.path.exists(stale):
        os.remove(stale)


def _finish(out_dir, source, image_shape, class_names, splits, skipped, warnings) -> dict:
    metadata = {
        "format": records.FORMAT,
        "source": source,
        "image_shape": list(image_shape),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "splits": splits,
        "skipped": skipped,
        "warnings": warnings,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    records.write_metadata(out_dir, metadata)
    return metadata


def prepare_digits(out_dir: str, num_shards: int = 1) -> dict:
    """Writes the digits train/test splits (see maskgen.data.digits) to out_dir; returns the metadata."""
    _start(out_dir)
    splits = {}
    try:
        for split in digits.SPLITS:
            source = digits.DigitsSource(split)
            examples = (source[i] for i in range(len(source)))
            names = records.write_shards(examples, out_dir, split, num_shards, expected_count=len(source))
            splits[split] = {"num_examples": len(source), "shards": names}
    except BaseException:
        for split in digits.SPLITS:
            records.remove_shards(out_dir, split)
        raise
    return _finish(out_dir, "digits", digits.IMAGE_SHAPE, digits.CLASS_NAMES, splits, [], [])


def prepare_image_folder(
    in_dir: str,
    out_dir: str,
    resolution: int,
    skip_bad: bool = False,
    test_fraction: float = 0.1,
    num_shards: int = 1,
    num_workers: int | None = None,
    min_size: int = 0,
) -> dict:
    """Writes an image folder (layout in the module docstring) to out_dir; returns the metadata.

    Raises BadImageError on the first unreadable image unless skip_bad, in which case
    unreadable files are listed under "skipped" ({"path", "error"}) in the metadata.
    Images whose shorter side is below min_size (default 0: none) are skipped and listed there
    too. Images kept although smaller than `resolution` or with an aspect ratio above MAX_ASPECT
    are listed under "warnings" ({"path", "warning"}).
    num_workers decoding threads (default: min(8, CPU count)); output order is fixed.
    """
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    class_names, items = find_images(in_dir, test_fraction)
    _start(out_dir)
    splits, skipped, warnings = {}, [], []
    try:
        for split, split_items in items.items():
            before = len(skipped)
            examples = _decoded(split_items, resolution, skip_bad, min_size, skipped, warnings, num_workers)
            names = records.write_shards(examples, out_dir, split, num_shards, expected_count=len(split_items))
            count = len(split_items) - (len(skipped) - before)
            splits[split] = {"num_examples": count, "shards": names}
        if splits["train"]["num_examples"] == 0:
            raise ValueError(f"no readable training images in {in_dir} ({len(skipped)} skipped)")
    except BaseException:
        for split in items:
            records.remove_shards(out_dir, split)
        raise
    source = "folder:" + os.path.abspath(in_dir)
    return _finish(out_dir, source, (resolution, resolution, 3), class_names, splits, skipped, warnings)


# ---------------------------------------------------------------- audio


def _finish_audio(out_dir, source, fields, class_names, splits, skipped, extra) -> dict:
    """metadata.json of an audio dataset: "fields" (spec JSON) instead of image_shape."""
    from maskgen.data.specs import fields_to_json

    metadata = {
        "format": records.FORMAT,
        "source": source,
        "fields": fields_to_json(fields),
        "image_shape": None,
        "sample_rate": fields["audio"].sample_rate,
        "clip_seconds": fields["audio"].shape[0] / fields["audio"].sample_rate,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "splits": splits,
        "skipped": skipped,
        "warnings": [],
        **extra,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    records.write_metadata(out_dir, metadata)
    return metadata


def _write_splits(out_dir: str, examples_by_split: dict, num_shards: int) -> dict:
    """{split: {"num_examples", "shards"}} after writing each split's examples (an iterable, and its
    expected count); on any error the shards written so far are removed."""
    splits = {}
    try:
        for split, (examples, count, counted) in examples_by_split.items():
            names = records.write_shards(examples, out_dir, split, num_shards, expected_count=count)
            splits[split] = {"num_examples": counted(), "shards": names}
    except BaseException:
        for split in examples_by_split:
            records.remove_shards(out_dir, split)
        raise
    return splits


def _every_example(source):
    for i in range(len(source)):
        yield source[i]


def prepare_speech(out_dir: str, *, words: str = "digits", sample_rate: int = 16000, clip_seconds: float = 1.0,
                   renditions: int = 8, num_shards: int = 1, cache_dir: str | None = None) -> dict:
    """Writes the synthesised speech dataset (maskgen.data.speech; generated or read from its cache)
    to out_dir as audio records with "label" (the word) and "voice"; returns the metadata."""
    from maskgen.data import speech

    options = speech.SpeechOptions(words, sample_rate, clip_seconds, renditions)
    sources = {split: speech.SpeechSource(split, options, cache_dir) for split in speech.SPLITS}
    _start(out_dir)
    splits = _write_splits(out_dir, {split: (_every_example(src), len(src), lambda n=len(src): n)
                                     for split, src in sources.items()}, num_shards)
    extra = {"voice_names": list(speech.VOICES), "split_voices": {s: list(speech.split_voices(s)) for s in speech.SPLITS},
             "speech": {"words": options.words, "renditions": options.renditions}}
    return _finish_audio(out_dir, "speech", speech.fields(options), options.word_list, splits, [], extra)


def prepare_audio_folder(in_dir: str, out_dir: str, *, sample_rate: int = 16000, clip_seconds: float = 1.0,
                         resample: bool = True, mix_to_mono: bool = False, min_seconds: float = 0.1,
                         skip_bad: bool = False, test_fraction: float = 0.1, num_shards: int = 1) -> dict:
    """Writes a folder of labelled WAV/FLAC clips (layout: maskgen.data.audio_files) to out_dir.

    Raises BadAudioError (naming the file) on the first unusable clip, unless skip_bad: then each
    is skipped and listed under "skipped" ({"path", "error"}) in the metadata. Files resampled to
    sample_rate are listed under "resampled" ({"path", "sample_rate"}).
    """
    from maskgen.data import audio_files

    options = audio_files.AudioOptions(sample_rate, clip_seconds, resample, mix_to_mono, min_seconds)
    class_names, items = audio_files.find_audio(in_dir, test_fraction)
    skipped, resampled = [], []

    def examples(split_items, kept):
        for path, label in split_items:
            try:
                rate = audio_files.read_info(path)[0]
                audio = audio_files.load_clip(path, options)
            except audio_files.BadAudioError as err:
                if not skip_bad:
                    raise
                skipped.append({"path": path, "error": err.reason})
                continue
            if rate != sample_rate:
                resampled.append({"path": path, "sample_rate": rate})
            kept[0] += 1
            yield {"audio": audio, "label": np.int32(label)}

    _start(out_dir)
    plan = {}
    for split, split_items in items.items():
        kept = [0]
        plan[split] = (examples(split_items, kept), len(split_items), lambda kept=kept: kept[0])
    splits = _write_splits(out_dir, plan, num_shards)
    if splits["train"]["num_examples"] == 0:
        for split in splits:
            records.remove_shards(out_dir, split)
        raise ValueError(f"no usable training clips in {in_dir} ({len(skipped)} skipped)")
    if resampled:
        rates = sorted({r["sample_rate"] for r in resampled})
        log.warning("resampled %d clip(s) from %s Hz to %d Hz (listed in metadata.json)", len(resampled), rates,
                    sample_rate)
    source = "audio_folder:" + os.path.abspath(in_dir)
    return _finish_audio(out_dir, source, audio_files.audio_fields(options, len(class_names)), class_names, splits,
                         skipped, {"resampled": resampled})
