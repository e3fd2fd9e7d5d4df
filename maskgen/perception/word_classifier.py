"""A small log-mel CNN that recognises spoken words, the feature network for audio evaluations.

Audio generators are judged by whether a generated word is heard as the word that was asked for,
and audio codecs by whether the words survive reconstruction. The usual networks for that (the
VGGish of FAD, Kilgour et al., arXiv 1812.08466, or a speech recogniser) cannot be downloaded
here. maskgen therefore trains this classifier on the train split of its own eSpeak NG speech
dataset (`maskgen.data.speech`) and scores it on the held-out *voices* of the test split, so its
accuracy measures generalisation across speakers. Its penultimate features give a Fréchet
distance that stands in for FAD: such numbers compare only with other numbers from the same
classifier, never with published FADs.

The network: audio [B, T] (or [B, T, 1]) at the classifier's sample rate -> log-mel
(`maskgen.audio.features`, n_fft = 32 ms rounded up to a power of two, hop n_fft / 4, 40 Slaney mels,
power 1), scaled by the fixed `scale_log_mel` map and resized (bilinear, antialiased) over time to
`INPUT_FRAMES` frames, so clips of any length are accepted; then as an image [frames, mels, 1]:
conv3x3(32) - GELU - avgpool2 - conv3x3(64) - GELU - avgpool2 - dense(128) - GELU (the features) -
dense(num_words) (the logits). No normalisation layers, so features are a pure function of the
parameters. Training is AdamW with cosine decay on random batches, with random time shifts (up to
`max_shift_frames` log-mel frames, padded with silence) and random gains (log-mel offsets in
±`max_gain_db` dB), deterministic for a seed: 200 steps of 64 clips, under a minute on 2 CPU cores
(47 s measured while other jobs shared them), plus the first synthesis of the speech data. On the
default digits (16 kHz, 1 s clips, 32 training voices) it recognises 639 of the 640 clips of the 8
held-out voices (99.8%).

`get_word_classifier(words=..., sample_rate=..., clip_seconds=..., cache_dir=...)` loads the
trained parameters from `cache_dir/word_classifier_v1_<words>_<rate>hz_<clip>s.msgpack` (flax
msgpack; the companion `.json` records the training settings, the dataset options and the
held-out-voice test accuracy), or trains and saves them there (atomic writes). Bump `VERSION`
whenever the architecture or the training changes.
"""

from __future__ import annotations

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from maskgen.audio import features as audio_features
from maskgen.perception.digit_classifier import (default_cache_dir, read_cached_params, restore_params_like,
                                                 save_cached_params)

VERSION = 1
INPUT_FRAMES = 32
N_MELS = 40
FEATURE_DIM = 128
DEFAULT_STEPS = 200
DEFAULT_SEED = 0


