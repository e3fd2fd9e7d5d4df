"""MAR: masked autoregressive generation of continuous tokens with a per-token diffusion head (Li et
al., "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838).

Two parts, as in the paper (Sec. 3-4, Fig. 2-3):

* `MAR`, an MAE-style encoder/decoder over continuous tokens (pixel patches or VAE latents):
  `buffer_size` class tokens in front, each the class embedding (a null row of the class table is
  the CFG "fake latent"), learned positions; the encoder sees the buffer and the visible tokens
  only, the decoder sees every position (mask tokens where the encoder saw nothing) and gives one
  condition vector z per position after an extra learned position embedding.
* `DiffusionHead`, the small residual MLP that models p(x | z) for each token by diffusion (the
  paper's "Diffusion Loss"; SimpleMLPAdaLN of LTH14/mar): input projection, `depth` residual
  blocks LN -> adaLN(shift, scale) -> MLP -> gated residual, with shift/scale/gate from
  SiLU(t_emb + Dense(z)) through zero-initialised Dense layers, then DiT's final adaLN layer and a
  zero-initialised output Dense. At init it outputs exactly 0.

Shapes are static under jit: the encoder takes a fixed number K of token slots per example with a
`valid` mask (the slots hold the visible tokens at any positions; invalid slots are hidden from
attention, so the result is exactly that of an encoder on the valid tokens alone). Training
gathers K = N - ceil(mask_ratio_min * N) slots by each example's random order; generation gives
all N positions and marks the known ones valid.

The transformer blocks are maskgen's pre-norm blocks (`maskgen.models.token_transformer.TokenBlock`
without adaLN: LayerNorm eps 1e-6, attention with a boolean key mask, optional dropout on the
attention probabilities and the residual branches, MAR's attn_dropout / proj_dropout).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from maskgen.models.layers import Dense, LayerNorm, block_runner, check_remat, logical_param
from maskgen.models.token_transformer import TokenBlock
from maskgen.parallel import constrain

# DiT's sinusoidal timestep features (arXiv 2212.09748), as MAR's TimestepEmbedder.
TIME_FREQUENCIES = 256
MAX_PERIOD = 10000.0


def timestep_features(time: jax.Array, dim: int = TIME_FREQUENCIES, max_period: float = MAX_PERIOD) -> jax.Array:
    """float32 [M] (any real t, e.g. a diffusion step index) -> [M, dim]: [cos(t f_i), sin(t f_i)]
    with f_i = max_period^(-i / (dim/2)), i < dim/2 (GLIDE's / DiT's layout: cosines first)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = time.astype(jnp.float32)[:, None] * freqs[None]
    features = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        features = jnp.concatenate([features, jnp.zeros_like(features[:, :1])], axis=-1)
    return features


class TimestepEmbedder(nnx.Module):
    """Sinusoidal features (256) -> Dense -> SiLU -> Dense, the Dense kernels drawn N(0, 0.02) (DiT)."""

    def __init__(self, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        init = jax.nn.initializers.normal(0.02)
        self.fc1 = Dense((TIME_FREQUENCIES,), (width,), (None, "mlp"), rngs=rngs, dtype=dtype, kernel_init=init)
        self.fc2 = Dense((width,), (width,), ("mlp", "embed"), rngs=rngs, dtype=dtype, kernel_init=init)

    def __call__(self, time: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.silu(self.fc1(timestep_features(time))))


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale) + shift


