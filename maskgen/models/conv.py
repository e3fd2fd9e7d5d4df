"""Convolutional encoder, decoder and discriminator for tokenizers, in the style of the MaskGIT VQGAN
(Chang et al., arXiv 2202.04200; VQGAN: Esser et al., arXiv 2012.09841).

Residual blocks with GroupNorm and swish, channel multipliers per resolution, no attention; each
multiplier after the first halves the resolution, so `len(channel_multipliers) - 1` levels give a
downsampling factor of 2**levels. `spatial_dims` picks 2-D (images, [B, H, W, C]) or 1-D (audio
or spectrogram frames, [B, T, C]) convolutions with the same code.

`strides` (Encoder and Decoder; default None: the 2x average pooling / nearest-neighbour upsampling
above) replaces each level change by a learned strided convolution, as the SEANet encoder/decoder
of SoundStream (arXiv 2107.03312) and EnCodec (Défossez et al., arXiv 2210.13438) do: after level i
the encoder applies a conv of kernel 2 s_i and stride s_i, and the decoder mirrors it with a
transposed conv of kernel 2 s_i and stride s_i (SAME padding), so the factor is prod(strides), e.g.
(2, 4, 5, 8) -> 320 samples per frame (75 Hz at 24 kHz). Configs without `strides` build exactly the
same parameters as before.

`variant` ("maskgen" | "maskgit") of ResBlock, Encoder and Decoder: "maskgit" computes exactly the
function of google-research/maskgit's maskgit/nets/vqgan_tokenizer.py (with its released config:
GroupNorm, swish, average-pool downsampling), so its weights can be loaded
(maskgen.weights.maskgit_vqgan). It differs from "maskgen" in three places only:
  - ResBlock convs have no bias;
  - when a ResBlock changes width, its 1x1 shortcut conv (no bias) is applied to the block's
    transformed activation h, not to its input: out = h + conv1x1(h), the input is dropped
    (the official `residual = conv_fn(...)(x)` after `x` was reassigned). Same width: out = h + input;
  - the encoder's first conv has no bias.
Everything else (where widths change, blocks per level, the mid blocks, nearest-neighbour 2x
upsampling followed by a 3x3 conv, GroupNorm with 32 groups and eps 1e-6, the 1x1 encoder output
conv) is the same in both.

Discriminators: `Discriminator` (a patch discriminator) and `StyleGANDiscriminator` (the one
MaskGIT's and MAGVIT's tokenizers use: maskgit/nets/discriminator.py, after StyleGAN2's
residual discriminator, Karras et al., arXiv 1912.04958).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.models.layers import Dense, logical_param

VARIANTS = ("maskgen", "maskgit")


class Conv(nnx.Module):
    """N-D convolution, channels last, SAME padding; kernel axes (..., "conv_in", "conv_out")."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, spatial_dims: int, rngs: nnx.Rngs,
                 stride: int = 1, dtype=jnp.float32, use_bias: bool = True, kernel_init=None):
        shape = (kernel,) * spatial_dims + (in_ch, out_ch)
        init = kernel_init or jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        self.kernel = logical_param(rngs, init, shape, (None,) * spatial_dims + ("conv_in", "conv_out"))
        self.bias = logical_param(rngs, jax.nn.initializers.zeros, (out_ch,), ("conv_out",)) if use_bias else None
        self.stride, self.spatial_dims, self.dtype = stride, spatial_dims, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        spatial = "HW"[: self.spatial_dims] if self.spatial_dims <= 2 else "DHW"
        dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), (self.stride,) * self.spatial_dims, "SAME",
            dimension_numbers=dims,
        )
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class ConvTranspose(nnx.Module):
    """N-D transposed convolution (learned upsampling by `stride`), channels last, SAME padding:
    the output is `stride` times longer on each spatial axis."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int, spatial_dims: int, rngs: nnx.Rngs,
                 dtype=jnp.float32):
        shape = (kernel,) * spatial_dims + (in_ch, out_ch)
        init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        self.kernel = logical_param(rngs, init, shape, (None,) * spatial_dims + ("conv_in", "conv_out"))
        self.bias = logical_param(rngs, jax.nn.initializers.zeros, (out_ch,), ("conv_out",))
        self.stride, self.spatial_dims, self.dtype = stride, spatial_dims, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        spatial = "HW"[: self.spatial_dims] if self.spatial_dims <= 2 else "DHW"
        y = jax.lax.conv_transpose(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), (self.stride,) * self.spatial_dims, "SAME",
            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        )
        return y + self.bias[...].astype(self.dtype)


def check_strides(strides, channel_multipliers) -> tuple[int, ...] | None:
    """None, or the strides as ints >= 1, one per level change (len(channel_multipliers) - 1)."""
    if strides is None:
        return None
    strides = tuple(int(s) for s in strides)
    if len(strides) != len(channel_multipliers) - 1 or min(strides, default=1) < 1:
        raise ValueError(f"strides {strides} must be {len(channel_multipliers) - 1} integers >= 1, one per level "
                         f"change of channel_multipliers {tuple(channel_multipliers)}")
    return strides


def downsampling_factor(channel_multipliers, strides=None) -> int:
    """How many input positions make one latent position (per spatial axis)."""
    strides = check_strides(strides, channel_multipliers)
    return math.prod(strides) if strides is not None else 2 ** (len(channel_multipliers) - 1)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown conv variant {variant!r}; valid: {', '.join(VARIANTS)}")


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
    """GroupNorm -> swish -> conv3 -> GroupNorm -> swish -> conv3 = h, plus a 1x1 shortcut when widths differ.

    variant "maskgen": out = h + (x or conv1x1(x)). "maskgit" (the official MaskGIT VQGAN block, for
    its weights): convs without bias, and out = h + (x or conv1x1(h)), the shortcut applied to h.
    """

    def __init__(self, in_ch: int, out_ch: int, *, spatial_dims: int, rngs: nnx.Rngs, dtype=jnp.float32,
                 variant: str = "maskgen"):
        _check_variant(variant)
        kw = dict(spatial_dims=spatial_dims, rngs=rngs, dtype=dtype, use_bias=variant == "maskgen")
        self.variant = variant
        self.norm1 = GroupNorm(in_ch, rngs=rngs, dtype=dtype)
        self.conv1 = Conv(in_ch, out_ch, 3, **kw)
        self.norm2 = GroupNorm(out_ch, rngs=rngs, dtype=dtype)
        self.conv2 = Conv(out_ch, out_ch, 3, **kw)
        self.shortcut = Conv(in_ch if variant == "maskgen" else out_ch, out_ch, 1, **kw) if in_ch != out_ch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.swish(self.norm1(x)))
        h = self.conv2(jax.nn.swish(self.norm2(h)))
        if self.shortcut is None:
            return h + x
        return h + self.shortcut(x if self.variant == "maskgen" else h)


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
    """x [B, *spatial, C] -> latents [B, *spatial / factor, embed_dim], factor = 2**(levels) or
    prod(strides) (`downsampling_factor`)."""

    def __init__(self, *, in_channels: int, base_channels: int, channel_multipliers: Sequence[int],
                 num_res_blocks: int, embed_dim: int, spatial_dims: int = 2, rngs: nnx.Rngs, dtype=jnp.float32,
                 variant: str = "maskgen", strides: Sequence[int] | None = None):
        _check_variant(variant)
        strides = check_strides(strides, channel_multipliers)
        kw = dict(spatial_dims=spatial_dims, rngs=rngs, dtype=dtype)
        self.spatial_dims = spatial_dims
        self.conv_in = Conv(in_channels, base_channels, 3, use_bias=variant == "maskgen", **kw)
        blocks, ch = [], base_channels
        for level, mult in enumerate(channel_multipliers):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, base_channels * mult, variant=variant, **kw))
                ch = base_channels * mult
        self.blocks = nnx.List(blocks)
        self.blocks_per_level = num_res_blocks
        self.num_levels = len(channel_multipliers)
        # Strided level changes: one conv per level change, at the width of the level it leaves.
        self.down_convs = None if strides is None else nnx.List([
            Conv(base_channels * channel_multipliers[i], base_channels * channel_multipliers[i], 2 * s, stride=s, **kw)
            for i, s in enumerate(strides)])
        self.mid = nnx.List([ResBlock(ch, ch, variant=variant, **kw) for _ in range(num_res_blocks)])
        self.norm_out = GroupNorm(ch, rngs=rngs, dtype=dtype)
        self.conv_out = Conv(ch, embed_dim, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv_in(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            level_done = (i + 1) % self.blocks_per_level == 0
            level = (i + 1) // self.blocks_per_level
            if level_done and level < self.num_levels:
                h = (_downsample(h, self.spatial_dims) if self.down_convs is None
                     else self.down_convs[level - 1](h))
        for block in self.mid:
            h = block(h)
        return self.conv_out(jax.nn.swish(self.norm_out(h)))


class Decoder(nnx.Module):
    """latents [B, *spatial, embed_dim] -> x [B, *spatial * factor, out_channels], factor = 2**(levels)
    or prod(strides) (the encoder's, mirrored: transposed convs instead of repeat + conv3)."""

    def __init__(self, *, out_channels: int, base_channels: int, channel_multipliers: Sequence[int],
                 num_res_blocks: int, embed_dim: int, spatial_dims: int = 2, rngs: nnx.Rngs, dtype=jnp.float32,
                 variant: str = "maskgen", strides: Sequence[int] | None = None):
        _check_variant(variant)
        strides = check_strides(strides, channel_multipliers)
        kw = dict(spatial_dims=spatial_dims, rngs=rngs, dtype=dtype)
        self.spatial_dims = spatial_dims
        ch = base_channels * channel_multipliers[-1]
        self.conv_in = Conv(embed_dim, ch, 3, **kw)
        self.mid = nnx.List([ResBlock(ch, ch, variant=variant, **kw) for _ in range(num_res_blocks)])
        blocks, upsample_after, upsample_convs = [], [], []
        for level, mult in reversed(list(enumerate(channel_multipliers))):
            for r in range(num_res_blocks):
                blocks.append(ResBlock(ch, base_channels * mult, variant=variant, **kw))
                ch = base_channels * mult
                upsample_after.append(r == num_res_blocks - 1 and level > 0)
                if upsample_after[-1] and strides is None:
                    upsample_convs.append(Conv(ch, ch, 3, **kw))
                elif upsample_after[-1]:  # back to level - 1's resolution: its encoder stride, mirrored
                    s = strides[level - 1]
                    upsample_convs.append(ConvTranspose(ch, ch, 2 * s, stride=s, **kw))
        self.blocks = nnx.List(blocks)
        self.upsample_after = tuple(upsample_after)
        self.upsample_convs = nnx.List(upsample_convs)
        self.learned_upsampling = strides is not None
        self.norm_out = GroupNorm(ch, rngs=rngs, dtype=dtype)
        self.conv_out = Conv(ch, out_channels, 3, **kw)

    def features(self, z: jax.Array) -> jax.Array:
        """Everything before the last conv (`conv_out`): the adaptive GAN weight differentiates
        the losses with respect to that last layer's kernel only."""
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        ups = iter(self.upsample_convs)
        for block, up in zip(self.blocks, self.upsample_after):
            h = block(h)
            if up:
                h = next(ups)(h if self.learned_upsampling else _upsample(h, self.spatial_dims))
        return jax.nn.swish(self.norm_out(h))

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.conv_out(self.features(z)).astype(jnp.float32)


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


# -------------------------------------------------------------------- StyleGAN discriminator


def _blur_downsample(x: jax.Array) -> jax.Array:
    """Depthwise [1, 3, 3, 1] x [1, 3, 3, 1] / 64 blur, stride 2, SAME padding (BlurPool, Zhang,
    arXiv 1904.11486): the resampling of MaskGIT's StyleGAN discriminator (`blur_resample`)."""
    taps = np.array([1.0, 3.0, 3.0, 1.0])
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
    channels = x.shape[-1]
    kernel = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, channels)), x.dtype)
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=channels, precision=jax.lax.Precision.HIGHEST)


