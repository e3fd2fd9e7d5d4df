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
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maskgen.audio.features import MelConfig, hann_window, mel_filterbank, stft
from maskgen.config import int_tuple, integer, number, recipe_problems
from maskgen.models.audio_discriminator import (MultiScaleSTFTDiscriminator, feature_matching_loss,
                                                hinge_discriminator_loss, hinge_generator_loss)
from maskgen.models.conv import Decoder, Encoder, downsampling_factor
from maskgen.recipes.base import Recipe, register
from maskgen.recipes.tokenizer import _DTYPES, _VQ_SPEC, _frozen, discriminator_groups
from maskgen.tokenizers.quantizers import ResidualVQ

_MEL_FLOOR = 1e-5  # audiocraft's `floor_level`: log10(floor + mel)
_MAG_FLOOR = 1e-7  # magnitude floor of the STFT loss (audiocraft's `clamp(min=1e-7)`)

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
}


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
    """Encoder -> residual VQ -> decoder on mono waveforms [B, T, 1], and the optional discriminator."""

    def __init__(self, *, base_channels: int, channel_multipliers: Sequence[int], strides: Sequence[int],
                 num_res_blocks: int, embed_dim: int, quantizer_kwargs: dict, discriminator: dict | None,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        """discriminator: None, or {"n_ffts": (...), "filters": int} for the MS-STFT discriminator."""
        conv = dict(base_channels=base_channels, channel_multipliers=tuple(channel_multipliers),
                    num_res_blocks=num_res_blocks, embed_dim=embed_dim, spatial_dims=1, strides=tuple(strides),
                    rngs=rngs, dtype=dtype)
        self.hop = downsampling_factor(channel_multipliers, strides)
        self.encoder = Encoder(in_channels=1, **conv)
        self.quantizer = ResidualVQ(embed_dim, rngs=rngs, **quantizer_kwargs)
        self.decoder = Decoder(out_channels=1, **conv)
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
        z = self.encoder(self.check_audio(audio)).astype(jnp.float32)
        return self.quantizer(z, train=train, rng=rng)

    def decode_codes(self, codes: jax.Array, num_levels: int | None = None) -> jax.Array:
        """codes [B, frames, k] (k <= K) -> waveforms [B, frames * hop, 1] from the first `num_levels`
        levels (default: all k given)."""
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
                 discriminator_overrides: dict, words: str | None = None):
        """words: the speech source's word set, if the data is one (for the evaluators' word classifier)."""
        self.sample_rate, self.num_samples, self.words = sample_rate, num_samples, words
        self.model_kwargs = model_kwargs
        self.l1_weight, self.mel_weight, self.stft_weight = l1_weight, mel_weight, stft_weight
        self.mel_windows, self.mel_bins, self.mel_fmin = tuple(mel_windows), mel_bins, mel_fmin
        self.stft_windows = tuple(stft_windows)
        self.adversarial_weight, self.feature_weight = adversarial_weight, feature_weight
        self.gan_start_step = gan_start_step
        self.discriminator_overrides = discriminator_overrides
        self.hop = downsampling_factor(model_kwargs["channel_multipliers"], model_kwargs["strides"])
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
        if loss.adversarial_weight > 0:
            discriminator = dict(n_ffts=tuple(m.discriminator_ffts), filters=m.discriminator_channels)
        model_kwargs = dict(base_channels=m.base_channels, channel_multipliers=tuple(m.channel_multipliers),
                            strides=tuple(m.strides), num_res_blocks=m.num_res_blocks, embed_dim=m.embed_dim,
                            quantizer_kwargs=quantizer_kwargs, discriminator=discriminator,
                            dtype=_DTYPES[config.compute_dtype])
        overrides = dict(lr=loss.discriminator_lr, b1=loss.discriminator_b1)
        if "discriminator_b2" in loss:
            overrides["b2"] = loss.discriminator_b2
        return cls(sample_rate=int(spec.sample_rate), num_samples=int(spec.shape[0]), model_kwargs=model_kwargs,
                   l1_weight=loss.l1_weight, mel_weight=loss.mel_weight, mel_windows=tuple(loss.mel_windows),
                   mel_bins=loss.mel_bins, mel_fmin=loss.mel_fmin, stft_weight=loss.stft_weight,
                   stft_windows=tuple(loss.stft_windows), adversarial_weight=loss.adversarial_weight,
                   feature_weight=loss.feature_weight, gan_start_step=loss.gan_start_step,
                   discriminator_overrides=overrides, words=data_info.get("words"))

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        m, loss = config.model, config.loss
        problems = recipe_problems(config, data_info, CONFIG_SPEC, needs="audio")
        if problems.ok("model.strides", "model.channel_multipliers") and len(m.strides) != len(m.channel_multipliers) - 1:
            problems.add("model.strides", f"config.model.strides={tuple(m.strides)}: needs one stride per level change, "
                                          f"len(model.channel_multipliers) - 1 = {len(m.channel_multipliers) - 1}")
            return problems
        spec = CodecRecipe.audio_spec(data_info)
        if spec is None or not problems.ok("model.strides"):
            return problems
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
        """The log-mel that evaluators compare (info()["mel"]): the frequency layout of the mel loss's
        largest scale (window, hop = window / 4, bins, f_min) with maskgen's default slaney mel of
        magnitudes."""
        window = max(self.mel_windows)
        return MelConfig(sample_rate=self.sample_rate, n_fft=window, hop=window // 4, n_mels=self.mel_bins,
                         f_min=float(self.mel_fmin))

    def info(self) -> dict[str, Any]:
        frames = self.num_samples // self.hop
        frame_rate = self.sample_rate / self.hop
        return {"decodes_to": "audio", "sample_rate": self.sample_rate, "mel": self.eval_mel().to_dict(),
                "token_shape": (frames, self.num_levels), "codebook_size": self.codebook_size,
                "num_levels": self.num_levels, "quantizer": "rvq", "continuous": False,
                "num_samples": self.num_samples, "hop": self.hop, "frame_rate": frame_rate,
                "bitrate_per_level": frame_rate * math.log2(self.codebook_size),
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

    def loss(self, model: Codec, batch, rng, step):
        x = model.check_audio(batch["audio"])
        z_q, codes, qaux = model.encode(x, train=True, rng=rng)
        x_rec = model.decoder(z_q).astype(jnp.float32)
        total, metrics = self.reconstruction_losses(x, x_rec)
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
        """{"audio" [B, T, 1]} -> int32 codes [B, T / hop, K]."""
        return model.encode(batch["audio"], train=False)[1]

    def decode(self, model: Codec, batch, rng, num_levels: int | None = None):
        """{"codes" [B, frames, k]} -> waveforms [B, frames * hop, 1] clipped to [-1, 1]."""
        codes = jnp.asarray(batch["codes"])
        if codes.ndim != 3 or not 1 <= codes.shape[-1] <= self.num_levels:
            raise ValueError(f"codec decode expects codes [B, frames, k] with 1 <= k <= {self.num_levels}, got "
                             f"{tuple(codes.shape)}")
        return jnp.clip(model.decode_codes(codes.astype(jnp.int32), num_levels), -1.0, 1.0)

    def reconstruct(self, model: Codec, batch, rng, num_levels: int | None = None):
        """{"audio"} -> {"audio": the decode of its codes' first `num_levels` levels, "codes": all K}."""
        codes = self.encode(model, batch, rng)
        return {"audio": self.decode(model, {"codes": codes}, rng, num_levels), "codes": codes}

    def sample(self, model: Codec, batch, rng):
        """Waveforms [B, T, 1] (not image rows): the original and its reconstruction."""
        return {"original": batch["audio"], "reconstruction": self.reconstruct(model, batch, rng)["audio"]}
