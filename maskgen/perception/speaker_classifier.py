"""A small speaker-embedding network trained on maskgen's own speech, the judge of speaker similarity.

Zero-shot voice prompting (MaskGCT, arXiv 2409.00750) is scored by SIM-O: the cosine similarity of
a speaker-verification embedding (WavLM-TDNN there) between the generated speech and the prompt.
Such networks cannot be downloaded here, so maskgen trains this one on the train split of its
eSpeak NG speech dataset (`maskgen.data.speech`, 32 voices) and uses it on the 8 voices that split
holds out (variants m3 and f4 in all 4 accents). Its similarities compare only with other numbers
from the same network, never with published SIM-O values.

The design is an x-vector (Snyder et al., "X-vectors: robust DNN embeddings for speaker
recognition", ICASSP 2018) at toy scale: a voice classifier whose penultimate layer, l2-normalised,
is the embedding.

* Input: audio [B, T] (or [B, T, 1]) at the classifier's sample rate -> scaled log-mel
  (`maskgen.audio.features`: n_fft = 32 ms rounded up to a power of two, hop n_fft / 2, 64 Slaney
  mels, power 1), of any length.
* Level normalisation: every clip's log-mel is taken relative to its loudest frame (mean over mels)
  and clipped at FLOOR_DB below it, so the embedding hardly depends on the gain (the eSpeak voices
  differ in loudness, and generated audio comes at whatever gain its decoder gives). Frames within
  SPEECH_RANGE_DB of the loudest are the speech frames; only they are pooled, so clips of any length
  and any amount of silence or padding are comparable.
* Frame layers (a TDNN over time, mels as channels, each conv followed by a per-frame LayerNorm):
  conv5(128) - GELU - conv3 dilated 2 (128) - GELU - conv3 dilated 3 (128) - GELU - dense(256) -
  GELU; statistics pooling (mean and standard deviation over the speech frames) - LayerNorm -
  dense(128): the embedding (l2-normalised by `embed`); a linear head over the 32 train voices
  (training only).
* Initialisation: the embedding bias is set so that the embeddings of the first 256 training clips
  average to zero (`centre_embeddings`): pooled statistics share a large common part, and without
  it all fresh embeddings point one way.

Training is AdamW with cosine decay and softmax cross-entropy over the train voices, on random
batches of their clips (all words), with random crops (a window of 70-100% of the frames kept, the rest
set to silence: generated samples may be partial words), random time shifts and random gains,
deterministic for a seed: DEFAULT_STEPS
steps of 64 clips, one to three minutes on 2 shared CPU cores. An additive-margin cosine head
(AM-softmax, arXiv 1801.05599) was tried: it reached about the same held-out accuracy on the full
data but collapsed to identical embeddings on small data, so the plain softmax head stays.

`get_speaker_classifier(sample_rate=..., clip_seconds=..., words=..., cache_dir=...)` loads the
parameters from `cache_dir/speaker_classifier_v<VERSION>_<words>_<rate>hz_<clip>s.msgpack` (the
companion `.json` records the training settings, the dataset options and the held-out-voice
scores), or trains and saves them there (atomic writes). Bump `VERSION` whenever the architecture
or the training changes. `speaker_similarity` turns embeddings into the numbers the MaskGCT
evaluation reports.
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
N_MELS = 64
CHANNELS = 128
EMBEDDING_DIM = 128
FLOOR_DB = 50.0  # log-mel values more than this below the loudest frame are clipped (gain invariance)
SPEECH_RANGE_DB = 30.0  # frames within this of the loudest frame are pooled
DEFAULT_STEPS = 600
CONTEXT_FRAMES = 7  # each side: the frame convolutions' receptive half-width, (5 - 1) / 2 + 2 + 3
REFERENCE_RENDITIONS = 4  # of each held-out voice's 8 renditions: references; the rest are queries
DEFAULT_SEED = 0


def _db_to_scaled(db: float) -> float:
    """A level difference in dB as a difference of scaled log-mel (natural log over LOG_MEL_HALF_RANGE)."""
    return db * math.log(10.0) / 20.0 / audio_features.LOG_MEL_HALF_RANGE


def mel_config(sample_rate: int) -> audio_features.MelConfig:
    """The network's log-mel settings at `sample_rate`: 32 ms windows (a power of two), 50% overlap, 64 mels."""
    n_fft = 2 ** math.ceil(math.log2(0.032 * sample_rate))
    return audio_features.MelConfig(sample_rate=sample_rate, n_fft=n_fft, hop=n_fft // 2, n_mels=N_MELS)


def as_signals(audio) -> jax.Array:
    """[B, T] or [B, T, 1] audio -> float32 [B, T], with a clear error for anything else."""
    return audio_features.mono_clips(jnp.asarray(audio, jnp.float32), "speaker classifier input")


def scaled_log_mel(audio, cfg: audio_features.MelConfig) -> jax.Array:
    """Audio [B, T] or [B, T, 1] -> scaled log-mel [B, frames, n_mels] (absolute level)."""
    return audio_features.scale_log_mel(audio_features.log_mel(as_signals(audio), cfg))


def normalise_level(spec: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scaled log-mel [B, F, M] -> (log-mel relative to the loudest frame, clipped at -FLOOR_DB, [B, F, M];
    speech-frame weights float32 [B, F]: 1 within SPEECH_RANGE_DB of the loudest frame, else 0).

    The loudest frame always counts, so every clip has at least one speech frame.
    """
    energy = spec.mean(axis=-1)
    top = energy.max(axis=-1, keepdims=True)
    relative = jnp.maximum(spec - top[..., None], -_db_to_scaled(FLOOR_DB))
    weights = (energy >= top - _db_to_scaled(SPEECH_RANGE_DB)).astype(jnp.float32)
    return relative, weights


def statistics_pooling(frames: jax.Array, weights: jax.Array) -> jax.Array:
    """[B, F, C] frame features and [B, F] weights -> [B, 2C]: weighted mean and standard deviation over F."""
    total = jnp.maximum(weights.sum(axis=1, keepdims=True), 1e-6)[..., None]
    w = weights[..., None]
    mean = (w * frames).sum(axis=1, keepdims=True) / total
    variance = (w * jnp.square(frames - mean)).sum(axis=1, keepdims=True) / total
    return jnp.concatenate([mean[:, 0], jnp.sqrt(variance[:, 0] + 1e-5)], axis=-1)


def l2_normalise(x: jax.Array, axis: int = -1) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True) + 1e-12)


class SpeakerTDNN(nnx.Module):
    """Frame convolutions over time, statistics pooling, an embedding layer and a linear voice head."""

    def __init__(self, num_speakers: int, *, rngs: nnx.Rngs, n_mels: int = N_MELS, channels: int = CHANNELS,
                 embedding_dim: int = EMBEDDING_DIM):
        # VALID convolutions over a clip padded with CONTEXT_FRAMES of silence each side: beyond its
        # edges the network hears silence, as it would in a longer, padded clip.
        self.frame1 = nnx.Conv(n_mels, channels, (5,), padding="VALID", rngs=rngs)
        self.frame2 = nnx.Conv(channels, channels, (3,), kernel_dilation=(2,), padding="VALID", rngs=rngs)
        self.frame3 = nnx.Conv(channels, channels, (3,), kernel_dilation=(3,), padding="VALID", rngs=rngs)
        self.frame4 = nnx.Linear(channels, 2 * channels, rngs=rngs)
        # Per-frame layer norms over channels keep the activations O(1) whatever the clip.
        self.norm1 = nnx.LayerNorm(channels, rngs=rngs)
        self.norm2 = nnx.LayerNorm(channels, rngs=rngs)
        self.norm3 = nnx.LayerNorm(channels, rngs=rngs)
        self.pooled_norm = nnx.LayerNorm(4 * channels, rngs=rngs)
        self.embedding = nnx.Linear(4 * channels, embedding_dim, rngs=rngs)
        self.head = nnx.Linear(embedding_dim, num_speakers, rngs=rngs)

    def embed(self, spec: jax.Array, weights: jax.Array) -> jax.Array:
        """Level-normalised log-mel [B, F, n_mels] and speech weights [B, F] -> l2-normalised [B, embedding_dim]."""
        return l2_normalise(self.raw_embedding(spec, weights))

    def raw_embedding(self, spec: jax.Array, weights: jax.Array) -> jax.Array:
        """The embedding layer's output [B, embedding_dim], before the l2 normalisation."""
        x = 2.0 * spec / _db_to_scaled(FLOOR_DB) + 1.0  # [-FLOOR_DB, 0] dB relative -> [-1, 1]
        x = jnp.pad(x, ((0, 0), (CONTEXT_FRAMES, CONTEXT_FRAMES), (0, 0)), constant_values=-1.0)
        x = jax.nn.gelu(self.norm1(self.frame1(x)))
        x = jax.nn.gelu(self.norm2(self.frame2(x)))
        x = jax.nn.gelu(self.norm3(self.frame3(x)))
        x = jax.nn.gelu(self.frame4(x))
        return self.embedding(self.pooled_norm(statistics_pooling(x, weights)))

    def __call__(self, spec: jax.Array, weights: jax.Array) -> jax.Array:
        """Voice logits [B, num_speakers] (training only: a linear head on the raw embedding)."""
        return self.head(self.raw_embedding(spec, weights))


def _graphdef_and_params(num_speakers: int, seed: int, channels: int = CHANNELS,
                         embedding_dim: int = EMBEDDING_DIM):
    model = SpeakerTDNN(num_speakers, rngs=nnx.Rngs(params=seed), channels=channels, embedding_dim=embedding_dim)
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


# Compiled once per (architecture, mel settings, input shape), shared by every classifier instance.
@functools.partial(jax.jit, static_argnums=(0, 3))
def _embed_audio(graphdef, params, audio, cfg: audio_features.MelConfig) -> jax.Array:
    spec, weights = normalise_level(scaled_log_mel(audio, cfg))
    return nnx.merge(graphdef, params).embed(spec, weights)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _voice_logits(graphdef, params, audio, cfg: audio_features.MelConfig) -> jax.Array:
    return nnx.merge(graphdef, params)(*normalise_level(scaled_log_mel(audio, cfg)))


class SpeakerClassifier:
    """A trained speaker-embedding network: `embed` audio [B, T] or [B, T, 1] -> l2-normalised [B, D].

    Audio must be at `sample_rate`; any length of at least half an STFT window is accepted. `voices`
    are the (training) voices its head classifies; its embeddings are meant for other voices too.
    """

    def __init__(self, graphdef, params, *, sample_rate: int, voices=None, info: dict | None = None):
        self.graphdef, self.params = graphdef, params
        self.sample_rate = int(sample_rate)
        self.mel = mel_config(self.sample_rate)
        num_voices = int(params["head"]["kernel"].shape[1])
        self.voices = tuple(voices) if voices is not None else tuple(str(i) for i in range(num_voices))
        if len(self.voices) != num_voices:
            raise ValueError(f"speaker classifier: {len(self.voices)} voice names for a head of {num_voices}")
        self.info = dict(info or {})
        mel = self.mel
        self._embed = lambda p, x: _embed_audio(graphdef, p, x, mel)
        self._logits = lambda p, x: _voice_logits(graphdef, p, x, mel)

    @property
    def embedding_dim(self) -> int:
        return int(self.params["embedding"]["bias"].shape[0])

    def _batched(self, fn, audio, batch_size: int, width: int) -> np.ndarray:
        x = np.asarray(as_signals(audio))
        if x.shape[1] <= self.mel.n_fft // 2:
            raise ValueError(f"speaker classifier: clips of {x.shape[1]} samples are shorter than half an STFT "
                             f"window ({self.mel.n_fft // 2 + 1} samples at {self.sample_rate} Hz)")
        if not len(x):
            return np.zeros((0, width), np.float32)
        return np.concatenate([np.asarray(fn(self.params, x[i:i + batch_size]))
                               for i in range(0, len(x), batch_size)])

    def embed(self, audio, batch_size: int = 256) -> np.ndarray:
        """Speaker embeddings float32 [B, embedding_dim], each of unit length."""
        return self._batched(self._embed, audio, batch_size, self.embedding_dim)

    def logits(self, audio, batch_size: int = 256) -> np.ndarray:
        """The training head's logits float32 [B, len(voices)] over the training voices."""
        return self._batched(self._logits, audio, batch_size, len(self.voices))

    def predict(self, audio, batch_size: int = 256) -> np.ndarray:
        """Index into `voices` of the most likely training voice, int [B]."""
        return np.argmax(self.logits(audio, batch_size), axis=-1)


# ---------------------------------------------------------------- similarity


def voice_centroids(embeddings_by_voice: dict) -> tuple[list, np.ndarray]:
    """{voice: embeddings [n, D]} -> (voices in the dict's order, l2-normalised mean embeddings [V, D])."""
    voices = list(embeddings_by_voice)
    means = np.stack([np.asarray(embeddings_by_voice[v], np.float64).mean(axis=0) for v in voices])
    return voices, means / np.maximum(np.linalg.norm(means, axis=-1, keepdims=True), 1e-12)


def similarity_from_embeddings(samples: np.ndarray, references: dict, prompt_voices, prompts=None) -> dict:
    """`speaker_similarity` on embeddings: samples [B, D] and prompts [B, D] (or None) l2-normalised,
    references {voice: [n, D]}, prompt_voices [B] (keys of references)."""
    samples = np.asarray(samples, np.float64)
    prompt_voices = list(prompt_voices)
    if samples.ndim != 2 or len(prompt_voices) != len(samples):
        raise ValueError(f"speaker similarity: {len(prompt_voices)} prompt voices for samples of shape "
                         f"{samples.shape} (need one voice per sample)")
    if not len(samples):
        raise ValueError("speaker similarity: no samples to score")
    if len(references) < 2:
        raise ValueError(f"speaker similarity: need reference clips of at least 2 voices, got {list(references)}")
    empty = [v for v, e in references.items() if len(e) == 0]
    if empty:
        raise ValueError(f"speaker similarity: no reference clips for voice(s) {empty}")
    unknown = sorted({str(v) for v in prompt_voices if v not in references})
    if unknown:
        raise ValueError(f"speaker similarity: prompt voice(s) {unknown} have no reference clips; "
                         f"references hold {sorted(map(str, references))}")
    voices, centroids = voice_centroids(references)
    own = np.array([voices.index(v) for v in prompt_voices], np.int64)
    sims = samples @ centroids.T  # [B, V]
    rows = np.arange(len(samples))
    own_sim = sims[rows, own]
    others = np.ones_like(sims, bool)
    others[rows, own] = False
    other_sim = (sims * others).sum(axis=1) / others.sum(axis=1)
    result = {
        "prompt_voice_similarity": float(own_sim.mean()),
        "other_voice_similarity": float(other_sim.mean()),
        "margin": float((own_sim - other_sim).mean()),
        "nearest_voice_accuracy": float(np.mean(np.argmax(sims, axis=1) == own)),
        "chance_accuracy": 1.0 / len(voices),
        "num_voices": len(voices),
        "num_samples": len(samples),
    }
    if prompts is not None:
        prompts = np.asarray(prompts, np.float64)
        if prompts.shape != samples.shape:
            raise ValueError(f"speaker similarity: prompts embed to {prompts.shape}, samples to {samples.shape}")
        result["prompt_similarity"] = float(np.sum(samples * prompts, axis=1).mean())
    return result


def speaker_similarity(classifier, samples, prompts, references: dict, prompt_voices, batch_size: int = 256) -> dict:
    """How close generated `samples` [B, T] are to the voice of their prompts, judged by `classifier`.

    `references` maps each voice to clips of it [n, T] (other clips than the prompts: they define
    the voice); `prompt_voices[i]` is the voice of sample i's prompt (a key of `references`); `prompts`
    [B, T] are the prompt clips themselves, or None. Clips may have any length. Returns:
    - prompt_voice_similarity: mean cosine between a sample and its prompt voice's mean reference embedding;
    - prompt_similarity: mean cosine between a sample and its own prompt clip (when prompts are given);
    - other_voice_similarity: mean cosine between a sample and the other voices' mean embeddings;
    - margin: prompt_voice_similarity - other_voice_similarity (per sample, averaged);
    - nearest_voice_accuracy: the share of samples whose most similar reference voice is the prompt's
      (chance_accuracy = 1 / num_voices); and num_voices, num_samples.
    """
    embedded = {voice: classifier.embed(clips, batch_size) for voice, clips in references.items()}
    prompt_embeddings = None if prompts is None else classifier.embed(prompts, batch_size)
    return similarity_from_embeddings(classifier.embed(samples, batch_size), embedded, prompt_voices,
                                      prompt_embeddings)


# ---------------------------------------------------------------- training


def _make_train_step(graphdef, tx, *, batch_size: int, min_crop: float, max_shift: int, max_gain: float):
    """One jitted AdamW step on a random batch of precomputed scaled log-mels, with random crops, shifts and gains."""
    silence = float(audio_features.scale_log_mel(math.log(audio_features.MelConfig().log_floor)))

    def loss_fn(params, spec, labels):
        logits = nnx.merge(graphdef, params)(*normalise_level(spec))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def augment(spec, key):  # spec [F, n_mels]: shift in time, keep a random window, change the gain.
        k_shift, k_length, k_start, k_gain = jax.random.split(key, 4)
        frames = spec.shape[0]
        padded = jnp.pad(spec, ((max_shift, max_shift), (0, 0)), constant_values=silence)
        start = jax.random.randint(k_shift, (), 0, 2 * max_shift + 1)
        spec = jax.lax.dynamic_slice(padded, (start, 0), (frames, spec.shape[1]))
        length = jnp.round(frames * jax.random.uniform(k_length, (), minval=min_crop, maxval=1.0))
        first = jnp.floor(jax.random.uniform(k_start, ()) * (frames - length + 1))
        t = jnp.arange(frames)
        inside = (t >= first) & (t < first + length)
        spec = jnp.where(inside[:, None], spec, silence)
        gain = jax.random.uniform(k_gain, (), minval=-max_gain, maxval=max_gain)
        return jnp.maximum(spec + gain, silence)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, specs, labels, key, i):
        k_idx, k_aug = jax.random.split(jax.random.fold_in(key, i))
        idx = jax.random.randint(k_idx, (batch_size,), 0, specs.shape[0])
        x = jax.vmap(augment)(specs[idx], jax.random.split(k_aug, batch_size))
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def centre_embeddings(graphdef, params, specs) -> dict:
    """`params` with the embedding bias shifted so that the raw embeddings of `specs` average to zero.

    A data-dependent initialisation: the pooled statistics of all clips share a large common part, so
    freshly initialised embeddings all point one way (cosines near 1) and the cosine loss learns slowly
    from there; centring them spreads them over the sphere from the first step.
    """
    raw = nnx.merge(graphdef, params).raw_embedding(*normalise_level(jnp.asarray(specs)))
    embedding = {**params["embedding"], "bias": params["embedding"]["bias"] - raw.mean(axis=0)}
    return {**params, "embedding": embedding}


def precompute_inputs(audio, cfg: audio_features.MelConfig, batch_size: int = 256) -> np.ndarray:
    """Scaled log-mels [N, frames, n_mels] of audio [N, T] (in batches, one compilation)."""
    fn = jax.jit(lambda x: scaled_log_mel(x, cfg))
    audio = np.asarray(audio, np.float32)
    return np.concatenate([np.asarray(fn(audio[i:i + batch_size])) for i in range(0, len(audio), batch_size)])


def training_settings(seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, batch_size: int = 64,
                      learning_rate: float = 2e-3, weight_decay: float = 1e-4, min_crop: float = 0.7,
                      max_shift_frames: int = 4, max_gain_db: float = 10.0, channels: int = CHANNELS,
                      embedding_dim: int = EMBEDDING_DIM) -> dict:
    """What identifies the training (stored in the companion JSON; a cache with other settings is retrained)."""
    return {"version": VERSION, "seed": seed, "steps": steps, "batch_size": batch_size,
            "learning_rate": learning_rate, "weight_decay": weight_decay, "min_crop": min_crop,
            "max_shift_frames": max_shift_frames, "max_gain_db": max_gain_db, "channels": channels,
            "embedding_dim": embedding_dim, "n_mels": N_MELS, "floor_db": FLOOR_DB,
            "speech_range_db": SPEECH_RANGE_DB}


def fit_speaker_classifier(train_audio, train_voices, *, sample_rate: int, voice_names=None,
                           seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, batch_size: int = 64,
                           learning_rate: float = 2e-3, weight_decay: float = 1e-4, min_crop: float = 0.7,
                           max_shift_frames: int = 4, max_gain_db: float = 10.0, channels: int = CHANNELS,
                           embedding_dim: int = EMBEDDING_DIM, extra_info: dict | None = None) -> SpeakerClassifier:
    """Trains on audio [N, T] (or [N, T, 1]) with voice ids [N] in [0, V); deterministic for `seed`.

    Voice ids need not be contiguous in the data: the head has one row per id up to the largest.
    """
    start = time.perf_counter()
    train_voices = np.asarray(train_voices, np.int32)
    if train_voices.ndim != 1 or not len(train_voices):
        raise ValueError(f"speaker classifier: need a non-empty 1-D array of voice ids, got {train_voices.shape}")
    num_voices = len(voice_names) if voice_names is not None else int(train_voices.max()) + 1
    if train_voices.min() < 0 or train_voices.max() >= num_voices:
        raise ValueError(f"speaker classifier: voice ids must lie in [0, {num_voices}), got "
                         f"[{train_voices.min()}, {train_voices.max()}]")
    if not 0 < min_crop <= 1:
        raise ValueError(f"speaker classifier: min_crop must be in (0, 1], got {min_crop}")
    cfg = mel_config(sample_rate)
    specs = precompute_inputs(np.asarray(as_signals(train_audio)), cfg)
    if len(specs) != len(train_voices):
        raise ValueError(f"speaker classifier: {len(specs)} training clips but {len(train_voices)} voice ids")
    graphdef, params = _graphdef_and_params(num_voices, seed, channels, embedding_dim)
    params = centre_embeddings(graphdef, params, specs[:256])
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)
    step = _make_train_step(graphdef, tx, batch_size=batch_size, min_crop=min_crop, max_shift=max_shift_frames,
                            max_gain=_db_to_scaled(max_gain_db))
    opt_state = tx.init(params)
    key, specs, labels = jax.random.key(seed + 1), jnp.asarray(specs), jnp.asarray(train_voices)
    losses = []
    # A Python loop over a jitted step: XLA:CPU runs convolutions inside a lax.fori_loop much slower.
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, specs, labels, key, i)
        losses.append(loss)
    params = jax.tree.map(np.asarray, params)
    losses = np.asarray(jax.device_get(losses), np.float64)
    tail = max(1, steps // 10)
    info = {**training_settings(seed, steps, batch_size, learning_rate, weight_decay, min_crop, max_shift_frames,
                                max_gain_db, channels, embedding_dim),
            "sample_rate": int(sample_rate), "num_voices": num_voices, "train_examples": len(train_voices),
            "first_loss": float(losses[:tail].mean()), "final_loss": float(losses[-tail:].mean()),
            **(extra_info or {})}
    if voice_names is not None:
        info["voices"] = list(voice_names)
    classifier = SpeakerClassifier(graphdef, params, sample_rate=sample_rate, voices=voice_names, info=info)
    classifier.info["train_seconds"] = round(time.perf_counter() - start, 2)
    return classifier


def held_out_scores(classifier: SpeakerClassifier, audio, voices, is_reference, voice_names=None) -> dict:
    """`speaker_similarity` of real clips: every clip with is_reference False is a 'sample' whose prompt
    voice is its own voice, scored against references built from the clips with is_reference True (other
    clips of the same voices). Its nearest_voice_accuracy is the ceiling a generated sample could reach."""
    voices, is_reference = np.asarray(voices), np.asarray(is_reference, bool)
    if is_reference.shape != voices.shape:
        raise ValueError(f"speaker classifier: is_reference {is_reference.shape} must match voices {voices.shape}")
    embeddings = classifier.embed(audio)
    name = (lambda v: voice_names[int(v)]) if voice_names is not None else str
    references = {name(v): embeddings[is_reference & (voices == v)] for v in np.unique(voices)}
    query = ~is_reference
    return similarity_from_embeddings(embeddings[query], references, [name(v) for v in voices[query]])


def dataset_options(words: str = "digits", sample_rate: int = 16000, clip_seconds: float = 1.0) -> dict:
    """The speech dataset options the classifier is trained on (part of its identity)."""
    return {"words": words, "sample_rate": int(sample_rate), "clip_seconds": float(clip_seconds)}


def train_speaker_classifier(words: str = "digits", sample_rate: int = 16000, clip_seconds: float = 1.0,
                             **settings) -> SpeakerClassifier:
    """Trains on the speech dataset's 32 train voices; scores the 8 held-out voices of its test split
    (references: renditions 0-3 of each voice; queries: the other renditions)."""
    from maskgen.data.speech import CACHE_FORMAT, VOICES, WORD_SETS, speech_arrays, split_voices

    if words not in WORD_SETS:
        raise ValueError(f"speaker classifier: unknown words={words!r}; valid: {sorted(WORD_SETS)}")
    options = dataset_options(words, sample_rate, clip_seconds)
    train_names = split_voices("train")
    train_audio, _, train_voices = speech_arrays("train", **options)
    # Voice ids index VOICES (40); the head classifies the 32 train voices only.
    to_train_id = {VOICES.index(v): i for i, v in enumerate(train_names)}
    classifier = fit_speaker_classifier(train_audio, np.array([to_train_id[int(v)] for v in train_voices]),
                                        sample_rate=sample_rate, voice_names=train_names,
                                        extra_info={"dataset": options, "speech_format": CACHE_FORMAT}, **settings)
    test_audio, _, test_voices = speech_arrays("test", **options)
    is_reference = clip_renditions(len(test_voices)) < REFERENCE_RENDITIONS
    scores = held_out_scores(classifier, test_audio, test_voices, is_reference, voice_names=VOICES)
    classifier.info["held_out"] = scores
    return classifier


def clip_renditions(num_clips: int, renditions: int = 8) -> np.ndarray:
    """The rendition of each clip of a speech split (clips are stored by voice, then word, then rendition)."""
    return np.arange(num_clips) % renditions


def _file_stem(options: dict) -> str:
    return (f"speaker_classifier_v{VERSION}_{options['words']}_{options['sample_rate']}hz_"
            f"{options['clip_seconds']:g}s")


def save_speaker_classifier(classifier: SpeakerClassifier, cache_dir: str, options: dict) -> str:
    """Writes the JSON, then the msgpack params (each atomically); returns the msgpack path."""
    return save_cached_params(os.path.join(cache_dir, _file_stem(options)), classifier.info, classifier.params)


def load_speaker_classifier(cache_dir: str, options: dict, settings: dict | None = None) -> SpeakerClassifier | None:
    """The cached classifier for these dataset options, or None if absent, unreadable or trained otherwise
    than `settings` (a `training_settings(...)` dict; None: the defaults)."""
    cached = read_cached_params(os.path.join(cache_dir, _file_stem(options)))
    if cached is None:
        return None
    info, restored = cached
    expected = training_settings() if settings is None else settings
    from maskgen.data.speech import CACHE_FORMAT

    if ({k: info.get(k) for k in expected} != expected or info.get("dataset") != options
            or info.get("speech_format") != CACHE_FORMAT):  # Other training, or data synthesised otherwise.
        return None
    graphdef, fresh = _graphdef_and_params(int(info.get("num_voices", 0)) or 1, 0, expected["channels"],
                                           expected["embedding_dim"])
    params = restore_params_like(fresh, restored)
    if params is None:
        return None
    return SpeakerClassifier(graphdef, params, sample_rate=options["sample_rate"], voices=info.get("voices"),
                             info=info)


@functools.lru_cache(maxsize=None)
def _cached_classifier(cache_dir: str, words: str, sample_rate: int, clip_seconds: float) -> SpeakerClassifier:
    options = dataset_options(words, sample_rate, clip_seconds)
    classifier = load_speaker_classifier(cache_dir, options)
    if classifier is None:
        classifier = train_speaker_classifier(**options)
        save_speaker_classifier(classifier, cache_dir, options)
    return classifier


def get_speaker_classifier(sample_rate: int = 16000, clip_seconds: float = 1.0, words: str = "digits", *,
                           cache_dir: str | None = None) -> SpeakerClassifier:
    """The speaker classifier of the speech dataset with these options, from `cache_dir` (None: $MASKGEN_CACHE
    or ~/.cache/maskgen), trained on its 32 train voices and saved if absent. Cached in-process, so a
    process trains it at most once."""
    return _cached_classifier(os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir())),
                              str(words), int(sample_rate), float(clip_seconds))
