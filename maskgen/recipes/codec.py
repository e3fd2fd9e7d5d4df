"""Neural audio codec recipe (`codec`): a 1-D conv encoder with strided downsampling -> residual VQ
-> mirrored decoder, trained on waveforms with time-domain, multi-scale mel and (optionally)
multi-scale STFT reconstruction losses and an optional MS-STFT discriminator with feature matching.

References: SoundStream (Zeghidour et al., arXiv 2107.03312), EnCodec (Défossez et al., arXiv
2210.13438; the defaults of its audiocraft code: `config/solver/compression/default.yaml`) and DAC
(Kumar et al., arXiv 2306.06546: per-example quantizer dropout, factorised l2-normalised codes).

Model. `maskgen.models.conv.Encoder`/`Decoder` with `spatial_dims=1` and `model.strides` (e.g.
(2, 4, 5, 8): 320 samples per frame, 50 Hz at 16 kHz, 75 Hz at 24 kHz), `model.num_levels` RVQ
levels of `model.codebook_size` codes (`maskgen.tokenizers.ResidualVQ`; EMA codebooks, k-means init
and dead-code restarts as set in `model.vq`), per-example quantizer dropout
(`model.quantizer_dropout`: that fraction of each batch uses a random 1..K levels, so one model
serves every bitrate) and optional factorised codes (`model.codebook_dim` > 0: DAC's low-dim lookup).
Bitrate = frame rate x levels x log2(codebook_size); `info()` reports it per level.

Losses (each weight 0 turns its term off):
  loss.l1_weight x mean |x_hat - x| (time domain; EnCodec 0.1);
  loss.mse_weight x mean (x_hat - x)^2 (optional; 0 or absent adds nothing);
  loss.mel_weight x multi-scale mel (`multi_scale_mel_loss`; EnCodec 2, windows 2^6..2^10);
  loss.stft_weight x multi-resolution STFT (`multi_resolution_stft_loss`: spectral convergence +
    log-magnitude; 0 in EnCodec's settings);
  the RVQ's commitment (and codebook, without EMA) losses, unweighted beyond `model.vq`;
  loss.adversarial_weight x hinge generator loss and loss.feature_weight x L1 feature matching of
    the MS-STFT discriminator (`maskgen.models.audio_discriminator`; EnCodec 4 and 4), from
    `loss.gan_start_step`; `loss.adversarial_weight` 0 builds no discriminator.
The GAN runs inside the one loop with one loss, as in the tokenizer recipe: the generator terms
see the discriminator through `stop_gradient`, the discriminator's hinge term sees reconstructions
through `stop_gradient`, and the discriminator is its own optimizer group (`optimizer_groups`).

Where maskgen differs from EnCodec's code: no gradient balancer (audiocraft rescales each loss's
gradient with respect to the output waveform to a set share of a fixed norm; here the weights
multiply the losses directly), the discriminator is updated at every step, the quantizer dropout is
per example (DAC) rather than one random bitrate per batch, the encoder/decoder are maskgen's
GroupNorm/swish residual blocks without the LSTM, and no weight normalisation.

Batches: {"audio": float32 [B, T, 1] in [-1, 1], "label": ...}; T must be a multiple of the total
stride. `encode` -> int32 [B, frames, K]; `decode` {"codes": [B, frames, K]} -> [B, T, 1] in [-1, 1]
(`num_levels=k` decodes the first k levels only; codes with fewer than K columns decode those);
`reconstruct(..., num_levels=None)` -> {"audio", "codes"}.

Log-mel input (`model.input="log_mel"`; absent or "audio" is the waveform codec above, unchanged).
A waveform codec at CPU scale learns no phase (docs/audio.md), so the acoustic tokens of the masked
audio generators (MAGNeT, arXiv 2401.04577; MaskGCT, arXiv 2409.00750) come from this mode: the
recipe computes, inside its jitted loss/encode, the log-mel of `config.mel` (MelConfig fields; the
sample rate is the data's) of each clip, keeps its first `model.mel_frames` frames (0: all, T // hop),
scales it with the fixed `features.scale_log_mel`, and the same conv stack runs over the FRAMES
([B, frames, n_mels]: the mel bins are the input channels), strided by `model.strides` over frames,
e.g. hop 160 at 16 kHz (100 frames/s) with strides (2,) -> 50 Hz tokens. The RVQ is the same
(EMA, k-means init, dead-code restarts, quantizer dropout). The decoder outputs the scaled log-mel,
and the loss is `loss.l1_weight` x L1 (+ optional `loss.mse_weight` x MSE) on the scaled log-mel,
plus the quantizer's terms; there is no discriminator, no waveform or STFT loss in this mode (their
settings are optional and must be 0). `encode` -> int32 [B, mel_frames / stride, K] as above;
`decode` {"codes"} -> the scaled log-mel laid out like the mel tokenizer's, [B, n_mels, frames, 1]
(rows = mel bins from low to high), so `info()["decodes_to"] = "log_mel"` tells
`maskgen.runs.AudioDecoder` and the `audio_reconstruction` evaluator to unscale it and hear it
through Griffin-Lim (`model.griffin_lim_iters`; maskgen trains no vocoder). `reconstruct` ->
{"reconstruction", "log_mel" (the input, same layout), "codes"}.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maskgen.audio import features as audio_features
from maskgen.audio.features import MelConfig, hann_window, mel_filterbank, stft
from maskgen.config import int_tuple, integer, number, one_of, recipe_problems
from maskgen.models.audio_discriminator import (MultiScaleSTFTDiscriminator, feature_matching_loss,
                                                hinge_discriminator_loss, hinge_generator_loss)
from maskgen.models.conv import Decoder, Encoder, downsampling_factor
from maskgen.recipes.base import Recipe, register
from maskgen.recipes.tokenizer import MEL_SPEC, _DTYPES, _VQ_SPEC, _frozen, discriminator_groups, mel_settings
from maskgen.tokenizers.quantizers import ResidualVQ

_MEL_FLOOR = 1e-5  # audiocraft's `floor_level`: log10(floor + mel)
_MAG_FLOOR = 1e-7  # magnitude floor of the STFT loss (audiocraft's `clamp(min=1e-7)`)
INPUTS = ("audio", "log_mel")  # what the codec reconstructs: the waveform, or its log-mel frames

CONFIG_SPEC = {
    "model.base_channels": integer(min=1),
    "model.channel_multipliers": int_tuple(1, why="one per resolution; a stride between each two"),
    "model.strides": int_tuple(1, why="one per level change: len(channel_multipliers) - 1; their product is the "
                                      "samples per frame"),
    "model.num_res_blocks": integer(min=1),
    "model.embed_dim": integer(min=1),
    "model.codebook_size": integer(min=2),
    "model.num_levels": integer(min=1, why="RVQ levels K; bitrate = frame rate x K x log2(codebook_size)"),
    "model.quantizer_dropout": number(0, 1, why="the fraction of each batch that uses a random 1..K levels"),
    "model.codebook_dim": integer(min=0, why="0: codes in the latent space; > 0: DAC's factorised codes "
                                             "(8 in DAC)"),
    **{k: v for k, v in _VQ_SPEC.items() if k not in ("model.embed_dim", "model.codebook_size")},
    "model.discriminator_ffts": int_tuple(4, why="FFT sizes of the MS-STFT discriminator (hop = size / 4)"),
    "model.discriminator_channels": integer(min=1),
    "loss.l1_weight": number(0),
    "loss.mel_weight": number(0),
    "loss.mel_windows": int_tuple(4, why="window = FFT sizes of the multi-scale mel loss (hop = size / 4)"),
    "loss.mel_bins": integer(min=1),
    "loss.mel_fmin": number(0),
    "loss.stft_weight": number(0),
    "loss.stft_windows": int_tuple(4, why="FFT sizes of the multi-resolution STFT loss (hop = size / 4)"),
    "loss.adversarial_weight": number(0, why="0 turns the discriminator off"),
    "loss.feature_weight": number(0),
    "loss.gan_start_step": integer(min=0),
    "loss.discriminator_lr": number(0, min_open=True),
    "loss.discriminator_b1": number(0, 1, max_open=True),
    "loss.discriminator_b2": number(0, 1, max_open=True, optional=True),
    # Optional: runs saved before the log-mel mode are waveform codecs.
    "model.input": one_of(*INPUTS, optional=True),
    "model.mel_frames": integer(min=0, optional=True, why="log-mel frames kept from the clip's start; 0: all "
                                                          "(T // hop)"),
    "model.griffin_lim_iters": integer(min=1, optional=True, why="Griffin-Lim iterations when decoded log-mels "
                                                                 "are turned into audio"),
    "loss.mse_weight": number(0, optional=True, why="x the mean squared error of the reconstruction"),
}
# Settings of the waveform losses and the discriminator: optional in log-mel mode (and then 0).
WAVEFORM_ONLY = ("model.discriminator_ffts", "model.discriminator_channels", "loss.mel_weight", "loss.mel_windows",
                 "loss.mel_bins", "loss.mel_fmin", "loss.stft_weight", "loss.stft_windows",
                 "loss.adversarial_weight", "loss.feature_weight", "loss.gan_start_step", "loss.discriminator_lr",
                 "loss.discriminator_b1", "loss.discriminator_b2")


def config_spec(input_kind: str) -> dict:
    """CONFIG_SPEC for `model.input`: log-mel mode adds `config.mel` and makes WAVEFORM_ONLY optional."""
    if input_kind != "log_mel":
        return CONFIG_SPEC
    return {**{k: dataclasses.replace(v, optional=True) if k in WAVEFORM_ONLY else v for k, v in CONFIG_SPEC.items()},
            **MEL_SPEC}


# -------------------------------------------------------------------- spectral losses


def _power_spectrogram(x: jax.Array, n_fft: int) -> jax.Array:
    """|STFT|^2 of x [B, T] (hop n_fft / 4), normalised by the window's energy (torchaudio's
    `normalized=True`) -> [B, frames, n_fft // 2 + 1]. Re^2 + Im^2 keeps gradients finite at 0."""
    spec = stft(x, n_fft, n_fft // 4) / np.sqrt(np.sum(np.square(hann_window(n_fft))))
    return jnp.square(spec.real) + jnp.square(spec.imag)


def multi_scale_mel_loss(x: jax.Array, y: jax.Array, *, sample_rate: int, windows: Sequence[int], n_mels: int,
                         f_min: float = 0.0) -> jax.Array:
    """EnCodec's multi-scale mel loss (audiocraft `MultiScaleMelSpectrogramLoss`, normalised, no alphas)
    between waveforms x, y [B, T]: for each window w (hop w / 4, HTK mel, power 2, no filter
    normalisation), L1 between the mel spectrograms plus MSE between their log10(1e-5 + mel),
    averaged over the 2 x len(windows) terms."""
    total = 0.0
    for window in windows:
        bank = jnp.asarray(mel_filterbank(sample_rate, int(window), n_mels, f_min, None, "htk", None))
        mx, my = _power_spectrogram(x, int(window)) @ bank, _power_spectrogram(y, int(window)) @ bank
        l1 = jnp.abs(mx - my).mean()
        l2 = jnp.square(jnp.log10(_MEL_FLOOR + mx) - jnp.log10(_MEL_FLOOR + my)).mean()
        total = total + l1 + l2
    return total / (2 * len(windows))


def multi_resolution_stft_loss(x: jax.Array, y: jax.Array, *, windows: Sequence[int]) -> jax.Array:
    """Multi-resolution STFT loss (Parallel WaveGAN, arXiv 1910.11480; audiocraft `MRSTFTLoss` with
    factors 0.5 / 0.5) between reference x and estimate y [B, T]: per window (hop w / 4), spectral
    convergence ||S_x - S_y||_F / ||S_x||_F plus mean |log S_x - log S_y| of the magnitudes,
    averaged over the windows, each term weighted 0.5."""
    sc, mag = 0.0, 0.0
    for window in windows:
        sx = jnp.sqrt(jnp.maximum(_power_spectrogram(x, int(window)), _MAG_FLOOR ** 2))
        sy = jnp.sqrt(jnp.maximum(_power_spectrogram(y, int(window)), _MAG_FLOOR ** 2))
        sc = sc + jnp.linalg.norm(sx - sy) / jnp.maximum(jnp.linalg.norm(sx), _MAG_FLOOR)
        mag = mag + jnp.abs(jnp.log(sx) - jnp.log(sy)).mean()
    return 0.5 * sc / len(windows) + 0.5 * mag / len(windows)


def si_snr(reference: jax.Array, estimate: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Scale-invariant SNR in dB per example of [B, T] (or [B, T, 1]) signals, means removed."""
    ref = reference.reshape(reference.shape[0], -1).astype(jnp.float32)
    est = estimate.reshape(estimate.shape[0], -1).astype(jnp.float32)
    ref, est = ref - ref.mean(-1, keepdims=True), est - est.mean(-1, keepdims=True)
    target = (jnp.sum(est * ref, -1, keepdims=True) / (jnp.sum(ref * ref, -1, keepdims=True) + eps)) * ref
    noise = est - target
    return 10.0 * jnp.log10((jnp.sum(target ** 2, -1) + eps) / (jnp.sum(noise ** 2, -1) + eps))


# -------------------------------------------------------------------- model


class Codec(nnx.Module):
    """Encoder -> residual VQ -> decoder on mono waveforms [B, T, 1] (channels=1) or on log-mel
    frames [B, frames, n_mels] (channels=n_mels), and the optional discriminator."""

    def __init__(self, *, base_channels: int, channel_multipliers: Sequence[int], strides: Sequence[int],
                 num_res_blocks: int, embed_dim: int, quantizer_kwargs: dict, discriminator: dict | None,
                 rngs: nnx.Rngs, dtype=jnp.float32, channels: int = 1):
        """discriminator: None, or {"n_ffts": (...), "filters": int} for the MS-STFT discriminator.
        channels: of what is encoded and decoded (1 for waveforms, n_mels for log-mel frames)."""
        conv = dict(base_channels=base_channels, channel_multipliers=tuple(channel_multipliers),
                    num_res_blocks=num_res_blocks, embed_dim=embed_dim, spatial_dims=1, strides=tuple(strides),
                    rngs=rngs, dtype=dtype)
        self.hop = downsampling_factor(channel_multipliers, strides)
        self.encoder = Encoder(in_channels=channels, **conv)
        self.quantizer = ResidualVQ(embed_dim, rngs=rngs, **quantizer_kwargs)
        self.decoder = Decoder(out_channels=channels, **conv)
        self.discriminator = (MultiScaleSTFTDiscriminator(rngs=rngs, dtype=dtype, **discriminator)
                              if discriminator else None)

    def check_audio(self, audio: jax.Array) -> jax.Array:
        if audio.ndim != 3 or audio.shape[-1] != 1:
            raise ValueError(f"the codec reads mono audio [B, T, 1], got shape {tuple(audio.shape)}")
        if audio.shape[1] % self.hop:
            raise ValueError(f"audio of {audio.shape[1]} samples is not a multiple of the codec's total stride "
                             f"{self.hop} (the product of model.strides): trim or pad clips to a multiple")
        return audio.astype(jnp.float32)

    def encode(self, audio: jax.Array, *, train: bool = False, rng: jax.Array | None = None):
        """audio [B, T, 1] -> (z_q [B, T / hop, D], codes int32 [B, T / hop, K], quantizer aux)."""
        return self.encode_frames(self.check_audio(audio), train=train, rng=rng)

    def encode_frames(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None):
        """x [B, length, channels] (length a multiple of hop) -> (z_q, codes int32 [B, length / hop, K], aux)."""
        z = self.encoder(x).astype(jnp.float32)
        return self.quantizer(z, train=train, rng=rng)

    def decode_codes(self, codes: jax.Array, num_levels: int | None = None) -> jax.Array:
        """codes [B, frames, k] (k <= K) -> waveforms [B, frames * hop, 1] (or log-mel frames
        [B, frames * hop, n_mels]) from the first `num_levels` levels (default: all k given)."""
        num_levels = codes.shape[-1] if num_levels is None else num_levels
        if num_levels > codes.shape[-1]:
            raise ValueError(f"num_levels={num_levels} but the codes have {codes.shape[-1]} levels")
        return self.decoder(self.quantizer.decode_codes(codes, num_levels)).astype(jnp.float32)


# -------------------------------------------------------------------- recipe


@register("codec")
class CodecRecipe(Recipe):
    capabilities = frozenset({"encode", "decode", "reconstruct"})

    def __init__(self, *, sample_rate: int, num_samples: int, model_kwargs: dict, l1_weight: float,
                 mel_weight: float, mel_windows: Sequence[int], mel_bins: int, mel_fmin: float, stft_weight: float,
                 stft_windows: Sequence[int], adversarial_weight: float, feature_weight: float, gan_start_step: int,
                 discriminator_overrides: dict, words: str | None = None, mse_weight: float = 0.0,
                 mel: dict | None = None, mel_frames: int = 0, griffin_lim_iters: int = 32):
        """words: the speech source's word set, if the data is one (for the evaluators' word classifier).
        mel: None for the waveform codec; for log-mel input the MelConfig fields (with the data's
        sample_rate), `mel_frames` the frames kept (> 0) and `griffin_lim_iters` for listening."""
        self.sample_rate, self.num_samples, self.words = sample_rate, num_samples, words
        self.input = "audio" if mel is None else "log_mel"
        self.mel = None if mel is None else MelConfig.from_dict(mel)
        self.mel_frames, self.griffin_lim_iters, self.mse_weight = int(mel_frames), int(griffin_lim_iters), mse_weight
        self.model_kwargs = model_kwargs
        self.l1_weight, self.mel_weight, self.stft_weight = l1_weight, mel_weight, stft_weight
        self.mel_windows, self.mel_bins, self.mel_fmin = tuple(mel_windows), mel_bins, mel_fmin
        self.stft_windows = tuple(stft_windows)
        self.adversarial_weight, self.feature_weight = adversarial_weight, feature_weight
        self.gan_start_step = gan_start_step
        self.discriminator_overrides = discriminator_overrides
        # The model's stride over what it reads (samples, or log-mel frames), and samples per token frame.
        self.stride = downsampling_factor(model_kwargs["channel_multipliers"], model_kwargs["strides"])
        self.hop = self.stride * (1 if self.mel is None else self.mel.hop)
        q = model_kwargs["quantizer_kwargs"]
        self.codebook_size, self.num_levels = q["codebook_size"], q["num_levels"]

    # ---------------------------------------------------------------- config
    @staticmethod
    def audio_spec(data_info: dict[str, Any]):
        """The data's audio field spec (shape (T, C), sample_rate), or None."""
        specs = [s for s in (data_info.get("fields") or {}).values() if s.kind == "audio"]
        return specs[0] if specs else None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "CodecRecipe":
        m, loss = config.model, config.loss
        spec = cls.audio_spec(data_info)
        quantizer_kwargs = dict(codebook_size=m.codebook_size, num_levels=m.num_levels,
                                quantizer_dropout=m.quantizer_dropout,
                                codebook_dim=m.codebook_dim if m.codebook_dim > 0 else None, **m.vq.to_dict())
        discriminator = None
        if loss.get("adversarial_weight", 0.0) > 0:
            discriminator = dict(n_ffts=tuple(m.discriminator_ffts), filters=m.discriminator_channels)
        model_kwargs = dict(base_channels=m.base_channels, channel_multipliers=tuple(m.channel_multipliers),
                            strides=tuple(m.strides), num_res_blocks=m.num_res_blocks, embed_dim=m.embed_dim,
                            quantizer_kwargs=quantizer_kwargs, discriminator=discriminator,
                            dtype=_DTYPES[config.compute_dtype])
        sample_rate, num_samples = int(spec.sample_rate), int(spec.shape[0])
        audio = {}
        if m.get("input", "audio") == "log_mel":
            mel = mel_settings(config.mel.to_dict(), sample_rate)
            audio = dict(mel=mel, griffin_lim_iters=m.get("griffin_lim_iters", 32),
                         mel_frames=m.get("mel_frames", 0) or audio_features.num_frames(num_samples, mel["hop"]))
            model_kwargs["channels"] = int(mel["n_mels"])
        overrides = dict(lr=loss.get("discriminator_lr", 1e-4), b1=loss.get("discriminator_b1", 0.5))
        if "discriminator_b2" in loss:
            overrides["b2"] = loss.discriminator_b2
        return cls(sample_rate=sample_rate, num_samples=num_samples, model_kwargs=model_kwargs,
                   l1_weight=loss.l1_weight, mel_weight=loss.get("mel_weight", 0.0),
                   mel_windows=tuple(loss.get("mel_windows", (1024,))), mel_bins=loss.get("mel_bins", 64),
                   mel_fmin=loss.get("mel_fmin", 0.0), stft_weight=loss.get("stft_weight", 0.0),
                   stft_windows=tuple(loss.get("stft_windows", (1024,))),
                   adversarial_weight=loss.get("adversarial_weight", 0.0),
                   feature_weight=loss.get("feature_weight", 0.0), gan_start_step=loss.get("gan_start_step", 0),
                   discriminator_overrides=overrides, words=data_info.get("words"),
                   mse_weight=loss.get("mse_weight", 0.0), **audio)

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        m, loss = config.model, config.loss
        input_kind = m.get("input", "audio")
        problems = recipe_problems(config, data_info, config_spec(input_kind), needs="audio")
        if problems.ok("model.strides", "model.channel_multipliers") and len(m.strides) != len(m.channel_multipliers) - 1:
            problems.add("model.strides", f"config.model.strides={tuple(m.strides)}: needs one stride per level change, "
                                          f"len(model.channel_multipliers) - 1 = {len(m.channel_multipliers) - 1}")
            return problems
        spec = CodecRecipe.audio_spec(data_info)
        if spec is None or not problems.ok("model.strides", "model.input"):
            return problems
        if input_kind == "log_mel":
            return _log_mel_problems(config, spec, problems)
        samples, channels = spec.shape
        hop = math.prod(m.strides)
        if channels != 1:
            problems.add("data.name", f"the codec reads mono audio; config.data.name={config.data.name!r} has "
                                      f"{channels} channels")
        if samples is None:
            problems.add("data.name", f"the codec trains on fixed-length clips; config.data.name={config.data.name!r} "
                                      "has clips of varying length (set its clip_seconds)")
        elif samples % hop:
            problems.add("model.strides", f"config.model.strides={tuple(m.strides)}: the clips have {samples} samples "
                                          f"({samples / spec.sample_rate:g} s at {spec.sample_rate} Hz), not a multiple "
                                          f"of the total stride {hop}; pick strides whose product divides {samples} "
                                          f"or a clip length that is a multiple of {hop}")
        if samples is not None:
            for key in ("loss.mel_windows", "loss.stft_windows", "model.discriminator_ffts"):
                group, name = key.split(".")
                values = config[group][name]
                if problems.ok(key) and max(values) // 2 >= samples:
                    problems.add(key, f"config.{key}={tuple(values)}: windows must be shorter than twice the clip "
                                      f"({samples} samples)")
        if problems.ok("loss.mel_fmin") and loss.mel_fmin >= spec.sample_rate / 2:
            problems.add("loss.mel_fmin", f"config.loss.mel_fmin={loss.mel_fmin}: must be below the Nyquist "
                                          f"frequency {spec.sample_rate / 2:g} Hz")
        return problems

    def eval_mel(self) -> MelConfig:
        """The log-mel that evaluators compare (info()["mel"]): a log-mel codec's own `config.mel`; for
        the waveform codec the frequency layout of the mel loss's largest scale (window, hop = window
        / 4, bins, f_min) with maskgen's default slaney mel of magnitudes."""
        if self.mel is not None:
            return self.mel
        window = max(self.mel_windows)
        return MelConfig(sample_rate=self.sample_rate, n_fft=window, hop=window // 4, n_mels=self.mel_bins,
                         f_min=float(self.mel_fmin))

    def info(self) -> dict[str, Any]:
        """decodes_to "audio" (waveform codec) or "log_mel"; token_shape (frames, K); frame_rate in
        tokens per second; hop in samples per token frame; a log-mel codec adds input, mel_frames and
        griffin_lim_iters."""
        frames = self.num_samples // self.hop if self.mel is None else self.mel_frames // self.stride
        frame_rate = self.sample_rate / self.hop
        extra = {}
        if self.mel is not None:
            extra = dict(input="log_mel", mel_frames=self.mel_frames, griffin_lim_iters=self.griffin_lim_iters)
        return {"decodes_to": "audio" if self.mel is None else "log_mel", "sample_rate": self.sample_rate,
                "mel": self.eval_mel().to_dict(), "token_shape": (frames, self.num_levels),
                "codebook_size": self.codebook_size, "num_levels": self.num_levels, "quantizer": "rvq",
                "continuous": False, "num_samples": self.num_samples, "hop": self.hop, "frame_rate": frame_rate,
                "bitrate_per_level": frame_rate * math.log2(self.codebook_size), **extra,
                **({"words": self.words} if self.words else {})}

    def optimizer_groups(self):
        return discriminator_groups(self.model_kwargs["discriminator"] is not None, self.discriminator_overrides)

    def make_model(self, rngs: nnx.Rngs) -> Codec:
        return Codec(rngs=rngs, **self.model_kwargs)

    # ---------------------------------------------------------------- training
    def reconstruction_losses(self, x: jax.Array, x_rec: jax.Array) -> tuple[jax.Array, dict]:
        """The weighted time-domain and spectral terms between x and x_rec [B, T, 1], and each unweighted."""
        a, b = x[..., 0], x_rec[..., 0]
        l1 = jnp.abs(x_rec - x).mean()
        metrics = {"l1": l1}
        total = self.l1_weight * l1
        if self.mel_weight > 0:
            metrics["mel"] = multi_scale_mel_loss(a, b, sample_rate=self.sample_rate, windows=self.mel_windows,
                                                  n_mels=self.mel_bins, f_min=self.mel_fmin)
            total = total + self.mel_weight * metrics["mel"]
        if self.stft_weight > 0:
            metrics["stft"] = multi_resolution_stft_loss(a, b, windows=self.stft_windows)
            total = total + self.stft_weight * metrics["stft"]
        return total, metrics

    def log_mel_frames(self, audio: jax.Array) -> jax.Array:
        """A log-mel codec's input: audio [B, T, 1] -> the scaled log-mel of its first `mel_frames`
        frames, [B, mel_frames, n_mels] (frames along the conv axis, mel bins as channels)."""
        if audio.ndim != 3 or audio.shape[-1] != 1:
            raise ValueError(f"the log-mel codec reads mono audio [B, T, 1], got shape {tuple(audio.shape)}")
        available = audio_features.num_frames(audio.shape[1], self.mel.hop)
        if available < self.mel_frames:
            raise ValueError(f"audio of {audio.shape[1]} samples gives {available} log-mel frames at hop "
                             f"{self.mel.hop}; the codec needs {self.mel_frames} (model.mel_frames)")
        lm = audio_features.log_mel(audio[..., 0].astype(jnp.float32), self.mel)[:, :self.mel_frames]
        return audio_features.scale_log_mel(lm)

    def log_mel_losses(self, x: jax.Array, x_rec: jax.Array) -> tuple[jax.Array, dict]:
        """L1 (x l1_weight) and MSE (x mse_weight) between scaled log-mels, each unweighted in the metrics."""
        metrics = {"l1": jnp.abs(x_rec - x).mean(), "mse": jnp.square(x_rec - x).mean()}
        return self.l1_weight * metrics["l1"] + self.mse_weight * metrics["mse"], metrics

    def loss(self, model: Codec, batch, rng, step):
        if self.mel is not None:
            x = self.log_mel_frames(batch["audio"])
            z_q, codes, qaux = model.encode_frames(x, train=True, rng=rng)
            total, metrics = self.log_mel_losses(x, model.decoder(z_q).astype(jnp.float32))
            metrics.update({"quantizer_loss": qaux["loss"],
                            **{f"quantizer/{k}": v for k, v in qaux.items() if k != "loss"}})
            return total + qaux["loss"], metrics
        x = model.check_audio(batch["audio"])
        z_q, codes, qaux = model.encode(x, train=True, rng=rng)
        x_rec = model.decoder(z_q).astype(jnp.float32)
        total, metrics = self.reconstruction_losses(x, x_rec)
        if self.mse_weight > 0:
            metrics["mse"] = jnp.square(x_rec - x).mean()
            total = total + self.mse_weight * metrics["mse"]
        total = total + qaux["loss"]
        metrics.update({"quantizer_loss": qaux["loss"], **{f"quantizer/{k}": v for k, v in qaux.items() if k != "loss"}})
        if model.discriminator is not None:
            gan_total, gan_metrics = self._gan_losses(model.discriminator, x, x_rec, step)
            total = total + gan_total
            metrics.update(gan_metrics)
        return total, metrics

    def _gan_losses(self, disc: MultiScaleSTFTDiscriminator, x, x_rec, step):
        """Generator terms through a frozen copy of `disc`; the hinge term trains `disc` on constants."""
        on = (step >= self.gan_start_step).astype(jnp.float32)
        real_logits, real_features = disc(x)
        fake_logits, _ = disc(jax.lax.stop_gradient(x_rec))
        d_loss = hinge_discriminator_loss(real_logits, fake_logits)
        gen_logits, gen_features = _frozen(disc)(x_rec)
        g_loss = hinge_generator_loss(gen_logits)
        fm = feature_matching_loss(jax.lax.stop_gradient(real_features), gen_features)
        total = on * (self.adversarial_weight * g_loss + self.feature_weight * fm + d_loss)
        metrics = {"gan/generator": g_loss, "gan/feature_matching": fm, "gan/discriminator": d_loss,
                   "gan/logits_real": sum(r.mean() for r in real_logits) / len(real_logits),
                   "gan/logits_fake": sum(f.mean() for f in fake_logits) / len(fake_logits), "gan/active": on}
        return total, metrics

    # ---------------------------------------------------------------- inference
    def encode(self, model: Codec, batch, rng):
        """{"audio" [B, T, 1]} -> int32 codes [B, frames, K] (frames = T / hop; for a log-mel codec
        mel_frames / stride)."""
        if self.mel is not None:
            return model.encode_frames(self.log_mel_frames(batch["audio"]), train=False)[1]
        return model.encode(batch["audio"], train=False)[1]

    def decode(self, model: Codec, batch, rng, num_levels: int | None = None):
        """{"codes" [B, frames, k]} -> waveforms [B, frames * hop, 1] clipped to [-1, 1]; for a log-mel
        codec the scaled log-mel [B, n_mels, frames * stride, 1] (the mel tokenizer's layout)."""
        codes = jnp.asarray(batch["codes"])
        if codes.ndim != 3 or not 1 <= codes.shape[-1] <= self.num_levels:
            raise ValueError(f"codec decode expects codes [B, frames, k] with 1 <= k <= {self.num_levels}, got "
                             f"{tuple(codes.shape)}")
        decoded = model.decode_codes(codes.astype(jnp.int32), num_levels)
        if self.mel is not None:
            return jnp.transpose(decoded, (0, 2, 1))[..., None]
        return jnp.clip(decoded, -1.0, 1.0)

    def reconstruct(self, model: Codec, batch, rng, num_levels: int | None = None):
        """{"audio"} -> {"audio": the decode of its codes' first `num_levels` levels, "codes": all K};
        a log-mel codec gives {"reconstruction": that decode, "log_mel": the scaled log-mel it encoded
        (both [B, n_mels, frames, 1]), "codes"}."""
        codes = self.encode(model, batch, rng)
        decoded = self.decode(model, {"codes": codes}, rng, num_levels)
        if self.mel is not None:
            original = jnp.transpose(self.log_mel_frames(batch["audio"]), (0, 2, 1))[..., None]
            return {"reconstruction": decoded, "log_mel": original, "codes": codes}
        return {"audio": decoded, "codes": codes}

    def sample(self, model: Codec, batch, rng):
        """Waveforms [B, T, 1] (not image rows): the original and its reconstruction; a log-mel codec
        gives spectrogram images [B, n_mels, frames, 1] (low frequencies at the bottom, clipped to [-1, 1])."""
        out = self.reconstruct(model, batch, rng)
        if self.mel is not None:
            return {k: jnp.clip(out[name][:, ::-1], -1.0, 1.0)
                    for k, name in (("original", "log_mel"), ("reconstruction", "reconstruction"))}
        return {"original": batch["audio"], "reconstruction": out["audio"]}


# -------------------------------------------------------------------- log-mel validation


def _log_mel_problems(config: ml_collections.ConfigDict, spec, problems):
    """The checks of `model.input="log_mel"`: the mel settings against the data, the frames against
    the strides, and no waveform loss or discriminator."""
    m, mel = config.model, config.get("mel")
    for key in WAVEFORM_ONLY:
        group, name = key.split(".")
        if key.endswith("_weight") and config[group].get(name, 0) and problems.ok(key):
            what = ("discriminator (GAN)" if name in ("adversarial_weight", "feature_weight")
                    else "waveform or STFT loss")
            problems.add(key, f"config.{key}={config[group][name]}: the log-mel codec (model.input='log_mel') has "
                              f"no {what}; it is trained with loss.l1_weight (+ loss.mse_weight) on the scaled "
                              "log-mel only. Set it to 0 or remove it")
    mel_keys = [f"mel.{k}" for k in ("n_fft", "hop", "n_mels", "sample_rate", "win_length", "f_min", "f_max")]
    if mel is None or not problems.ok(*mel_keys, "model.mel_frames"):
        return problems
    samples, sample_rate = spec.shape[0], int(spec.sample_rate)
    if spec.shape[1] != 1:
        problems.add("data.name", f"the codec reads mono audio; config.data.name={config.data.name!r} has "
                                  f"{spec.shape[1]} channels")
    if mel.get("sample_rate") is not None and mel.sample_rate != sample_rate:
        problems.add("mel.sample_rate", f"config.mel.sample_rate={mel.sample_rate}: the {config.data.name!r} audio is "
                                        f"at {sample_rate} Hz; set it to {sample_rate} or remove it")
        return problems
    if mel.get("f_max") is not None and mel.f_max > sample_rate / 2:
        problems.add("mel.f_max", f"config.mel.f_max={mel.f_max} is above the Nyquist frequency {sample_rate / 2:g} Hz "
                                  f"of the {sample_rate} Hz data")
        return problems
    if mel.get("win_length") is not None and mel.win_length > mel.n_fft:
        problems.add("mel.win_length", f"config.mel.win_length={mel.win_length} is longer than "
                                       f"config.mel.n_fft={mel.n_fft}")
        return problems
    try:  # MelConfig's own checks (f_min < f_max, mel scale, norm, ...)
        MelConfig.from_dict(mel_settings(mel.to_dict(), sample_rate))
    except (TypeError, ValueError) as err:
        problems.add("mel.n_fft", f"config.mel: {err}")
        return problems
    if samples is None:
        problems.add("data.name", f"the codec trains on fixed-length clips; config.data.name={config.data.name!r} "
                                  "has clips of varying length (set its clip_seconds)")
        return problems
    if mel.n_fft // 2 >= samples:
        problems.add("mel.n_fft", f"config.mel.n_fft={mel.n_fft} is too long for {samples}-sample clips (the centred "
                                  f"STFT reflects n_fft // 2 samples at each end)")
    stride = math.prod(m.strides)
    available = audio_features.num_frames(samples, mel.hop)
    frames = m.get("mel_frames", 0) or available
    if frames > available:
        problems.add("model.mel_frames", f"config.model.mel_frames={frames}: {samples}-sample clips give only "
                                         f"{available} log-mel frames at config.mel.hop={mel.hop}")
    elif frames % stride:
        what = ("config.model.mel_frames" if m.get("mel_frames", 0)
                else f"the clip's log-mel frame count (T // hop = {samples} // {mel.hop})")
        problems.add("model.strides", f"{what}={frames} is not a multiple of the codec's stride over frames "
                                      f"{stride} (the product of config.model.strides={tuple(m.strides)}); set "
                                      f"config.model.mel_frames to a multiple of {stride}, or change the strides "
                                      "or config.mel.hop")
    return problems
