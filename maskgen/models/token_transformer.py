"""Class-conditional transformer over discrete image tokens: the MaskGIT backbone, with a causal
KV-cached mode for an autoregressive baseline on the same weights layout.

References:
  MaskGIT: Chang et al., "MaskGIT: Masked Generative Image Transformer", arXiv 2202.04200
    (bidirectional transformer over [MASK]-ed token grids, class token prepended, tied output head).
  adaLN-Zero: Peebles & Xie, "Scalable Diffusion Models with Transformers" (DiT), arXiv 2212.09748.
  RoPE: Su et al., "RoFormer", arXiv 2104.09864; 2D axial variant (half of the rotary pairs for the
    row index, half for the column index) as used by e.g. FiT / FiTv2 (arXiv 2402.12376, 2410.13925).
  QK-norm: Dehghani et al., "Scaling Vision Transformers to 22 Billion Parameters", arXiv 2302.05442.

Layout and conventions:
  * Inputs are token ids [B, N] in raster order over `token_shape` (h, w); id `vocab_size` is [MASK].
    Labels are in [0, num_classes]; `num_classes` is the learned null label for classifier-free guidance.
  * conditioning="adaln": every block's two pre-norm LayerNorms (no affine) are modulated by
    shift/scale, and the residual branches by a gate, all from Dense(SiLU(class embedding)) ->
    6*width, zero-initialised (adaLN-Zero: every block is the identity at init). The final norm gets
    its own zero-initialised shift/scale. So at init the labels do not affect the logits.
  * conditioning="prefix": the class embedding is one extra token in front of the sequence
    (bidirectional mode); its output is dropped before the head.
  * causal=True: sequence position i predicts token i. The input is a start element followed by
    tokens[:-1]. The start element is the class embedding in prefix mode and a learned `start_token`
    in adaLN mode (the class then enters through the modulation only). The sequence length is N in
    causal mode, so no output is dropped.
  * Positions: sequence position i of a causal model carries the grid position of the token it
    predicts (i // w, i % w), so the start element sits at (0, 0). With positions="rope2d" the
    bidirectional prefix token gets the identity rotation, which is the rotation of position (0, 0).
    positions="learned" adds a table [L, width] (L = sequence length, including a prefix token).
  * Parameters are float32; compute runs in `dtype`; attention softmax and logits are float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.models.layers import MLP, Attention, Dense, LayerNorm, block_runner, check_remat, logical_param
from maskgen.parallel import constrain

CONDITIONINGS = ("adaln", "prefix")
POSITIONS = ("learned", "rope2d")
ROPE_BASE = 10000.0


def rope_2d(rows: jax.Array, cols: jax.Array, head_dim: int, base: float = ROPE_BASE):
    """Axial 2D rotary tables for positions (rows[t], cols[t]): (cos, sin), each [T, head_dim/2].

    The first head_dim/4 rotation pairs turn with the row index, the last head_dim/4 with the
    column index, each at frequencies base^(-k / (head_dim/4)). Position (0, 0) is the identity.
    """
    if head_dim % 4:
        raise ValueError(f"rope2d needs a head dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = base ** (-jnp.arange(quarter, dtype=jnp.float32) / quarter)
    rows = jnp.asarray(rows, jnp.float32)[..., None]
    cols = jnp.asarray(cols, jnp.float32)[..., None]
    angles = jnp.concatenate([rows * freqs, cols * freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """DiT's x * (1 + scale) + shift; shift/scale [B, width] broadcast over the sequence."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TokenBlock(nnx.Module):
    """Pre-norm block; with adaLN, norms are modulated and residual branches gated by the class."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, adaln: bool, qk_norm: bool,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm1 = LayerNorm(width, rngs=rngs, dtype=dtype, affine=not adaln)
        self.attn = Attention(width, num_heads, rngs=rngs, dtype=dtype, qk_norm=qk_norm)
        self.norm2 = LayerNorm(width, rngs=rngs, dtype=dtype, affine=not adaln)
        self.mlp = MLP(width, int(width * mlp_ratio), rngs=rngs, dtype=dtype)
        # Rows: shift/scale/gate for attention, then for the MLP. Zero init: the block starts as identity.
        self.modulation = (
            Dense((width,), (6, width), ("cond", None, "embed"), rngs=rngs, dtype=dtype,
                  kernel_init=jax.nn.initializers.zeros)
            if adaln else None
        )

    def __call__(self, x: jax.Array, cond: jax.Array | None, *, mask=None, rope=None, cache=None, index=None):
        """x [B, T, width]; cond = SiLU(class embedding) [B, width] in adaLN mode, else None.

        With `cache` (and `index`), x is the single element at sequence position `index` and the
        attention runs through the KV cache. Returns (x, updated cache or None).
        """
        if self.modulation is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = jnp.unstack(self.modulation(cond), axis=1)
            h = _modulate(self.norm1(x), shift1, scale1)
        else:
            h = self.norm1(x)
        if cache is None:
            a = self.attn(h, mask=mask, rope=rope)
        else:
            a, cache = self.attn.decode(h, cache, index, rope=rope)
        if self.modulation is not None:
            x = x + gate1[:, None] * a
            return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2)), cache
        x = x + a
        return x + self.mlp(self.norm2(x)), cache


class TokenTransformer(nnx.Module):
    """MaskGIT-style bidirectional (or, with causal=True, autoregressive) token transformer.

    __call__(tokens int [B, N], labels int [B]) -> logits float32 [B, N, vocab_size]. In causal
    mode, logits[:, i] predict tokens[:, i] from tokens[:, :i] and the label (teacher forcing);
    `init_cache` / `decode_step` give the same logits one position at a time.
    """

    def __init__(self, *, vocab_size: int, token_shape: tuple[int, int], num_classes: int, width: int,
                 depth: int, num_heads: int, mlp_ratio: float = 4.0, conditioning: str = "adaln",
                 positions: str = "learned", qk_norm: bool = False, tie_head: bool = True,
                 causal: bool = False, dtype=jnp.float32, remat: str = "none", rngs: nnx.Rngs):
        self.remat = check_remat(remat)
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; valid: {CONDITIONINGS}")
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; valid: {POSITIONS}")
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        head_dim = width // num_heads
        if positions == "rope2d" and head_dim % 4:
            raise ValueError(f"positions='rope2d' needs head_dim = width / num_heads divisible by 4, "
                             f"got {width} / {num_heads} = {head_dim}")
        h, w = (int(s) for s in token_shape)
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.token_shape = (h, w)
        self.num_tokens = h * w
        self.mask_token_id = vocab_size
        self.null_class = num_classes
        self.width = width
        self.head_dim = head_dim
        self.conditioning = conditioning
        self.positions = positions
        self.causal = causal
        self.dtype = dtype
        adaln = conditioning == "adaln"
        # A bidirectional prefix model has one extra (class) element; a causal one feeds its start
        # element in place of the last token, so its length stays N.
        self.has_prefix = conditioning == "prefix" and not causal
        self.seq_len = self.num_tokens + int(self.has_prefix)

        embed_init = jax.nn.initializers.normal(0.02)
        # Row vocab_size is [MASK]; row num_classes of the class table is the CFG null label.
        # Rows are not sharded: vocab_size + 1 rows rarely divide a mesh axis, and the table is small.
        self.token_embed = logical_param(rngs, embed_init, (vocab_size + 1, width), (None, "embed"))
        self.class_embed = logical_param(rngs, embed_init, (num_classes + 1, width), ("classes", "embed"))
        self.start_token = (logical_param(rngs, embed_init, (width,), ("embed",))
                            if causal and adaln else None)
        self.pos_embed = (logical_param(rngs, embed_init, (self.seq_len, width), ("positions", "embed"))
                          if positions == "learned" else None)
        self.blocks = nnx.List([
            TokenBlock(width, num_heads, mlp_ratio, adaln=adaln, qk_norm=qk_norm, rngs=rngs, dtype=dtype)
            for _ in range(depth)
        ])
        self.final_norm = LayerNorm(width, rngs=rngs, dtype=dtype, affine=not adaln)
        self.final_modulation = (
            Dense((width,), (2, width), ("cond", None, "embed"), rngs=rngs, dtype=dtype,
                  kernel_init=jax.nn.initializers.zeros)
            if adaln else None
        )
        if tie_head:
            self.head = None
            self.head_bias = logical_param(rngs, jax.nn.initializers.zeros, (vocab_size,), ("vocab",))
        else:
            self.head = Dense((width,), (vocab_size,), ("embed", "vocab"), rngs=rngs, dtype=dtype)
            self.head_bias = None

    # ----------------------------------------------------------------------------------------- parts

    def _embed_tokens(self, ids: jax.Array) -> jax.Array:
        return self.token_embed[...][ids].astype(self.dtype)

    def _class_embedding(self, labels: jax.Array) -> jax.Array:
        return self.class_embed[...][labels].astype(self.dtype)  # [B, width]

    def _cond(self, labels: jax.Array) -> jax.Array | None:
        """SiLU(class embedding) [B, width], the adaLN modulation input (None in prefix mode)."""
        if self.conditioning != "adaln":
            return None
        return jax.nn.silu(self._class_embedding(labels))

    def _start_element(self, labels: jax.Array) -> jax.Array:
        """The causal start element [B, width]: class embedding (prefix) or learned start token (adaLN)."""
        if self.conditioning == "prefix":
            return self._class_embedding(labels)
        return jnp.broadcast_to(self.start_token[...].astype(self.dtype), (labels.shape[0], self.width))

    def _rope_tables(self):
        """(cos, sin) [seq_len, head_dim/2] for positions="rope2d", else None."""
        if self.positions != "rope2d":
            return None
        t = np.arange(self.num_tokens)
        rows, cols = t // self.token_shape[1], t % self.token_shape[1]
        if self.has_prefix:  # the class token: position (0, 0), i.e. the identity rotation
            rows, cols = np.concatenate([[0], rows]), np.concatenate([[0], cols])
        return rope_2d(rows, cols, self.head_dim)

    def _logits(self, x: jax.Array, cond: jax.Array | None) -> jax.Array:
        """Final (modulated) norm and the head: [B, T, width] -> float32 [B, T, vocab_size]."""
        x = self.final_norm(x)
        if self.final_modulation is not None:
            shift, scale = jnp.unstack(self.final_modulation(cond), axis=1)
            x = _modulate(x, shift, scale)
        if self.head is None:  # tied: score against the (non-[MASK]) token embeddings
            table = self.token_embed[...][: self.vocab_size].astype(self.dtype)
            logits = jnp.einsum("btd,vd->btv", x, table, preferred_element_type=jnp.float32)
            return logits + self.head_bias[...]
        return self.head(x).astype(jnp.float32)

    # ------------------------------------------------------------------------------------ forward

    def __call__(self, tokens: jax.Array, labels: jax.Array) -> jax.Array:
        """tokens int [B, N] in [0, vocab_size]; labels int [B] in [0, num_classes] -> [B, N, vocab]."""
        if tokens.shape[-1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens per example, got shape {tokens.shape}")
        cond = self._cond(labels)
        if self.causal:
            start = self._start_element(labels)[:, None]
            x = jnp.concatenate([start, self._embed_tokens(tokens[:, :-1])], axis=1)
        elif self.has_prefix:
            x = jnp.concatenate([self._class_embedding(labels)[:, None], self._embed_tokens(tokens)], axis=1)
        else:
            x = self._embed_tokens(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed[...].astype(self.dtype)
        mask = jnp.tril(jnp.ones((self.seq_len, self.seq_len), bool)) if self.causal else None
        rope = self._rope_tables()
        run = block_runner(lambda block, x, cond, mask, rope: block(x, cond, mask=mask, rope=rope)[0], self.remat)
        for block in self.blocks:
            x = constrain(run(block, x, cond, mask, rope))
        if self.has_prefix:
            x = x[:, 1:]
        return self._logits(x, cond)

    # ------------------------------------------------------------------------- cached decoding

    def init_cache(self, batch_size: int) -> list[dict[str, jax.Array]]:
        """Empty KV cache for causal decoding: per block {"k", "v"} zeros [B, heads, seq_len, head_dim]."""
        if not self.causal:
            raise ValueError("init_cache needs a causal TokenTransformer (causal=True)")
        shape = (batch_size, self.width // self.head_dim, self.seq_len, self.head_dim)
        return [{"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)} for _ in self.blocks]

    def decode_step(self, cache, token_in: jax.Array, index: jax.Array, labels: jax.Array):
        """Feeds sequence position `index` and returns (logits float32 [B, vocab] for token `index`, cache).

        token_in int [B] is token index-1 (ignored at index 0, where the start element is fed).
        Pure: the cache is an argument and a result, so this runs on `nnx.merge(graphdef, params)`
        inside `jax.jit`, and in a `fori_loop`/`scan` with a traced `index`.
        """
        if not self.causal:
            raise ValueError("decode_step needs a causal TokenTransformer (causal=True)")
        index = jnp.asarray(index, jnp.int32)
        cond = self._cond(labels)
        # Clip so that the ignored token_in at index 0 is always a valid row.
        embedded = self._embed_tokens(jnp.clip(token_in, 0, self.vocab_size))
        x = jnp.where(index == 0, self._start_element(labels), embedded)[:, None]  # [B, 1, width]
        if self.pos_embed is not None:
            x = x + jax.lax.dynamic_index_in_dim(self.pos_embed[...], index, keepdims=True).astype(self.dtype)
        rope = self._rope_tables()
        if rope is not None:
            rope = tuple(jax.lax.dynamic_index_in_dim(t, index, keepdims=True) for t in rope)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, cond, rope=rope, cache=layer_cache, index=index)
            new_cache.append(layer_cache)
        return self._logits(x, cond)[:, 0], new_cache