def mel_config(sample_rate: int) -> audio_features.MelConfig:
    """The classifier's log-mel settings at `sample_rate`: 32 ms windows (a power of two), 75% overlap, 40 mels."""
    n_fft = 2 ** math.ceil(math.log2(0.032 * sample_rate))
    return audio_features.MelConfig(sample_rate=sample_rate, n_fft=n_fft, hop=n_fft // 4, n_mels=N_MELS)


def as_signals(audio) -> jax.Array:
    """[B, T] or [B, T, 1] audio -> float32 [B, T], with a clear error for anything else."""
    return audio_features.mono_clips(jnp.asarray(audio, jnp.float32), "word classifier input")


def log_mel_inputs(audio, cfg: audio_features.MelConfig) -> jax.Array:
    """Audio [B, T] or [B, T, 1] -> scaled log-mel [B, frames, n_mels] (before the resize over time)."""
    x = as_signals(audio)
    return audio_features.scale_log_mel(audio_features.log_mel(x, cfg))


def resize_frames(scaled_log_mel: jax.Array, frames: int = INPUT_FRAMES) -> jax.Array:
    """[B, F, n_mels] -> [B, frames, n_mels, 1] (bilinear, antialiased over time)."""
    b, _, n_mels = scaled_log_mel.shape
    return jax.image.resize(scaled_log_mel, (b, frames, n_mels), method="bilinear")[..., None]


def _avg_pool2(x: jax.Array) -> jax.Array:
    return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class WordCNN(nnx.Module):
    """Two conv layers and a dense layer of features over a log-mel image, then a linear head."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs, input_frames: int = INPUT_FRAMES, n_mels: int = N_MELS,
                 width: int = 32, feature_dim: int = FEATURE_DIM):
        if input_frames % 4 or n_mels % 4:
            raise ValueError(f"input_frames and n_mels must be divisible by 4, got {input_frames}, {n_mels}")
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), rngs=rngs)
        self.dense = nnx.Linear((input_frames // 4) * (n_mels // 4) * 2 * width, feature_dim, rngs=rngs)
        self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

    def features(self, image: jax.Array) -> jax.Array:
        """[B, frames, n_mels, 1] scaled log-mel -> [B, feature_dim]."""
        x = _avg_pool2(jax.nn.gelu(self.conv1(image)))
        x = _avg_pool2(jax.nn.gelu(self.conv2(x)))
        return jax.nn.gelu(self.dense(x.reshape(x.shape[0], -1)))

    def __call__(self, image: jax.Array) -> jax.Array:
        return self.head(self.features(image))


def _graphdef_and_params(num_classes: int, seed: int):
    graphdef, state = nnx.split(WordCNN(num_classes, rngs=nnx.Rngs(params=seed)))
    return graphdef, nnx.to_pure_dict(state)


class WordClassifier:
    """A trained word classifier: `features`, `logits`, `predict` and `accuracy` on audio [B, T] or [B, T, 1].

    Audio must be at `sample_rate`; any length of at least one STFT window is accepted (the
    log-mel is resized to INPUT_FRAMES frames), but the classifier knows clips of `clip_seconds`.
    """

    def __init__(self, graphdef, params, *, sample_rate: int, class_names=None, test_accuracy: float | None = None,
                 info: dict | None = None):
        self.graphdef, self.params = graphdef, params
        self.sample_rate = int(sample_rate)
        self.mel = mel_config(self.sample_rate)
        self.num_classes = int(params["head"]["bias"].shape[0])
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        self.test_accuracy = test_accuracy
        self.info = dict(info or {})
        mel = self.mel
        self._features = jax.jit(lambda p, x: nnx.merge(graphdef, p).features(resize_frames(log_mel_inputs(x, mel))))
        self._logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(resize_frames(log_mel_inputs(x, mel))))

    @property
    def feature_dim(self) -> int:
        return int(self.params["dense"]["bias"].shape[0])

    def _batched(self, fn, audio, batch_size: int) -> np.ndarray:
        x = np.asarray(as_signals(audio))
        if x.shape[1] <= self.mel.n_fft // 2:
            raise ValueError(f"word classifier: clips of {x.shape[1]} samples are shorter than half an STFT window "
                             f"({self.mel.n_fft // 2 + 1} samples at {self.sample_rate} Hz)")
        return np.concatenate([np.asarray(fn(self.params, x[i:i + batch_size]))
                               for i in range(0, len(x), batch_size)]) if len(x) else np.zeros((0,))

    def features(self, audio, batch_size: int = 256) -> np.ndarray:
        """Penultimate features float32 [B, feature_dim]."""
        return self._batched(self._features, audio, batch_size)

    def logits(self, audio, batch_size: int = 256) -> np.ndarray:
        """Word logits float32 [B, num_classes]."""
        return self._batched(self._logits, audio, batch_size)

    def predict(self, audio, batch_size: int = 256) -> np.ndarray:
        """Predicted word ids int [B]."""
        return np.argmax(self.logits(audio, batch_size), axis=-1)

    def accuracy(self, audio, labels, batch_size: int = 256) -> float:
        """Fraction of clips whose predicted word equals `labels`."""
        labels = np.asarray(labels)
        predicted = self.predict(audio, batch_size)
        if predicted.shape != labels.shape:
            raise ValueError(f"word classifier: {len(predicted)} clips but labels of shape {labels.shape}")
        return float(np.mean(predicted == labels)) if len(labels) else 0.0


def _make_train_step(graphdef, tx, *, batch_size: int, input_frames: int, max_shift: int, max_gain: float):
    """One jitted AdamW step on a random batch of precomputed scaled log-mels, with random shifts and gains."""
    silence = float(audio_features.scale_log_mel(math.log(audio_features.MelConfig().log_floor)))

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, params)(x), y).mean()

    def augment(spec, key):  # spec [F, n_mels]: shift in time (silence fills), then a gain.
        k_shift, k_gain = jax.random.split(key)
        frames = spec.shape[0]
        padded = jnp.pad(spec, ((max_shift, max_shift), (0, 0)), constant_values=silence)
        start = jax.random.randint(k_shift, (), 0, 2 * max_shift + 1)
        shifted = jax.lax.dynamic_slice(padded, (start, 0), (frames, spec.shape[1]))
        gain = jax.random.uniform(k_gain, (), minval=-max_gain, maxval=max_gain)
        return jnp.maximum(shifted + gain, silence)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, specs, labels, key, i):
        k_idx, k_aug = jax.random.split(jax.random.fold_in(key, i))
        idx = jax.random.randint(k_idx, (batch_size,), 0, specs.shape[0])
        x = jax.vmap(augment)(specs[idx], jax.random.split(k_aug, batch_size))
        grads = jax.grad(loss_fn)(params, resize_frames(x, input_frames), labels[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def precompute_inputs(audio, cfg: audio_features.MelConfig, batch_size: int = 256) -> np.ndarray:
    """Scaled log-mels [N, frames, n_mels] of audio [N, T] (in batches, one compilation)."""
    fn = jax.jit(lambda x: log_mel_inputs(x, cfg))
    audio = np.asarray(audio, np.float32)
    return np.concatenate([np.asarray(fn(audio[i:i + batch_size])) for i in range(0, len(audio), batch_size)])


def training_settings(seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, batch_size: int = 64,
                      learning_rate: float = 2e-3, weight_decay: float = 1e-4, max_shift_frames: int = 8,
                      max_gain_db: float = 6.0) -> dict:
    """What identifies the training (stored in the companion JSON; a cache with other settings is retrained)."""
    return {"version": VERSION, "seed": seed, "steps": steps, "batch_size": batch_size,
            "learning_rate": learning_rate, "weight_decay": weight_decay, "max_shift_frames": max_shift_frames,
            "max_gain_db": max_gain_db, "input_frames": INPUT_FRAMES, "n_mels": N_MELS, "feature_dim": FEATURE_DIM}


def fit_word_classifier(train_audio, train_labels, *, sample_rate: int, num_classes: int | None = None,
                        test_audio=None, test_labels=None, class_names=None, seed: int = DEFAULT_SEED,
                        steps: int = DEFAULT_STEPS, batch_size: int = 64, learning_rate: float = 2e-3,
                        weight_decay: float = 1e-4, max_shift_frames: int = 8, max_gain_db: float = 6.0,
                        extra_info: dict | None = None) -> WordClassifier:
    """Trains a classifier on audio [N, T] (or [N, T, 1]) with int labels [N]; deterministic for `seed`.

    With test data, `test_accuracy` is its accuracy there (on the speech data: held-out voices).
    """
    start = time.perf_counter()
    train_labels = np.asarray(train_labels, np.int32)
    num_classes = int(train_labels.max()) + 1 if num_classes is None else int(num_classes)
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(f"word classifier: labels must lie in [0, {num_classes}), got "
                         f"[{train_labels.min()}, {train_labels.max()}]")
    cfg = mel_config(sample_rate)
    specs = precompute_inputs(np.asarray(as_signals(train_audio)), cfg)
    if len(specs) != len(train_labels):
        raise ValueError(f"word classifier: {len(specs)} training clips but {len(train_labels)} labels")
    graphdef, params = _graphdef_and_params(num_classes, seed)
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)
    # A gain of g dB adds g ln(10) / 20 to the natural-log mel, i.e. that over LOG_MEL_HALF_RANGE when scaled.
    max_gain = max_gain_db * math.log(10.0) / 20.0 / audio_features.LOG_MEL_HALF_RANGE
    step = _make_train_step(graphdef, tx, batch_size=batch_size, input_frames=INPUT_FRAMES,
                            max_shift=max_shift_frames, max_gain=max_gain)
    opt_state = tx.init(params)
    key, specs, labels = jax.random.key(seed + 1), jnp.asarray(specs), jnp.asarray(train_labels)
    # A Python loop over a jitted step: XLA:CPU runs convolutions inside a lax.fori_loop much slower.
    for i in range(steps):
        params, opt_state = step(params, opt_state, specs, labels, key, i)
    params = jax.tree.map(np.asarray, params)
    info = {**training_settings(seed, steps, batch_size, learning_rate, weight_decay, max_shift_frames, max_gain_db),
            "sample_rate": int(sample_rate), "num_classes": num_classes, "train_examples": len(train_labels),
            **(extra_info or {})}
    if class_names is not None:
        info["class_names"] = list(class_names)
    classifier = WordClassifier(graphdef, params, sample_rate=sample_rate, class_names=class_names, info=info)
    if test_audio is not None:
        classifier.test_accuracy = classifier.accuracy(test_audio, test_labels)
        classifier.info.update(test_accuracy=classifier.test_accuracy, test_examples=len(np.asarray(test_labels)))
    classifier.info["train_seconds"] = round(time.perf_counter() - start, 2)
    return classifier


def dataset_options(words: str = "digits", sample_rate: int = 16000, clip_seconds: float = 1.0) -> dict:
    """The speech dataset options the classifier is trained on (part of its identity)."""
    return {"words": words, "sample_rate": int(sample_rate), "clip_seconds": float(clip_seconds)}


def _speech_class_names(words: str) -> list[str]:
    from maskgen.data.speech import WORD_SETS

    if words not in WORD_SETS:
        raise ValueError(f"word classifier: unknown words={words!r}; valid: {sorted(WORD_SETS)}")
    return list(WORD_SETS[words])


def train_word_classifier(words: str = "digits", sample_rate: int = 16000, clip_seconds: float = 1.0,
                          **settings) -> WordClassifier:
    """Trains on the speech dataset's train split and scores its test split (held-out voices)."""
    from maskgen.data.speech import CACHE_FORMAT, speech_arrays

    options = dataset_options(words, sample_rate, clip_seconds)
    class_names = _speech_class_names(words)
    train_audio, train_labels, _ = speech_arrays("train", **options)
    test_audio, test_labels, _ = speech_arrays("test", **options)
    return fit_word_classifier(train_audio, train_labels, sample_rate=sample_rate, test_audio=test_audio,
                               test_labels=test_labels, class_names=class_names,
                               extra_info={"dataset": options, "speech_format": CACHE_FORMAT}, **settings)


def _file_stem(options: dict) -> str:
    return (f"word_classifier_v{VERSION}_{options['words']}_{options['sample_rate']}hz_"
            f"{options['clip_seconds']:g}s")


def save_word_classifier(classifier: WordClassifier, cache_dir: str, options: dict) -> str:
    """Writes the JSON, then the msgpack params (each atomically); returns the msgpack path."""
    return save_cached_params(os.path.join(cache_dir, _file_stem(options)), classifier.info, classifier.params)


def load_word_classifier(cache_dir: str, options: dict) -> WordClassifier | None:
    """The cached classifier for these dataset options, or None if absent, unreadable or trained otherwise."""
    cached = read_cached_params(os.path.join(cache_dir, _file_stem(options)))
    if cached is None:
        return None
    info, restored = cached
    expected = training_settings()
    from maskgen.data.speech import CACHE_FORMAT

    if ({k: info.get(k) for k in expected} != expected or info.get("dataset") != options
            or info.get("speech_format") != CACHE_FORMAT):  # Other training, or data synthesised otherwise.
        return None
    graphdef, fresh = _graphdef_and_params(int(info.get("num_classes", 0)) or 1, 0)
    params = restore_params_like(fresh, restored)
    if params is None:
        return None
    return WordClassifier(graphdef, params, sample_rate=options["sample_rate"],
                          class_names=info.get("class_names"), test_accuracy=info.get("test_accuracy"), info=info)


@functools.lru_cache(maxsize=None)
def _cached_classifier(cache_dir: str, words: str, sample_rate: int, clip_seconds: float) -> WordClassifier:
    options = dataset_options(words, sample_rate, clip_seconds)
    classifier = load_word_classifier(cache_dir, options)
    if classifier is None:
        classifier = train_word_classifier(**options)
        save_word_classifier(classifier, cache_dir, options)
    return classifier


def get_word_classifier(*, words: str = "digits", sample_rate: int = 16000, clip_seconds: float = 1.0,
                        cache_dir: str | None = None) -> WordClassifier:
    """The classifier of the speech dataset with these options, from `cache_dir` (None: $MASKGEN_CACHE or
    ~/.cache/maskgen), trained and saved if absent. Cached in-process, so a process trains it at most once."""
    return _cached_classifier(os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir())),
                              str(words), int(sample_rate), float(clip_seconds))