def stylegan_channels(resolution: int, channel_multiplier: int, max_channels: int) -> int:
    """Width at a resolution: MaskGIT's table, `max_channels` (512) up to 32 px, then 16384 * multiplier / px."""
    return max_channels if resolution <= 32 else 16384 * channel_multiplier // resolution


class StyleGANBlock(nnx.Module):
    """conv3 -> lrelu -> blur-down -> conv3 -> lrelu, plus blur-down -> 1x1 conv (no bias) shortcut, / sqrt 2."""

    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs, dtype=jnp.float32, blur: bool = True):
        kw = dict(spatial_dims=2, rngs=rngs, dtype=dtype, kernel_init=jax.nn.initializers.xavier_uniform())
        self.conv1 = Conv(in_ch, in_ch, 3, **kw)
        self.conv2 = Conv(in_ch, out_ch, 3, **kw)
        self.shortcut = Conv(in_ch, out_ch, 1, use_bias=False, **kw)
        self.blur = blur

    def _down(self, x):
        return _blur_downsample(x) if self.blur else _downsample(x, 2)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.leaky_relu(self.conv1(x), 0.2)
        h = jax.nn.leaky_relu(self.conv2(self._down(h)), 0.2)
        return (self.shortcut(self._down(x)) + h) / math.sqrt(2.0)


