"""Transformer building blocks as Flax NNX modules whose parameters carry logical axis names.

Logical names used here (mapped to mesh axes by `config.sharding_rules`):
  embed  - model width          mlp  - MLP hidden width
  heads  - attention heads      kv   - per-head width
  patch  - flattened patch values (input/output of pixel models)
  norm   - LayerNorm scale/bias   expert - the experts of a mixture-of-experts MLP
The modules are plain trees (no shared submodules), so they split cleanly in NNX tree mode.
Attention follows Vaswani et al. (arXiv 1706.03762); blocks are pre-norm as in ViT (arXiv 2010.11929).
Optional attention extras (off by default, used by the token transformer): QK-norm (Dehghani et al.,
arXiv 2302.05442), rotary position embeddings (Su et al., arXiv 2104.09864), a boolean attention mask,
dropout on the attention probabilities (as BERT, Devlin et al., arXiv 1810.04805), a KV-cached
single-step `decode`, and a head width other than width / num_heads (MicroDiT's layer-wise scaling,
arXiv 2407.15811). Every option defaults to off and then computes exactly what it did before.
`ExpertChoiceMLP` is a mixture-of-experts MLP with expert-choice routing (Zhou et al., arXiv
2202.09368), as MicroDiT uses it.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.parallel import constrain


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
        kernel_init=None,
    ):
        """kernel_init: an initializer for the kernel; None is Glorot-uniform over the contracted axes."""
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        if len(kernel_axes) != len(in_shape) + len(out_shape):
            raise ValueError(f"kernel_axes {kernel_axes} must name {len(in_shape) + len(out_shape)} axes")
        self.num_in = len(in_shape)
        self.dtype = dtype
        if kernel_init is None:
            kernel_init = xavier_uniform(len(in_shape), len(kernel_axes))
        self.kernel = logical_param(rngs, kernel_init, in_shape + out_shape, kernel_axes)
        self.bias = (
            logical_param(rngs, jax.nn.initializers.zeros, out_shape, kernel_axes[len(in_shape):])
            if use_bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        # Leading (batch/sequence) axes are flattened into one before the contraction. Same math,
        # but with a single row axis autodiff's kernel gradient is a plain x^T . dy dot, which
        # XLA:CPU feeds straight to the matmul kernel; with [B, T, ...] rows it materialised a
        # transposed copy of every activation gradient first (about 8% of a CPU train step).
        lead = x.shape[: x.ndim - self.num_in]
        rows = x.astype(self.dtype).reshape((math.prod(lead),) + x.shape[len(lead):])
        y = jnp.tensordot(rows, self.kernel[...].astype(self.dtype), axes=self.num_in)
        y = y.reshape(lead + y.shape[1:])
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in float32 whatever the compute dtype.

    affine=False drops the learned scale/bias (adaLN supplies them from the conditioning instead).
    """

    def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6, dtype=jnp.float32, affine: bool = True):
        if affine:
            self.scale = logical_param(rngs, jax.nn.initializers.ones, (dim,), ("norm",))
            self.bias = logical_param(rngs, jax.nn.initializers.zeros, (dim,), ("norm",))
        else:
            self.scale = self.bias = None
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        if self.scale is None:
            return ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each element with probability `rate`, scale the rest by 1 / (1 - rate).

    The identity when rate == 0 or rng is None (evaluation and sampling pass no key)."""
    if rate == 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding (Su et al., arXiv 2104.09864), "rotate-half" pairing.

    Rotates each pair (x[..., i], x[..., i + d/2]) by the angle whose cos/sin are cos[..., i],
    sin[..., i]; cos/sin are [T, d/2] (broadcast over x's leading axes, x is [..., T, d]).
    Computed in float32, returned in x's dtype.
    """
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused QKV kernel [embed, 3, heads, kv].

    Bidirectional by default. Options (all off by default, adding no parameters then):
      qk_norm=True: LayerNorm over the head dim on q and k before the dot product (Dehghani et al.,
        arXiv 2302.05442), with learned scale/bias [kv] ("norm") shared by the heads.
      __call__(x, mask=..., rope=...): a boolean mask broadcastable to [B, H, T, T] (True = attend)
        and rotary (cos, sin) tables [T, d/2] applied to q and k after the norm.
      decode(x, cache, index): one new element attending over a KV cache (causal decoding).
      __call__(x, dropout_rate=p, dropout_rng=key): dropout on the attention probabilities, each
        (example, head, query, key) weight independently (training only: no key, no dropout).
    """

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32, qk_norm: bool = False,
                 kernel_init=None, head_dim: int | None = None):
        """head_dim: the per-head width; None is width / num_heads (then width must divide)."""
        if head_dim is None:
            if width % num_heads:
                raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
            head_dim = width // num_heads
        elif head_dim < 1 or num_heads < 1:
            raise ValueError(f"attention needs num_heads >= 1 and head_dim >= 1, got {num_heads} and {head_dim}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.qkv = Dense((width,), (3, num_heads, head_dim), ("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype,
                         kernel_init=kernel_init)
        self.out = Dense((num_heads, head_dim), (width,), ("heads", "kv", "embed"), rngs=rngs, dtype=dtype,
                         kernel_init=kernel_init)
        self.scale = 1.0 / math.sqrt(head_dim)
        # Created after qkv/out so that qk_norm=False models draw exactly the same parameter keys.
        self.q_norm = LayerNorm(head_dim, rngs=rngs, dtype=dtype) if qk_norm else None
        self.k_norm = LayerNorm(head_dim, rngs=rngs, dtype=dtype) if qk_norm else None

    def project(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None = None):
        """x [B, T, embed] -> head-major q, k, v [B, H, T, d], with QK-norm and rotary applied."""
        qkv = self.qkv(x)  # [B, T, 3, H, d]
        # Head-major layout [B, H, T, d] gives plain batched matmuls, faster on XLA:CPU.
        q, k, v = (jnp.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q, k, v

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None,
               dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> jax.Array:
        """Softmax attention (logits and softmax in float32) and the output projection.

        The softmax is normalised after the PV product (as flash attention does): dividing the
        [.., T, d] result instead of the [.., T, T] weights does a quarter of the divisions at
        T = 4d, and saves a pass over the weights in forward and backward. Same math. Dropout on
        the probabilities drops unnormalised weights and divides by the full (undropped) sum,
        which is dropout applied to the normalised probabilities.
        """
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * self.scale, k).astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        unnormalised = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
        weights = dropout(unnormalised, dropout_rate, dropout_rng)
        attended = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
        attended = (attended / unnormalised.sum(-1, keepdims=True)).astype(v.dtype)
        return self.out(jnp.transpose(attended, (0, 2, 1, 3)))

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None,
                 rope: tuple[jax.Array, jax.Array] | None = None, dropout_rate: float = 0.0,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        return self.attend(*self.project(x, rope), mask, dropout_rate, dropout_rng)

    def decode(self, x: jax.Array, cache: dict[str, jax.Array], index: jax.Array,
               rope: tuple[jax.Array, jax.Array] | None = None):
        """One causal step: x [B, 1, embed] is the element at sequence position `index`.

        cache: {"k", "v"} of [B, H, L, d]. Its k/v are written at `index`, and the query attends
        to cache positions <= index (static shapes: the full length L with a mask).
        rope: the (cos, sin) rows [1, d/2] of position `index`. Returns (y [B, 1, embed], cache).
        """
        q, k, v = self.project(x, rope)
        start = (0, 0, index, 0)
        k_all = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
        v_all = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
        mask = jnp.arange(k_all.shape[2]) <= index  # [L], broadcast over [B, H, 1, L]
        y = self.attend(q, k_all.astype(q.dtype), v_all.astype(q.dtype), mask)
        return y, {"k": k_all, "v": v_all}


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x), written with erf as PyTorch does: 0.5 x (1 + erf(x / sqrt 2)).

    `jax.nn.gelu(approximate=False)` uses erfc, which XLA:CPU evaluates about 2x slower (forward
    plus backward on [16, 256, 1536]: 57 vs 24 ms of CPU time). The two agree to ~1e-6 absolute
    (float rounding of the 1 + erf sum for very negative x, where GELU is ~0).
    """
    return 0.5 * x * (1 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU's tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): BERT's, and
    `jax.nn.gelu`'s default, which the official MaskGIT transformer uses."""
    return jax.nn.gelu(x, approximate=True)


class MLP(nnx.Module):
    """Two-layer GELU MLP (exact GELU; `approximate_gelu=True` for the tanh form).

    kernel_init: None is Dense's Glorot-uniform."""

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32, approximate_gelu: bool = False,
                 kernel_init=None):
        self.fc1 = Dense((width,), (hidden,), ("embed", "mlp"), rngs=rngs, dtype=dtype, kernel_init=kernel_init)
        self.fc2 = Dense((hidden,), (width,), ("mlp", "embed"), rngs=rngs, dtype=dtype, kernel_init=kernel_init)
        self.approximate_gelu = approximate_gelu

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2((gelu_tanh if self.approximate_gelu else gelu)(self.fc1(x)))


