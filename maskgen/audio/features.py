"""The audio front end in JAX: STFT, mel filterbanks, log-mel and Griffin-Lim.

All functions are pure `jax.numpy`, batch-first and static-shaped, so they jit and run inside
training steps. Conventions (shared by every audio part of maskgen, see docs/audio.md):

- **STFT.** Centred frames (the signal is reflect-padded by n_fft // 2 on both sides), a periodic
  Hann window of `win_length` zero-padded to `n_fft` in the middle, one-sided spectrum. A signal of
  T samples gives `num_frames(T, hop) = T // hop` frames: frame t is centred on sample t * hop.
  librosa's `stft(center=True, pad_mode="reflect")` gives one more frame (centred on the last
  sample's hop boundary); maskgen drops it so that T = frames * hop exactly when hop divides T,
  which keeps codec frame rates and mel patch grids simple.
- **Mel filterbanks.** Triangular filters on the HTK mel scale (2595 log10(1 + f / 700)) or on
  Slaney's (linear below 1 kHz, logarithmic above, as in the Auditory Toolbox), with Slaney's
  area normalisation (each filter divided by half its bandwidth in Hz) or none. The formulas are
  librosa's (`librosa.filters.mel`), computed in float64 and returned as float32 [n_fft//2+1, n_mels].
- **log-mel.** The natural log of max(mel, log_floor) (HiFi-GAN's convention, Kong et al.,
  arXiv 2010.05646), on a magnitude (power=1) or power (power=2) spectrogram.
- **Scaled log-mel.** Models see `scale_log_mel(lm) = (lm - LOG_MEL_CENTER) / LOG_MEL_HALF_RANGE`,
  a fixed affine map that sends [ln(1e-5), 2.5] = [-11.5, 2.5] to [-1, 1]: the default floor, and a
  little above the loudest log-mel of a full-scale sine at n_fft = 1024 with 80 Slaney mels (2.2;
  the eSpeak speech peaks near 0.9). It is fixed, not fitted to the data, so tokenizers and
  generators trained on different data read each other's outputs.
- **Griffin-Lim.** Phase recovery from a magnitude by alternating projections (Griffin & Lim,
  IEEE TASSP 1984), accelerated with the momentum of "A fast Griffin-Lim algorithm" (Perraudin,
  Balazs & Søndergaard, WASPAA 2013) as librosa does, started from random phases. `mel_to_audio`
  first inverts the mel filterbank by non-negative least squares (multiplicative updates started
  from the clipped pseudo-inverse); its output is not clipped to [-1, 1] (the WAV writer clips).
  It is how maskgen listens to mel outputs (SpecMaskGIT, arXiv 2406.17672, uses a neural vocoder
  instead).

Audio arrays in recipes are [B, T, 1]: pass `x[..., 0]` to these functions.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", None)

# scale_log_mel: [LOG_MEL_CENTER - LOG_MEL_HALF_RANGE, LOG_MEL_CENTER + LOG_MEL_HALF_RANGE] -> [-1, 1].
LOG_MEL_CENTER = -4.5
LOG_MEL_HALF_RANGE = 7.0


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """How a waveform becomes a (log-)mel spectrogram. Frozen and hashable: usable as a static jit argument."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 256
    win_length: int | None = None  # None -> n_fft
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = None  # None -> sample_rate / 2
    mel_scale: str = "slaney"  # "slaney" | "htk"
    norm: str | None = "slaney"  # "slaney" (area) | None
    power: float = 1.0  # 1: magnitude, 2: power (any positive exponent of |STFT|)
    log_floor: float = 1e-5

    def __post_init__(self):
        problems = []
        for name in ("sample_rate", "n_fft", "hop", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.win_length is not None and not (isinstance(self.win_length, (int, np.integer))
                                                and 1 <= self.win_length <= self.n_fft):
            problems.append(f"win_length must be None or an integer in [1, n_fft={self.n_fft}], got {self.win_length!r}")
        if self.mel_scale not in MEL_SCALES:
            problems.append(f"mel_scale must be one of {MEL_SCALES}, got {self.mel_scale!r}")
        if self.norm not in MEL_NORMS:
            problems.append(f"norm must be one of {MEL_NORMS}, got {self.norm!r}")
        if isinstance(self.power, bool) or not isinstance(self.power, (int, float)) or not self.power > 0:
            problems.append(f"power must be a positive number (1: magnitude, 2: power), got {self.power!r}")
        if not self.log_floor > 0:
            problems.append(f"log_floor must be positive, got {self.log_floor!r}")
        f_max = self.sample_rate / 2 if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= self.sample_rate / 2 + 1e-9:
            problems.append(f"need 0 <= f_min < f_max <= sample_rate / 2 = {self.sample_rate / 2}, "
                            f"got f_min={self.f_min}, f_max={self.f_max}")
        if problems:
            raise ValueError("MelConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict) -> "MelConfig":
        """From `to_dict()`'s output (e.g. a run's info.json); unknown keys are an error naming the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"MelConfig: unknown key(s) {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def num_frames(num_samples: int, hop: int) -> int:
    """Frames of the centred STFT of `num_samples` samples: num_samples // hop (librosa's last frame dropped)."""
    return int(num_samples) // int(hop)


def mono_clips(audio, what: str = "audio"):
    """A batch of mono clips [B, T] or [B, T, 1] (numpy or jax) -> [B, T], the same array type and dtype.

    Anything else (stereo [B, T, 2], a single clip [T]) is an error naming `what` and the shape.
    """
    if audio.ndim == 3 and audio.shape[-1] == 1:
        audio = audio[..., 0]
    if audio.ndim != 2:
        raise ValueError(f"{what} must be mono clips [B, T] or [B, T, 1], got shape {tuple(audio.shape)}")
    return audio


# ---------------------------------------------------------------- STFT


def hann_window(n_fft: int, win_length: int | None = None) -> np.ndarray:
    """Periodic Hann window of `win_length` (default n_fft), zero-padded on both sides to n_fft (float32 [n_fft])."""
    win_length = n_fft if win_length is None else win_length
    if not 1 <= win_length <= n_fft:
        raise ValueError(f"win_length must be in [1, n_fft={n_fft}], got {win_length}")
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(window, (left, n_fft - win_length - left)).astype(np.float32)


def _check_signal(x, name: str = "x") -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a batch of mono signals [B, T], got shape {tuple(x.shape)} "
                         "(for [B, T, 1] audio pass x[..., 0])")
    return x.astype(jnp.float32)


def _frame_indices(frames: int, n_fft: int, hop: int) -> np.ndarray:
    return hop * np.arange(frames)[:, None] + np.arange(n_fft)[None, :]


def stft(x, n_fft: int, hop: int, win_length: int | None = None) -> jax.Array:
    """Centred STFT of x [B, T] -> complex64 [B, T // hop, n_fft // 2 + 1] (reflect padding, Hann window)."""
    x = _check_signal(x)
    num_samples = x.shape[1]
    pad = n_fft // 2
    if num_samples <= pad:
        raise ValueError(f"stft: signals of {num_samples} samples are too short for n_fft={n_fft} "
                         f"(reflect padding needs more than n_fft // 2 = {pad} samples)")
    frames = num_frames(num_samples, hop)
    if frames < 1:
        raise ValueError(f"stft: signals of {num_samples} samples are shorter than one hop ({hop})")
    padded = jnp.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    windowed = padded[:, _frame_indices(frames, n_fft, hop)] * hann_window(n_fft, win_length)
    return jnp.fft.rfft(windowed, n=n_fft, axis=-1).astype(jnp.complex64)


def _overlap_add(frames: jax.Array, hop: int) -> jax.Array:
    """[B, F, n] frames -> [B, (F - 1) * hop + n] sum of the frames placed hop apart."""
    batch, count, n = frames.shape
    total = (count - 1) * hop + n
    if n % hop == 0:
        # n / hop shifted copies of non-overlapping chunks: cheaper than a scatter-add on CPU.
        chunks = frames.reshape(batch, count, n // hop, hop)
        out = jnp.zeros((batch, count + n // hop - 1, hop), frames.dtype)
        for j in range(n // hop):
            out = out.at[:, j:j + count].add(chunks[:, :, j])
        return out.reshape(batch, total)
    out = jnp.zeros((batch, total), frames.dtype)
    return out.at[:, _frame_indices(count, n, hop)].add(frames)


def istft(spec, n_fft: int, hop: int, win_length: int | None = None, length: int | None = None) -> jax.Array:
    """Inverse of `stft` (weighted overlap-add): complex [B, F, n_fft // 2 + 1] -> float32 [B, length].

    `length` defaults to F * hop. Samples no frame covers come back as 0.
    """
    spec = jnp.asarray(spec)
    if spec.ndim != 3 or spec.shape[-1] != n_fft // 2 + 1:
        raise ValueError(f"istft: spec must be [B, frames, n_fft // 2 + 1 = {n_fft // 2 + 1}], got {tuple(spec.shape)}")
    count = spec.shape[1]
    length = count * hop if length is None else int(length)
    window = hann_window(n_fft, win_length)
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1).astype(jnp.float32) * window
    signal = _overlap_add(frames, hop)
    norm = _overlap_add(jnp.broadcast_to(jnp.asarray(window ** 2), (1, count, n_fft)), hop)
    tiny = np.finfo(np.float32).tiny
    signal = jnp.where(norm > tiny, signal / jnp.where(norm > tiny, norm, 1.0), 0.0)
    pad = n_fft // 2
    signal = signal[:, pad:pad + length]
    if signal.shape[1] < length:
        signal = jnp.pad(signal, ((0, 0), (0, length - signal.shape[1])))
    return signal


# ---------------------------------------------------------------- mel filterbank


def hz_to_mel(frequencies, mel_scale: str = "slaney") -> np.ndarray:
    """Hz -> mel on the HTK or Slaney scale (float64)."""
    f = np.asarray(frequencies, np.float64)
    if mel_scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    if mel_scale != "slaney":
        raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")
    # Slaney: linear (200/3 Hz per mel) up to 1 kHz, then logarithmic (27 mels per factor 6.4).
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = f / f_sp
    logarithmic = min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, logarithmic, linear)


def mel_to_hz(mels, mel_scale: str = "slaney") -> np.ndarray:
    """The inverse of `hz_to_mel` (float64)."""
    m = np.asarray(mels, np.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if mel_scale != "slaney":
        raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=64)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float,
                    mel_scale: str, norm: str | None) -> np.ndarray:
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(hz_to_mel(f_min, mel_scale), hz_to_mel(f_max, mel_scale), n_mels + 2)
    edges = mel_to_hz(mel_points, mel_scale)  # [n_mels + 2]: each filter's left, centre, right.
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, F]
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Unit area per filter.
    bank = np.ascontiguousarray(weights.T.astype(np.float32))
    bank.flags.writeable = False
    return bank


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None,
                   mel_scale: str = "slaney", norm: str | None = "slaney") -> np.ndarray:
    """Triangular mel filters, float32 [n_fft // 2 + 1, n_mels] (== librosa.filters.mel(...).T; read-only, cached)."""
    if mel_scale not in MEL_SCALES:
        raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")
    if norm not in MEL_NORMS:
        raise ValueError(f"norm must be one of {MEL_NORMS}, got {norm!r}")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max:
        raise ValueError(f"mel_filterbank: need 0 <= f_min < f_max, got f_min={f_min}, f_max={f_max}")
    return _mel_filterbank(int(sample_rate), int(n_fft), int(n_mels), float(f_min), float(f_max), mel_scale, norm)


