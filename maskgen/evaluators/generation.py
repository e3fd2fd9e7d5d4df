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
  the real split (`fid_inception`) or against ADM-format reference statistics
  (`reference_stats`, an .npz with mu/sigma; the metric is then `fid_inception_adm_ref`);
- images: `samples` (one row per class) and `trajectory` (for a few samples, the decoding steps:
  a row of what the model predicted at each step, and a row of the tokens kept after the step,
  with still-masked token patches shown grey).
"""

from __future__ import annotations


import jax
import numpy as np

from maskgen.config import integer, or_none
from maskgen.evaluators.base import EvalContext, EvalResult, register
from maskgen.evaluators.image_grid import make_grid, to_uint8

FEATURE_NETS = ("digit_classifier", "inception")
CLASSIFIERS = ("digit_classifier", "")


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


@register("generation")
class Generation:
    """Class consistency, Fréchet distance (with its real-vs-real floor) and grids; see the module docstring."""

    ARG_RULES = {"num_per_class": integer(min=1), "batch_size": integer(min=1), "seed": integer(min=0),
                 "max_real": or_none(integer(min=2, why="a covariance needs two")), "grid_columns": integer(min=1),
                 "trajectory_samples": integer(min=0)}

    def __init__(self, num_per_class: int = 100, batch_size: int = 256, seed: int = 0, decode: dict | None = None,
                 classifier: str = "digit_classifier", feature_net: str = "digit_classifier",
                 inception_weights: str = "", reference_stats: str = "", real_split: str = "test",
                 floor_split: str = "train", max_real: int | None = None, grid_columns: int = 10,
                 trajectory_samples: int = 3):
        if feature_net not in FEATURE_NETS:
            raise ValueError(f"generation: unknown feature_net {feature_net!r}; valid: {list(FEATURE_NETS)}")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"generation: unknown classifier {classifier!r}; valid: {list(CLASSIFIERS)}")
        if num_per_class < 1:
            raise ValueError(f"generation: num_per_class must be >= 1, got {num_per_class}")
        self.num_per_class, self.batch_size, self.seed = num_per_class, batch_size, seed
        self.decode = dict(decode or {})
        self.classifier, self.feature_net = classifier, feature_net
        self.inception_weights, self.reference_stats = inception_weights, reference_stats
        self.real_split, self.floor_split, self.max_real = real_split, floor_split, max_real
        self.grid_columns, self.trajectory_samples = grid_columns, trajectory_samples

    def _feature_fn(self):
        if self.feature_net == "inception":
            # Checked here, not in __init__, so a config can name the evaluator before the file exists.
            if not self.inception_weights:
                raise ValueError("generation: feature_net='inception' needs inception_weights=<path to the FID "
                                 "InceptionV3 weights (.npz, or .pth with torch)>; maskgen never downloads them")
            from maskgen.perception.inception import InceptionFeatures

            net = InceptionFeatures.from_file(self.inception_weights)
            return net.features
        from maskgen.perception.digit_classifier import get_digit_classifier

        classifier = get_digit_classifier(None)
        return lambda images: np.concatenate(
            [np.asarray(classifier.features(images[i:i + 512])) for i in range(0, len(images), 512)])

    def run(self, ctx: EvalContext) -> EvalResult:
        num_classes = int(ctx.info["num_classes"])
        if num_classes < 1:
            raise ValueError("generation: class consistency needs a class-conditional generator; this run has no "
                             "classes (use text_samples for unconditional text)")
        labels = np.tile(np.arange(num_classes, dtype=np.int32), self.num_per_class)
        out = generate(ctx, labels, decode_settings(ctx.info, self.decode), self.seed, self.batch_size)
        images = decode_images(ctx, out["tokens"])
        scalars = {}
        if self.classifier == "digit_classifier":
            from maskgen.perception.digit_classifier import get_digit_classifier

            scalars["class_consistency"] = get_digit_classifier(None).accuracy(images, labels)
        features = self._feature_fn()
        sample_features = features(images)
        real = ctx.reference(self.real_split, self.max_real)["image"]
        if self.feature_net == "digit_classifier":
            real_features = features(real)
            scalars["frechet_distance_digits"] = _frechet(sample_features, real_features)
            if self.floor_split:
                floor = ctx.reference(self.floor_split, self.max_real)["image"]
                scalars["frechet_distance_digits_floor"] = _frechet(features(floor), real_features)
        else:
            from maskgen.perception.inception import fid_from_features, fid_metric_name

            reference = self.reference_stats or features(real)
            scalars[fid_metric_name(reference)] = fid_from_features(sample_features, reference)
        result_images = {"samples": class_grid(images, labels, range(num_classes), self.grid_columns)}
        if self.trajectory_samples and "trajectory" in out:
            rows = trajectory_rows(lambda t: decode_images(ctx, t), out["trajectory"], out["masks"],
                                   self.trajectory_samples)
            result_images["trajectory"] = make_grid(rows, upscale=max(1, 64 // images.shape[1]))
        return EvalResult(scalars=scalars, images=result_images)


__all__ = ["Generation", "generate", "decode_images", "decode_settings", "grey_masked", "class_grid",
           "trajectory_rows"]