class ExpertChoiceMLP(nnx.Module):
    """Mixture-of-experts GELU MLP with expert-choice routing (Zhou et al., arXiv 2202.09368).

    A router gives each token a softmax over the E experts (gates [B, T, E]). Then each expert
    picks the `capacity` tokens of the example with the highest gate for it (top-C over the T
    tokens), runs its own two-layer MLP on them, and adds its output weighted by the gate back at
    their positions. A token may be picked by several experts or by none (its MLP output is then
    zero: the residual carries it). capacity = round(capacity_factor * T / E), clipped to [1, T];
    with capacity_factor 1 the experts process T tokens in all, as a dense MLP does.

    Routing is per example, not over the whole batch, so an example's output does not depend on
    the rest of the batch (doubled CFG batches, padding, data-parallel splits: all the same) and a
    batch-sharded step needs no cross-device top-k. Expert weights carry the logical `expert` axis
    (kernels [expert, embed, mlp] and [expert, mlp, embed]), which `config.sharding_rules` can map
    to an `expert` mesh axis; the router is [embed, expert].
    """

    def __init__(self, width: int, hidden: int, num_experts: int, capacity_factor: float, *, rngs: nnx.Rngs,
                 dtype=jnp.float32):
        if num_experts < 1 or hidden < 1:
            raise ValueError(f"a mixture of experts needs num_experts >= 1 and a hidden width >= 1, got "
                             f"{num_experts} and {hidden}")
        if not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
        self.num_experts = num_experts
        self.capacity_factor = float(capacity_factor)
        self.dtype = dtype
        self.router = Dense((width,), (num_experts,), ("embed", "expert"), rngs=rngs, dtype=jnp.float32)
        # Glorot-uniform per expert, as a dense MLP's layers (the expert axis is a batch of kernels).
        self.fc1_kernel = logical_param(rngs, jax.nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=1, out_axis=2, batch_axis=(0,)),
            (num_experts, width, hidden), ("expert", "embed", "mlp"))
        self.fc1_bias = logical_param(rngs, jax.nn.initializers.zeros, (num_experts, hidden), ("expert", "mlp"))
        self.fc2_kernel = logical_param(rngs, jax.nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=1, out_axis=2, batch_axis=(0,)),
            (num_experts, hidden, width), ("expert", "mlp", "embed"))
        self.fc2_bias = logical_param(rngs, jax.nn.initializers.zeros, (num_experts, width), ("expert", "embed"))

    def capacity(self, num_tokens: int) -> int:
        """Tokens each expert takes from an example of `num_tokens` tokens."""
        return int(min(num_tokens, max(1, round(self.capacity_factor * num_tokens / self.num_experts))))

    def route(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [B, T, width] -> (gates [B, E, C] float32, token indices [B, E, C]) of each expert's picks."""
        gates = jax.nn.softmax(self.router(x.astype(jnp.float32)).astype(jnp.float32), axis=-1)  # [B, T, E]
        picked_gates, picked = jax.lax.top_k(jnp.swapaxes(gates, 1, 2), self.capacity(x.shape[1]))
        return picked_gates, picked

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, width = x.shape
        gates, picked = self.route(x)
        rows = jnp.arange(b)[:, None, None]
        chosen = x[rows, picked].astype(self.dtype)  # [B, E, C, width]
        h = jnp.einsum("becd,edh->bech", chosen, self.fc1_kernel[...].astype(self.dtype))
        h = gelu(h + self.fc1_bias[...].astype(self.dtype)[None, :, None])
        y = jnp.einsum("bech,ehd->becd", h, self.fc2_kernel[...].astype(self.dtype))
        y = (y + self.fc2_bias[...].astype(self.dtype)[None, :, None]) * gates[..., None].astype(self.dtype)
        # Scatter-add each expert's weighted outputs back to the token positions it picked.
        return jnp.zeros((b, t, width), y.dtype).at[rows, picked].add(y)


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


# Rematerialisation of each block in the backward pass (jax.checkpoint): "none" stores every
# activation; "block" stores only each block's input and recomputes the rest; "block_save_dots"
# also keeps matmul outputs (less recompute, more memory).
REMAT_POLICIES = {"none": None, "block": jax.checkpoint_policies.nothing_saveable,
                  "block_save_dots": jax.checkpoint_policies.dots_saveable}


def check_remat(remat: str) -> str:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; valid: {sorted(REMAT_POLICIES)}")
    return remat


def block_runner(call, remat: str):
    """`call(block, *args)`, rematerialised per `remat` (a key of REMAT_POLICIES)."""
    if check_remat(remat) == "none":
        return call
    return nnx.remat(call, policy=REMAT_POLICIES[remat])


class Transformer(nnx.Module):
    """A stack of pre-norm blocks followed by a final LayerNorm.

    Between blocks the activations are constrained to the batch sharding of the active rules
    (`parallel.constrain`); `remat` picks a rematerialisation policy (REMAT_POLICIES).
    """

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, remat: str = "none"):
        self.blocks = nnx.List([Block(width, num_heads, mlp_ratio, rngs=rngs, dtype=dtype) for _ in range(depth)])
        self.norm = LayerNorm(width, rngs=rngs, dtype=dtype)
        self.remat = check_remat(remat)

    def __call__(self, x: jax.Array) -> jax.Array:
        run = block_runner(lambda block, x: block(x), self.remat)
        for block in self.blocks:
            x = constrain(run(block, x))
        return self.norm(x)
