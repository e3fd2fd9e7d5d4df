"""A small CNN classifier of scikit-learn's handwritten digits, the feature network for digit Fréchet distances.

FID (Heusel et al., arXiv 1706.08500) compares Inception-v3 features, which mean little on 8x8
digits and cannot be downloaded here. On the digits data maskgen therefore uses this classifier's
penultimate features instead (a documented stand-in for rFID/FID: numbers are comparable only with
other numbers computed with the same classifier, never with published FIDs), and its predictions
for the class consistency of generated digits.

The network: images [B, H, W, C] in [-1, 1] of any size are resized to 16x16 (bilinear, antialiased)
and averaged to one channel if C = 3; then conv3x3(32) - GELU - avgpool2 - conv3x3(64) - GELU -
avgpool2 - dense(64) - GELU (the features) - dense(10) (the logits). No normalisation layers, so
features are a pure function of the parameters. It is trained with AdamW (cosine decay) on the
digits "train" split with random shifts of up to 2 pixels, deterministically for a seed, in about 10 s on 2 CPU cores.

`get_digit_classifier(cache_dir)` loads the trained parameters from
`cache_dir/digit_classifier_v1.msgpack` (flax msgpack of the parameter pure dict; the companion
`digit_classifier_v1.json` records the training settings and the test accuracy), or trains and
saves them there. Bump `VERSION` whenever the architecture or the training changes.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization

VERSION = 1
FILE_STEM = f"digit_classifier_v{VERSION}"
NUM_CLASSES = 10
INPUT_SIZE = 16
FEATURE_DIM = 64
DEFAULT_STEPS = 500
DEFAULT_SEED = 0
ENV_CACHE = "MASKGEN_CACHE"


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """[B, H, W, C] in [-1, 1], C in {1, 3} -> [B, size, size, 1] (channels averaged, bilinear resize)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"digit classifier expects images [B, H, W, 1 or 3], got shape {images.shape}")
    x = jnp.asarray(images, jnp.float32)
    if x.shape[-1] == 3:
        x = x.mean(axis=-1, keepdims=True)
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 1), method="bilinear")
    return x


def _avg_pool2(x: jax.Array) -> jax.Array:
    return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class DigitCNN(nnx.Module):
    """Two conv layers and a dense layer of features, then a linear head; see the module docstring."""

    def __init__(self, *, rngs: nnx.Rngs, input_size: int = INPUT_SIZE, width: int = 32,
                 feature_dim: int = FEATURE_DIM):
        if input_size % 4:
            raise ValueError(f"input_size must be divisible by 4, got {input_size}")
        self.input_size = input_size
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), rngs=rngs)
        self.dense = nnx.Linear((input_size // 4) ** 2 * 2 * width, feature_dim, rngs=rngs)
        self.head = nnx.Linear(feature_dim, NUM_CLASSES, rngs=rngs)

    def features(self, images: jax.Array) -> jax.Array:
        x = preprocess(images, self.input_size)
        x = _avg_pool2(jax.nn.gelu(self.conv1(x)))
        x = _avg_pool2(jax.nn.gelu(self.conv2(x)))
        return jax.nn.gelu(self.dense(x.reshape(x.shape[0], -1)))

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head(self.features(images))


def _graphdef_and_params(seed: int, input_size: int):
    """The model's graphdef and freshly initialised parameters (a pure dict of arrays)."""
    graphdef, state = nnx.split(DigitCNN(rngs=nnx.Rngs(params=seed), input_size=input_size))
    return graphdef, nnx.to_pure_dict(state)


class DigitClassifier:
    """Trained digit classifier: jitted `features`, `logits` and `accuracy` on [-1, 1] images [B, H, W, C]."""

    def __init__(self, graphdef, params, *, test_accuracy: float | None = None, info: dict | None = None):
        self.graphdef, self.params = graphdef, params
        self.test_accuracy = test_accuracy
        self.info = dict(info or {})
        self._features = jax.jit(lambda p, x: nnx.merge(graphdef, p).features(x))
        self._logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))

    @property
    def feature_dim(self) -> int:
        return int(self.params["dense"]["bias"].shape[0])

    def features(self, images) -> jax.Array:
        """Penultimate features [B, FEATURE_DIM] (float32)."""
        return self._features(self.params, images)

    def logits(self, images) -> jax.Array:
        """Class logits [B, 10]."""
        return self._logits(self.params, images)

    def predict(self, images) -> np.ndarray:
        return np.asarray(jnp.argmax(self.logits(images), axis=-1))

    def accuracy(self, images, labels, batch_size: int = 512) -> float:
        """Fraction of `images` whose predicted class equals `labels` (evaluated in batches)."""
        images, labels = np.asarray(images), np.asarray(labels)
        correct = sum(int(np.sum(self.predict(images[i:i + batch_size]) == labels[i:i + batch_size]))
                      for i in range(0, len(images), batch_size))
        return correct / max(1, len(images))