def config_filterbank(cfg: MelConfig) -> np.ndarray:
    """`mel_filterbank` with the settings of `cfg`."""
    return mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale, cfg.norm)


# ---------------------------------------------------------------- mel and log-mel


def spectrogram(x, cfg: MelConfig) -> jax.Array:
    """|STFT|^power of x [B, T] -> float32 [B, frames, n_fft // 2 + 1]."""
    magnitude = jnp.abs(stft(x, cfg.n_fft, cfg.hop, cfg.win_length))
    return magnitude if cfg.power == 1 else magnitude ** cfg.power


def mel_spectrogram(x, cfg: MelConfig) -> jax.Array:
    """Mel spectrogram of x [B, T] -> float32 [B, frames, n_mels]."""
    return spectrogram(x, cfg) @ config_filterbank(cfg)


def log_mel(x, cfg: MelConfig) -> jax.Array:
    """ln(max(mel_spectrogram, log_floor)) of x [B, T] -> float32 [B, frames, n_mels]."""
    return jnp.log(jnp.maximum(mel_spectrogram(x, cfg), cfg.log_floor))


def scale_log_mel(lm) -> jax.Array:
    """The fixed affine map from natural-log mel to model scale: [-11.5, 2.5] -> [-1, 1] (see the module docstring)."""
    return (jnp.asarray(lm) - LOG_MEL_CENTER) / LOG_MEL_HALF_RANGE


