"""The multi-scale STFT (MS-STFT) discriminator of EnCodec (Défossez et al., arXiv 2210.13438, section 3.4).

One sub-discriminator per STFT resolution. Each reads the complex STFT of the waveform as two
channels (real, imaginary) on a [frames, frequency] grid and applies 2-D convolutions: a (3, 9)
conv, then one (3, 9) conv per dilation (1, 2, 4) with stride 2 along frequency and the dilation
along time, then a (3, 3) conv, each followed by a leaky ReLU (its activations are the feature maps
that feature matching compares), and a (3, 3) conv to one logit per time-frequency cell. EnCodec's
code (audiocraft `MultiScaleSTFTDiscriminator`, with the compression solver's settings): 32 filters,
leaky ReLU slope 0.3, FFT sizes (1024, 2048, 512, 256, 128) with hop = FFT size / 4.

Differences from audiocraft: no weight normalisation (the one loop has no reparametrised weights;
the hinge loss and Adam's (0.5, 0.9) betas train it without), and the centred STFT of
`maskgen.audio.features` (audiocraft's has no centring padding); the STFT is normalised by the
window's energy as torchaudio's `normalized=True` does.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.audio.features import hann_window, stft
from maskgen.models.layers import logical_param


class Conv2d(nnx.Module):
    """2-D convolution over [B, time, freq, C] with a rectangular kernel, stride and dilation, SAME padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int], *, rngs: nnx.Rngs,
                 stride: tuple[int, int] = (1, 1), dilation: tuple[int, int] = (1, 1), dtype=jnp.float32):
        init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        self.kernel = logical_param(rngs, init, tuple(kernel) + (in_ch, out_ch), (None, None, "conv_in", "conv_out"))
        self.bias = logical_param(rngs, jax.nn.initializers.zeros, (out_ch,), ("conv_out",))
        self.stride, self.dilation, self.dtype = tuple(stride), tuple(dilation), dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride,
                                         "SAME", rhs_dilation=self.dilation,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...].astype(self.dtype)


class STFTDiscriminator(nnx.Module):
    """One resolution: waveform [B, T] -> (logits [B, frames, freq', 1], feature maps [each B, frames, freq', C])."""

    def __init__(self, *, n_fft: int, hop: int, filters: int, rngs: nnx.Rngs, dilations: Sequence[int] = (1, 2, 4),
                 kernel: tuple[int, int] = (3, 9), negative_slope: float = 0.3, dtype=jnp.float32):
        self.n_fft, self.hop, self.negative_slope = n_fft, hop, negative_slope
        kw = dict(rngs=rngs, dtype=dtype)
        convs = [Conv2d(2, filters, kernel, **kw)]
        for dilation in dilations:
            convs.append(Conv2d(filters, filters, kernel, stride=(1, 2), dilation=(dilation, 1), **kw))
        convs.append(Conv2d(filters, filters, (kernel[0], kernel[0]), **kw))
        self.convs = nnx.List(convs)
        self.conv_post = Conv2d(filters, 1, (kernel[0], kernel[0]), **kw)

    def __call__(self, audio: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        spec = stft(audio, self.n_fft, self.hop)  # [B, frames, n_fft // 2 + 1]
        spec = spec / np.sqrt(np.sum(np.square(hann_window(self.n_fft))))  # torchaudio's normalized=True
        h = jnp.stack([spec.real, spec.imag], axis=-1).astype(jnp.float32)
        features = []
        for conv in self.convs:
            h = jax.nn.leaky_relu(conv(h), self.negative_slope)
            features.append(h.astype(jnp.float32))
        return self.conv_post(h).astype(jnp.float32), features


class MultiScaleSTFTDiscriminator(nnx.Module):
    """Waveforms [B, T, 1] -> (per-resolution logits, per-resolution feature-map lists); FFT size n
    uses hop n / 4 (EnCodec's settings)."""

    def __init__(self, *, n_ffts: Sequence[int], filters: int, rngs: nnx.Rngs, negative_slope: float = 0.3,
                 dtype=jnp.float32):
        if not n_ffts or min(n_ffts) < 4:
            raise ValueError(f"MultiScaleSTFTDiscriminator needs FFT sizes >= 4, got {tuple(n_ffts)}")
        self.discriminators = nnx.List([
            STFTDiscriminator(n_fft=int(n), hop=int(n) // 4, filters=filters, negative_slope=negative_slope,
                              rngs=rngs, dtype=dtype)
            for n in n_ffts])

    def __call__(self, audio: jax.Array) -> tuple[list[jax.Array], list[list[jax.Array]]]:
        if audio.ndim != 3 or audio.shape[-1] != 1:
            raise ValueError(f"the MS-STFT discriminator reads mono audio [B, T, 1], got {audio.shape}")
        outputs = [disc(audio[..., 0]) for disc in self.discriminators]
        return [logits for logits, _ in outputs], [features for _, features in outputs]


def hinge_discriminator_loss(real_logits: list[jax.Array], fake_logits: list[jax.Array]) -> jax.Array:
    """mean over sub-discriminators of mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))) (audiocraft's
    `hinge_real_loss` + `hinge_fake_loss`, normalised by their number)."""
    terms = [jax.nn.relu(1.0 - r).mean() + jax.nn.relu(1.0 + f).mean() for r, f in zip(real_logits, fake_logits)]
    return sum(terms) / len(terms)


def hinge_generator_loss(fake_logits: list[jax.Array]) -> jax.Array:
    """mean over sub-discriminators of -mean(D(x_hat)) (audiocraft's generator `hinge_loss`)."""
    return sum(-f.mean() for f in fake_logits) / len(fake_logits)


def feature_matching_loss(real_features: list[list[jax.Array]], fake_features: list[list[jax.Array]]) -> jax.Array:
    """mean over sub-discriminators of the mean over their layers of L1(features(x_hat), features(x))
    (audiocraft's `FeatureMatchingLoss` with L1, normalised by the number of layers and of
    sub-discriminators). The caller stops the gradient of the real features."""
    per_disc = [sum(jnp.abs(f - r).mean() for r, f in zip(real, fake)) / len(real)
                for real, fake in zip(real_features, fake_features)]
    return sum(per_disc) / len(per_disc)
