"""Transformer building blocks as Flax NNX modules whose parameters carry logical axis names.

Logical names used here (mapped to mesh axes by `config.sharding_rules`):
  embed  - model width          mlp  - MLP hidden width
  heads  - attention heads      kv   - per-head width
  patch  - flattened patch values (input/output of pixel models)
  norm   - LayerNorm scale/bias
The modules are plain trees (no shared submodules), so they split cleanly in NNX tree mode.
Attention follows Vaswani et al. (arXiv 1706.03762); blocks are pre-norm as in ViT (arXiv 2010.11929).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def logical_param(rngs: nnx.Rngs, init, shape: Sequence[int], names: Sequence[str | None]) -> nnx.Param:
    """A float32 parameter created by `init` and annotated with logical axis `names`."""
    return nnx.Param(nnx.with_partitioning(init, tuple(names))(rngs.params(), tuple(shape), jnp.float32))


def xavier_uniform(num_in_axes: int, ndim: int):
    """Glorot-uniform over a kernel whose first `num_in_axes` axes are contracted (MAE's init)."""
    return jax.nn.initializers.variance_scaling(
        1.0, "fan_avg", "uniform",
        in_axis=tuple(range(num_in_axes)), out_axis=tuple(range(num_in_axes, ndim)),
    )


class Dense(nnx.Module):
    """y = x . W + b, contracting the trailing `in_shape` axes of x into `out_shape` axes."""

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        kernel_axes: Sequence[str | None],
        *,
        rngs: nnx.Rngs,
        use_bias: bool = True,
        dtype=jnp.float32,
    ):
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        if len(kernel_axes) != len(in_shape) + len(out_shape):
            raise ValueError(f"kernel_axes {kernel_axes} must name {len(in_shape) + len(out_shape)} axes")
        self.num_in = len(in_shape)
        self.dtype = dtype
        self.kernel = logical_param(
            rngs, xavier_uniform(len(in_shape), len(kernel_axes)), in_shape + out_shape, kernel_axes
        )
        self.bias = (
            logical_param(rngs, jax.nn.initializers.zeros, out_shape, kernel_axes[len(in_shape):])
            if use_bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.tensordot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), axes=self.num_in)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in float32 whatever the compute dtype."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6, dtype=jnp.float32):
        self.scale = logical_param(rngs, jax.nn.initializers.ones, (dim,), ("norm",))
        self.bias = logical_param(rngs, jax.nn.initializers.zeros, (dim,), ("norm",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


class Attention(nnx.Module):
    """Bidirectional multi-head self-attention with a fused QKV kernel [embed, 3, heads, kv]."""

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        head_dim = width // num_heads
        self.qkv = Dense((width,), (3, num_heads, head_dim), ("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype)
        self.out = Dense((num_heads, head_dim), (width,), ("heads", "kv", "embed"), rngs=rngs, dtype=dtype)
        self.scale = 1.0 / math.sqrt(head_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        qkv = self.qkv(x)  # [B, T, 3, H, d]
        # Head-major layout [B, H, T, d] gives plain batched matmuls, faster on XLA:CPU.
        q, k, v = (jnp.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * self.scale, k).astype(jnp.float32)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        attended = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
        return self.out(jnp.transpose(attended, (0, 2, 1, 3)))


class MLP(nnx.Module):
    """Two-layer GELU MLP."""

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = Dense((width,), (hidden,), ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense((hidden,), (width,), ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm1 = LayerNorm(width, rngs=rngs, dtype=dtype)
        self.attn = Attention(width, num_heads, rngs=rngs, dtype=dtype)
        self.norm2 = LayerNorm(width, rngs=rngs, dtype=dtype)
        self.mlp = MLP(width, int(width * mlp_ratio), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nnx.Module):
    """A stack of pre-norm blocks followed by a final LayerNorm."""

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.blocks = nnx.List([Block(width, num_heads, mlp_ratio, rngs=rngs, dtype=dtype) for _ in range(depth)])
        self.norm = LayerNorm(width, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