def unscale_log_mel(y) -> jax.Array:
    """The inverse of `scale_log_mel`."""
    return jnp.asarray(y) * LOG_MEL_HALF_RANGE + LOG_MEL_CENTER


# ---------------------------------------------------------------- inversion


def griffin_lim(magnitude, n_fft: int, hop: int, *, num_iters: int = 32, momentum: float = 0.99,
                length: int | None = None, rng: jax.Array | None = None, win_length: int | None = None) -> jax.Array:
    """Fast Griffin-Lim: a waveform float32 [B, length] whose STFT magnitude approximates `magnitude` [B, F, n_fft//2+1].

    Each iteration takes the STFT of the inverse STFT of magnitude * phase, then extrapolates the
    phase with `momentum` (Perraudin et al. 2013; 0 gives plain Griffin-Lim, 0.99 is librosa's
    default) and renormalises it. Starts from uniformly random phases drawn from `rng` (None: a
    fixed key, so the result is deterministic). `length` defaults to F * hop and must give F frames.
    """
    magnitude = jnp.asarray(magnitude, jnp.float32)
    if magnitude.ndim != 3 or magnitude.shape[-1] != n_fft // 2 + 1:
        raise ValueError(f"griffin_lim: magnitude must be [B, frames, n_fft // 2 + 1 = {n_fft // 2 + 1}], "
                         f"got {tuple(magnitude.shape)}")
    count = magnitude.shape[1]
    length = count * hop if length is None else int(length)
    if num_frames(length, hop) != count:
        raise ValueError(f"griffin_lim: length {length} gives {num_frames(length, hop)} frames at hop {hop}, "
                         f"but the magnitude has {count}")
    if num_iters < 0 or not 0 <= momentum < 1:
        raise ValueError(f"griffin_lim: need num_iters >= 0 and 0 <= momentum < 1, got {num_iters}, {momentum}")
    rng = jax.random.key(0) if rng is None else rng
    angles = jnp.exp(2j * jnp.pi * jax.random.uniform(rng, magnitude.shape)).astype(jnp.complex64)
    eps = 1e-16
    weight = momentum / (1.0 + momentum)

    def body(_, state):
        angles, previous = state
        rebuilt = stft(istft(magnitude * angles, n_fft, hop, win_length, length), n_fft, hop, win_length)
        angles = rebuilt - weight * previous
        return angles / (jnp.abs(angles) + eps), rebuilt

    angles, _ = jax.lax.fori_loop(0, num_iters, body, (angles, jnp.zeros_like(angles)))
    return istft(magnitude * angles, n_fft, hop, win_length, length)


