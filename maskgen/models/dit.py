"""Diffusion transformer over continuous patches (DiT / SiT), with MicroDiT's masking switches.

References:
  DiT: Peebles & Xie, "Scalable Diffusion Models with Transformers", arXiv 2212.09748: patch
    embedding + fixed 2D sin-cos positions, a timestep embedder (256-dim sinusoidal frequencies,
    then Linear-SiLU-Linear), a class table with a null row for classifier-free guidance, c =
    t_emb + class_emb, adaLN-Zero blocks (a zero-initialised Linear(SiLU(c)) gives each block's
    shift/scale/gate, so every block starts as the identity), and a final layer of adaLN
    shift/scale + a zero-initialised Linear, so the whole model outputs zeros at init.
  SiT: Ma et al., "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable
    Interpolant Transformers", arXiv 2401.08740: the same network, fed t in [0, 1].
  MicroDiT: Sehwag et al., "Stretching Each Dollar: Diffusion Training from Scratch on a
    Micro-Budget", arXiv 2407.15811: `keep_indices` drops patches before the backbone (the
    backbone sees only K of N tokens), `mixer_depth` patch-mixer blocks see every patch before the
    drop (deferred masking), outputs are restored to N positions with a zero (non-learned) mask
    token; layer-wise scaling of attention and MLP widths; expert-choice MoE in every second block.
  REPA: Yu et al., "Representation Alignment for Generation", arXiv 2410.06940: `return_hidden=k`
    returns the states after backbone block k, and `projector` is REPA's 3-layer SiLU MLP.

The blocks are maskgen's one transformer block (`maskgen.models.token_transformer.TokenBlock`) in
adaLN mode; MoE and per-block head counts are switches on it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.models.layers import Dense, LayerNorm, block_runner, check_remat, logical_param
from maskgen.models.token_transformer import TokenBlock, _modulate
from maskgen.models.vit import sincos_2d
from maskgen.parallel import constrain

FREQUENCY_DIM = 256  # DiT's timestep frequency embedding size
MAX_PERIOD = 10000.0


def timestep_frequencies(time: jax.Array, dim: int = FREQUENCY_DIM, max_period: float = MAX_PERIOD) -> jax.Array:
    """DiT's sinusoidal embedding of (possibly fractional) times [B] -> float32 [B, dim]:
    [cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)), i < dim/2."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(time, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def layerwise_ratios(depth: int, start: float, end: float) -> list[float]:
    """MicroDiT's layer-wise scaling: a ratio rising linearly from `start` (first block) to `end` (last)."""
    return [float(r) for r in np.linspace(start, end, depth)] if depth > 1 else [float(end)]


def moe_blocks(depth: int, every: int) -> list[bool]:
    """Which backbone blocks get the MoE MLP: every `every`-th block (the 2nd, 4th, ... for every=2),
    never the last one (MicroDiT)."""
    return [every > 0 and (i + 1) % every == 0 and i < depth - 1 for i in range(depth)]


