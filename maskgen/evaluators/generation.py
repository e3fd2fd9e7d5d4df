"""Sample quality of a class-conditional token generator (MaskGIT, arXiv 2202.04200, or the AR baseline).

The recipe's `generate(model, {"label": [B]}, rng, **settings)` returns token grids; the tokenizer
run that made the training tokens (its workdir is in the token dataset's metadata) decodes them
into images. Over `num_per_class` samples of every class this evaluator reports:

- `class_consistency`: the accuracy of maskgen's digit classifier (`digit_classifier.py`) on the
  samples, against the class that was asked for (MaskGIT's "classification accuracy score" idea
  at digits scale);
- `frechet_distance_digits`: the Fréchet distance between the classifier's features of the
  samples and of the held-out real images (`real_split`), and `frechet_distance_digits_floor`:
  the same distance between two sets of real images (`floor_split` vs `real_split`), which is the
  best a generator can expect with this feature network and these sample sizes;
- with `feature_net="inception"`: FID (Heusel et al., arXiv 1706.08500) on InceptionV3 pool
  features from a weights file the user gives (`inception_weights`, never downloaded), against
  the real split (`reference="split"`: `fid_inception`) or against ADM's reference batch
  (`reference="adm"`, `adm_reference=PATH`, see `maskgen/perception/adm_reference.py`): its
  precomputed statistics (`fid_inception_adm_ref`) or statistics computed from its images with
  the same weights (`adm_statistics="images"`: `fid_inception_adm_images`). `reference_stats`
  (older configs) is the same as `reference="adm"` with `adm_statistics="file"`;
- images: `samples` (one row per class) and `trajectory` (for a few samples, the decoding steps:
  a row of what the model predicted at each step, and a row of the tokens kept after the step,
  with still-masked token patches shown grey).

Pixels are rounded to uint8 before any network sees them (`uint8=True`, the default), samples and
real images alike: ADM's evaluator (Dhariwal & Nichol, arXiv 2105.05233) reads uint8 arrays or
PNGs, so the float samples a generator returns are not what published FIDs measure. The
rounding is the same as the PNG grids' (`image_grid.to_uint8`, to the nearest of 256 levels).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from maskgen.config import boolean, integer, one_of, or_none, string
from maskgen.evaluators.base import EvalContext, EvalResult, register
from maskgen.evaluators.image_grid import from_uint8, make_grid, to_uint8

FEATURE_NETS = ("digit_classifier", "inception")
CLASSIFIERS = ("digit_classifier", "")
REFERENCES = ("split", "adm")
ADM_STATISTICS = ("auto", "file", "images")


def decode_settings(info: dict, overrides: dict | None = None) -> dict:
    """Decoding keyword arguments: the config's `sampling` block updated by `overrides`."""
    settings = {**info.get("sampling", {}), **(overrides or {})}
    settings.setdefault("num_steps", 8)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items()}


def generate(ctx: EvalContext, labels: np.ndarray, settings: dict, seed: int, batch_size: int) -> dict:
    """Generates for every label, in equal chunks of at most `batch_size` (rounded up to the
    data-parallel device count; the last chunk is padded).

    Returns host arrays {"tokens" [n, h, w], and for the first chunk "trajectory"/"masks"
    [S, chunk, h, w] when the generator records them}.
    """
    labels = np.asarray(labels, np.int32)
    multiple = ctx.batch_multiple
    chunk = -(-min(batch_size, len(labels)) // multiple) * multiple  # every chunk the same shape: one compile
    tokens, first = [], None
    for i, start in enumerate(range(0, len(labels), chunk)):
        part = labels[start:start + chunk]
        padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part))]) if len(part) < chunk else part
        rng = jax.random.fold_in(jax.random.key(seed), i)
        out = ctx.to_host(ctx.apply("generate", ctx.params, ctx.shard({"label": padded}), rng, **settings))
        tokens.append(np.asarray(out["tokens"])[: len(part)])
        if first is None:
            first = {k: np.asarray(v) for k, v in out.items() if k != "tokens"}
    return {"tokens": np.concatenate(tokens), **(first or {})}


def decode_images(ctx: EvalContext, tokens: np.ndarray) -> np.ndarray:
    """Token grids -> float images in [-1, 1], through the run's decoder (the tokenizer run)."""
    return ctx.decode(tokens)["images"]