def load_digits_split(split: str, image_size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A digits split as model inputs: (float32 [N, size, size, 1] in [-1, 1], int32 [N])."""
    from maskgen.data import make_source
    from maskgen.data.pipeline import ToModelInput

    source, transform = make_source("digits", split), ToModelInput(image_size)
    examples = [transform(source[i]) for i in range(len(source))]
    return np.stack([e["image"] for e in examples]), np.stack([e["label"] for e in examples])


def random_shift(images: jax.Array, key: jax.Array, max_shift: int) -> jax.Array:
    """Shifts each image by independent integer offsets in [-max_shift, max_shift], filling with -1 (background)."""
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def _make_train_step(graphdef, tx, *, batch_size: int, max_shift: int):
    """One jitted AdamW step on a random batch with random shifts; randomness from fold_in(key, step)."""

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, images, labels, key, i):
        k_idx, k_shift = jax.random.split(jax.random.fold_in(key, i))
        idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
        x = random_shift(images[idx], k_shift, max_shift)
        grads = jax.grad(loss_fn)(params, x, labels[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def _fit(graphdef, params, images, labels, key, *, steps: int, batch_size: int, max_shift: int,
         learning_rate: float, weight_decay: float):
    # A Python loop over a jitted step: XLA:CPU runs convolutions inside a lax.fori_loop ~20x slower.
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)
    step = _make_train_step(graphdef, tx, batch_size=batch_size, max_shift=max_shift)
    opt_state = tx.init(params)
    for i in range(steps):
        params, opt_state = step(params, opt_state, images, labels, key, i)
    return params


def train_digit_classifier(seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, image_size: int = INPUT_SIZE,
                           batch_size: int = 128, learning_rate: float = 3e-3, weight_decay: float = 1e-4,
                           max_shift: int = 2) -> DigitClassifier:
    """Trains on the digits "train" split (deterministic for `seed`) and scores the "test" split.

    `image_size` is the network's input size (the data is resized to it; inputs of other sizes are
    resized to it at use). Takes about 10 s on 2 CPU cores with the defaults.
    """
    start = time.perf_counter()
    train_x, train_y = load_digits_split("train", image_size)
    graphdef, params = _graphdef_and_params(seed, image_size)
    params = _fit(graphdef, params, jnp.asarray(train_x), jnp.asarray(train_y), jax.random.key(seed + 1),
                  steps=steps, batch_size=batch_size, max_shift=max_shift,
                  learning_rate=learning_rate, weight_decay=weight_decay)
    params = jax.tree.map(np.asarray, params)
    info = training_settings(seed, steps, image_size, batch_size, learning_rate, weight_decay, max_shift)
    classifier = DigitClassifier(graphdef, params, info=info)
    classifier.test_accuracy = classifier.accuracy(*load_digits_split("test", image_size))
    classifier.info.update(test_accuracy=classifier.test_accuracy, train_seconds=round(time.perf_counter() - start, 2))
    return classifier


def training_settings(seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, image_size: int = INPUT_SIZE,
                      batch_size: int = 128, learning_rate: float = 3e-3, weight_decay: float = 1e-4,
                      max_shift: int = 2) -> dict:
    """What identifies a trained classifier (stored in the companion JSON; a cache with other settings is retrained)."""
    return {"version": VERSION, "seed": seed, "steps": steps, "image_size": image_size, "batch_size": batch_size,
            "learning_rate": learning_rate, "weight_decay": weight_decay, "max_shift": max_shift,
            "feature_dim": FEATURE_DIM}


def default_cache_dir() -> str:
    """$MASKGEN_CACHE if set, else ~/.cache/maskgen."""
    return os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "maskgen")


def _atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_cached_params(stem: str, info: dict, params) -> str:
    """Writes `stem.json` (info), then `stem.msgpack` (params), each atomically; returns the msgpack path.
    Shared by the feature networks trained in maskgen (digit and spoken-word classifiers)."""
    _atomic_write(stem + ".json", json.dumps(info, indent=2, sort_keys=True).encode())
    _atomic_write(stem + ".msgpack", serialization.msgpack_serialize(params))
    return stem + ".msgpack"


def read_cached_params(stem: str) -> tuple[dict, dict] | None:
    """(info, raw params) written by `save_cached_params`, or None if absent or unreadable."""
    try:
        with open(stem + ".json") as f:
            info = json.load(f)
        with open(stem + ".msgpack", "rb") as f:
            restored = serialization.msgpack_restore(f.read())
    except (OSError, ValueError):  # Absent, or not JSON / msgpack (msgpack errors are ValueErrors).
        return None
    return info, restored


def restore_params_like(fresh, restored):
    """`restored` as the tree of `fresh` (numpy leaves), or None if it is another tree or other shapes."""
    try:
        params = serialization.from_state_dict(fresh, restored)
    except (AttributeError, KeyError, TypeError, ValueError):  # Not the expected tree.
        return None
    if jax.tree.map(np.shape, params) != jax.tree.map(np.shape, fresh):
        return None
    return jax.tree.map(np.asarray, params)


def save_digit_classifier(classifier: DigitClassifier, cache_dir: str) -> str:
    """Writes the JSON, then the msgpack params (each atomically); returns the msgpack path."""
    return save_cached_params(os.path.join(cache_dir, FILE_STEM), classifier.info, classifier.params)


def load_digit_classifier(cache_dir: str) -> DigitClassifier | None:
    """The cached classifier, or None if absent, unreadable or trained with other settings than the defaults."""
    cached = read_cached_params(os.path.join(cache_dir, FILE_STEM))
    if cached is None:
        return None
    info, restored = cached
    if {k: info.get(k) for k in training_settings()} != training_settings():
        return None
    graphdef, fresh = _graphdef_and_params(0, info["image_size"])
    params = restore_params_like(fresh, restored)
    if params is None:
        return None
    return DigitClassifier(graphdef, params, test_accuracy=info.get("test_accuracy"), info=info)


@functools.lru_cache(maxsize=None)
def _cached_classifier(cache_dir: str) -> DigitClassifier:
    classifier = load_digit_classifier(cache_dir)
    if classifier is None:
        classifier = train_digit_classifier()
        save_digit_classifier(classifier, cache_dir)
    return classifier


def get_digit_classifier(cache_dir: str | None = None) -> DigitClassifier:
    """The default classifier from `cache_dir` (None: $MASKGEN_CACHE or ~/.cache/maskgen), trained and saved if absent.

    Cached in-process per directory, so a process trains it at most once.
    """
    return _cached_classifier(os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir())))