class TimestepEmbedder(nnx.Module):
    """DiT's t embedding: sinusoidal frequencies (256) -> Linear -> SiLU -> Linear (width)."""

    def __init__(self, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        init = jax.nn.initializers.normal(0.02)  # DiT's init of the timestep MLP
        self.fc1 = Dense((FREQUENCY_DIM,), (width,), (None, "embed"), rngs=rngs, dtype=dtype, kernel_init=init)
        self.fc2 = Dense((width,), (width,), ("cond", "embed"), rngs=rngs, dtype=dtype, kernel_init=init)

    def __call__(self, time: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.silu(self.fc1(timestep_frequencies(time))))


class Projector(nnx.Module):
    """REPA's projector: Linear -> SiLU -> Linear -> SiLU -> Linear, width -> hidden -> hidden -> out."""

    def __init__(self, width: int, hidden: int, out: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = Dense((width,), (hidden,), ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense((hidden,), (hidden,), (None, "mlp"), rngs=rngs, dtype=dtype)
        self.fc3 = Dense((hidden,), (out,), ("mlp", None), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc3(jax.nn.silu(self.fc2(jax.nn.silu(self.fc1(x))))).astype(jnp.float32)


class DiffusionTransformer(nnx.Module):
    """DiT/SiT over patch (or latent) tokens, with MicroDiT's keep_indices, patch-mixer and MoE.

    __call__(x float [B, N, in_dim], time float [B], labels int [B] in [0, num_classes] or None,
    keep_indices int [B, K] or None, return_hidden k or None) -> float32 [B, N, out_dim]
    (and the [B, K, width] states after backbone block k when return_hidden=k).

    Args:
      in_dim / out_dim: values per token in and out (p*p*C patches; out_dim may hold 2x channels).
      grid: (h, w) token grid; N = h*w, tokens in raster order.
      num_classes: classes; label `num_classes` is the learned null label (CFG). 0: unconditional
        (no class table; labels must be None).
      width, depth, num_heads, mlp_ratio: the backbone (depth blocks).
      mixer_depth: MicroDiT's patch-mixer blocks (same width) that see every token before the
        keep_indices gather; 0: none (naive masking drops tokens right after the embedding).
      num_experts, capacity_factor, moe_every: expert-choice MoE MLPs in every `moe_every`-th
        backbone block, never the last (`moe_blocks`); num_experts 0: dense MLPs.
      layerwise_scaling: None, or ((attn_start, attn_end), (mlp_start, mlp_end)): block i of the
        backbone gets round(num_heads * attn_ratio_i) heads of the width / num_heads head width
        and an MLP of mlp_ratio_i * width, both ratios linear over depth (MicroDiT: (0.5, 1.0),
        (0.5, 4.0)); mlp_ratio then is unused for the backbone (the mixer keeps it).
      projector: None, or (hidden, out): REPA's projector from `width` to `out` features.
    """

    def __init__(self, *, in_dim: int, out_dim: int, grid: tuple[int, int], num_classes: int, width: int,
                 depth: int, num_heads: int, mlp_ratio: float = 4.0, mixer_depth: int = 0, num_experts: int = 0,
                 capacity_factor: float = 2.0, moe_every: int = 2, layerwise_scaling=None, qk_norm: bool = False,
                 projector: tuple[int, int] | None = None, dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.remat = check_remat(remat)
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        if width % 4:
            raise ValueError(f"width {width} must be divisible by 4 (2D sin-cos positions)")
        if depth < 1 or mixer_depth < 0:
            raise ValueError(f"depth must be >= 1 and mixer_depth >= 0, got {depth} and {mixer_depth}")
        self.grid = tuple(int(g) for g in grid)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.width = width
        self.depth = depth
        self.num_classes = int(num_classes)
        self.null_class = self.num_classes if self.num_classes else None
        self.dtype = dtype
        head_dim = width // num_heads
        self.patch_embed = Dense((in_dim,), (width,), ("patch", "embed"), rngs=rngs, dtype=dtype)
        self.time_embed = TimestepEmbedder(width, rngs=rngs, dtype=dtype)
        self.class_embed = (logical_param(rngs, jax.nn.initializers.normal(0.02), (num_classes + 1, width),
                                          ("classes", "embed")) if num_classes else None)
        block = dict(adaln=True, qk_norm=qk_norm, rngs=rngs, dtype=dtype)
        self.mixer = nnx.List([TokenBlock(width, num_heads, mlp_ratio, **block) for _ in range(mixer_depth)])
        if layerwise_scaling is None:
            heads = [num_heads] * depth
            mlp_ratios = [mlp_ratio] * depth
        else:
            (attn_start, attn_end), (mlp_start, mlp_end) = layerwise_scaling
            heads = [max(1, round(num_heads * r)) for r in layerwise_ratios(depth, attn_start, attn_end)]
            mlp_ratios = layerwise_ratios(depth, mlp_start, mlp_end)
        experts = moe_blocks(depth, moe_every) if num_experts else [False] * depth
        self.block_heads, self.block_mlp_ratios, self.block_moe = heads, mlp_ratios, experts
        self.blocks = nnx.List([
            TokenBlock(width, heads[i], mlp_ratios[i], **block,
                       **(dict(head_dim=head_dim) if heads[i] != num_heads else {}),
                       **(dict(num_experts=num_experts, capacity_factor=capacity_factor) if experts[i] else {}))
            for i in range(depth)
        ])
        # DiT's final layer: LayerNorm without affine, adaLN shift/scale, Linear; both zero-initialised.
        self.final_norm = LayerNorm(width, rngs=rngs, dtype=dtype, affine=False)
        self.final_modulation = Dense((width,), (2, width), ("cond", None, "embed"), rngs=rngs, dtype=dtype,
                                      kernel_init=jax.nn.initializers.zeros)
        self.final_linear = Dense((width,), (out_dim,), ("embed", "patch"), rngs=rngs, dtype=dtype,
                                  kernel_init=jax.nn.initializers.zeros)
        self.projector = Projector(width, projector[0], projector[1], rngs=rngs, dtype=dtype) if projector else None

    def _cond(self, time: jax.Array, labels: jax.Array | None, batch: int) -> jax.Array:
        """SiLU(t_emb + class_emb) [B, width]: the adaLN modulation input of every block."""
        time = jnp.asarray(time)
        if time.shape != (batch,):
            raise ValueError(f"time must be [B] = ({batch},), got shape {time.shape}")
        cond = self.time_embed(time)
        if self.class_embed is None:
            if labels is not None:
                raise ValueError("this model is unconditional (num_classes=0); call it with labels=None")
        else:
            if labels is None:
                raise ValueError(f"this model is class-conditional: pass labels [B] in [0, {self.num_classes}] "
                                 f"({self.num_classes} is the null label)")
            if jnp.shape(labels) != (batch,):
                raise ValueError(f"labels must be [B] = ({batch},), got shape {jnp.shape(labels)}")
            cond = cond + self.class_embed[...][labels].astype(self.dtype)
        return jax.nn.silu(cond)

    def __call__(self, x: jax.Array, time: jax.Array, labels: jax.Array | None = None, *,
                 keep_indices: jax.Array | None = None, return_hidden: int | None = None):
        b = x.shape[0]
        if x.shape[1:] != (self.num_tokens, self.in_dim):
            raise ValueError(f"expected x [B, {self.num_tokens}, {self.in_dim}] (grid {self.grid}), got {x.shape}")
        if return_hidden is not None and not 1 <= return_hidden <= self.depth:
            raise ValueError(f"return_hidden={return_hidden}: must name a backbone block in 1..{self.depth}")
        c = self._cond(time, labels, b)
        h = self.patch_embed(x) + jnp.asarray(sincos_2d(*self.grid, self.width), self.dtype)
        run = block_runner(lambda block, h, c: block(h, c)[0], self.remat)
        for block in self.mixer:
            h = constrain(run(block, h, c))
        if keep_indices is not None:
            if keep_indices.ndim != 2 or keep_indices.shape[0] != b:
                raise ValueError(f"keep_indices must be int [B={b}, K], got shape {keep_indices.shape}")
            h = jnp.take_along_axis(h, keep_indices[..., None], axis=1)
        hidden = None
        for i, block in enumerate(self.blocks):
            h = constrain(run(block, h, c))
            if return_hidden == i + 1:
                hidden = h
        shift, scale = jnp.unstack(self.final_modulation(c), axis=1)
        out = self.final_linear(_modulate(self.final_norm(h), shift, scale)).astype(jnp.float32)
        if keep_indices is not None:
            # Dropped positions get MicroDiT's zero, non-learned mask token.
            out = jnp.zeros((b, self.num_tokens, self.out_dim), out.dtype).at[
                jnp.arange(b)[:, None], keep_indices].set(out)
        return (out, hidden) if return_hidden is not None else out

    def project(self, hidden: jax.Array) -> jax.Array:
        """REPA's projection of block states [B, K, width] -> float32 [B, K, out]."""
        if self.projector is None:
            raise ValueError("this model has no REPA projector (build it with projector=(hidden, out))")
        return self.projector(hidden)


__all__ = ["DiffusionTransformer", "Projector", "TimestepEmbedder", "layerwise_ratios", "moe_blocks",
           "timestep_frequencies"]