class HeadBlock(nnx.Module):
    """x + gate * MLP(LN(x) * (1 + scale) + shift), with (shift, scale, gate) = Dense(SiLU(y)) zero-initialised."""

    def __init__(self, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm = LayerNorm(width, rngs=rngs, dtype=dtype)
        self.fc1 = Dense((width,), (width,), ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense((width,), (width,), ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.modulation = Dense((width,), (3, width), ("cond", None, "embed"), rngs=rngs, dtype=dtype,
                                kernel_init=jax.nn.initializers.zeros)

    def __call__(self, x: jax.Array, y_act: jax.Array) -> jax.Array:
        """x [M, width]; y_act = SiLU(t_emb + z_emb) [M, width]."""
        shift, scale, gate = jnp.unstack(self.modulation(y_act), axis=-2)
        h = self.fc2(jax.nn.silu(self.fc1(_modulate(self.norm(x), shift, scale))))
        return x + gate * h


class DiffusionHead(nnx.Module):
    """MAR's per-token denoiser (SimpleMLPAdaLN): (x_t [M, token_dim], time [M], z [M, z_dim]) ->
    [M, out_channels] (MAR: 2 * token_dim, epsilon and the learned variance)."""

    def __init__(self, *, token_dim: int, z_dim: int, width: int, depth: int, out_channels: int,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        self.dtype = dtype
        self.time_embed = TimestepEmbedder(width, rngs=rngs, dtype=dtype)
        self.cond_embed = Dense((z_dim,), (width,), ("cond", "embed"), rngs=rngs, dtype=dtype)
        self.input_proj = Dense((token_dim,), (width,), ("patch", "embed"), rngs=rngs, dtype=dtype)
        self.blocks = nnx.List([HeadBlock(width, rngs=rngs, dtype=dtype) for _ in range(depth)])
        self.final_norm = LayerNorm(width, rngs=rngs, dtype=dtype, affine=False)
        zeros = jax.nn.initializers.zeros
        self.final_modulation = Dense((width,), (2, width), ("cond", None, "embed"), rngs=rngs, dtype=dtype,
                                      kernel_init=zeros)
        self.out = Dense((width,), (out_channels,), ("embed", "patch"), rngs=rngs, dtype=dtype, kernel_init=zeros)

    def condition(self, z: jax.Array) -> jax.Array:
        """The z part of the modulation input, Dense(z) [M, width]: computed once per z, reused at every step."""
        return self.cond_embed(z)

    def __call__(self, x_t: jax.Array, time: jax.Array, z: jax.Array, *, z_embedded: bool = False) -> jax.Array:
        """z_embedded=True: `z` is already `condition(z)` (saves the Dense at every sampling step)."""
        y_act = jax.nn.silu(self.time_embed(time) + (z if z_embedded else self.condition(z)))
        x = self.input_proj(x_t)
        for block in self.blocks:
            x = block(x, y_act)
        shift, scale = jnp.unstack(self.final_modulation(y_act), axis=-2)
        return self.out(_modulate(self.final_norm(x), shift, scale)).astype(jnp.float32)


class MAR(nnx.Module):
    """The MAE-style encoder/decoder of MAR and its diffusion head (see the module docstring).

    Class table rows 0..num_classes-1 are the classes and row `null_class` = num_classes the null
    (unconditional) embedding, MAR's `fake_latent`; an unconditional model has only the null row.
    """

    def __init__(self, *, token_dim: int, num_positions: int, num_classes: int, buffer_size: int, width: int,
                 depth: int, num_heads: int, decoder_width: int, decoder_depth: int, decoder_heads: int,
                 mlp_ratio: float, head_width: int, head_depth: int, head_out_channels: int, rngs: nnx.Rngs,
                 dropout: float = 0.0, dtype=jnp.float32, remat: str = "none"):
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1 (at mask ratio 1 the encoder sees only the buffer), got "
                             f"{buffer_size}")
        self.num_positions, self.buffer_size, self.dtype = num_positions, buffer_size, dtype
        self.null_class = num_classes
        self.remat = check_remat(remat)
        normal = jax.nn.initializers.normal(0.02)
        seq = buffer_size + num_positions
        self.token_proj = Dense((token_dim,), (width,), ("patch", "embed"), rngs=rngs, dtype=dtype)
        self.class_embed = logical_param(rngs, normal, (num_classes + 1, width), ("classes", "embed"))
        self.encoder_pos = logical_param(rngs, normal, (seq, width), ("positions", "embed"))
        self.input_norm = LayerNorm(width, rngs=rngs, dtype=dtype)
        block = dict(adaln=False, qk_norm=False, rngs=rngs, dtype=dtype, dropout=dropout)
        self.encoder_blocks = nnx.List([TokenBlock(width, num_heads, mlp_ratio, **block) for _ in range(depth)])
        self.encoder_norm = LayerNorm(width, rngs=rngs, dtype=dtype)
        self.decoder_embed = Dense((width,), (decoder_width,), ("embed", None), rngs=rngs, dtype=dtype)
        self.mask_token = logical_param(rngs, normal, (decoder_width,), ("embed",))
        self.decoder_pos = logical_param(rngs, normal, (seq, decoder_width), ("positions", "embed"))
        self.decoder_blocks = nnx.List([TokenBlock(decoder_width, decoder_heads, mlp_ratio, **block)
                                        for _ in range(decoder_depth)])
        self.decoder_norm = LayerNorm(decoder_width, rngs=rngs, dtype=dtype)
        self.diffusion_pos = logical_param(rngs, normal, (num_positions, decoder_width), ("positions", "embed"))
        self.head = DiffusionHead(token_dim=token_dim, z_dim=decoder_width, width=head_width, depth=head_depth,
                                  out_channels=head_out_channels, rngs=rngs, dtype=dtype)

    def _run(self, blocks, x: jax.Array, mask: jax.Array | None, dropout_rng: jax.Array | None,
             remat: bool) -> jax.Array:
        # Rematerialisation only where a gradient is taken: nnx.remat of a module captured by a
        # sampling loop (generation) would try to update it from inside the loop's trace.
        run = block_runner(lambda block, x, mask, key: block(x, None, mask=mask, dropout_rng=key)[0],
                           self.remat if remat else "none")
        keys = (jax.random.split(dropout_rng, len(blocks)) if dropout_rng is not None else [None] * len(blocks))
        for block, key in zip(blocks, keys):
            x = constrain(run(block, x, mask, key))
        return x

    def encode(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array, labels: jax.Array,
               dropout_rng: jax.Array | None = None, remat: bool = False) -> jax.Array:
        """The encoder on the buffer and the valid slots.

        tokens [B, K, token_dim] at grid `positions` int [B, K]; `valid` bool [B, K] (False: a slot
        hidden from attention, its output unused); labels int [B] (null_class: unconditional).
        remat=True applies the model's `remat` policy (training). Returns [B, buffer_size + K, width].
        """
        b, k, _ = tokens.shape
        x = self.token_proj(tokens)
        pos = self.encoder_pos[...].astype(self.dtype)
        x = x + jnp.take(pos[self.buffer_size:], positions, axis=0)
        buffer = jnp.take(self.class_embed[...].astype(self.dtype), labels, axis=0)[:, None] + pos[None, :self.buffer_size]
        x = self.input_norm(jnp.concatenate([buffer, x], axis=1))
        keys = jnp.concatenate([jnp.ones((b, self.buffer_size), bool), valid], axis=1)
        x = self._run(self.encoder_blocks, x, keys[:, None, None, :], dropout_rng, remat)
        return self.encoder_norm(x)

    def decode(self, encoded: jax.Array, positions: jax.Array, valid: jax.Array,
               dropout_rng: jax.Array | None = None, remat: bool = False) -> jax.Array:
        """Decoder over every position: the encoded valid slots at their `positions`, the mask token
        elsewhere. Returns z [B, N, decoder_width] (after the diffusion position embedding)."""
        b = encoded.shape[0]
        x = self.decoder_embed(encoded)
        buffer, slots = x[:, :self.buffer_size], x[:, self.buffer_size:]
        grid = jnp.broadcast_to(self.mask_token[...].astype(self.dtype), (b, self.num_positions, x.shape[-1]))
        # Invalid slots go to index N, which `mode="drop"` discards.
        target = jnp.where(valid, positions, self.num_positions)
        grid = grid.at[jnp.arange(b)[:, None], target].set(slots, mode="drop")
        x = jnp.concatenate([buffer, grid], axis=1) + self.decoder_pos[...].astype(self.dtype)
        x = self.decoder_norm(self._run(self.decoder_blocks, x, None, dropout_rng, remat))
        return x[:, self.buffer_size:] + self.diffusion_pos[...].astype(self.dtype)

    def __call__(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array, labels: jax.Array,
                 dropout_rng: jax.Array | None = None, remat: bool = False) -> jax.Array:
        """Condition vectors z [B, N, decoder_width] for every position, from the valid token slots.
        dropout_rng: training only (no key, no dropout); remat=True: training (see `encode`)."""
        keys = jax.random.split(dropout_rng) if dropout_rng is not None else (None, None)
        encoded = self.encode(tokens, positions, valid, labels, keys[0], remat)
        return self.decode(encoded, positions, valid, keys[1], remat)


__all__ = ["MAR", "DiffusionHead", "TimestepEmbedder", "timestep_features"]