def grey_masked(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Paints the pixels of still-masked tokens (masks [B, h, w] True) mid-grey (0 in [-1, 1])."""
    b, height, width, _ = images.shape
    h, w = masks.shape[1:]
    pixel_mask = np.repeat(np.repeat(masks, height // h, axis=1), width // w, axis=2)[..., None]
    return np.where(pixel_mask, 0.0, images)


def trajectory_rows(decode, trajectory: np.ndarray, masks: np.ndarray, samples: int) -> list[np.ndarray]:
    """Two image rows per sample: predictions at each step, and the tokens kept after it.
    `decode(tokens) -> images` (e.g. `ctx.decode` composed with ["images"])."""
    rows = []
    for b in range(min(samples, trajectory.shape[1])):
        predicted = decode(trajectory[:, b])
        rows += [to_uint8(predicted), to_uint8(grey_masked(predicted, masks[:, b]))]
    return rows


def class_grid(images: np.ndarray, labels: np.ndarray, classes, columns: int) -> np.ndarray:
    """One row per class with its first `columns` samples."""
    rows = [to_uint8(images[labels == c][:columns]) for c in classes]
    return make_grid(rows, upscale=max(1, 64 // images.shape[1]))


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    from maskgen.perception.frechet import feature_statistics, frechet_distance

    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def as_pixels(images: np.ndarray, uint8: bool) -> np.ndarray:
    """What the feature networks see: uint8 [0, 255] (ADM's convention), or the floats unchanged."""
    return to_uint8(images) if uint8 else np.asarray(images, np.float32)


def as_floats(pixels: np.ndarray) -> np.ndarray:
    """Pixels from `as_pixels` -> float [-1, 1] (what the digit classifier takes)."""
    return from_uint8(pixels) if pixels.dtype == np.uint8 else pixels


@register("generation")
class Generation:
    """Class consistency, Fréchet distance (with its real-vs-real floor) and grids; see the module docstring."""

    ARG_RULES = {"num_per_class": integer(min=1), "batch_size": integer(min=1), "seed": integer(min=0),
                 "max_real": or_none(integer(min=2, why="a covariance needs two")), "grid_columns": integer(min=1),
                 "trajectory_samples": integer(min=0), "reference": one_of(*REFERENCES),
                 "adm_reference": string(), "adm_statistics": one_of(*ADM_STATISTICS), "uint8": boolean()}

    def __init__(self, num_per_class: int = 100, batch_size: int = 256, seed: int = 0, decode: dict | None = None,
                 classifier: str = "digit_classifier", feature_net: str = "digit_classifier",
                 inception_weights: str = "", reference_stats: str = "", real_split: str = "test",
                 floor_split: str = "train", max_real: int | None = None, grid_columns: int = 10,
                 trajectory_samples: int = 3, reference: str = "split", adm_reference: str = "",
                 adm_statistics: str = "auto", uint8: bool = True):
        if feature_net not in FEATURE_NETS:
            raise ValueError(f"generation: unknown feature_net {feature_net!r}; valid: {list(FEATURE_NETS)}")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"generation: unknown classifier {classifier!r}; valid: {list(CLASSIFIERS)}")
        if num_per_class < 1:
            raise ValueError(f"generation: num_per_class must be >= 1, got {num_per_class}")
        if reference not in REFERENCES:
            raise ValueError(f"generation: unknown reference {reference!r}; valid: {list(REFERENCES)}")
        if adm_statistics not in ADM_STATISTICS:
            raise ValueError(f"generation: unknown adm_statistics {adm_statistics!r}; valid: {list(ADM_STATISTICS)}")
        if reference_stats:
            # Older configs: precomputed ADM-format statistics, which is reference="adm" reading the file.
            if adm_reference and adm_reference != reference_stats:
                raise ValueError(f"generation: reference_stats={reference_stats!r} and adm_reference={adm_reference!r} "
                                 "name different files; give adm_reference only")
            reference, adm_reference = "adm", reference_stats
            adm_statistics = "file" if adm_statistics == "auto" else adm_statistics
        if reference == "adm" and feature_net != "inception":
            raise ValueError("generation: reference='adm' (ADM's reference batch, InceptionV3 statistics) needs "
                             "feature_net='inception'")
        self.num_per_class, self.batch_size, self.seed = num_per_class, batch_size, seed
        self.decode = dict(decode or {})
        self.classifier, self.feature_net = classifier, feature_net
        self.inception_weights = inception_weights
        self.reference, self.adm_reference, self.adm_statistics = reference, adm_reference, adm_statistics
        self.real_split, self.floor_split, self.max_real = real_split, floor_split, max_real
        self.grid_columns, self.trajectory_samples, self.uint8 = grid_columns, trajectory_samples, uint8

    def _check_reference(self) -> None:
        """The ADM reference must be named; checked in `run` (before any sampling), not in __init__,
        so a config can name the evaluator before the file exists."""
        if self.reference == "adm" and not self.adm_reference:
            from maskgen.perception.adm_reference import SOURCE_URL

            raise ValueError(
                "generation: reference='adm' needs adm_reference=<path to ADM's reference batch .npz>; set it with "
                "--config.evals.<name>.adm_reference=PATH (e.g. --config.evals.fid.adm_reference=PATH for "
                f"experiments/maskgit_imagenet256.py). The file comes from {SOURCE_URL}. To compare with the "
                "run's own real split instead, set --config.evals.<name>.reference=split")
        if self.reference == "adm" and not os.path.isfile(self.adm_reference):
            from maskgen.perception.adm_reference import SOURCE_URL

            raise FileNotFoundError(f"generation: adm_reference {self.adm_reference!r} not found (ADM's reference "
                                    f"batch comes from {SOURCE_URL})")

    def _feature_fn(self):
        """pixels (uint8 or float [-1, 1]) [N, H, W, C] -> features [N, D] (numpy)."""
        if self.feature_net == "inception":
            if not self.inception_weights:
                raise ValueError("generation: feature_net='inception' needs inception_weights=<path to the FID "
                                 "InceptionV3 weights (.npz, or .pth with torch)>; maskgen never downloads them")
            from maskgen.perception.inception import InceptionFeatures

            net = InceptionFeatures.from_file(self.inception_weights)
            return net.features  # takes uint8 as is (less memory than floats at 50k samples)
        from maskgen.perception.digit_classifier import get_digit_classifier

        classifier = get_digit_classifier(None)
        return lambda pixels: np.concatenate(
            [np.asarray(classifier.features(as_floats(pixels[i:i + 512]))) for i in range(0, len(pixels), 512)])

    def _fid(self, features, sample_features: np.ndarray, ctx: EvalContext) -> dict:
        from maskgen.perception.frechet import feature_statistics, frechet_distance
        from maskgen.perception.inception import METRIC_ADM_IMAGES, METRIC_ADM_REF, METRIC_IN_RUN

        if self.reference == "adm":
            from maskgen.perception.adm_reference import reference_statistics

            mu, sigma, source = reference_statistics(self.adm_reference, features, self.adm_statistics)
            name = METRIC_ADM_REF if source == "file" else METRIC_ADM_IMAGES
        else:
            real = as_pixels(ctx.reference(self.real_split, self.max_real)["image"], self.uint8)
            (mu, sigma), name = feature_statistics(features(real)), METRIC_IN_RUN
        return {name: frechet_distance(*feature_statistics(sample_features), mu, sigma)}

    def run(self, ctx: EvalContext) -> EvalResult:
        num_classes = int(ctx.info["num_classes"])
        if num_classes < 1:
            raise ValueError("generation: class consistency needs a class-conditional generator; this run has no "
                             "classes (use text_samples for unconditional text)")
        self._check_reference()
        features = self._feature_fn()  # A missing weights file fails here, before any sampling.
        labels = np.tile(np.arange(num_classes, dtype=np.int32), self.num_per_class)
        out = generate(ctx, labels, decode_settings(ctx.info, self.decode), self.seed, self.batch_size)
        pixels = as_pixels(decode_images(ctx, out["tokens"]), self.uint8)
        scalars = {}
        if self.classifier == "digit_classifier":
            from maskgen.perception.digit_classifier import get_digit_classifier

            scalars["class_consistency"] = get_digit_classifier(None).accuracy(as_floats(pixels), labels)
        sample_features = features(pixels)
        if self.feature_net == "digit_classifier":
            real_features = features(as_pixels(ctx.reference(self.real_split, self.max_real)["image"], self.uint8))
            scalars["frechet_distance_digits"] = _frechet(sample_features, real_features)
            if self.floor_split:
                floor = as_pixels(ctx.reference(self.floor_split, self.max_real)["image"], self.uint8)
                scalars["frechet_distance_digits_floor"] = _frechet(features(floor), real_features)
        else:
            scalars.update(self._fid(features, sample_features, ctx))
        result_images = {"samples": class_grid(as_floats(pixels), labels, range(num_classes), self.grid_columns)}
        if self.trajectory_samples and "trajectory" in out:
            rows = trajectory_rows(lambda t: decode_images(ctx, t), out["trajectory"], out["masks"],
                                   self.trajectory_samples)
            result_images["trajectory"] = make_grid(rows, upscale=max(1, 64 // pixels.shape[1]))
        return EvalResult(scalars=scalars, images=result_images)


__all__ = ["Generation", "generate", "decode_images", "decode_settings", "grey_masked", "class_grid",
           "trajectory_rows", "as_pixels", "as_floats"]
