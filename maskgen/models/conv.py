"""Convolutional encoder, decoder and discriminator for tokenizers, in the style of the MaskGIT VQGAN
(Chang et al., arXiv 2202.04200; VQGAN: Esser et al., arXiv 2012.09841).

Residual blocks with GroupNorm and swish, channel multipliers per resolution, no attention; each
multiplier after the first halves the resolution, so `len(channel_multipliers) - 1` levels give a
downsampling factor of 2**levels. `spatial_dims` picks 2-D (images, [B, H, W, C]) or 1-D (audio
or spectrogram frames, [B, T, C]) convolutions with the same code.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from maskgen.models.layers import logical_param


class Conv(nnx.Module):
    """N-D convolution, channels last, SAME padding; kernel axes (..., "conv_in", "conv_out")."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, spatial_dims: int, rngs: nnx.Rngs,
                 stride: int = 1, dtype=jnp.float32):
        shape = (kernel,) * spatial_dims + (in_ch, out_ch)
        init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        self.kernel = logical_param(rngs, init, shape, (None,) * spatial_dims + ("conv_in", "conv_out"))
        self.bias = logical_param(rngs, jax.nn.initializers.zeros, (out_ch,), ("conv_out",))
        self.stride, self.spatial_dims, self.dtype = stride, spatial_dims, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        spatial = "HW"[: self.spatial_dims] if self.spatial_dims <= 2 else "DHW"
        dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), (self.stride,) * self.spatial_dims, "SAME",
            dimension_numbers=dims,
        )
        return y + self.bias[...].astype(self.dtype)


class GroupNorm(nnx.Module):
    """GroupNorm over channels-last activations (float32 statistics)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, groups: int = 32, eps: float = 1e-6, dtype=jnp.float32):
        self.groups = min(groups, channels)
        while channels % self.groups:
            self.groups -= 1
        self.scale = logical_param(rngs, jax.nn.initializers.ones, (channels,), ("norm",))
        self.bias = logical_param(rngs, jax.nn.initializers.zeros, (channels,), ("norm",))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        g = x.astype(jnp.float32).reshape(shape[0], -1, self.groups, shape[-1] // self.groups)
        mean = g.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.eps)
        return (g.reshape(shape) * self.scale[...] + self.bias[...]).astype(self.dtype)


class ResBlock(nnx.Module):
    """GroupNorm -> swish -> conv3 -> GroupNorm -> swish -> conv3, plus a 1x1 shortcut when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, *, spatial_dims: int, rngs: nnx.Rngs, dtype=jnp.float32):
        kw = dict(spatial_dims=spatial_dims, rngs=rngs, dtype=dtype)
        self.norm1 = GroupNorm(in_ch, rngs=rngs, dtype=dtype)
        self.conv1 = Conv(in_ch, out_ch, 3, **kw)
        self.norm2 = GroupNorm(out_ch, rngs=rngs, dtype=dtype)
        self.conv2 = Conv(out_ch, out_ch, 3, **kw)
        self.shortcut = Conv(in_ch, out_ch, 1, **kw) if in_ch != out_ch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.swish(self.norm1(x)))
        h = self.conv2(jax.nn.swish(self.norm2(h)))
        return h + (x if self.shortcut is None else self.shortcut(x))