def mel_to_linear(mel, cfg: MelConfig, *, num_iters: int = 32) -> jax.Array:
    """Non-negative least-squares inverse of the filterbank: mel [B, F, n_mels] -> |STFT| [B, F, n_fft//2+1].

    Minimises ||S W - mel||^2 over S >= 0 (W the filterbank) with multiplicative updates
    (Lee & Seung 2001) started from the clipped pseudo-inverse; undoes `cfg.power` at the end.
    """
    bank = config_filterbank(cfg)
    mel = jnp.maximum(jnp.asarray(mel, jnp.float32), 0.0)
    tiny = 1e-10
    estimate = jnp.maximum(mel @ np.linalg.pinv(bank), tiny)
    mel_gram = jnp.asarray(mel @ bank.T)  # mel W^T: the numerator of every update.

    def body(_, s):
        return s * mel_gram / (s @ (bank @ bank.T) + tiny)

    estimate = jax.lax.fori_loop(0, num_iters, body, estimate)
    return estimate if cfg.power == 1 else estimate ** (1.0 / cfg.power)


def mel_to_audio(log_mel_spec, cfg: MelConfig, *, num_iters: int = 32, length: int | None = None,
                 rng: jax.Array | None = None) -> jax.Array:
    """Natural-log mel [B, frames, n_mels] -> waveform float32 [B, length] (NNLS filterbank inverse, then Griffin-Lim).

    For listening to mel outputs; a trained vocoder does better. Values at or below
    ln(log_floor) are treated as silence.
    """
    lm = jnp.asarray(log_mel_spec, jnp.float32)
    if lm.ndim != 3 or lm.shape[-1] != cfg.n_mels:
        raise ValueError(f"mel_to_audio: log-mel must be [B, frames, n_mels = {cfg.n_mels}], got {tuple(lm.shape)}")
    mel = jnp.where(lm <= math.log(cfg.log_floor), 0.0, jnp.exp(lm))
    magnitude = mel_to_linear(mel, cfg)
    audio = griffin_lim(magnitude, cfg.n_fft, cfg.hop, num_iters=num_iters, length=length, rng=rng,
                        win_length=cfg.win_length)
    return audio