class StyleGANDiscriminator(nnx.Module):
    """MaskGIT's StyleGAN discriminator (maskgit/nets/discriminator.py): one logit per image [B, 1].

    conv3 -> lrelu, then one StyleGANBlock per halving from `image_size` down to 4x4, conv3 ->
    lrelu, flatten, dense -> lrelu -> dense(1); widths from `stylegan_channels` (the reference:
    `channel_multiplier` 1, `max_channels` 512; small values for CPU configs). Images only
    (2-D, square, power-of-two size >= 4). Carries the LeCam EMA statistics like `Discriminator`.
    """

    def __init__(self, *, in_channels: int, image_size: int, channel_multiplier: int = 1, max_channels: int = 512,
                 blur_resample: bool = True, spatial_dims: int = 2, rngs: nnx.Rngs, dtype=jnp.float32):
        if spatial_dims != 2:
            raise ValueError(f"the StyleGAN discriminator is 2-D only, got spatial_dims={spatial_dims}")
        if image_size < 4 or image_size & (image_size - 1):
            raise ValueError(f"the StyleGAN discriminator needs a power-of-two image size >= 4, got {image_size}")
        width = lambda res: stylegan_channels(res, channel_multiplier, max_channels)  # noqa: E731
        kw = dict(spatial_dims=2, rngs=rngs, dtype=dtype, kernel_init=jax.nn.initializers.xavier_uniform())
        self.image_size = image_size
        self.conv_in = Conv(in_channels, width(image_size), 3, **kw)
        blocks, res = [], image_size
        while res > 4:
            blocks.append(StyleGANBlock(width(res), width(res // 2), rngs=rngs, dtype=dtype, blur=blur_resample))
            res //= 2
        self.blocks = nnx.List(blocks)
        self.conv_out = Conv(width(4), width(4), 3, **kw)
        dense = dict(rngs=rngs, dtype=dtype, kernel_init=jax.nn.initializers.xavier_uniform())
        self.dense = Dense((16 * width(4),), (width(4),), ("conv_in", "conv_out"), **dense)
        self.logit = Dense((width(4),), (1,), ("conv_in", "conv_out"), **dense)
        self.ema_real = LeCamStat(jnp.zeros((), jnp.float32))
        self.ema_fake = LeCamStat(jnp.zeros((), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"StyleGANDiscriminator(image_size={self.image_size}) got images of shape {x.shape}")
        h = jax.nn.leaky_relu(self.conv_in(x), 0.2)
        for block in self.blocks:
            h = block(h)
        h = jax.nn.leaky_relu(self.conv_out(h), 0.2).reshape(x.shape[0], -1)
        h = jax.nn.leaky_relu(self.dense(h), 0.2)
        return self.logit(h).astype(jnp.float32)