def _downsample(x: jax.Array, spatial_dims: int) -> jax.Array:
    """2x average pooling over the spatial axes."""
    b, *spatial, c = x.shape
    shape = [b]
    for size in spatial:
        shape += [size // 2, 2]
    return x.reshape(*shape, c).mean(axis=tuple(range(2, 2 + 2 * spatial_dims, 2)))


def _upsample(x: jax.Array, spatial_dims: int) -> jax.Array:
    """2x nearest-neighbour upsampling over the spatial axes."""
    for axis in range(1, 1 + spatial_dims):
        x = jnp.repeat(x, 2, axis=axis)
    return x


class Encoder(nnx.Module):
    """x [B, *spatial, C] -> latents [B, *spatial / 2**(levels), embed_dim]."""

    def __init__(self, *, in_channels: int, base_channels: int, channel_multipliers: Sequence[int],
                 num_res_blocks: int, embed_dim: int, spatial_dims: int = 2, rngs: nnx.Rngs, dtype=jnp.float32):
        kw = dict(spatial_dims=spatial_dims, rngs=rngs, dtype=dtype)
        self.spatial_dims = spatial_dims
        self.conv_in = Conv(in_channels, base_channels, 3, **kw)
        blocks, ch = [], base_channels
        for level, mult in enumerate(channel_multipliers):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, base_channels * mult, **kw))
                ch = base_channels * mult
        self.blocks = nnx.List(blocks)
        self.blocks_per_level = num_res_blocks
        self.num_levels = len(channel_multipliers)
        self.mid = nnx.List([ResBlock(ch, ch, **kw) for _ in range(num_res_blocks)])
        self.norm_out = GroupNorm(ch, rngs=rngs, dtype=dtype)
        self.conv_out = Conv(ch, embed_dim, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv_in(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            level_done = (i + 1) % self.blocks_per_level == 0
            if level_done and (i + 1) // self.blocks_per_level < self.num_levels:
                h = _downsample(h, self.spatial_dims)
        for block in self.mid:
            h = block(h)
        return self.conv_out(jax.nn.swish(self.norm_out(h)))


class Decoder(nnx.Module):
    """latents [B, *spatial, embed_dim] -> x [B, *spatial * 2**(levels), out_channels]."""

    def __init__(self, *, out_channels: int, base_channels: int, channel_multipliers: Sequence[int],
                 num_res_blocks: int, embed_dim: int, spatial_dims: int = 2, rngs: nnx.Rngs, dtype=jnp.float32):
        kw = dict(spatial_dims=spatial_dims, rngs=rngs, dtype=dtype)
        self.spatial_dims = spatial_dims
        ch = base_channels * channel_multipliers[-1]
        self.conv_in = Conv(embed_dim, ch, 3, **kw)
        self.mid = nnx.List([ResBlock(ch, ch, **kw) for _ in range(num_res_blocks)])
        blocks, upsample_after, upsample_convs = [], [], []
        for level, mult in reversed(list(enumerate(channel_multipliers))):
            for r in range(num_res_blocks):
                blocks.append(ResBlock(ch, base_channels * mult, **kw))
                ch = base_channels * mult
                upsample_after.append(r == num_res_blocks - 1 and level > 0)
                if upsample_after[-1]:
                    upsample_convs.append(Conv(ch, ch, 3, **kw))
        self.blocks = nnx.List(blocks)
        self.upsample_after = tuple(upsample_after)
        self.upsample_convs = nnx.List(upsample_convs)
        self.norm_out = GroupNorm(ch, rngs=rngs, dtype=dtype)
        self.conv_out = Conv(ch, out_channels, 3, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        ups = iter(self.upsample_convs)
        for block, up in zip(self.blocks, self.upsample_after):
            h = block(h)
            if up:
                h = next(ups)(_upsample(h, self.spatial_dims))
        return self.conv_out(jax.nn.swish(self.norm_out(h))).astype(jnp.float32)


class LeCamStat(nnx.Variable):
    """Non-trainable EMA of the discriminator's mean logits (LeCam regulariser state)."""


class Discriminator(nnx.Module):
    """A patch discriminator: strided convs with GroupNorm and leaky ReLU, one logit per patch.

    Carries the EMA logit statistics that the LeCam regulariser (Tseng et al., arXiv 2104.03310)
    compares against.
    """

    def __init__(self, *, in_channels: int, base_channels: int, num_downsamples: int, spatial_dims: int = 2,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        kw = dict(spatial_dims=spatial_dims, rngs=rngs, dtype=dtype)
        self.conv_in = Conv(in_channels, base_channels, 3, **kw)
        convs, norms, ch = [], [], base_channels
        for i in range(num_downsamples):
            out = base_channels * min(2 ** (i + 1), 8)
            convs.append(Conv(ch, out, 4, stride=2, **kw))
            norms.append(GroupNorm(out, rngs=rngs, dtype=dtype))
            ch = out
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.conv_out = Conv(ch, 1, 3, **kw)
        self.ema_real = LeCamStat(jnp.zeros((), jnp.float32))
        self.ema_fake = LeCamStat(jnp.zeros((), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.leaky_relu(self.conv_in(x), 0.2)
        for conv, norm in zip(self.convs, self.norms):
            h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
        return self.conv_out(h).astype(jnp.float32)
